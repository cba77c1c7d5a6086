//! One result, two renderings: every command returns a serde struct that implements [`View`];
//! `-o json` serializes it, `-o table` asks it for its text. Nothing is rendered twice by hand.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;
use serde_json::Value;

use crate::proto;

/// A command's result: serialized as-is for `-o json`, and drawn by [`View::text`] for people.
pub trait View: Serialize {
    /// The table or plain text shown without `-o json` (may be empty).
    fn text(&self, hex: bool) -> String;
    /// `Some(sentence)` when the operation ran and the answer is no (exit 1, sentence on stderr).
    fn no(&self, _hex: bool) -> Option<String> {
        None
    }
}

/// What a command prints and how it exits, built from one [`View`].
#[derive(Debug)]
pub struct Report {
    pub json: Value,
    pub text: String,
    /// Exit 1 with this sentence on stderr: the operation ran and the answer is no.
    pub no: Option<String>,
}

impl Report {
    pub fn of<V: View>(view: &V, hex: bool) -> Self {
        Self {
            json: serde_json::to_value(view).expect("command results serialize to JSON"),
            text: view.text(hex),
            no: view.no(hex),
        }
    }
}

/// `{"ok": true}`: the result of commands that only print progress (node, cluster up/down).
#[derive(Debug, Serialize)]
pub struct Done {
    pub ok: bool,
}

impl View for Done {
    fn text(&self, _hex: bool) -> String {
        String::new()
    }
}

/// The version of an ap write (absent on cp keyspaces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionView {
    /// `physical_ms.logical`, the hybrid logical clock reading.
    pub hlc: String,
    pub physical_ms: u64,
    pub logical: u32,
    pub node: u64,
}

impl VersionView {
    pub fn from_proto(version: Option<proto::Version>) -> Option<Self> {
        version.map(|v| Self {
            hlc: format!("{}.{}", v.physical_ms, v.logical),
            physical_ms: v.physical_ms,
            logical: v.logical,
            node: v.node_id,
        })
    }
}

/// Renders bytes: text when UTF-8 (escaped otherwise), hex with `--hex`.
pub fn show(value: &[u8], hex: bool) -> String {
    if hex {
        return hex::encode(value);
    }
    match std::str::from_utf8(value) {
        Ok(text) => text.to_string(),
        Err(_) => value.escape_ascii().to_string(),
    }
}

/// The bytes as text for JSON, or `None` (null) when they are not UTF-8 (see the `_hex` field).
pub fn text_or_none(value: &[u8]) -> Option<String> {
    std::str::from_utf8(value).ok().map(str::to_string)
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_render_safely() {
        assert_eq!(show(b"100", false), "100");
        assert_eq!(show(&[0xff, b'a'], false), "\\xffa");
        assert_eq!(show(&[0xff, b'a'], true), "ff61");
        assert_eq!(text_or_none(&[0xff]), None);
    }

    #[test]
    fn versions_render_with_their_hlc() {
        let v = VersionView::from_proto(Some(proto::Version {
            physical_ms: 17,
            logical: 2,
            node_id: 3,
        }));
        assert_eq!(
            serde_json::to_value(v).unwrap(),
            serde_json::json!({"hlc": "17.2", "physical_ms": 17, "logical": 2, "node": 3})
        );
        assert_eq!(VersionView::from_proto(None), None);
    }
}
