//! The replicated commands of the CP path and their deterministic application.
//!
//! Every change to cluster metadata or to a cp keyspace is a [`Command`] in the Raft log. Applying
//! a command is a pure function of the command, its log index and the state before it, written
//! against the [`State`] trait so that it runs the same on sled and on an in-memory map in tests.
//! Revisions are log indexes: a key's `mod_revision` is the index of the entry that last wrote it.
//!
//! Commands are checked again at apply time (keyspace exists, keyspace mode): the edge checks are
//! only a fast path, the log is the truth.
//!
//! Caveats: no per-client sequence numbers yet, so a write retried by a client after an unknown
//! outcome may be applied twice (as with etcd's put); CAS and transactions make retries safe.

use serde::{Deserialize, Serialize};

use crate::keyspace::{KeyspaceDef, Mode};

/// One stored cp value and its revisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(Vec<u8>),
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
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
    Get { key: Vec<u8> },
}

/// What one transaction operation saw: for a get the value, for a delete whether it existed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOpResult {
    pub key: Vec<u8>,
    pub found: Option<StoredValue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateKeyspace {
        name: String,
        mode: Mode,
    },
    Put {
        keyspace: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        keyspace: String,
        key: Vec<u8>,
    },
    /// Swap when the current value equals `expected` (`None`: when the key is absent).
    Cas {
        keyspace: String,
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new_value: Vec<u8>,
    },
    Txn {
        keyspace: String,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
}

impl Command {
    /// The keyspace a data command touches (None for metadata commands).
    pub fn keyspace(&self) -> Option<&str> {
        match self {
            Command::CreateKeyspace { .. } => None,
            Command::Put { keyspace, .. }
            | Command::Delete { keyspace, .. }
            | Command::Cas { keyspace, .. }
            | Command::Txn { keyspace, .. } => Some(keyspace),
        }
    }

    /// Short operation name for metrics and logs.
    pub fn op_name(&self) -> &'static str {
        match self {
            Command::CreateKeyspace { .. } => "create_keyspace",
            Command::Put { .. } => "put",
            Command::Delete { .. } => "delete",
            Command::Cas { .. } => "cas",
            Command::Txn { .. } => "txn",
        }
    }
}

/// The result of applying one log entry, returned to the client that proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Blank and membership entries.
    Done,
    KeyspaceCreated(KeyspaceDef),
    KeyspaceExists(KeyspaceDef),
    Put {
        revision: u64,
        had_previous: bool,
    },
    Deleted {
        deleted: bool,
        revision: u64,
    },
    Cas {
        succeeded: bool,
        current: Option<StoredValue>,
        revision: u64,
    },
    Txn {
        succeeded: bool,
        results: Vec<TxnOpResult>,
        revision: u64,
    },
    UnknownKeyspace(String),
    /// The keyspace exists but its mode does not go through Raft for data.
    WrongMode {
        keyspace: String,
        mode: Mode,
    },
}

/// The state a command reads and writes.
pub trait State {
    fn keyspace(&self, name: &str) -> Option<KeyspaceDef>;
    fn get(&self, keyspace: &str, key: &[u8]) -> Option<StoredValue>;
    fn put_keyspace(&mut self, def: KeyspaceDef);
    fn put(&mut self, keyspace: &str, key: &[u8], value: StoredValue);
    fn delete(&mut self, keyspace: &str, key: &[u8]);
}

/// Applies `command`, found at log `index`, to `state`.
pub fn apply(command: &Command, index: u64, state: &mut impl State) -> Outcome {
    if let Command::CreateKeyspace { name, mode } = command {
        return create_keyspace(name, *mode, index, state);
    }
    let keyspace = command.keyspace().expect("data commands name a keyspace");
    match state.keyspace(keyspace) {
        None => return Outcome::UnknownKeyspace(keyspace.to_string()),
        Some(def) if def.mode != Mode::Cp => {
            return Outcome::WrongMode {
                keyspace: keyspace.to_string(),
                mode: def.mode,
            }
        }
        Some(_) => {}
    }
    match command {
        Command::CreateKeyspace { .. } => unreachable!("handled above"),
        Command::Put { key, value, .. } => {
            let had_previous = write(state, keyspace, key, value, index);
            Outcome::Put {
                revision: index,
                had_previous,
            }
        }
        Command::Delete { key, .. } => {
            let deleted = remove(state, keyspace, key);
            Outcome::Deleted {
                deleted,
                revision: index,
            }
        }
        Command::Cas {
            key,
            expected,
            new_value,
            ..
        } => {
            let current = state.get(keyspace, key);
            let succeeded = current.as_ref().map(|c| &c.value) == expected.as_ref();
            if succeeded {
                write(state, keyspace, key, new_value, index);
            }
            Outcome::Cas {
                succeeded,
                current,
                revision: index,
            }
        }
        Command::Txn {
            compares,
            success,
            failure,
            ..
        } => {
            let succeeded = compares.iter().all(|c| holds(c, state.get(keyspace, &c.key).as_ref()));
            let ops = if succeeded { success } else { failure };
            let results = ops.iter().map(|op| run_txn_op(op, keyspace, index, state)).collect();
            Outcome::Txn {
                succeeded,
                results,
                revision: index,
            }
        }
    }
}

fn create_keyspace(name: &str, mode: Mode, index: u64, state: &mut impl State) -> Outcome {
    if let Some(existing) = state.keyspace(name) {
        return Outcome::KeyspaceExists(existing);
    }
    let def = KeyspaceDef {
        name: name.to_string(),
        mode,
        created_revision: index,
    };
    state.put_keyspace(def.clone());
    Outcome::KeyspaceCreated(def)
}

/// Writes a value at `index`; returns whether the key existed before.
fn write(state: &mut impl State, keyspace: &str, key: &[u8], value: &[u8], index: u64) -> bool {
    let previous = state.get(keyspace, key);
    let stored = StoredValue {
        value: value.to_vec(),
        create_revision: previous.as_ref().map_or(index, |p| p.create_revision),
        mod_revision: index,
        version: previous.as_ref().map_or(1, |p| p.version + 1),
    };
    state.put(keyspace, key, stored);
    previous.is_some()
}

/// Deletes a key; returns whether it existed.
fn remove(state: &mut impl State, keyspace: &str, key: &[u8]) -> bool {
    let existed = state.get(keyspace, key).is_some();
    if existed {
        state.delete(keyspace, key);
    }
    existed
}

fn holds(compare: &Compare, current: Option<&StoredValue>) -> bool {
    use std::cmp::Ordering;
    let ordering = match (&compare.target, current) {
        (CompareTarget::Exists(want), _) => current.is_some().cmp(want),
        (CompareTarget::Value(want), Some(c)) => c.value.as_slice().cmp(want.as_slice()),
        (CompareTarget::ModRevision(want), Some(c)) => c.mod_revision.cmp(want),
        (CompareTarget::Version(want), Some(c)) => c.version.cmp(want),
        // An absent key has revision and version 0 (as in etcd), and no value at all.
        (CompareTarget::ModRevision(want), None) | (CompareTarget::Version(want), None) => 0.cmp(want),
        (CompareTarget::Value(_), None) => return compare.op == CompareOp::NotEqual,
    };
    match compare.op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::NotEqual => ordering != Ordering::Equal,
        CompareOp::Less => ordering == Ordering::Less,
        CompareOp::Greater => ordering == Ordering::Greater,
    }
}

fn run_txn_op(op: &TxnOp, keyspace: &str, index: u64, state: &mut impl State) -> TxnOpResult {
    match op {
        TxnOp::Put { key, value } => {
            let previous = state.get(keyspace, key);
            write(state, keyspace, key, value, index);
            TxnOpResult {
                key: key.clone(),
                found: previous,
            }
        }
        TxnOp::Delete { key } => {
            let previous = state.get(keyspace, key);
            remove(state, keyspace, key);
            TxnOpResult {
                key: key.clone(),
                found: previous,
            }
        }
        TxnOp::Get { key } => TxnOpResult {
            key: key.clone(),
            found: state.get(keyspace, key),
        },
    }
}

/// An in-memory [`State`], for tests and as the model the sled state is checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemState {
    pub keyspaces: std::collections::BTreeMap<String, KeyspaceDef>,
    pub data: std::collections::BTreeMap<(String, Vec<u8>), StoredValue>,
}

impl State for MemState {
    fn keyspace(&self, name: &str) -> Option<KeyspaceDef> {
        self.keyspaces.get(name).cloned()
    }
    fn get(&self, keyspace: &str, key: &[u8]) -> Option<StoredValue> {
        self.data.get(&(keyspace.to_string(), key.to_vec())).cloned()
    }
    fn put_keyspace(&mut self, def: KeyspaceDef) {
        self.keyspaces.insert(def.name.clone(), def);
    }
    fn put(&mut self, keyspace: &str, key: &[u8], value: StoredValue) {
        self.data.insert((keyspace.to_string(), key.to_vec()), value);
    }
    fn delete(&mut self, keyspace: &str, key: &[u8]) {
        self.data.remove(&(keyspace.to_string(), key.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bank() -> MemState {
        let mut state = MemState::default();
        let create = Command::CreateKeyspace {
            name: "bank".into(),
            mode: Mode::Cp,
        };
        assert!(matches!(apply(&create, 1, &mut state), Outcome::KeyspaceCreated(_)));
        state
    }

    fn put(key: &str, value: &str) -> Command {
        Command::Put {
            keyspace: "bank".into(),
            key: key.into(),
            value: value.into(),
        }
    }

    fn cas(key: &str, expected: Option<&str>, new_value: &str) -> Command {
        Command::Cas {
            keyspace: "bank".into(),
            key: key.into(),
            expected: expected.map(Into::into),
            new_value: new_value.into(),
        }
    }

    #[test]
    fn put_tracks_revisions_and_versions() {
        let mut s = bank();
        assert_eq!(
            apply(&put("a", "1"), 2, &mut s),
            Outcome::Put {
                revision: 2,
                had_previous: false
            }
        );
        assert_eq!(
            apply(&put("a", "2"), 5, &mut s),
            Outcome::Put {
                revision: 5,
                had_previous: true
            }
        );
        let v = s.get("bank", b"a").unwrap();
        assert_eq!(
            (v.value.as_slice(), v.create_revision, v.mod_revision, v.version),
            (&b"2"[..], 2, 5, 2)
        );
    }

    #[test]
    fn cas_swaps_only_from_the_expected_value() {
        let mut s = bank();
        apply(&put("alice", "100"), 2, &mut s);
        let ok = apply(&cas("alice", Some("100"), "90"), 3, &mut s);
        assert!(matches!(ok, Outcome::Cas { succeeded: true, .. }));
        let again = apply(&cas("alice", Some("100"), "80"), 4, &mut s);
        match again {
            Outcome::Cas {
                succeeded: false,
                current: Some(c),
                ..
            } => assert_eq!(c.value, b"90"),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert_eq!(s.get("bank", b"alice").unwrap().value, b"90");
    }

    #[test]
    fn cas_expect_absent() {
        let mut s = bank();
        assert!(matches!(
            apply(&cas("k", None, "v"), 2, &mut s),
            Outcome::Cas { succeeded: true, .. }
        ));
        assert!(matches!(
            apply(&cas("k", None, "w"), 3, &mut s),
            Outcome::Cas { succeeded: false, .. }
        ));
        assert_eq!(s.get("bank", b"k").unwrap().value, b"v");
    }

    #[test]
    fn delete_reports_existence_and_resets_version() {
        let mut s = bank();
        apply(&put("k", "v"), 2, &mut s);
        let del = Command::Delete {
            keyspace: "bank".into(),
            key: b"k".to_vec(),
        };
        assert_eq!(
            apply(&del, 3, &mut s),
            Outcome::Deleted {
                deleted: true,
                revision: 3
            }
        );
        assert_eq!(
            apply(&del, 4, &mut s),
            Outcome::Deleted {
                deleted: false,
                revision: 4
            }
        );
        apply(&put("k", "again"), 5, &mut s);
        let v = s.get("bank", b"k").unwrap();
        assert_eq!((v.create_revision, v.version), (5, 1));
    }

    #[test]
    fn txn_runs_success_or_failure_branch() {
        let mut s = bank();
        apply(&put("alice", "100"), 2, &mut s);
        apply(&put("bob", "0"), 3, &mut s);
        let transfer = |from_balance: &str| Command::Txn {
            keyspace: "bank".into(),
            compares: vec![Compare {
                key: b"alice".to_vec(),
                target: CompareTarget::Value(from_balance.into()),
                op: CompareOp::Equal,
            }],
            success: vec![
                TxnOp::Put {
                    key: b"alice".to_vec(),
                    value: b"90".to_vec(),
                },
                TxnOp::Put {
                    key: b"bob".to_vec(),
                    value: b"10".to_vec(),
                },
            ],
            failure: vec![TxnOp::Get { key: b"alice".to_vec() }],
        };
        assert!(matches!(
            apply(&transfer("100"), 4, &mut s),
            Outcome::Txn { succeeded: true, .. }
        ));
        assert_eq!(s.get("bank", b"bob").unwrap().value, b"10");
        match apply(&transfer("100"), 5, &mut s) {
            Outcome::Txn {
                succeeded: false,
                results,
                ..
            } => {
                assert_eq!(results[0].found.as_ref().unwrap().value, b"90")
            }
            other => panic!("expected the failure branch, got {other:?}"),
        }
        assert_eq!(s.get("bank", b"alice").unwrap().value, b"90");
    }

    #[test]
    fn compares_on_absent_keys_follow_etcd() {
        let absent = |target, op| {
            holds(
                &Compare {
                    key: b"x".to_vec(),
                    target,
                    op,
                },
                None,
            )
        };
        assert!(absent(CompareTarget::Exists(false), CompareOp::Equal));
        assert!(!absent(CompareTarget::Exists(true), CompareOp::Equal));
        assert!(absent(CompareTarget::Version(0), CompareOp::Equal));
        assert!(absent(CompareTarget::ModRevision(3), CompareOp::Less));
        assert!(!absent(CompareTarget::Value(b"v".to_vec()), CompareOp::Equal));
        assert!(absent(CompareTarget::Value(b"v".to_vec()), CompareOp::NotEqual));
    }

    #[test]
    fn data_commands_check_keyspace_and_mode_at_apply() {
        let mut s = bank();
        let unknown = Command::Put {
            keyspace: "nope".into(),
            key: b"k".to_vec(),
            value: vec![],
        };
        assert_eq!(apply(&unknown, 2, &mut s), Outcome::UnknownKeyspace("nope".into()));
        apply(
            &Command::CreateKeyspace {
                name: "carts".into(),
                mode: Mode::Ap,
            },
            3,
            &mut s,
        );
        let ap = Command::Put {
            keyspace: "carts".into(),
            key: b"k".to_vec(),
            value: vec![],
        };
        assert!(matches!(
            apply(&ap, 4, &mut s),
            Outcome::WrongMode { mode: Mode::Ap, .. }
        ));
        let dup = Command::CreateKeyspace {
            name: "bank".into(),
            mode: Mode::Ap,
        };
        assert!(matches!(
            apply(&dup, 5, &mut s),
            Outcome::KeyspaceExists(KeyspaceDef { mode: Mode::Cp, .. })
        ));
        assert!(s.data.is_empty() || s.get("carts", b"k").is_none());
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        let key = prop::sample::select(vec!["a", "b", "c"]).prop_map(|k| k.as_bytes().to_vec());
        let value = prop::sample::select(vec!["0", "1", "2"]).prop_map(|v| v.as_bytes().to_vec());
        prop_oneof![
            (key.clone(), value.clone()).prop_map(|(key, value)| Command::Put {
                keyspace: "bank".into(),
                key,
                value
            }),
            key.clone().prop_map(|key| Command::Delete {
                keyspace: "bank".into(),
                key
            }),
            (key, prop::option::of(value.clone()), value).prop_map(|(key, expected, new_value)| {
                Command::Cas {
                    keyspace: "bank".into(),
                    key,
                    expected,
                    new_value,
                }
            }),
        ]
    }

    proptest! {
        /// Two replicas that apply the same log end in the same state with the same outcomes.
        #[test]
        fn apply_is_deterministic(commands in prop::collection::vec(arb_command(), 0..40)) {
            let (mut a, mut b) = (bank(), bank());
            for (i, c) in commands.iter().enumerate() {
                let index = i as u64 + 2;
                prop_assert_eq!(apply(c, index, &mut a), apply(c, index, &mut b));
            }
            prop_assert_eq!(a, b);
        }

        /// A CAS succeeds exactly when a model register holds the expected value.
        #[test]
        fn cas_matches_a_register_model(commands in prop::collection::vec(arb_command(), 0..40)) {
            let mut s = bank();
            let mut model: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
            for (i, c) in commands.iter().enumerate() {
                let out = apply(c, i as u64 + 2, &mut s);
                match (c, out) {
                    (Command::Put { key, value, .. }, _) => { model.insert(key.clone(), value.clone()); }
                    (Command::Delete { key, .. }, _) => { model.remove(key); }
                    (Command::Cas { key, expected, new_value, .. }, Outcome::Cas { succeeded, .. }) => {
                        prop_assert_eq!(succeeded, model.get(key) == expected.as_ref());
                        if succeeded { model.insert(key.clone(), new_value.clone()); }
                    }
                    (c, o) => prop_assert!(false, "unexpected outcome {:?} for {:?}", o, c),
                }
            }
            for (key, value) in &model {
                prop_assert_eq!(&s.get("bank", key).unwrap().value, value);
            }
        }
    }
}
