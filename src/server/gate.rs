//! The gate in front of every service of a gRPC port: tokens, then a bound on requests in flight.
//!
//! One tower layer ([`GateLayer`]) sees each request before any handler does:
//! - with `--auth-token-file`, it checks the request's token and the role its method needs
//!   ([`crate::auth::Tokens::check`]), so no handler can forget to;
//! - past the node-wide bound on requests in flight ([`REQUESTS_IN_FLIGHT_MAX`] by default,
//!   `--max-requests-in-flight`) it refuses at once with `RESOURCE_EXHAUSTED` (exit 3, nothing
//!   done; the client library moves on to its next endpoint) instead of queueing without bound.
//!
//! The client port has both; the peer port has neither: members call each other there, and a
//! flood of clients must not starve Raft of its own requests.
//!
//! Caveat: a streamed answer (a backup export) holds its slot until its first message, not to
//! its end.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::Code;

use crate::auth::{Tokens, AUTHORIZATION};
use crate::error::Error;

/// Requests in flight on a client port at most, by default (`--max-requests-in-flight`).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 4096;

/// What a port's gate checks.
#[derive(Clone)]
pub struct GateLayer {
    tokens: Option<Arc<Tokens>>,
    slots: Option<Arc<Semaphore>>,
    max: usize,
    node: u64,
}

impl GateLayer {
    /// Checks `tokens` when given, and allows at most `max` requests in flight when given.
    pub fn new(tokens: Option<Arc<Tokens>>, max: Option<usize>, node: u64) -> Self {
        Self {
            tokens,
            slots: max.map(|m| Arc::new(Semaphore::new(m.min(Semaphore::MAX_PERMITS)))),
            max: max.unwrap_or(0),
            node,
        }
    }

    /// A gate that lets everything through (the peer port).
    pub fn open(node: u64) -> Self {
        Self::new(None, None, node)
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            layer: self.clone(),
        }
    }
}

/// [`GateLayer`]'s service.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    layer: GateLayer,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Gate<S>
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
        let refuse = |status: tonic::Status| -> Self::Future {
            let refused = status.into_http();
            Box::pin(async move { Ok(refused) })
        };
        if let Some(tokens) = &self.layer.tokens {
            let header = request.headers().get(AUTHORIZATION).map(|h| h.as_bytes());
            if let Err(e) = tokens.check(request.uri().path(), header, self.layer.node) {
                return refuse(tonic::Status::from(e));
            }
        }
        let Some(slots) = &self.layer.slots else {
            return Box::pin(self.inner.call(request));
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("capkv_requests_shed_total").increment(1);
            return refuse(
                Error::Refused(format!(
                    "node {} is serving its limit of {} requests at once; nothing was done, retry (another node may have room)",
                    self.layer.node, self.layer.max
                ))
                .status_with_code(Code::ResourceExhausted),
            );
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            drop(permit);
            answer
        })
    }
}
