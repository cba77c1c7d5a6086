//! `capkv node`: bind the ports, open the node, serve, run the background tasks, and stop
//! cleanly on SIGTERM or Ctrl-C (servers first, then Raft, then a final flush).
//!
//! Ports are bound before the data dir is touched, so a taken port fails fast and changes
//! nothing.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::{Node, NodeOptions};
use crate::error::Error;
use crate::liveness::prober;
use crate::net::peer_channel;
use crate::observe::metrics;
use crate::server;

pub async fn run(options: NodeOptions) -> Result<(), Error> {
    options.validate()?;
    metrics::install()?;
    // Bind first: a taken port should fail before anything touches the data dir.
    let grpc_listener = server::bind(options.listen, "--listen").await?;
    let http_listener = server::bind(options.http, "--http").await?;
    let node = Node::open(options.clone()).await?;
    tracing::info!(id = node.id(), listen = %options.listen, http = %options.http, data_dir = %options.data_dir.display(),
        fault_injection = options.fault_injection, "node starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let grpc = tokio::spawn(server::serve_grpc(
        node.clone(),
        grpc_listener,
        stopped(stop_rx.clone()),
    ));
    let http = tokio::spawn(server::http::serve_http(
        node.clone(),
        http_listener,
        stopped(stop_rx.clone()),
    ));
    let background = [
        node.cp().spawn_watchdog(),
        tokio::spawn(prober::run(node.reach().clone(), peer_channels(&node))),
        tokio::spawn(run_ap_repair(node.clone())),
        tokio::spawn(metrics::run_gauge_updater(node.clone())),
    ];
    node.cp().bootstrap_if_fresh().await?;

    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        r = grpc_task_ended(grpc) => r,
    };
    tracing::info!(id = node.id(), "node stopping");
    let _ = stop_tx.send(true);
    let _ = http.await;
    for task in background {
        task.abort();
    }
    node.cp().shutdown().await;
    if let Err(e) = node.flush().await {
        tracing::error!("{e}");
    }
    result
}

/// One channel per peer for liveness pings.
fn peer_channels(node: &Node) -> Vec<(u64, tonic::transport::Channel)> {
    node.options()
        .peers
        .iter()
        .filter(|(id, _)| **id != node.id())
        .filter_map(|(id, addr)| peer_channel(addr).ok().map(|c| (*id, c)))
        .collect()
}

async fn grpc_task_ended(task: tokio::task::JoinHandle<Result<(), Error>>) -> Result<(), Error> {
    match task.await {
        Ok(r) => r,
        Err(e) => Err(Error::Internal(format!("the gRPC server task failed: {e}"))),
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Hints sent to a peer in one message.
const HINT_BATCH: usize = 500;
/// Anti-entropy rounds between two tombstone collections.
const ROUNDS_PER_TOMBSTONE_COLLECTION: u64 = 30;

/// The AP repair loop: delivers hints to peers that are back, runs anti-entropy with random
/// peers, collects tombstones now and then, and measures how long replicas stayed apart.
async fn run_ap_repair(node: Arc<Node>) {
    if cfg!(feature = "no-anti-entropy") {
        tracing::warn!("built with the no-anti-entropy negative control: ap replicas are never repaired");
        return;
    }
    use rand::seq::SliceRandom;
    let replica = node.ap().replica().clone();
    let interval = std::time::Duration::from_millis(replica.options.anti_entropy_interval_ms);
    let mut diverged_since: Option<Instant> = None;
    for round in 1u64.. {
        tokio::time::sleep(interval).await;
        let keyspaces: Vec<String> = match node.cp().local_keyspaces() {
            Ok(defs) => defs
                .into_iter()
                .filter(|d| d.mode == crate::mode::Mode::Ap)
                .map(|d| d.name)
                .collect(),
            Err(e) => {
                tracing::error!("cannot read the keyspace list: {e}");
                continue;
            }
        };
        let alive: Vec<u64> = replica
            .peers()
            .iter()
            .copied()
            .filter(|p| node.ap().reachable(*p))
            .collect();
        for peer in &alive {
            while let Ok(HINT_BATCH) = replica.deliver_hints(*peer, HINT_BATCH).await {}
        }
        if keyspaces.is_empty() {
            continue;
        }
        let chosen: Vec<u64> = {
            let mut rng = rand::thread_rng();
            alive
                .choose_multiple(&mut rng, replica.options.anti_entropy_fanout)
                .copied()
                .collect()
        };
        let in_sync = replica.anti_entropy_round(&chosen, &keyspaces).await && alive.len() == replica.peers().len();
        match (in_sync, diverged_since) {
            (false, None) => diverged_since = Some(Instant::now()),
            (true, Some(since)) => {
                ::metrics::gauge!("capkv_ap_last_convergence_seconds").set(since.elapsed().as_secs_f64());
                diverged_since = None;
            }
            _ => {}
        }
        if round % ROUNDS_PER_TOMBSTONE_COLLECTION == 0 {
            for keyspace in &keyspaces {
                if let Err(e) = replica.collect_tombstones(keyspace) {
                    tracing::warn!(keyspace, "tombstone collection failed: {e}");
                }
            }
        }
    }
}
