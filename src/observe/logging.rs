//! Structured logs through `tracing`: pretty or JSON, UTC timestamps, to stderr and to daily
//! rotating files under `<data-dir>/logs` with a retention limit.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Rotated log files kept per node (one per day).
pub const LOG_FILES_KEPT: usize = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Logging for a node: stderr plus rotating files. Keep the guard alive until exit.
pub fn init_node(dir: &Path, format: LogFormat, level: &str) -> Result<WorkerGuard, String> {
    let appender = Builder::new()
        .rotation(Rotation::DAILY)
        .filename_prefix("capkv")
        .filename_suffix("log")
        .max_log_files(LOG_FILES_KEPT)
        .build(dir.join("logs"))
        .map_err(|e| format!("cannot open log files in {}: {e}", dir.join("logs").display()))?;
    let (file_writer, guard) = tracing_appender::non_blocking(appender);
    let file_layer = fmt::layer().json().with_writer(file_writer).with_ansi(false).boxed();
    let stderr_layer = match format {
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Pretty => fmt::layer().with_writer(std::io::stderr).with_target(false).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter(&format!(
            "{level},openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn"
        )))
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(guard)
}

/// Logging for client commands: warnings only, to stderr, unless RUST_LOG says otherwise.
pub fn init_client() {
    let _ = tracing_subscriber::registry()
        .with(filter("warn"))
        .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
        .try_init();
}
