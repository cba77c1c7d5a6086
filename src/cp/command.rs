//! The replicated commands of the CP path, and the typed answer each one gets.
//!
//! Every change to cluster metadata or to a cp keyspace is a [`Command`] in the Raft log. Each
//! command's payload is its own type ([`Put`], [`Cas`], [`Txn`], ...) and implements
//! [`Proposal`], which names the answer that command gets once applied ([`PutAnswer`],
//! [`CasAnswer`], ...). The request path proposes a payload and receives its own answer type, so
//! no handler has to sort through answers meant for other commands.
//!
//! Applying a command can also end in a [`Refusal`] (the keyspace does not exist, or is not a
//! cp keyspace): commands are checked again at apply time, because the edge checks are only a
//! fast path and the log is the truth. The pure apply function lives in [`super::apply`].
//!
//! Revisions are log indexes: a key's `mod_revision` is the index of the entry that last wrote it.
//!
//! A write that carries a request id is wrapped in [`Command::Once`] and applied at most once
//! per id ([`super::session`]).

use serde::{Deserialize, Serialize};

pub use super::session::Once;
use crate::keyspace::KeyspaceDef;
use crate::mode::Mode;

/// One stored cp value and its revisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Writes since the key was (re)created; etcd calls this the key's version.
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Exists(bool),
    ModRevision(u64),
    Version(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub op: CompareOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
}

/// What one transaction operation saw: for a get the value, for a put or delete the value
/// before the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOpResult {
    pub key: Vec<u8>,
    pub found: Option<StoredValue>,
}

/// Create a keyspace with a mode fixed for life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateKeyspace {
    pub name: String,
    pub mode: Mode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub keyspace: String,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    pub keyspace: String,
    pub key: Vec<u8>,
}

/// Swap when the current value equals `expected` (`None`: when the key is absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cas {
    pub keyspace: String,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub expected: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub new_value: Vec<u8>,
}

/// If every compare holds run `success`, otherwise `failure` (etcd's transaction).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub keyspace: String,
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One entry of the Raft log's application data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateKeyspace(CreateKeyspace),
    Put(Put),
    Delete(Delete),
    Cas(Cas),
    Txn(Txn),
    /// Several data commands proposed together as one entry (see [`super::batch`]): applied in
    /// order, each with its own answer. No two of them touch the same key, so each key's
    /// `mod_revision` (the entry's index) still names exactly one write of it.
    Batch(Vec<Command>),
    /// A data command applied at most once per request id ([`super::session`]).
    Once(Once),
}

impl Command {
    /// The keyspace a data command touches (None for metadata commands).
    pub fn keyspace(&self) -> Option<&str> {
        match self {
            Command::CreateKeyspace(_) | Command::Batch(_) => None,
            Command::Once(once) => once.command.keyspace(),
            Command::Put(Put { keyspace, .. })
            | Command::Delete(Delete { keyspace, .. })
            | Command::Cas(Cas { keyspace, .. })
            | Command::Txn(Txn { keyspace, .. }) => Some(keyspace),
        }
    }

    /// Short operation name for metrics and logs.
    pub fn op_name(&self) -> &'static str {
        match self {
            Command::CreateKeyspace(_) => "create_keyspace",
            Command::Put(_) => "put",
            Command::Delete(_) => "delete",
            Command::Cas(_) => "cas",
            Command::Txn(_) => "txn",
            Command::Batch(_) => "batch",
            Command::Once(once) => once.command.op_name(),
        }
    }

    /// Every key this command reads or writes, or `None` when it must be an entry of its own
    /// (metadata changes, batches).
    pub fn touched_keys(&self) -> Option<Vec<(&str, &[u8])>> {
        let keys = match self {
            Command::CreateKeyspace(_) | Command::Batch(_) => return None,
            Command::Once(once) => return once.command.touched_keys(),
            Command::Put(Put { keyspace, key, .. })
            | Command::Delete(Delete { keyspace, key })
            | Command::Cas(Cas { keyspace, key, .. }) => vec![(keyspace.as_str(), key.as_slice())],
            Command::Txn(txn) => {
                let compared = txn.compares.iter().map(|c| c.key.as_slice());
                let operated = txn.success.iter().chain(&txn.failure).map(|op| match op {
                    TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key.as_slice(),
                });
                compared.chain(operated).map(|k| (txn.keyspace.as_str(), k)).collect()
            }
        };
        Some(keys)
    }
}

/// The answer to creating a keyspace: the definition, and whether it existed before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateKeyspaceAnswer {
    pub def: KeyspaceDef,
    /// False when a keyspace of that name existed already (`def` is the existing one).
    pub created: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutAnswer {
    pub revision: u64,
    pub had_previous: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAnswer {
    pub deleted: bool,
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasAnswer {
    pub succeeded: bool,
    /// The value found before the swap (whether or not it succeeded).
    pub current: Option<StoredValue>,
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnAnswer {
    pub succeeded: bool,
    pub results: Vec<TxnOpResult>,
    pub revision: u64,
}

/// The answer of any applied entry: openraft hands one type back for every entry, and
/// [`Proposal::answer`] takes the proposal's own kind out of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Blank and membership entries.
    Done,
    CreateKeyspace(CreateKeyspaceAnswer),
    Put(PutAnswer),
    Delete(DeleteAnswer),
    Cas(CasAnswer),
    Txn(TxnAnswer),
    /// One answer per command of a [`Command::Batch`], in order.
    Batch(Vec<Applied>),
}

/// Why an entry was applied as a no-op: the state it met refuses the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("keyspace '{0}' does not exist")]
    UnknownKeyspace(String),
    /// The keyspace exists, but its data does not go through Raft.
    #[error("keyspace '{keyspace}' is {mode}, not cp")]
    WrongMode { keyspace: String, mode: Mode },
    /// A request id older than every answer its client's session keeps: it may have been
    /// applied, and the table can no longer tell.
    #[error("request {id} is older than the answers kept for its client (oldest kept: {oldest})")]
    RequestTooOld { id: String, oldest: u64 },
    /// A replay of a request that was applied, whose answer was too large to keep.
    #[error("request {id} was already applied at revision {revision}; its answer was too large to keep")]
    AnswerNotKept { id: String, revision: u64 },
}

/// What applying one entry gave: the Raft response type of capkv's group.
pub type Applied = Result<Answer, Refusal>;

/// A command payload that can be proposed, with the answer it gets.
pub trait Proposal: Into<Command> {
    type Answer;
    /// Takes this proposal's answer out of the answer of its entry; `None` only if the state
    /// machine answered a different kind, which would be a bug in [`super::apply`].
    fn answer(applied: Answer) -> Option<Self::Answer>;
}

macro_rules! proposal {
    ($payload:ident, $answer:ident) => {
        impl From<$payload> for Command {
            fn from(payload: $payload) -> Command {
                Command::$payload(payload)
            }
        }

        impl Proposal for $payload {
            type Answer = $answer;
            fn answer(applied: Answer) -> Option<$answer> {
                match applied {
                    Answer::$payload(answer) => Some(answer),
                    _ => None,
                }
            }
        }
    };
}

proposal!(CreateKeyspace, CreateKeyspaceAnswer);
proposal!(Put, PutAnswer);
proposal!(Delete, DeleteAnswer);
proposal!(Cas, CasAnswer);
proposal!(Txn, TxnAnswer);
