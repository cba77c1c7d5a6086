//! Applying a command: a pure, deterministic function of the command, its log index and the
//! state before it.
//!
//! [`apply`] is written against the [`State`] trait, so it runs the same on sled (the state
//! machine's overlay) and on the in-memory [`MemState`] that tests use as a model. Two replicas
//! that apply the same log end in the same state with the same answers; the property tests
//! below check that, and that CAS agrees with a plain register model.
//!
//! Caveats: applying never fails for a storage reason (the state machine reads through its own
//! overlay and writes only once every entry of an apply call is decided); a refusal
//! ([`Refusal`]) leaves the state as it was.

use std::cmp::Ordering;

use super::command::{
    Answer, Applied, Cas, CasAnswer, Command, Compare, CompareOp, CompareTarget, CreateKeyspace, CreateKeyspaceAnswer,
    Delete, DeleteAnswer, Put, PutAnswer, Refusal, StoredValue, Txn, TxnAnswer, TxnOp, TxnOpResult,
};
use super::session::{apply_once, ClientId, Kept, Session, Sessions};
use crate::keyspace::KeyspaceDef;
use crate::mode::Mode;

/// The state a command reads and writes, with the session table of exactly-once writes.
pub trait State: Sessions {
    fn keyspace(&self, name: &str) -> Option<KeyspaceDef>;
    fn get(&self, keyspace: &str, key: &[u8]) -> Option<StoredValue>;
    fn put_keyspace(&mut self, def: KeyspaceDef);
    fn put(&mut self, keyspace: &str, key: &[u8], value: StoredValue);
    fn delete(&mut self, keyspace: &str, key: &[u8]);
}

/// Applies `command`, found at log `index`, to `state`.
pub fn apply(command: &Command, index: u64, state: &mut impl State) -> Applied {
    match command {
        Command::CreateKeyspace(create) => return Ok(Answer::CreateKeyspace(create_keyspace(create, index, state))),
        // The batcher keeps the keys of a batch's commands apart, so they share the index.
        Command::Batch(commands) => {
            return Ok(Answer::Batch(commands.iter().map(|c| apply(c, index, state)).collect()))
        }
        Command::Once(once) => return apply_once(once, index, state),
        _ => {}
    }
    let keyspace = command.keyspace().expect("data commands name a keyspace");
    match state.keyspace(keyspace) {
        None => return Err(Refusal::UnknownKeyspace(keyspace.to_string())),
        Some(def) if def.mode != Mode::Cp => {
            return Err(Refusal::WrongMode {
                keyspace: keyspace.to_string(),
                mode: def.mode,
            })
        }
        Some(_) => {}
    }
    Ok(match command {
        Command::CreateKeyspace(_) | Command::Batch(_) | Command::Once(_) => unreachable!("handled above"),
        Command::Put(put) => Answer::Put(apply_put(put, index, state)),
        Command::Delete(delete) => Answer::Delete(apply_delete(delete, index, state)),
        Command::Cas(cas) => Answer::Cas(apply_cas(cas, index, state)),
        Command::Txn(txn) => Answer::Txn(apply_txn(txn, index, state)),
    })
}

fn create_keyspace(create: &CreateKeyspace, index: u64, state: &mut impl State) -> CreateKeyspaceAnswer {
    if let Some(existing) = state.keyspace(&create.name) {
        return CreateKeyspaceAnswer {
            def: existing,
            created: false,
        };
    }
    let def = KeyspaceDef {
        name: create.name.clone(),
        mode: create.mode,
        created_revision: index,
    };
    state.put_keyspace(def.clone());
    CreateKeyspaceAnswer { def, created: true }
}

fn apply_put(put: &Put, index: u64, state: &mut impl State) -> PutAnswer {
    let had_previous = write(state, &put.keyspace, &put.key, &put.value, index);
    PutAnswer {
        revision: index,
        had_previous,
    }
}

fn apply_delete(delete: &Delete, index: u64, state: &mut impl State) -> DeleteAnswer {
    DeleteAnswer {
        deleted: remove(state, &delete.keyspace, &delete.key),
        revision: index,
    }
}

fn apply_cas(cas: &Cas, index: u64, state: &mut impl State) -> CasAnswer {
    let current = state.get(&cas.keyspace, &cas.key);
    let succeeded = current.as_ref().map(|c| &c.value) == cas.expected.as_ref();
    if succeeded {
        write(state, &cas.keyspace, &cas.key, &cas.new_value, index);
    }
    CasAnswer {
        succeeded,
        current,
        revision: index,
    }
}

fn apply_txn(txn: &Txn, index: u64, state: &mut impl State) -> TxnAnswer {
    let keyspace = &txn.keyspace;
    let succeeded = txn
        .compares
        .iter()
        .all(|c| holds(c, state.get(keyspace, &c.key).as_ref()));
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let results = ops.iter().map(|op| run_txn_op(op, keyspace, index, state)).collect();
    TxnAnswer {
        succeeded,
        results,
        revision: index,
    }
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

/// Whether a compare holds against the current value of its key (etcd's rules).
pub(crate) fn holds(compare: &Compare, current: Option<&StoredValue>) -> bool {
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
    pub sessions: std::collections::BTreeMap<ClientId, Session>,
    pub kept: std::collections::BTreeMap<(ClientId, u64), Kept>,
    /// (last_ms, client) of every session: the idle order.
    pub idle: std::collections::BTreeSet<(u64, ClientId)>,
    pub clock_ms: u64,
}

impl Sessions for MemState {
    fn session(&self, client: &ClientId) -> Option<Session> {
        self.sessions.get(client).cloned()
    }
    fn put_session(&mut self, client: &ClientId, before: Option<&Session>, after: Option<&Session>) {
        if let Some(before) = before {
            self.idle.remove(&(before.last_ms, *client));
        }
        match after {
            Some(after) => {
                self.idle.insert((after.last_ms, *client));
                self.sessions.insert(*client, after.clone());
            }
            None => {
                self.sessions.remove(client);
            }
        }
    }
    fn kept(&self, client: &ClientId, sequence: u64) -> Option<Kept> {
        self.kept.get(&(*client, sequence)).cloned()
    }
    fn put_kept(&mut self, client: &ClientId, sequence: u64, kept: Option<Kept>) {
        match kept {
            Some(kept) => self.kept.insert((*client, sequence), kept),
            None => self.kept.remove(&(*client, sequence)),
        };
    }
    fn idlest(&self, limit: usize) -> Vec<(u64, ClientId)> {
        self.idle.iter().take(limit).copied().collect()
    }
    fn table_meta(&self) -> (u64, u64) {
        (self.sessions.len() as u64, self.clock_ms)
    }
    fn put_table_meta(&mut self, _sessions: u64, clock_ms: u64) {
        self.clock_ms = clock_ms;
    }
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
        let create = Command::CreateKeyspace(CreateKeyspace {
            name: "bank".into(),
            mode: Mode::Cp,
        });
        assert!(matches!(
            apply(&create, 1, &mut state),
            Ok(Answer::CreateKeyspace(CreateKeyspaceAnswer { created: true, .. }))
        ));
        state
    }

    fn put(key: &str, value: &str) -> Command {
        Command::Put(Put {
            keyspace: "bank".into(),
            key: key.into(),
            value: value.into(),
        })
    }

    fn cas(key: &str, expected: Option<&str>, new_value: &str) -> Command {
        Command::Cas(Cas {
            keyspace: "bank".into(),
            key: key.into(),
            expected: expected.map(Into::into),
            new_value: new_value.into(),
        })
    }

    #[test]
    fn a_batch_applies_each_command_in_order_with_its_own_answer_and_refusal() {
        let mut batched = bank();
        let mut one_by_one = bank();
        let commands = vec![
            put("alice", "10"),
            cas("bob", None, "5"),
            Command::Put(Put {
                keyspace: "nowhere".into(),
                key: "k".into(),
                value: "v".into(),
            }),
            Command::Delete(Delete {
                keyspace: "bank".into(),
                key: "carol".into(),
            }),
        ];
        let answers = match apply(&Command::Batch(commands.clone()), 7, &mut batched) {
            Ok(Answer::Batch(answers)) => answers,
            other => panic!("expected a batch answer, got {other:?}"),
        };
        let expected: Vec<Applied> = commands.iter().map(|c| apply(c, 7, &mut one_by_one)).collect();
        assert_eq!(answers, expected, "a batch answers as its commands would, one by one");
        assert_eq!(answers[2], Err(Refusal::UnknownKeyspace("nowhere".into())));
        assert_eq!(batched, one_by_one, "and leaves the same state");
        assert_eq!(batched.get("bank", b"alice").map(|v| v.mod_revision), Some(7));
    }

    fn cas_answer(applied: Applied) -> CasAnswer {
        match applied {
            Ok(Answer::Cas(answer)) => answer,
            other => panic!("expected a cas answer, got {other:?}"),
        }
    }

    #[test]
    fn put_tracks_revisions_and_versions() {
        let mut s = bank();
        assert_eq!(
            apply(&put("a", "1"), 2, &mut s),
            Ok(Answer::Put(PutAnswer {
                revision: 2,
                had_previous: false
            }))
        );
        assert_eq!(
            apply(&put("a", "2"), 5, &mut s),
            Ok(Answer::Put(PutAnswer {
                revision: 5,
                had_previous: true
            }))
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
        apply(&put("alice", "100"), 2, &mut s).unwrap();
        assert!(cas_answer(apply(&cas("alice", Some("100"), "90"), 3, &mut s)).succeeded);
        let again = cas_answer(apply(&cas("alice", Some("100"), "80"), 4, &mut s));
        assert!(!again.succeeded);
        assert_eq!(again.current.unwrap().value, b"90");
        assert_eq!(s.get("bank", b"alice").unwrap().value, b"90");
    }

    #[test]
    fn cas_expect_absent() {
        let mut s = bank();
        assert!(cas_answer(apply(&cas("k", None, "v"), 2, &mut s)).succeeded);
        assert!(!cas_answer(apply(&cas("k", None, "w"), 3, &mut s)).succeeded);
        assert_eq!(s.get("bank", b"k").unwrap().value, b"v");
    }

    #[test]
    fn delete_reports_existence_and_resets_version() {
        let mut s = bank();
        apply(&put("k", "v"), 2, &mut s).unwrap();
        let del = Command::Delete(Delete {
            keyspace: "bank".into(),
            key: b"k".to_vec(),
        });
        assert_eq!(
            apply(&del, 3, &mut s),
            Ok(Answer::Delete(DeleteAnswer {
                deleted: true,
                revision: 3
            }))
        );
        assert_eq!(
            apply(&del, 4, &mut s),
            Ok(Answer::Delete(DeleteAnswer {
                deleted: false,
                revision: 4
            }))
        );
        apply(&put("k", "again"), 5, &mut s).unwrap();
        let v = s.get("bank", b"k").unwrap();
        assert_eq!((v.create_revision, v.version), (5, 1));
    }

    #[test]
    fn txn_runs_success_or_failure_branch() {
        let mut s = bank();
        apply(&put("alice", "100"), 2, &mut s).unwrap();
        apply(&put("bob", "0"), 3, &mut s).unwrap();
        let transfer = |from_balance: &str| {
            Command::Txn(Txn {
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
            })
        };
        assert!(matches!(
            apply(&transfer("100"), 4, &mut s),
            Ok(Answer::Txn(TxnAnswer { succeeded: true, .. }))
        ));
        assert_eq!(s.get("bank", b"bob").unwrap().value, b"10");
        match apply(&transfer("100"), 5, &mut s) {
            Ok(Answer::Txn(TxnAnswer {
                succeeded: false,
                results,
                ..
            })) => assert_eq!(results[0].found.as_ref().unwrap().value, b"90"),
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
        let unknown = Command::Put(Put {
            keyspace: "nope".into(),
            key: b"k".to_vec(),
            value: vec![],
        });
        assert_eq!(apply(&unknown, 2, &mut s), Err(Refusal::UnknownKeyspace("nope".into())));
        let carts = Command::CreateKeyspace(CreateKeyspace {
            name: "carts".into(),
            mode: Mode::Ap,
        });
        apply(&carts, 3, &mut s).unwrap();
        let ap = Command::Put(Put {
            keyspace: "carts".into(),
            key: b"k".to_vec(),
            value: vec![],
        });
        assert!(matches!(
            apply(&ap, 4, &mut s),
            Err(Refusal::WrongMode { mode: Mode::Ap, .. })
        ));
        let dup = Command::CreateKeyspace(CreateKeyspace {
            name: "bank".into(),
            mode: Mode::Ap,
        });
        assert!(matches!(
            apply(&dup, 5, &mut s),
            Ok(Answer::CreateKeyspace(CreateKeyspaceAnswer {
                created: false,
                def: KeyspaceDef { mode: Mode::Cp, .. }
            }))
        ));
        assert!(s.get("carts", b"k").is_none());
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        let key = prop::sample::select(vec!["a", "b", "c"]).prop_map(|k| k.as_bytes().to_vec());
        let value = prop::sample::select(vec!["0", "1", "2"]).prop_map(|v| v.as_bytes().to_vec());
        let keyspace = || "bank".to_string();
        prop_oneof![
            (key.clone(), value.clone()).prop_map(move |(key, value)| Command::Put(Put {
                keyspace: keyspace(),
                key,
                value
            })),
            key.clone().prop_map(move |key| Command::Delete(Delete {
                keyspace: keyspace(),
                key
            })),
            (key, prop::option::of(value.clone()), value).prop_map(move |(key, expected, new_value)| {
                Command::Cas(Cas {
                    keyspace: keyspace(),
                    key,
                    expected,
                    new_value,
                })
            }),
        ]
    }

    proptest! {
        /// Two replicas that apply the same log end in the same state with the same answers.
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
                    (Command::Put(p), _) => { model.insert(p.key.clone(), p.value.clone()); }
                    (Command::Delete(d), _) => { model.remove(&d.key); }
                    (Command::Cas(c), Ok(Answer::Cas(answer))) => {
                        prop_assert_eq!(answer.succeeded, model.get(&c.key) == c.expected.as_ref());
                        if answer.succeeded { model.insert(c.key.clone(), c.new_value.clone()); }
                    }
                    (c, o) => prop_assert!(false, "unexpected answer {:?} for {:?}", o, c),
                }
            }
            for (key, value) in &model {
                prop_assert_eq!(&s.get("bank", key).unwrap().value, value);
            }
        }
    }
}
