//! `backup create|list|verify|restore`: back keyspaces up to `file://` or `s3://` and back.
//!
//! The work is in [`crate::backup`]; this file parses flags and renders results. The client
//! `--timeout` bounds each call (to a node or to the storage), not the whole backup, so a large
//! backup may run longer while an unreachable node or storage still fails within it.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{Report, View};
use super::ClientOverrides;
use crate::backup::{self, Manifest, Target};
use crate::client::Client;
use crate::error::Error;

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Back up keyspaces (all unless --keyspace is given) and print the backup's id.
    Create {
        /// Where to store it: file:///path or s3://bucket/prefix.
        #[arg(long, value_name = "URL")]
        to: String,
        /// A keyspace to back up (repeatable; default: every keyspace).
        #[arg(long = "keyspace", value_name = "K")]
        keyspaces: Vec<String>,
        /// Bytes of records per data object, before compression (64 KiB to 256 MiB).
        #[arg(long, default_value_t = backup::chunk::CHUNK_BYTES_DEFAULT)]
        chunk_bytes: usize,
        /// Store only what changed since this backup at the same URL (`latest`: the newest);
        /// a restore of the new backup reads its whole chain.
        #[arg(long, value_name = "ID")]
        incremental_from: Option<String>,
        /// Who writes the objects: `node` (a node of the cluster coordinates and uploads, so the
        /// data never passes through this machine; it needs the storage's credentials, and
        /// file:// paths under its --backup-dir), `cli` (this process streams every byte), or
        /// `auto`: node for s3://, cli for file:// (a path on this machine).
        #[arg(long, value_enum, default_value_t = Via::Auto)]
        via: Via,
    },
    /// List the complete backups under a URL (an interrupted one has no manifest and is not listed).
    List {
        #[arg(long, value_name = "URL")]
        from: String,
    },
    /// Re-read every object of a backup and check its SHA-256 against the manifest.
    Verify {
        #[arg(long, value_name = "URL")]
        from: String,
        /// The backup to verify (default: the newest).
        #[arg(long)]
        id: Option<String>,
    },
    /// Restore keyspaces into the running cluster (after verifying every checksum).
    Restore {
        #[arg(long, value_name = "URL")]
        from: String,
        /// The backup to restore (default: the newest).
        #[arg(long)]
        id: Option<String>,
        /// A keyspace to restore (repeatable; default: every keyspace in the backup).
        #[arg(long = "keyspace", value_name = "K")]
        keyspaces: Vec<String>,
        /// Overwrite keyspaces that already exist (otherwise they are refused with exit 3).
        #[arg(long)]
        replace: bool,
    },
}

/// Who writes a backup's objects (`backup create --via`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Auto,
    Node,
    Cli,
}

impl Via {
    /// `auto` settled by the URL: s3:// is uploaded by a node, file:// written by the CLI.
    fn resolve(self, url: &str) -> Via {
        match self {
            Via::Auto if url.starts_with("s3://") => Via::Node,
            Via::Auto => Via::Cli,
            chosen => chosen,
        }
    }
}

/// One keyspace of a backup, as `create` and `list` show it.
#[derive(Debug, Serialize)]
pub struct KeyspaceView {
    pub name: String,
    pub mode: String,
    pub keys: u64,
    pub bytes: u64,
    /// Records this backup stores for the keyspace: all of them, or in an incremental backup
    /// the changed ones and the removal markers.
    pub stored: u64,
    /// Whether only the changes since the parent backup are stored.
    pub incremental: bool,
    /// ap: replicas that could not be read (empty when all contributed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct CreateView {
    pub id: String,
    pub url: String,
    /// Who wrote the objects: "node" (a node of the cluster) or "cli" (this process).
    pub written_by: &'static str,
    /// The backup this one stores the changes since (absent for a full backup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental_from: Option<String>,
    pub keyspaces: Vec<KeyspaceView>,
    pub raft_index: u64,
    pub objects: usize,
    pub bytes: u64,
    pub seconds: f64,
}

fn keyspace_views(m: &Manifest) -> Vec<KeyspaceView> {
    m.keyspaces
        .iter()
        .map(|k| KeyspaceView {
            name: k.name.clone(),
            mode: k.mode.clone(),
            keys: k.keys,
            bytes: k.bytes,
            stored: k.stored,
            incremental: k.incremental,
            unreachable: k.unreachable.clone(),
        })
        .collect()
}

impl View for CreateView {
    fn text(&self, _hex: bool) -> String {
        self.id.clone()
    }
}

#[derive(Debug, Serialize)]
pub struct ListedView {
    pub id: String,
    pub time: String,
    /// The backup this one is incremental from (absent for a full backup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub keyspaces: Vec<KeyspaceView>,
    pub objects: usize,
    pub bytes: u64,
    pub raft_index: u64,
}

#[derive(Debug, Serialize)]
pub struct ListView {
    pub url: String,
    pub backups: Vec<ListedView>,
    /// Directories without a manifest: interrupted backups, never restored.
    pub incomplete: Vec<String>,
}

impl View for ListView {
    fn text(&self, _hex: bool) -> String {
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        table.set_header(["ID", "TIME", "KIND", "KEYSPACES", "BYTES"]);
        for b in &self.backups {
            let keyspaces: Vec<String> = b
                .keyspaces
                .iter()
                .map(|k| format!("{} ({}, {} keys)", k.name, k.mode, k.keys))
                .collect();
            let kind = b
                .parent
                .as_ref()
                .map_or_else(|| "full".to_string(), |p| format!("incremental from {p}"));
            table.add_row([
                b.id.clone(),
                b.time.clone(),
                kind,
                keyspaces.join(", "),
                b.bytes.to_string(),
            ]);
        }
        let mut text = table.to_string();
        if !self.incomplete.is_empty() {
            text.push_str(&format!(
                "\nincomplete (no manifest, not usable): {}",
                self.incomplete.join(", ")
            ));
        }
        text
    }
}

#[derive(Debug, Serialize)]
pub struct VerifyView {
    pub id: String,
    pub url: String,
    /// Every backup checked, oldest first: the backup and, when incremental, those it depends on.
    pub chain: Vec<String>,
    pub objects: usize,
    pub bytes: u64,
    pub ok: bool,
}

impl View for VerifyView {
    fn text(&self, _hex: bool) -> String {
        let chain = if self.chain.len() > 1 {
            format!(" (with the {} backups it is incremental from)", self.chain.len() - 1)
        } else {
            String::new()
        };
        format!(
            "backup {} is intact{chain}: {} objects, {} bytes, every SHA-256 matches",
            self.id, self.objects, self.bytes
        )
    }
}

#[derive(Debug, Serialize)]
pub struct RestoredKeyspace {
    pub name: String,
    pub mode: String,
    pub records: u64,
}

#[derive(Debug, Serialize)]
pub struct RestoreView {
    pub id: String,
    pub url: String,
    pub keyspaces: Vec<RestoredKeyspace>,
}

impl View for RestoreView {
    fn text(&self, _hex: bool) -> String {
        let parts: Vec<String> = self
            .keyspaces
            .iter()
            .map(|k| format!("{} ({}, {} records)", k.name, k.mode, k.records))
            .collect();
        format!("restored backup {}: {}", self.id, parts.join(", "))
    }
}

/// A line on a terminal's stderr that follows a node-coordinated backup (nothing otherwise).
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new() -> Self {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Self(terminal.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("a node is taking the backup");
            bar
        }))
    }

    fn show(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.set_message(format!(
                "a node is taking the backup: {} written",
                indicatif::HumanBytes(bytes)
            ));
            bar.tick();
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Runs a backup command.
pub async fn run(client: &Client, command: &BackupCommand, hex: bool) -> Result<Report, Error> {
    let timeout = client.timeout();
    match command {
        BackupCommand::Create {
            to,
            keyspaces,
            chunk_bytes,
            incremental_from,
            via,
        } => {
            let options = backup::create::CreateOptions {
                keyspaces: keyspaces.clone(),
                timeout,
                chunk_bytes: *chunk_bytes,
                incremental_from: incremental_from.clone(),
            };
            let via = via.resolve(to);
            let m = match via {
                Via::Node => {
                    let progress = Progress::new();
                    let result =
                        backup::create::create_through_node(client, to, &options, |bytes| progress.show(bytes)).await;
                    progress.finish();
                    result?
                }
                Via::Cli | Via::Auto => backup::create::create(client, &Target::open(to, timeout)?, &options).await?,
            };
            for k in m.keyspaces.iter().filter(|k| !k.unreachable.is_empty()) {
                eprintln!(
                    "warning: ap keyspace '{}' was merged from nodes {:?} only; nodes {:?} could not be read, so writes held only by them are missing",
                    k.name, k.contributors, k.unreachable
                );
            }
            let view = CreateView {
                id: m.id.clone(),
                url: to.trim_end_matches('/').to_string(),
                written_by: if via == Via::Node { "node" } else { "cli" },
                incremental_from: m.parent.clone(),
                keyspaces: keyspace_views(&m),
                raft_index: m.raft_index,
                objects: m.objects.len(),
                bytes: m.bytes(),
                seconds: m.seconds,
            };
            Ok(Report::of(&view, hex))
        }
        BackupCommand::List { from } => {
            let target = Target::open(from, timeout)?;
            let (complete, incomplete) = target.list().await?;
            let backups = complete
                .into_iter()
                .map(|l| ListedView {
                    id: l.manifest.id.clone(),
                    time: l.manifest.created_at.clone(),
                    parent: l.manifest.parent.clone(),
                    keyspaces: keyspace_views(&l.manifest),
                    objects: l.manifest.objects.len(),
                    bytes: l.manifest.bytes(),
                    raft_index: l.manifest.raft_index,
                })
                .collect();
            let view = ListView {
                url: target.url().to_string(),
                backups,
                incomplete,
            };
            Ok(Report::of(&view, hex))
        }
        BackupCommand::Verify { from, id } => {
            let target = Target::open(from, timeout)?;
            let m = target.choose(id.as_deref()).await?;
            let chain = backup::restore::verify(&target, &m).await?;
            let view = VerifyView {
                id: m.id.clone(),
                url: target.url().to_string(),
                chain: chain.manifests().iter().map(|c| c.id.clone()).collect(),
                objects: chain.manifests().iter().map(|c| c.objects.len()).sum(),
                bytes: chain.manifests().iter().map(Manifest::bytes).sum(),
                ok: true,
            };
            Ok(Report::of(&view, hex))
        }
        BackupCommand::Restore {
            from,
            id,
            keyspaces,
            replace,
        } => {
            let target = Target::open(from, timeout)?;
            let m = target.choose(id.as_deref()).await?;
            let loaded = backup::restore::restore(client, &target, &m, keyspaces, *replace, timeout).await?;
            let view = RestoreView {
                id: m.id.clone(),
                url: target.url().to_string(),
                keyspaces: loaded
                    .into_iter()
                    .map(|(name, mode, records)| RestoredKeyspace { name, mode, records })
                    .collect(),
            };
            Ok(Report::of(&view, hex))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::BackupCommand;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("capkv").chain(args.iter().copied()))
    }

    #[test]
    fn backup_commands_parse_as_documented() {
        let cli = parse(&[
            "backup",
            "create",
            "--to",
            "s3://b/p",
            "--keyspace",
            "a",
            "--keyspace",
            "b",
        ])
        .unwrap();
        let Command::Backup(args) = cli.command else {
            panic!("not a backup command")
        };
        let BackupCommand::Create { to, keyspaces, .. } = args.command else {
            panic!("not create")
        };
        assert_eq!(
            (to.as_str(), keyspaces),
            ("s3://b/p", vec!["a".to_string(), "b".to_string()])
        );
        assert!(parse(&["backup", "list", "--from", "file:///x"]).is_ok());
        assert!(parse(&["backup", "verify", "--from", "file:///x", "--id", "i"]).is_ok());
        let cli = parse(&["backup", "restore", "--from", "file:///x", "--replace", "-o", "json"]).unwrap();
        assert_eq!(cli.client_flags().output, super::super::Output::Json);
        assert!(parse(&["backup", "create"]).is_err(), "create needs --to");
        assert!(parse(&["backup", "restore"]).is_err(), "restore needs --from");
    }
}
