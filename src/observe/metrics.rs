//! Prometheus metrics of a node, through the `metrics` facade.
//!
//! Request latency buckets include 0.3 s, the SLO threshold (99.9% of requests under 300 ms).
//! Raft gauges are refreshed on every scrape and once a second.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::Error;
use crate::node::Node;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Request latency buckets in seconds; 0.3 s is the SLO line.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder once; later calls reuse it.
pub fn install() -> Result<(), Error> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| Error::Internal(format!("cannot install the metrics recorder: {e}")))?;
    let _ = HANDLE.set(handle);
    Ok(())
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    HANDLE.get().map(|h| h.render()).unwrap_or_default()
}

/// Folds the histogram samples recorded since the last call into their buckets. The recorder
/// keeps every sample until this runs (or a scrape renders): a node nobody scrapes would
/// otherwise grow by 8 bytes per request and per flush for as long as it runs.
pub fn upkeep() {
    if let Some(handle) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// The outcome label of a request result.
pub fn outcome<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(Error::NoQuorum(_)) | Err(Error::Unreachable(_)) => "no_quorum",
        Err(Error::OutcomeUnknown(_)) => "unknown",
        Err(Error::InvalidInput(_)) => "invalid",
        Err(Error::Storage(_)) => "error",
        Err(Error::UnknownKeyspace(_)) | Err(Error::ModeRefuses { .. }) | Err(Error::Refused(_)) => "refused",
        Err(Error::AlreadyExists(_)) => "exists",
        Err(Error::Internal(_)) => "error",
    }
}

pub fn record_request<T>(
    keyspace: &str,
    mode: &'static str,
    op: &'static str,
    result: &Result<T, Error>,
    elapsed: Duration,
) {
    let labels = [
        ("keyspace", keyspace.to_string()),
        ("mode", mode.to_string()),
        ("op", op.to_string()),
        ("outcome", outcome(result).to_string()),
    ];
    metrics::counter!("capkv_requests_total", &labels).increment(1);
    metrics::histogram!("capkv_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
}

/// Refreshes the Raft and storage gauges from the node's current state.
pub fn update_gauges(node: &Node) {
    let m = node.cp().metrics();
    metrics::gauge!("capkv_raft_term").set(m.current_term as f64);
    metrics::gauge!("capkv_raft_leader_id").set(m.current_leader.unwrap_or(0) as f64);
    metrics::gauge!("capkv_raft_is_leader").set(if m.current_leader == Some(node.id()) { 1.0 } else { 0.0 });
    metrics::gauge!("capkv_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("capkv_raft_applied_index").set(m.last_applied.map_or(0, |l| l.index) as f64);
    metrics::gauge!("capkv_raft_commit_index").set(super::health::commit_index(node) as f64);
    metrics::gauge!("capkv_raft_snapshot_index").set(m.snapshot.map_or(0, |l| l.index) as f64);
    metrics::gauge!("capkv_raft_purged_index").set(m.purged.map_or(0, |l| l.index) as f64);
    metrics::gauge!("capkv_raft_log_entries").set(node.cp().log_entries() as f64);
    if let Some(ms) = m.millis_since_quorum_ack {
        metrics::gauge!("capkv_raft_millis_since_quorum_ack").set(ms as f64);
    }
    metrics::gauge!("capkv_storage_size_bytes").set(node.storage_bytes() as f64);
    metrics::gauge!("capkv_uptime_seconds").set(node.uptime().as_secs_f64());
    update_ap_metrics(node);
}

fn update_ap_metrics(node: &Node) {
    use std::sync::atomic::Ordering::Relaxed;
    let replica = node.ap().replica();
    let stats = &replica.stats;
    let counters = [
        ("capkv_ap_pushes_applied_total", &stats.pushes_applied),
        ("capkv_ap_keys_repaired_total", &stats.keys_repaired),
        ("capkv_ap_anti_entropy_rounds_total", &stats.anti_entropy_rounds),
        ("capkv_ap_anti_entropy_deferred_total", &stats.anti_entropy_deferred),
        ("capkv_ap_hints_stored_total", &stats.hints_stored),
        ("capkv_ap_hints_delivered_total", &stats.hints_delivered),
        ("capkv_ap_hints_dropped_full_total", &stats.hints_dropped_full),
        ("capkv_ap_hints_dropped_expired_total", &stats.hints_dropped_expired),
        ("capkv_ap_tombstones_collected_total", &stats.tombstones_collected),
        ("capkv_ap_read_repairs_total", &stats.read_repairs),
        ("capkv_ap_clock_refusals_total", &stats.clock_refusals),
        ("capkv_ap_stale_refused_total", &stats.stale_refused),
    ];
    for (name, value) in counters {
        metrics::counter!(name).absolute(value.load(Relaxed));
    }
    for peer in replica.peers() {
        let queued = replica.store.hint_count(peer) as f64;
        metrics::gauge!("capkv_ap_hint_queue_length", "peer" => peer.to_string()).set(queued);
    }
    metrics::gauge!("capkv_ap_clock_offset_ms").set(node.ap().replica().clock_offset_ms() as f64);
    metrics::gauge!("capkv_ap_hlc_max_ahead_ms").set(replica.clock().max_ahead_ms() as f64);
    let last_in_sync_ms = stats.last_in_sync_ms.load(Relaxed);
    if last_in_sync_ms > 0 {
        metrics::gauge!("capkv_ap_last_in_sync_timestamp_seconds").set(last_in_sync_ms as f64 / 1000.0);
    }
}

/// Refreshes gauges and folds histogram samples into their buckets ([`upkeep`]) once a second,
/// so gauges are fresh and memory stays flat even between scrapes.
pub async fn run_gauge_updater(node: std::sync::Arc<Node>) {
    loop {
        update_gauges(&node);
        upkeep();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
