//! The two fault layers a run can inject partitions through, and how `--layer auto` picks one.
//!
//! * `built-in`: capkv's own fault filter (`capkv fault partition|heal`), symmetric by design;
//! * `netns`: every node in its own network namespace on a Linux bridge, partitions as iptables
//!   DROP rules inside the namespaces (see [`crate::netns`]); needs root, `ip` and `iptables`.
//!
//! Kill, pause and clock skew work the same on both layers (signals and capkv's fault API).

use serde::Serialize;

/// The layer a run actually uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Layer {
    /// capkv's built-in fault filter.
    BuiltIn,
    /// Network namespaces, a bridge and iptables.
    Netns,
}

impl Layer {
    /// The name used on the command line and in `results.json`.
    pub fn name(self) -> &'static str {
        match self {
            Layer::BuiltIn => "built-in",
            Layer::Netns => "netns",
        }
    }
}

/// The layer asked for on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerChoice {
    /// Always the built-in filter.
    BuiltIn,
    /// Always netns; an error when it is not available.
    Netns,
    /// netns when available, else built-in.
    Auto,
}

/// Resolves `choice` to a layer, with a sentence saying why (for the run's output and
/// `results.json`). `--layer netns` fails when the layer is unavailable; `auto` falls back.
pub fn resolve(choice: LayerChoice) -> Result<(Layer, String), String> {
    match choice {
        LayerChoice::BuiltIn => Ok((Layer::BuiltIn, "asked for with --layer built-in".into())),
        LayerChoice::Netns => crate::netns::available()
            .map(|()| (Layer::Netns, "asked for with --layer netns".into()))
            .map_err(|why| format!("--layer netns is not available: {why}")),
        LayerChoice::Auto => Ok(match crate::netns::available() {
            Ok(()) => (
                Layer::Netns,
                "auto: root, ip and iptables available, namespaces work".into(),
            ),
            Err(why) => (Layer::BuiltIn, format!("auto fell back to built-in: {why}")),
        }),
    }
}
