//! `put`, `get`, `delete`, `scan` and `cas`: one result struct per command.
//!
//! JSON field names are the stable contract scripts rely on. On `get`, `write_count` is the
//! number of writes since the key was created (cp keyspaces; 0 on ap), and `version` is the
//! ap write's hybrid-clock version (null on cp keyspaces).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::input;
use super::output::{show, table, text_or_none, VersionView, View};
use super::ClientOverrides;
use crate::client::Client;
use crate::error::Error;
use crate::proto;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// cp only: through the leader, with ReadIndex.
    Linearizable,
    /// The answering node's replica; may be stale.
    Serializable,
    /// ap only: the newest version among a majority, repairing stale replicas.
    Quorum,
}

pub fn consistency(arg: Option<ConsistencyArg>) -> proto::Consistency {
    match arg {
        None => proto::Consistency::Default,
        Some(ConsistencyArg::Linearizable) => proto::Consistency::Linearizable,
        Some(ConsistencyArg::Serializable) => proto::Consistency::Serializable,
        Some(ConsistencyArg::Quorum) => proto::Consistency::Quorum,
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["value", "value_file"])))]
pub struct PutArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    pub keyspace: String,
    pub key: String,
    /// The value; `-` reads it from stdin (use --value-file for a file).
    pub value: Option<String>,
    /// Read the value from this file (`-` = stdin); values are bytes up to 1 MiB.
    #[arg(long, value_name = "PATH")]
    pub value_file: Option<PathBuf>,
    /// ap keyspaces: replicas that must store the write before it is acknowledged.
    #[arg(long, default_value_t = 1)]
    pub acks: u32,
    /// Apply this write at most once per ID (cp keyspaces): a second write with the same ID
    /// changes nothing and answers as the first did. CLIENT:SEQ (32 hex digits, a number), or
    /// any other text, which names one write of its own.
    #[arg(long, value_name = "ID", value_parser = parse_request_id)]
    pub request_id: Option<proto::RequestId>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    pub keyspace: String,
    pub key: String,
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    pub keyspace: String,
    pub key: String,
    /// ap keyspaces: replicas that must store the tombstone before it is acknowledged.
    #[arg(long, default_value_t = 1)]
    pub acks: u32,
    /// Apply this write at most once per ID (cp keyspaces): a second write with the same ID
    /// changes nothing and answers as the first did. CLIENT:SEQ (32 hex digits, a number), or
    /// any other text, which names one write of its own.
    #[arg(long, value_name = "ID", value_parser = parse_request_id)]
    pub request_id: Option<proto::RequestId>,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    pub keyspace: String,
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Most keys to return (default: all).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("expectation").required(true).args(["expect", "expect_absent"])))]
pub struct CasArgs {
    #[command(flatten)]
    pub client: ClientOverrides,
    pub keyspace: String,
    pub key: String,
    /// The value the key must hold now (typed inline; hex with --hex).
    #[arg(long, value_name = "OLD")]
    pub expect: Option<String>,
    /// The key must not exist now.
    #[arg(long)]
    pub expect_absent: bool,
    /// The new value; `-` reads it from stdin.
    #[arg(value_name = "NEW")]
    pub new_value: String,
    /// Apply this write at most once per ID (cp keyspaces): a second write with the same ID
    /// changes nothing and answers as the first did. CLIENT:SEQ (32 hex digits, a number), or
    /// any other text, which names one write of its own.
    #[arg(long, value_name = "ID", value_parser = parse_request_id)]
    pub request_id: Option<proto::RequestId>,
}

#[derive(Debug, Serialize)]
pub struct PutView {
    pub keyspace: String,
    pub key: String,
    pub revision: u64,
    pub version: Option<VersionView>,
}

impl View for PutView {
    fn text(&self, _hex: bool) -> String {
        "OK".into()
    }
}

#[derive(Debug, Serialize)]
pub struct GetView {
    pub keyspace: String,
    pub key: String,
    pub found: bool,
    pub value: Option<String>,
    pub value_hex: Option<String>,
    pub mod_revision: u64,
    pub create_revision: u64,
    /// cp: writes since the key was created.
    pub write_count: u64,
    pub served_by: u64,
    /// ap: the version of the value read.
    pub version: Option<VersionView>,
    #[serde(skip)]
    pub raw: Vec<u8>,
}

impl GetView {
    pub fn new(keyspace: &str, key: &str, r: proto::GetResponse) -> Self {
        let kv = r.kv.unwrap_or_default();
        let value = r.found.then(|| kv.value.clone());
        Self {
            keyspace: keyspace.into(),
            key: key.into(),
            found: r.found,
            value: value.as_deref().and_then(text_or_none),
            value_hex: value.as_deref().map(hex::encode),
            mod_revision: kv.mod_revision,
            create_revision: kv.create_revision,
            write_count: kv.version,
            served_by: r.served_by,
            version: VersionView::from_proto(kv.ap_version),
            raw: value.unwrap_or_default(),
        }
    }
}

impl View for GetView {
    fn text(&self, hex: bool) -> String {
        if self.found {
            show(&self.raw, hex)
        } else {
            String::new()
        }
    }
    fn no(&self, _hex: bool) -> Option<String> {
        (!self.found).then(|| not_found(&self.key, &self.keyspace))
    }
}

fn not_found(key: &str, keyspace: &str) -> String {
    format!("key '{key}' was not found in keyspace '{keyspace}'")
}

#[derive(Debug, Serialize)]
pub struct DeleteView {
    pub keyspace: String,
    pub key: String,
    pub deleted: bool,
    pub revision: u64,
    pub version: Option<VersionView>,
}

impl View for DeleteView {
    fn text(&self, _hex: bool) -> String {
        if self.deleted {
            "deleted".into()
        } else {
            String::new()
        }
    }
    fn no(&self, _hex: bool) -> Option<String> {
        (!self.deleted).then(|| not_found(&self.key, &self.keyspace))
    }
}

#[derive(Debug, Serialize)]
pub struct ScanItem {
    pub key: Option<String>,
    pub key_hex: String,
    pub value: Option<String>,
    pub value_hex: String,
    pub mod_revision: u64,
    #[serde(skip)]
    pub raw: (Vec<u8>, Vec<u8>),
}

#[derive(Debug, Serialize)]
pub struct ScanView {
    pub keyspace: String,
    pub items: Vec<ScanItem>,
    pub more: bool,
}

impl View for ScanView {
    fn text(&self, hex: bool) -> String {
        if self.items.is_empty() {
            return "(no keys)".into();
        }
        let mut t = table(&["KEY", "VALUE", "REVISION"]);
        for item in &self.items {
            t.add_row(vec![
                show(&item.raw.0, hex),
                show(&item.raw.1, hex),
                item.mod_revision.to_string(),
            ]);
        }
        t.to_string()
    }
}

#[derive(Debug, Serialize)]
pub struct CasView {
    pub keyspace: String,
    pub key: String,
    pub succeeded: bool,
    /// The value found when the swap failed (null when absent or not UTF-8).
    pub current: Option<String>,
    pub revision: u64,
    #[serde(skip)]
    pub current_raw: Option<Vec<u8>>,
    #[serde(skip)]
    pub expected: Option<Vec<u8>>,
}

impl View for CasView {
    fn text(&self, _hex: bool) -> String {
        if self.succeeded {
            "OK".into()
        } else {
            String::new()
        }
    }
    fn no(&self, hex: bool) -> Option<String> {
        if self.succeeded {
            return None;
        }
        let found = match &self.current_raw {
            Some(v) => format!("holds '{}'", show(v, hex)),
            None => "does not exist".to_string(),
        };
        let wanted = self
            .expected
            .as_ref()
            .map_or("to be absent".to_string(), |e| format!("'{}'", show(e, hex)));
        Some(format!(
            "compare-and-swap failed: key '{}' {found}, expected {wanted}",
            self.key
        ))
    }
}

/// Parses `--request-id`: `CLIENT:SEQ` with a 32-hex-digit client id and a decimal sequence
/// number, or any other text, hashed into an id of its own (the same text, the same id).
pub fn parse_request_id(text: &str) -> Result<proto::RequestId, String> {
    if text.trim().is_empty() {
        return Err("a request id cannot be empty; write CLIENT:SEQ or any text that names this write".into());
    }
    let exact = text.split_once(':').and_then(|(client, sequence)| {
        let client = hex::decode(client).ok().filter(|c| c.len() == 16)?;
        Some((client, sequence.parse::<u64>().ok()?))
    });
    let (client, sequence) = exact.unwrap_or_else(|| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(text.as_bytes());
        (
            digest[..16].to_vec(),
            u64::from_be_bytes(digest[16..24].try_into().expect("8 bytes")),
        )
    });
    Ok(proto::RequestId {
        client,
        sequence,
        automatic: false,
    })
}

pub async fn put(client: &Client, a: &PutArgs, hex: bool) -> Result<PutView, Error> {
    let key = input::key(&a.key, hex)?;
    let value = input::value(a.value.as_deref(), a.value_file.as_deref(), hex)?;
    let r = client
        .put_request(proto::PutRequest {
            keyspace: a.keyspace.clone(),
            key,
            value,
            acks: a.acks,
            request_id: a.request_id.clone(),
        })
        .await?;
    Ok(PutView {
        keyspace: a.keyspace.clone(),
        key: a.key.clone(),
        revision: r.revision,
        version: VersionView::from_proto(r.version),
    })
}

pub async fn get(client: &Client, a: &GetArgs, hex: bool) -> Result<GetView, Error> {
    let key = input::key(&a.key, hex)?;
    let r = client.get(&a.keyspace, &key, consistency(a.consistency)).await?;
    Ok(GetView::new(&a.keyspace, &a.key, r))
}

pub async fn delete(client: &Client, a: &DeleteArgs, hex: bool) -> Result<DeleteView, Error> {
    let key = input::key(&a.key, hex)?;
    let r = client
        .delete_request(proto::DeleteRequest {
            keyspace: a.keyspace.clone(),
            key,
            acks: a.acks,
            request_id: a.request_id.clone(),
        })
        .await?;
    Ok(DeleteView {
        keyspace: a.keyspace.clone(),
        key: a.key.clone(),
        deleted: r.deleted,
        revision: r.revision,
        version: VersionView::from_proto(r.version),
    })
}

pub async fn scan(client: &Client, a: &ScanArgs, hex: bool) -> Result<ScanView, Error> {
    let prefix = input::key(&a.prefix, hex)?;
    let mut items = Vec::new();
    let mut start_after = Vec::new();
    let mut more = true;
    while more && a.limit.is_none_or(|l| items.len() < l) {
        let want = a.limit.map_or(0, |l| (l - items.len()).min(u32::MAX as usize) as u32);
        let req = proto::ScanRequest {
            keyspace: a.keyspace.clone(),
            prefix: prefix.clone(),
            start_after: start_after.clone(),
            limit: want,
            consistency: consistency(a.consistency) as i32,
        };
        let page = client.scan(req).await?;
        more = page.more;
        if let Some(last) = page.items.last() {
            start_after = last.key.clone();
        }
        items.extend(page.items);
    }
    let items = items
        .into_iter()
        .map(|kv| ScanItem {
            key: text_or_none(&kv.key),
            key_hex: hex::encode(&kv.key),
            value: text_or_none(&kv.value),
            value_hex: hex::encode(&kv.value),
            mod_revision: kv.mod_revision,
            raw: (kv.key, kv.value),
        })
        .collect();
    Ok(ScanView {
        keyspace: a.keyspace.clone(),
        items,
        more,
    })
}

pub async fn cas(client: &Client, a: &CasArgs, hex: bool) -> Result<CasView, Error> {
    let key = input::key(&a.key, hex)?;
    let expected = match &a.expect {
        Some(e) => Some(input::inline(e, hex)?),
        None => None,
    };
    let new_value = input::value(Some(&a.new_value), None, hex)?;
    let r = client
        .cas_request(proto::CasRequest {
            keyspace: a.keyspace.clone(),
            key,
            expect_absent: expected.is_none(),
            expected: expected.clone().unwrap_or_default(),
            new_value,
            request_id: a.request_id.clone(),
        })
        .await?;
    Ok(CasView {
        keyspace: a.keyspace.clone(),
        key: a.key.clone(),
        succeeded: r.succeeded,
        current: if r.current_found {
            text_or_none(&r.current)
        } else {
            None
        },
        revision: r.revision,
        current_raw: r.current_found.then_some(r.current),
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::Report;

    fn get_response(version: u64, ap: Option<proto::Version>) -> proto::GetResponse {
        proto::GetResponse {
            found: true,
            kv: Some(proto::KeyValue {
                key: b"alice".to_vec(),
                value: vec![b'9', 0xff],
                create_revision: 3,
                mod_revision: 9,
                version,
                ap_version: ap,
            }),
            served_by: 2,
        }
    }

    #[test]
    fn get_renders_write_count_and_version_under_distinct_names() {
        let cp = Report::of(&GetView::new("bank", "alice", get_response(4, None)), false);
        assert_eq!(
            cp.json,
            serde_json::json!({"keyspace": "bank", "key": "alice", "found": true, "value": null,
                "value_hex": "39ff", "mod_revision": 9, "create_revision": 3, "write_count": 4,
                "served_by": 2, "version": null})
        );
        assert_eq!(cp.text, "9\\xff");
        assert_eq!(cp.no, None);
        let v = proto::Version {
            physical_ms: 5,
            logical: 1,
            node_id: 3,
        };
        let ap = Report::of(&GetView::new("carts", "bob", get_response(0, Some(v))), true);
        assert_eq!(ap.json["version"]["hlc"], "5.1");
        assert_eq!(ap.json["write_count"], 0);
        assert_eq!(ap.text, "39ff");
    }

    #[test]
    fn request_ids_are_exact_or_hashed_and_never_empty() {
        let exact = parse_request_id("00112233445566778899aabbccddeeff:42").unwrap();
        assert_eq!(exact.client, hex::decode("00112233445566778899aabbccddeeff").unwrap());
        assert_eq!(exact.sequence, 42);
        assert!(!exact.automatic);
        let text = parse_request_id("order-1234").unwrap();
        assert_eq!(text.client.len(), 16);
        assert_eq!(
            text,
            parse_request_id("order-1234").unwrap(),
            "the same text, the same id"
        );
        assert_ne!(text, parse_request_id("order-1235").unwrap());
        // Not a 32-digit client: hashed as text, not refused.
        assert_eq!(parse_request_id("abc:1").unwrap().client.len(), 16);
        assert!(parse_request_id(" ").is_err());
    }

    #[test]
    fn a_missing_key_is_a_no() {
        let r = Report::of(&GetView::new("bank", "nobody", proto::GetResponse::default()), false);
        assert_eq!(r.json["found"], false);
        assert!(r.json["value"].is_null() && r.json["value_hex"].is_null());
        assert_eq!(r.text, "");
        assert_eq!(r.no.as_deref(), Some("key 'nobody' was not found in keyspace 'bank'"));
    }

    #[test]
    fn a_failed_cas_names_what_was_found_and_expected() {
        let view = CasView {
            keyspace: "bank".into(),
            key: "alice".into(),
            succeeded: false,
            current: None,
            revision: 8,
            current_raw: Some(vec![0xff]),
            expected: Some(b"100".to_vec()),
        };
        let r = Report::of(&view, false);
        assert_eq!(
            r.json,
            serde_json::json!({"keyspace": "bank", "key": "alice", "succeeded": false, "current": null,
                "revision": 8})
        );
        assert_eq!(
            r.no.as_deref(),
            Some("compare-and-swap failed: key 'alice' holds '\\xff', expected '100'")
        );
        let hex = Report::of(&view, true);
        assert_eq!(
            hex.no.as_deref(),
            Some("compare-and-swap failed: key 'alice' holds 'ff', expected '313030'")
        );
    }

    #[test]
    fn scan_renders_a_table_and_json_items() {
        let view = ScanView {
            keyspace: "bank".into(),
            items: vec![ScanItem {
                key: Some("a".into()),
                key_hex: "61".into(),
                value: Some("1".into()),
                value_hex: "31".into(),
                mod_revision: 7,
                raw: (b"a".to_vec(), b"1".to_vec()),
            }],
            more: false,
        };
        let r = Report::of(&view, false);
        assert_eq!(
            r.json,
            serde_json::json!({"keyspace": "bank", "more": false, "items": [
                {"key": "a", "key_hex": "61", "value": "1", "value_hex": "31", "mod_revision": 7}]})
        );
        let expected = "┌────────────────────────┐\n│ KEY   VALUE   REVISION │\n╞════════════════════════╡\n│ a     1       7        │\n└────────────────────────┘";
        assert_eq!(r.text, expected);
    }
}
