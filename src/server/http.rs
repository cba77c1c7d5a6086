//! The HTTP side of a node: `/metrics` (Prometheus), `/health` (JSON, 200 or 503), and the
//! probes for orchestrators: `/livez` (the process and its storage work; never the network)
//! and `/readyz[?keyspace=NAME]` (it can serve that keyspace's mode, or the modes it serves),
//! 200 or 503 with one line of text saying why. `/ready` is the older name of `/readyz`.
//! The verdicts are explained in [`crate::observe::health`].

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::error::Error;
use crate::node::Node;
use crate::observe::{health, metrics};

pub async fn serve_http(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(render_health))
        .route("/livez", get(render_livez))
        .route("/readyz", get(render_readyz))
        .route("/ready", get(render_readyz))
        .with_state(node);
    // TCP_NODELAY on every accepted socket, so small answers are not held back by Nagle.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(format!("the HTTP server failed: {e}")))
}

async fn render_metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    metrics::update_gauges(&node);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render())
}

async fn render_health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let report = health::report(&node);
    let code = if report.serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report))
}

async fn render_livez(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let check = health::livez(&node);
    probe_answer("live", check.ok, &check.detail)
}

async fn render_readyz(State(node): State<Arc<Node>>, uri: Uri) -> impl IntoResponse {
    let keyspace = query_param(uri.query().unwrap_or(""), "keyspace");
    match health::readyz(&node, keyspace) {
        Ok(check) => probe_answer("ready", check.ok, &check.detail),
        Err(e @ Error::UnknownKeyspace(_)) => (StatusCode::NOT_FOUND, format!("{e}\n")),
        Err(e @ Error::InvalidInput(_)) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

/// 200 `<what>: detail` or 503 `not <what>: detail`.
fn probe_answer(what: &str, ok: bool, detail: &str) -> (StatusCode, String) {
    if ok {
        (StatusCode::OK, format!("{what}: {detail}\n"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not {what}: {detail}\n"))
    }
}

/// The value of `name` in a query string (`a=1&keyspace=bank`). Keyspace names need no
/// percent-decoding: anything a name may contain is sent as is.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_by_name() {
        assert_eq!(query_param("keyspace=bank", "keyspace"), Some("bank"));
        assert_eq!(query_param("x=1&keyspace=a-b_c", "keyspace"), Some("a-b_c"));
        assert_eq!(query_param("", "keyspace"), None);
        assert_eq!(query_param("keyspacex=1&flag", "keyspace"), None);
    }
}
