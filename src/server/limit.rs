//! A node-wide bound on requests in flight on the client port.
//!
//! Past [`LimitLayer`]'s bound a request is refused at once with `RESOURCE_EXHAUSTED` (exit 3,
//! nothing done; the client library moves on to its next endpoint) instead of waiting in a
//! queue that grows with the load. The bound covers every client connection together; each
//! connection is also bounded by its HTTP/2 stream limit. The peer port has no such bound, so
//! a flood of clients cannot starve Raft of its own requests.
//!
//! Caveat: a streamed answer (a backup export) holds its slot until its first message, not to
//! its end.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::Code;

use crate::error::Error;

/// Requests in flight on a client port at most, by default (`--max-requests-in-flight`).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 4096;

#[derive(Clone)]
pub struct LimitLayer {
    slots: Option<Arc<Semaphore>>,
    max: usize,
    node: u64,
}

impl LimitLayer {
    /// At most `max` requests in flight (`None`: no bound, for the peer port).
    pub fn new(max: Option<usize>, node: u64) -> Self {
        Self {
            slots: max.map(|m| Arc::new(Semaphore::new(m))),
            max: max.unwrap_or(0),
            node,
        }
    }
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    layer: LimitLayer,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Limit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(slots) = &self.layer.slots else {
            return Box::pin(self.inner.call(request));
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let answer = self.inner.call(request);
                Box::pin(async move {
                    let answer = answer.await;
                    drop(permit);
                    answer
                })
            }
            Err(_) => {
                metrics::counter!("capkv_requests_shed_total").increment(1);
                let refused = Error::Refused(format!(
                    "node {} is serving its limit of {} requests at once; nothing was done, retry (another node may have room)",
                    self.layer.node, self.layer.max
                ))
                .status_with_code(Code::ResourceExhausted)
                .into_http();
                Box::pin(async move { Ok(refused) })
            }
        }
    }
}
