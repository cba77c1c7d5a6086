//! `keyspace create|list|describe`.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{table, Report, View};
use super::ClientOverrides;
use crate::client::Client;
use crate::error::Error;
use crate::keyspace::Mode;
use crate::proto;

#[derive(Args, Debug)]
pub struct KeyspaceArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    #[command(subcommand)]
    pub command: KeyspaceCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeyspaceCommand {
    /// Create a keyspace; its mode is fixed for life.
    Create {
        name: String,
        #[arg(long, value_parser = parse_mode)]
        mode: Mode,
    },
    /// List every keyspace.
    List,
    /// Show one keyspace with its key count.
    Describe { name: String },
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse::<Mode>().map_err(|e| e.to_string())
}

pub fn mode_name(mode: i32) -> &'static str {
    match proto::Mode::try_from(mode) {
        Ok(proto::Mode::Cp) => "cp",
        Ok(proto::Mode::Ap) => "ap",
        _ => "unknown",
    }
}

/// One keyspace; `keys` is left out of `list` (it is counted only by describe/create).
#[derive(Debug, Serialize)]
pub struct KeyspaceView {
    pub name: String,
    pub mode: &'static str,
    pub created_revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    #[serde(skip)]
    created: bool,
}

impl KeyspaceView {
    fn new(k: &proto::KeyspaceInfo, keys: bool) -> Self {
        Self {
            name: k.name.clone(),
            mode: mode_name(k.mode),
            created_revision: k.created_revision,
            keys: keys.then_some(k.keys),
            created: false,
        }
    }
}

impl View for KeyspaceView {
    fn text(&self, _hex: bool) -> String {
        if self.created {
            return format!("created keyspace '{}' (mode {})", self.name, self.mode);
        }
        let mut t = table(&["NAME", "MODE", "CREATED AT", "KEYS"]);
        t.add_row(vec![
            self.name.clone(),
            self.mode.to_string(),
            self.created_revision.to_string(),
            self.keys.unwrap_or_default().to_string(),
        ]);
        t.to_string()
    }
}

#[derive(Debug, Serialize)]
pub struct KeyspaceList {
    pub keyspaces: Vec<KeyspaceView>,
}

impl View for KeyspaceList {
    fn text(&self, _hex: bool) -> String {
        if self.keyspaces.is_empty() {
            return "(no keyspaces)".into();
        }
        let mut t = table(&["NAME", "MODE", "CREATED AT"]);
        for k in &self.keyspaces {
            t.add_row(vec![k.name.clone(), k.mode.to_string(), k.created_revision.to_string()]);
        }
        t.to_string()
    }
}

pub async fn run(client: &Client, command: &KeyspaceCommand, hex: bool) -> Result<Report, Error> {
    Ok(match command {
        KeyspaceCommand::Create { name, mode } => {
            let mut view = KeyspaceView::new(&client.create_keyspace(name, *mode).await?, true);
            view.created = true;
            Report::of(&view, hex)
        }
        KeyspaceCommand::List => {
            let list = client.list_keyspaces().await?;
            let keyspaces = list.keyspaces.iter().map(|k| KeyspaceView::new(k, false)).collect();
            Report::of(&KeyspaceList { keyspaces }, hex)
        }
        KeyspaceCommand::Describe { name } => {
            Report::of(&KeyspaceView::new(&client.describe_keyspace(name).await?, true), hex)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> proto::KeyspaceInfo {
        proto::KeyspaceInfo {
            name: "bank".into(),
            mode: proto::Mode::Cp as i32,
            created_revision: 3,
            keys: 2,
        }
    }

    #[test]
    fn create_describe_and_list_render_their_fields() {
        let mut created = KeyspaceView::new(&info(), true);
        created.created = true;
        let r = Report::of(&created, false);
        assert_eq!(
            r.json,
            serde_json::json!({"name": "bank", "mode": "cp", "created_revision": 3, "keys": 2})
        );
        assert_eq!(r.text, "created keyspace 'bank' (mode cp)");
        let described = Report::of(&KeyspaceView::new(&info(), true), false);
        assert!(described.text.contains("CREATED AT") && described.text.contains("bank"));
        let list = Report::of(
            &KeyspaceList {
                keyspaces: vec![KeyspaceView::new(&info(), false)],
            },
            false,
        );
        assert_eq!(
            list.json,
            serde_json::json!({"keyspaces": [{"name": "bank", "mode": "cp", "created_revision": 3}]})
        );
        let empty = Report::of(&KeyspaceList { keyspaces: vec![] }, false);
        assert_eq!(empty.text, "(no keyspaces)");
    }
}
