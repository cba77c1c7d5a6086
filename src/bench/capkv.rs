//! A run against a capkv cluster: connections spread over the endpoints, preload, live progress.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::{preload, run, CapkvTarget, Progress, Report, Slo, Workload};
use crate::client::Client;
use crate::error::Error;
use crate::keyspace::Mode;
use crate::proto;

/// Everything `capkv bench` needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    pub endpoints: Vec<String>,
    /// Sent with every request to nodes that check tokens.
    pub token: Option<String>,
    /// TLS settings for nodes that serve TLS.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Per-request timeout.
    pub timeout: Duration,
    pub keyspace: String,
    pub workload: Workload,
    /// Reads: `None` is the keyspace's default (cp linearizable, ap the local replica).
    pub consistency: Option<proto::Consistency>,
    /// ap writes: replicas that must store a write before it counts as done (`--acks`).
    pub acks: u32,
    pub concurrency: usize,
    /// Client connections; worker `w` uses connection `w mod connections`.
    pub connections: usize,
    pub duration: Duration,
    pub slo: Option<Slo>,
    /// Draw a live progress line on stderr (only when it is a terminal).
    pub progress: bool,
}

/// Checks the keyspace, preloads when the workload reads, runs, and labels the report.
pub async fn bench(options: &Options) -> Result<Report, Error> {
    let mut workload = options.workload.clone();
    workload.validate(options.concurrency)?;
    if options.connections == 0 {
        return Err(Error::InvalidInput("--connections must be at least 1".into()));
    }
    if options.endpoints.is_empty() {
        return Err(Error::InvalidInput(
            "no endpoints given; pass --endpoints HOST:PORT[,HOST:PORT...]".into(),
        ));
    }
    let probe = Client::new(options.endpoints.clone(), options.timeout)?
        .with_token(options.token.as_deref())?
        .with_tls(options.tls.clone());
    let mode = match probe.describe_keyspace(&options.keyspace).await?.mode() {
        proto::Mode::Cp => Mode::Cp,
        proto::Mode::Ap => Mode::Ap,
        other => {
            return Err(Error::Internal(format!(
                "the cluster describes keyspace '{}' with mode {other:?}, which this client does not know",
                options.keyspace
            )))
        }
    };
    if options.acks != 1 && mode == Mode::Cp {
        return Err(Error::InvalidInput(format!(
            "--acks {} applies to ap keyspaces; '{}' is cp, whose writes always wait for a majority: drop --acks",
            options.acks, options.keyspace
        )));
    }
    let consistency = options.consistency.unwrap_or(match mode {
        Mode::Cp => proto::Consistency::Linearizable,
        Mode::Ap => proto::Consistency::Serializable,
    });
    workload.linearizable = consistency != proto::Consistency::Serializable;

    // Connection c starts at endpoint c, so the load spreads over the nodes.
    let connections = options.connections.min(options.concurrency);
    let mut targets = Vec::with_capacity(connections);
    for c in 0..connections {
        let mut endpoints = options.endpoints.clone();
        endpoints.rotate_left(c % options.endpoints.len());
        let client = Client::new(endpoints, options.timeout)?
            .with_token(options.token.as_deref())?
            .with_tls(options.tls.clone());
        targets.push(Arc::new(CapkvTarget::new(
            client,
            &options.keyspace,
            consistency,
            options.acks,
        )));
    }

    let bar = if options.progress {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("the template is valid"));
    if workload.needs_preload() {
        bar.set_message(format!("writing {} keys before the run", workload.keys));
        bar.enable_steady_tick(Duration::from_millis(200));
        preload(&targets, &workload, options.concurrency).await?;
    }

    let progress = Arc::new(Progress::default());
    let ticker = {
        let (bar, progress, total) = (bar.clone(), progress.clone(), options.duration);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let ops = progress.ops.load(Ordering::Relaxed);
                let errors = progress.errors.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!(
                    "{ops} ok, {errors} failed, {:.0} ops/s ({:.0}s of {:.0}s)",
                    ops as f64 / secs,
                    secs.min(total.as_secs_f64()),
                    total.as_secs_f64()
                ));
            }
        })
    };
    let mut report = run(
        &targets,
        &workload,
        options.concurrency,
        options.duration,
        options.slo,
        progress,
    )
    .await;
    ticker.abort();
    bar.finish_and_clear();
    report.keyspace = options.keyspace.clone();
    report.mode = mode.to_string();
    report.consistency = consistency_name(consistency).to_string();
    Ok(report)
}

fn consistency_name(c: proto::Consistency) -> &'static str {
    match c {
        proto::Consistency::Default | proto::Consistency::Linearizable => "linearizable",
        proto::Consistency::Serializable => "serializable",
        proto::Consistency::Quorum => "quorum",
    }
}
