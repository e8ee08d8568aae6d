//! Per-RPC metrics: a tower layer around the whole gRPC server (every service: chat,
//! peer, health), counting each call by method and status code and timing it.
//!
//! A call ends with its `grpc-status`: in the response headers when it failed at once (a
//! "trailers-only" response), otherwise in the trailers after the last message. So the
//! layer wraps the response body and records when the trailers pass, or when the body is
//! dropped unfinished (the client went away: CANCELLED). For a streaming call (Listen,
//! Peer.Stream, Health.Watch) the time is the stream's whole life.
//!
//! Label values come from the request path, which the client chooses. Any path that no
//! service serves is answered UNIMPLEMENTED, and every such call is labelled
//! `unknown`, so the series are bounded by the methods the node actually has.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;

/// The label of a call to a path no service has (or not a gRPC path at all).
const UNKNOWN: &str = "unknown";
/// Longer service or method names are not ours: labelled [`UNKNOWN`].
const NAME_BYTES_MAX: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    service: String,
    method: String,
    code: &'static str,
}

#[derive(Clone)]
pub struct RpcMetrics {
    handled: Family<CodeLabels, Counter>,
    seconds: Family<MethodLabels, Histogram>,
}

impl RpcMetrics {
    pub(super) fn register(registry: &mut Registry) -> RpcMetrics {
        let metrics = RpcMetrics {
            handled: Family::default(),
            seconds: Family::new_with_constructor(super::latency_histogram),
        };
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by service, method and status code",
            metrics.handled.clone(),
        );
        registry.register_with_unit(
            "grpc_server_handling",
            "Time from a call's arrival to its status (for a stream: its whole life)",
            Unit::Seconds,
            metrics.seconds.clone(),
        );
        metrics
    }
}

/// Add to the server with `Server::builder().layer(RpcLayer::new(...))`.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: RpcMetrics,
}

impl RpcLayer {
    pub fn new(metrics: RpcMetrics) -> RpcLayer {
        RpcLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: RpcMetrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> tower_service::Service<http::Request<RequestBody>>
    for RpcService<S>
where
    S: tower_service::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RecordedBody<ResponseBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let mut call = Call {
            metrics: self.metrics.clone(),
            // A cheap clone (shared bytes); split into labels only when the call ends.
            path: request.uri().path_and_query().cloned(),
            started: Instant::now(),
            done: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    if let Some(code) = status_code(response.headers()) {
                        call.finish(code);
                    }
                    Ok(response.map(|inner| RecordedBody { inner, call }))
                }
                Err(error) => {
                    // No response at all: the connection gets an HTTP/2 error.
                    call.finish(Code::Unknown);
                    Err(error)
                }
            }
        })
    }
}

fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// One call in progress; records itself exactly once.
struct Call {
    metrics: RpcMetrics,
    path: Option<http::uri::PathAndQuery>,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if self.done {
            return;
        }
        self.done = true;
        let (service, method) = match (&self.path, code) {
            (_, Code::Unimplemented) | (None, _) => (UNKNOWN, UNKNOWN),
            (Some(path), _) => split_path(path.path()),
        };
        let (service, method) = (service.to_owned(), method.to_owned());
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics
            .seconds
            .get_or_create(&MethodLabels {
                service: service.clone(),
                method: method.clone(),
            })
            .observe(seconds);
        self.metrics
            .handled
            .get_or_create(&CodeLabels {
                service,
                method,
                code: code_name(code),
            })
            .inc();
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The body went away before its trailers: the client cancelled (or the
        // connection broke). Does nothing if the call already ended.
        self.finish(Code::Cancelled);
    }
}

/// `/chat.v1.Chat/Send` into `("chat.v1.Chat", "Send")`; anything else is unknown.
fn split_path(path: &str) -> (&str, &str) {
    let plausible = |name: &str| {
        !name.is_empty()
            && name.len() <= NAME_BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
    };
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method)) if plausible(service) && plausible(method) => (service, method),
        _ => (UNKNOWN, UNKNOWN),
    }
}

/// The canonical names of the gRPC status codes, as in the gRPC spec and every other
/// gRPC metrics library.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the status passes by.
    pub struct RecordedBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: http_body::Body> http_body::Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(Code::Internal),
            // Ended without a status: not a well-formed gRPC response.
            Poll::Ready(None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_bounded_labels() {
        assert_eq!(split_path("/chat.v1.Chat/Send"), ("chat.v1.Chat", "Send"));
        assert_eq!(split_path("/chat.v1.Chat/Send/extra"), (UNKNOWN, UNKNOWN));
        assert_eq!(split_path("/a b/c"), (UNKNOWN, UNKNOWN));
        assert_eq!(split_path("/"), (UNKNOWN, UNKNOWN));
        let long = format!("/s/{}", "m".repeat(NAME_BYTES_MAX + 1));
        assert_eq!(split_path(&long), (UNKNOWN, UNKNOWN));
    }

    #[test]
    fn every_code_has_its_canonical_name() {
        for number in 0..=16 {
            let code = Code::from_i32(number);
            let name = code_name(code);
            // The canonical name is the enum name in upper snake case.
            let expected: String = format!("{code:?}")
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let gap = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                    gap.into_iter()
                        .chain(std::iter::once(c.to_ascii_uppercase()))
                })
                .collect();
            assert_eq!(name, expected, "code {number}");
        }
    }
}
