//! The HTTP side of a node: `/metrics` (Prometheus), `/health` (JSON, 200 or 503), `/ready`.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
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
        .route("/ready", get(render_ready))
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

async fn render_ready(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let report = health::report(&node);
    if report.serving() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known or storage failing\n",
        )
    }
}
