//! Inbound connections, bounded: how many a node holds open, how long one may stay
//! silent before it is a real HTTP/2 client, and an accept loop that backs off instead
//! of spinning.
//!
//! Why this exists: hyper's HTTP/2 server waits forever for a client's connection
//! preface (its keep-alive pings start only after the handshake, and a graceful shutdown
//! waits for the handshake too), and tonic's accept loop retries a failed `accept` at
//! once. So half-open connections (TCP connected, then silence or a partial preface)
//! piled up until the node ran out of file descriptors, and then the accept loop spun a
//! core on EMFILE while new clients timed out.
//!
//! - [`Incoming`] accepts (sleeping [`ACCEPT_BACKOFF_MIN`] to [`ACCEPT_BACKOFF_MAX`]
//!   after an accept error), admits up to the process's connection limit (see
//!   [`connection_limit`]) and wraps each connection in a [`Connection`].
//! - A connection is *pending* until its first HTTP/2 request reaches the server
//!   ([`mark_established`], installed as a layer in `server`). A pending connection is
//!   closed after [`HANDSHAKE_TIMEOUT`], or sooner when the node is at its limit and a
//!   newer connection arrives: the oldest pending connection makes room, so a flood of
//!   silent connections cannot lock real clients out for longer than their own handshake.
//! - Established connections are watched by HTTP/2 keep-alive pings (set in `server`): a
//!   client that vanished is closed within [`KEEP_ALIVE_INTERVAL`] + [`KEEP_ALIVE_TIMEOUT`].
//! - At the limit with no pending connection left to evict, a new connection is accepted
//!   and closed at once (the client sees the connection closed, not a hang).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Status};

/// Open inbound connections per process (every node of `chatnode local` shares them, as
/// they share the file descriptor table). Lowered to fit RLIMIT_NOFILE at start.
pub const CONNECTIONS_MAX: usize = 4_096;
/// The least the limit is lowered to, however small RLIMIT_NOFILE is.
const CONNECTIONS_MIN: usize = 64;
/// File descriptors kept for all but inbound connections: the data dir's files, the
/// peer channels, the runtime's epoll and event fds, stdio, the metrics listener.
const FDS_RESERVED: u64 = 256;
/// Evicted connections whose task has not closed them yet, beyond the limit. Past this a
/// new connection is refused rather than admitted in exchange for an eviction, so the
/// descriptors in use stay below the limit plus this even when evictions lag.
const EVICTIONS_IN_FLIGHT_MAX: usize = 256;
/// A connection must make its first HTTP/2 request within this, or it is closed. A real
/// client sends its preface, settings and first request in one round trip.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// An established connection that sent nothing for this long is pinged...
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ...and closed if the ping is not answered within this.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent HTTP/2 streams (calls) per connection. A peer uses one long-lived stream;
/// a client rarely more than a few. hyper's default is 200.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 128;
/// Connections the kernel completes and queues for `accept` (capped by
/// net.core.somaxconn). tokio's default is 1,024; a burst beyond the queue has its SYNs
/// dropped and retried a second later, so a deeper queue rides out a flood's bursts.
const LISTEN_BACKLOG: u32 = 4_096;
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest the accept loop sleeps after repeated errors (EMFILE, ENFILE, ENOBUFS).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Warnings about refused connections and accept errors come at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

// A silent connection is gone well before a vanished client's keep-alive runs out.
const _: () = assert!(HANDSHAKE_TIMEOUT.as_secs() <= KEEP_ALIVE_INTERVAL.as_secs() * 2);
const _: () = assert!(CONNECTIONS_MIN <= CONNECTIONS_MAX);
const _: () = assert!(ACCEPT_BACKOFF_MIN.as_millis() < ACCEPT_BACKOFF_MAX.as_millis());

/// The longest a half-open or vanished client holds a connection (a documented bound the
/// cluster tests check): the handshake timeout for a silent one, one keep-alive interval
/// plus its timeout (and a second interval of timer slack) for one that vanished later.
pub const HALF_OPEN_CLOSED_WITHIN: Duration = Duration::from_secs(15);
const _: () = assert!(HANDSHAKE_TIMEOUT.as_secs() < HALF_OPEN_CLOSED_WITHIN.as_secs());
const _: () = assert!(
    2 * KEEP_ALIVE_INTERVAL.as_secs() + KEEP_ALIVE_TIMEOUT.as_secs()
        <= HALF_OPEN_CLOSED_WITHIN.as_secs()
);

/// A listener on `address` with a [`LISTEN_BACKLOG`] deep accept queue.
pub fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted node can bind while old connections of
    // its previous run linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (as Go's runtime does: the
/// soft limit of 1,024 many systems start with is a relic of `select`) and returns the
/// connection limit the result allows: [`CONNECTIONS_MAX`], or fewer when descriptors are
/// short (logged, with what to raise).
pub fn connection_limit() -> usize {
    let soft = match raise_nofile_limit() {
        Ok(soft) => soft,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise RLIMIT_NOFILE; assuming 1024");
            1_024
        }
    };
    let fits = usize::try_from(soft.saturating_sub(FDS_RESERVED)).unwrap_or(usize::MAX);
    let limit = fits.clamp(CONNECTIONS_MIN, CONNECTIONS_MAX);
    if limit < CONNECTIONS_MAX {
        tracing::warn!(
            nofile = soft,
            limit,
            "RLIMIT_NOFILE allows only {limit} inbound connections; raise it to {} for {CONNECTIONS_MAX}",
            CONNECTIONS_MAX as u64 + FDS_RESERVED
        );
    } else {
        tracing::info!(nofile = soft, limit, "inbound connections bounded");
    }
    limit
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; the soft limit now.
pub fn raise_nofile_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The bookkeeping shared by every listener of the process.
struct Registry {
    limit: usize,
    state: Mutex<Counts>,
}

struct Counts {
    /// Connections admitted and not yet dropped (closed), evicted ones included.
    open: usize,
    next_id: u64,
    /// Connections that have not made a request yet, oldest (smallest id) first.
    pending: BTreeMap<u64, Arc<Slot>>,
    refused: u64,
    evicted: u64,
    last_warned: Option<Instant>,
}

/// One connection's state, shared by its I/O and the requests it carries.
struct Slot {
    id: u64,
    established: AtomicBool,
    evict: Notify,
}

/// The process's registry, made by its first listener.
static PROCESS: OnceLock<Arc<Registry>> = OnceLock::new();

/// The process's inbound connection counts (for metrics); None before any listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCounts {
    pub limit: usize,
    pub open: usize,
    pub pending: usize,
    pub refused: u64,
    pub evicted: u64,
}

pub fn counts() -> Option<ConnectionCounts> {
    let registry = PROCESS.get()?;
    let counts = registry.lock();
    Some(ConnectionCounts {
        limit: registry.limit,
        open: counts.open,
        pending: counts.pending.len(),
        refused: counts.refused,
        evicted: counts.evicted,
    })
}

impl Registry {
    /// The process's registry; the first caller's limit holds for all.
    fn process(limit: usize) -> Arc<Registry> {
        PROCESS
            .get_or_init(|| Arc::new(Registry::new(limit)))
            .clone()
    }

    fn new(limit: usize) -> Registry {
        Registry {
            limit,
            state: Mutex::new(Counts {
                open: 0,
                next_id: 0,
                pending: BTreeMap::new(),
                refused: 0,
                evicted: 0,
                last_warned: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Nothing panics while the lock is held; if something did, the counts are still
        // whole numbers and the worst outcome is a limit off by one.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `tcp` in if the limit allows (evicting the oldest pending connection to make
    /// room if need be); otherwise drops it, which closes it.
    fn admit(self: &Arc<Self>, tcp: TcpStream, remote: SocketAddr) -> Option<Connection> {
        let mut counts = self.lock();
        assert!(counts.open <= self.limit + EVICTIONS_IN_FLIGHT_MAX);
        if counts.open >= self.limit {
            let evictions_in_flight = counts.open - self.limit;
            let oldest = if evictions_in_flight < EVICTIONS_IN_FLIGHT_MAX {
                counts.pending.pop_first()
            } else {
                None
            };
            match oldest {
                Some((_, slot)) => {
                    // Stores a permit if the connection's task is not waiting yet.
                    slot.evict.notify_one();
                    counts.evicted += 1;
                }
                None => {
                    counts.refused += 1;
                    let now = Instant::now();
                    if counts
                        .last_warned
                        .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL)
                    {
                        counts.last_warned = Some(now);
                        tracing::warn!(
                            limit = self.limit,
                            refused = counts.refused,
                            evicted = counts.evicted,
                            "at the inbound connection limit: new connections are closed"
                        );
                    }
                    drop(counts);
                    drop(tcp);
                    return None;
                }
            }
        }
        counts.open += 1;
        let id = counts.next_id;
        counts.next_id += 1;
        let slot = Arc::new(Slot {
            id,
            established: AtomicBool::new(false),
            evict: Notify::new(),
        });
        counts.pending.insert(id, slot.clone());
        drop(counts);
        Some(Connection::new(tcp, remote, slot, self.clone()))
    }

    fn establish(&self, slot: &Slot) {
        if !slot.established.swap(true, Ordering::AcqRel) {
            self.lock().pending.remove(&slot.id);
        }
    }

    fn close(&self, slot: &Slot) {
        let mut counts = self.lock();
        assert!(counts.open > 0);
        counts.open -= 1;
        counts.pending.remove(&slot.id);
    }
}

/// Accepted connections, bounded; give it to `serve_with_incoming_shutdown`. It never
/// yields an error: accept errors are logged and waited out here, because tonic's own
/// loop would retry them at once.
pub struct Incoming {
    listener: TcpListener,
    registry: Arc<Registry>,
    backoff: Duration,
    sleeping: Option<Pin<Box<tokio::time::Sleep>>>,
    last_warned: Option<Instant>,
}

impl Incoming {
    /// `limit` comes from [`connection_limit`]; only the first listener's counts.
    pub fn new(listener: TcpListener, limit: usize) -> Incoming {
        Incoming {
            listener,
            registry: Registry::process(limit),
            backoff: ACCEPT_BACKOFF_MIN,
            sleeping: None,
            last_warned: None,
        }
    }

    fn accept_failed(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self
            .last_warned
            .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL)
        {
            self.last_warned = Some(now);
            tracing::warn!(%error, backoff = ?self.backoff, "accept failed; backing off");
        }
        self.sleeping = Some(Box::pin(tokio::time::sleep(self.backoff)));
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = Result<Connection, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(sleeping) = &mut this.sleeping {
                ready!(sleeping.as_mut().poll(cx));
                this.sleeping = None;
            }
            // tokio's cooperative budget makes this return Pending now and then, so a
            // flood of refused connections cannot hog the worker.
            match ready!(this.listener.poll_accept(cx)) {
                Ok((tcp, remote)) => {
                    this.backoff = ACCEPT_BACKOFF_MIN;
                    // Small writes (one Raft message, one reply) leave at once.
                    if let Err(error) = tcp.set_nodelay(true) {
                        tracing::debug!(%error, "cannot set TCP_NODELAY");
                    }
                    if let Some(connection) = this.registry.admit(tcp, remote) {
                        return Poll::Ready(Some(Ok(connection)));
                    }
                }
                Err(error) => this.accept_failed(&error),
            }
        }
    }
}

/// Why a pending connection was closed.
#[derive(Clone, Copy, Debug)]
enum Closed {
    HandshakeTimeout,
    Evicted,
}

/// One admitted connection: a TCP stream that fails its reads and writes once it is
/// pending too long or evicted, and gives its slot back when dropped.
pub struct Connection {
    tcp: TcpStream,
    info: ConnectionInfo,
    /// Resolves when a pending connection must close; `None` once it is established.
    closing: Option<Pin<Box<dyn Future<Output = Closed> + Send>>>,
    closed: Option<Closed>,
}

impl Connection {
    fn new(
        tcp: TcpStream,
        remote: SocketAddr,
        slot: Arc<Slot>,
        registry: Arc<Registry>,
    ) -> Connection {
        // The deadline runs from the accept, not from the first poll.
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let watched = slot.clone();
        let closing = Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => Closed::HandshakeTimeout,
                () = watched.evict.notified() => Closed::Evicted,
            }
        });
        let local = tcp.local_addr().ok();
        Connection {
            tcp,
            info: ConnectionInfo {
                remote,
                local,
                slot,
                registry,
            },
            closing: Some(closing),
            closed: None,
        }
    }

    /// An error once the connection timed out or was evicted before its first request.
    /// Polled on every read and write, so the closing future's waker is the task's.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(closing) = &mut self.closing {
            if self.info.slot.established.load(Ordering::Acquire) {
                self.closing = None;
            } else if let Poll::Ready(reason) = closing.as_mut().poll(cx) {
                tracing::debug!(remote = %self.info.remote, ?reason, "closing a pending connection");
                self.closing = None;
                self.closed = Some(reason);
            }
        }
        match self.closed {
            None => Ok(()),
            Some(Closed::HandshakeTimeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 request within the handshake timeout",
            )),
            Some(Closed::Evicted) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "evicted before its first request: at the connection limit",
            )),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.info.registry.close(&self.info.slot);
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// What a request knows of its connection (a request extension).
#[derive(Clone)]
pub struct ConnectionInfo {
    pub remote: SocketAddr,
    pub local: Option<SocketAddr>,
    slot: Arc<Slot>,
    registry: Arc<Registry>,
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

/// An interceptor for the whole server: a request on a connection makes it established
/// (no more handshake deadline, never evicted). It runs on the headers, before a body.
/// Under TLS tonic inserts the inner connection's info too, beside `TlsConnectInfo`.
/// It also adds the `TcpConnectInfo` that tonic's own listener would have, so that
/// `Request::remote_addr` keeps answering behind [`Incoming`].
pub fn mark_established(mut request: Request<()>) -> Result<Request<()>, Status> {
    let Some(info) = request.extensions().get::<ConnectionInfo>().cloned() else {
        return Ok(request);
    };
    info.registry.establish(&info.slot);
    request.extensions_mut().insert(TcpConnectInfo {
        local_addr: info.local,
        remote_addr: Some(info.remote),
    });
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` accepted TCP streams (and their client ends, kept open).
    async fn accepted(count: usize) -> Vec<(TcpStream, SocketAddr, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut streams = Vec::new();
        for _ in 0..count {
            let client = TcpStream::connect(address).await.expect("connect");
            let (server, remote) = listener.accept().await.expect("accept");
            streams.push((server, remote, client));
        }
        streams
    }

    fn is_closed(connection: &mut Connection) -> bool {
        let waker = std::task::Waker::noop();
        connection.check(&mut Context::from_waker(waker)).is_err()
    }

    #[tokio::test]
    async fn at_the_limit_the_oldest_pending_connection_makes_room() {
        let registry = Arc::new(Registry::new(2));
        let mut streams = accepted(4).await.into_iter();
        let mut admit = || {
            let (tcp, remote, client) = streams.next().expect("a stream");
            (registry.admit(tcp, remote), client)
        };
        let (first, _c1) = admit();
        let (second, _c2) = admit();
        let (mut first, mut second) = (first.expect("admitted"), second.expect("admitted"));
        let marked = mark_established(request_on(&second)).expect("marked");
        // What tonic's own listener would tell, for code that asks (login limits).
        assert_eq!(marked.remote_addr(), Some(second.info.remote));
        // At the limit: the third evicts the first, the only one still pending.
        let (third, _c3) = admit();
        let mut third = third.expect("admitted in exchange for the oldest pending");
        assert!(is_closed(&mut first));
        assert!(!is_closed(&mut second));
        assert!(!is_closed(&mut third));
        assert_eq!(registry.lock().evicted, 1);
        // The evicted one is still open (its task has not dropped it): one in flight.
        assert_eq!(registry.lock().open, 3);
        drop(first);
        mark_established(request_on(&third)).expect("marked");
        // Nothing pending left to evict: the fourth is refused.
        let (fourth, _c4) = admit();
        assert!(fourth.is_none());
        assert_eq!(registry.lock().refused, 1);
        drop((second, third));
        assert_eq!(registry.lock().open, 0);
        assert!(registry.lock().pending.is_empty());
    }

    fn request_on(connection: &Connection) -> Request<()> {
        let mut request = Request::new(());
        request.extensions_mut().insert(connection.connect_info());
        request
    }
}
