//! The `/metrics` endpoint: plain HTTP/1.1 on its own port (`metrics_addr`), with
//! hyper's server (already in the build through tonic).
//!
//! It is for the operator's Prometheus, not for clients, but it may be reachable by
//! anyone, so what it can cost is bounded: at most [`CONNECTIONS_MAX`] connections at
//! once (more are closed at once), each closed after [`CONNECTION_TIME_MAX`] whatever it
//! does, and one page of text per request, rendered from atomics.

use super::Exposition;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// The one path served.
pub const METRICS_PATH: &str = "/metrics";
/// Scrapes served at once; a Prometheus server needs one per target.
const CONNECTIONS_MAX: usize = 16;
/// A connection is closed after this, finished or not: a scrape takes milliseconds.
const CONNECTION_TIME_MAX: Duration = Duration::from_secs(10);

/// Serves `/metrics` on `listener` until `stop` turns true (or its sender is gone).
pub async fn serve(
    listener: TcpListener,
    exposition: Arc<Exposition>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!("metrics endpoint: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the limit: dropping the stream closes it.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let exposition = Arc::clone(&exposition);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&exposition, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // Both a timeout and a connection error end only this connection.
            let _ = tokio::time::timeout(CONNECTION_TIME_MAX, connection).await;
        });
    }
}

fn respond<B>(exposition: &Exposition, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() != METRICS_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match exposition.render() {
        Ok(text) => with_type(StatusCode::OK, Exposition::CONTENT_TYPE, text),
        Err(error) => {
            tracing::error!("cannot render the metrics: {error}");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the metrics\n",
            )
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", text.to_owned())
}

fn with_type(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// Binds `address` (when metrics are configured) and serves until `stop`; the task, to
/// be awaited after `stop` turns true.
pub async fn start(
    address: Option<SocketAddr>,
    exposition: Exposition,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(address) = address else {
        return Ok(None);
    };
    // Bound here, before the node serves, so that a taken port fails its start.
    let listener = TcpListener::bind(address).await.map_err(|error| {
        anyhow::anyhow!("cannot serve metrics on {address} (--metrics-addr): {error}")
    })?;
    let bound = listener.local_addr().unwrap_or(address);
    tracing::info!("metrics at http://{bound}{METRICS_PATH}");
    Ok(Some(tokio::spawn(serve(
        listener,
        Arc::new(exposition),
        stop,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::HashPool;
    use crate::metrics::{Metrics, Sampled};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const WAIT: Duration = Duration::from_secs(5);

    /// What the server sends on `stream` after `request`, until it closes.
    async fn exchange(stream: &mut TcpStream, request: &str) -> std::io::Result<String> {
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
            .await
            .expect("the server answers and closes in time")?;
        Ok(String::from_utf8(answer).expect("UTF-8"))
    }

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        exchange(&mut stream, &request).await.expect("an answer")
    }

    #[tokio::test]
    async fn serves_metrics_to_a_bounded_number_of_connections_and_stops() {
        let hashing = Arc::new(HashPool::start(1, 1).expect("hash pool"));
        let exposition = Metrics::new([]).finish(Sampled {
            listeners: Default::default(),
            hashing,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("bound address");
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, Arc::new(exposition), stopped));

        let page = get(address, METRICS_PATH).await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("chat_raft_term 0"), "{page}");
        assert!(get(address, "/other").await.starts_with("HTTP/1.1 404"));

        // Idle connections hold every slot; one more is closed unanswered.
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS_MAX {
            held.push(TcpStream::connect(address).await.expect("connect"));
        }
        let mut extra = TcpStream::connect(address).await.expect("connect");
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        match exchange(&mut extra, request).await {
            Ok(answer) => assert_eq!(answer, "", "closed unanswered"),
            // Closed with the request unread, the kernel resets the connection instead.
            Err(error) => assert!(
                matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{error}"
            ),
        }

        // A slot given back serves again.
        held.pop();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !get(address, METRICS_PATH).await.starts_with("HTTP/1.1 200") {
            assert!(tokio::time::Instant::now() < deadline, "no slot came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        stop.send(true).expect("the server listens");
        tokio::time::timeout(WAIT, server)
            .await
            .expect("stops in time")
            .expect("did not panic");
    }
}
