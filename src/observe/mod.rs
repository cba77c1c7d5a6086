//! Observability: Prometheus metrics, health reports and structured logs.

pub mod health;
pub mod logging;
pub mod metrics;
