//! `capkv node`: bind the ports, open the node, serve, run the background tasks, and stop
//! cleanly on SIGTERM or Ctrl-C (servers first, then Raft, then a final flush).
//!
//! Ports are bound before the data dir is touched, so a taken port fails fast and changes
//! nothing.

use std::sync::Arc;

use tokio::sync::watch;

use super::{membership, Node, NodeOptions};
use crate::ap::repair;
use crate::error::Error;
use crate::liveness::prober;
use crate::mode::Mode;
use crate::observe::metrics;
use crate::server;

pub async fn run(options: NodeOptions) -> Result<(), Error> {
    options.validate()?;
    metrics::install()?;
    // Bind first: a taken port should fail before anything touches the data dir.
    let grpc_listener = server::bind(options.listen, "--listen").await?;
    let peer_listener = match options.peer_listen {
        Some(addr) => Some(server::bind(addr, "--peer-listen").await?),
        None => None,
    };
    let http_listener = server::bind(options.http, "--http").await?;
    let tokens = match &options.auth_token_file {
        Some(path) => Some(std::sync::Arc::new(crate::auth::Tokens::load(path)?)),
        None => None,
    };
    let client_tls = options.tls.as_ref().map(|t| t.server_config()).transpose()?;
    let peer_tls = options.peer_tls.as_ref().map(|t| t.server_config()).transpose()?;
    if let Some(files) = &options.peer_tls {
        crate::tls::set_peer_client(files.client_config()?);
    }
    let node = Node::open(options.clone()).await?;
    tracing::info!(id = node.id(), listen = %options.listen, peer_listen = ?options.peer_listen, http = %options.http,
        data_dir = %options.data_dir.display(), fault_injection = options.fault_injection, "node starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let client_ports = if peer_listener.is_some() {
        server::Ports::Client
    } else {
        server::Ports::Shared
    };
    let health = tonic_health::server::HealthReporter::new();
    let grpc = tokio::spawn(server::serve_grpc(
        node.clone(),
        grpc_listener,
        server::Port {
            ports: client_ports,
            tls: client_tls,
            gate: server::gate::GateLayer::new(tokens.clone(), Some(options.max_requests_in_flight), options.id),
            max_connections: Some(options.max_connections),
            health: health.clone(),
        },
        stopped(stop_rx.clone()),
    ));
    let peer_grpc = peer_listener.map(|listener| {
        tokio::spawn(server::serve_grpc(
            node.clone(),
            listener,
            server::Port {
                ports: server::Ports::Peer,
                tls: peer_tls,
                gate: server::gate::GateLayer::open(options.id),
                max_connections: None,
                health: health.clone(),
            },
            stopped(stop_rx.clone()),
        ))
    });
    let http = tokio::spawn(server::http::serve_http(
        node.clone(),
        http_listener,
        stopped(stop_rx.clone()),
    ));
    let background = [
        node.cp().spawn_watchdog(),
        tokio::spawn(prober::run(node.reach().clone(), {
            let node = node.clone();
            move || node.members()
        })),
        tokio::spawn(membership::follow(node.clone())),
        spawn_ap_repair(&node),
        tokio::spawn(metrics::run_gauge_updater(node.clone())),
        tokio::spawn(crate::observe::health::run_grpc_health(node.clone(), health)),
    ];
    let backups = options.backup.clone().map(|schedule| {
        let leader_node = node.clone();
        let is_leader = move || leader_node.cp().metrics().current_leader == Some(leader_node.id());
        tokio::spawn(crate::backup::schedule::run(
            schedule,
            // The peer address: it needs no token when the client port checks them.
            node.address(),
            is_leader,
        ))
    });
    let joining = if options.join.is_empty() {
        node.cp().bootstrap_if_fresh().await?;
        None
    } else {
        Some(tokio::spawn(membership::join(node.clone(), options.join.clone())))
    };

    let peer_ended = async {
        match peer_grpc {
            Some(task) => grpc_task_ended(task).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        r = grpc_task_ended(grpc) => r,
        r = peer_ended => r,
    };
    tracing::info!(id = node.id(), "node stopping");
    let _ = stop_tx.send(true);
    let _ = http.await;
    for task in background.into_iter().chain(backups).chain(joining) {
        task.abort();
    }
    node.cp().shutdown().await;
    if let Err(e) = node.flush().await {
        tracing::error!("{e}");
    }
    result
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

/// Starts the AP repair loop (hints, anti-entropy, tombstones) over this node's ap keyspaces.
fn spawn_ap_repair(node: &Arc<Node>) -> tokio::task::JoinHandle<()> {
    let keyspaces = {
        let node = node.clone();
        move || -> Result<Vec<String>, Error> {
            Ok(node
                .cp()
                .local_keyspaces()?
                .into_iter()
                .filter(|d| d.mode == Mode::Ap)
                .map(|d| d.name)
                .collect())
        }
    };
    let reach = node.reach().clone();
    let replica = node.ap().replica().clone();
    tokio::spawn(repair::run(replica, keyspaces, move |peer| reach.reachable(peer)))
}
