//! `fault partition|heal|status|clock`: talk to nodes started with `--fault-injection`.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::View;
use super::{parse_duration, ClientOverrides};
use crate::client::Client;
use crate::error::Error;
use crate::fault::parse_group;
use crate::proto;

#[derive(Args, Debug)]
pub struct FaultArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    #[command(subcommand)]
    pub command: FaultCommand,
}

#[derive(Subcommand, Debug)]
pub enum FaultCommand {
    /// Partition the cluster: each GROUP is node ids joined by commas (`1,2 3`).
    Partition {
        #[arg(required = true, num_args = 2.., value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Restore the network between all nodes.
    Heal,
    /// Show the current partition and clock offsets of every node.
    Status,
    /// Shift one node's clock (ap timestamps), e.g. `capkv fault clock 3 +5s`; heal clears it.
    Clock {
        node: u64,
        #[arg(value_parser = parse_offset_ms, allow_hyphen_values = true)]
        offset: i64,
    },
}

/// Parses a clock offset such as `+5s`, `-200ms` or `0`.
pub fn parse_offset_ms(text: &str) -> Result<i64, String> {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0);
    }
    let d = parse_duration(rest).map_err(|_| format!("'{text}' is not a clock offset; write e.g. +5s, -200ms or 0"))?;
    Ok(sign * d.as_millis() as i64)
}

#[derive(Debug, Serialize)]
pub struct FaultNode {
    pub node_id: u64,
    pub reached: bool,
    pub error: String,
    pub groups: Vec<Vec<u64>>,
    pub clock_offset_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct FaultView {
    pub enabled: bool,
    pub groups: Vec<Vec<u64>>,
    pub nodes: Vec<FaultNode>,
}

fn groups(groups: &[proto::Group]) -> Vec<Vec<u64>> {
    groups.iter().map(|g| g.nodes.clone()).collect()
}

impl From<proto::FaultStatusResponse> for FaultView {
    fn from(r: proto::FaultStatusResponse) -> Self {
        Self {
            enabled: r.enabled,
            groups: groups(&r.groups),
            nodes: r
                .nodes
                .iter()
                .map(|n| FaultNode {
                    node_id: n.node_id,
                    reached: n.reached,
                    error: n.error.clone(),
                    groups: groups(&n.groups),
                    clock_offset_ms: n.clock_offset_ms,
                })
                .collect(),
        }
    }
}

impl View for FaultView {
    fn text(&self, _hex: bool) -> String {
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| format!("{{{}}}", g.iter().map(u64::to_string).collect::<Vec<_>>().join(",")))
            .collect();
        let mut text = match (self.enabled, self.groups.is_empty()) {
            (false, _) => "fault injection is off on this node".to_string(),
            (true, true) => "network whole: no partition".to_string(),
            (true, false) => format!("partitioned: {}", groups.join(" | ")),
        };
        let skewed: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.reached && n.clock_offset_ms != 0)
            .map(|n| format!("node {} {:+} ms", n.node_id, n.clock_offset_ms))
            .collect();
        if !skewed.is_empty() {
            text.push_str(&format!("\nclock offsets: {}", skewed.join(", ")));
        }
        let unreached: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.reached)
            .map(|n| format!("node {} ({})", n.node_id, n.error))
            .collect();
        if !unreached.is_empty() {
            text.push_str(&format!(
                "\nwarning: not told (keeps its previous state): {}",
                unreached.join(", ")
            ));
        }
        text
    }
}

pub async fn run(client: &Client, command: &FaultCommand) -> Result<FaultView, Error> {
    let r = match command {
        FaultCommand::Partition { groups } => {
            let groups = groups
                .iter()
                .map(|g| parse_group(g).map(|s| s.into_iter().collect()))
                .collect::<Result<Vec<Vec<u64>>, _>>()?;
            client.fault_partition(groups).await?
        }
        FaultCommand::Heal => client.fault_heal().await?,
        FaultCommand::Status => client.fault_status().await?,
        FaultCommand::Clock { node, offset } => client.fault_clock(*node, *offset).await?,
    };
    Ok(r.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset_ms("+5s").unwrap(), 5000);
        assert_eq!(parse_offset_ms("-200ms").unwrap(), -200);
        assert_eq!(parse_offset_ms("0").unwrap(), 0);
        assert!(parse_offset_ms("soon").is_err());
    }

    #[test]
    fn a_partition_renders_as_text_and_json() {
        let view = FaultView {
            enabled: true,
            groups: vec![vec![1, 2], vec![3]],
            nodes: vec![FaultNode {
                node_id: 3,
                reached: false,
                error: "refused".into(),
                groups: vec![],
                clock_offset_ms: 0,
            }],
        };
        assert_eq!(
            view.text(false),
            "partitioned: {1,2} | {3}\nwarning: not told (keeps its previous state): node 3 (refused)"
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["groups"], serde_json::json!([[1, 2], [3]]));
        assert_eq!(json["nodes"][0]["node_id"], 3);
    }
}
