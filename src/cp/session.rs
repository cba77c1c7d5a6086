//! Exactly-once writes: client sessions in the state machine (the Raft dissertation, §6.3).
//!
//! A cp write may carry a [`RequestId`]: a 16-byte client id and a sequence number. The leader
//! wraps such a write in a [`Once`] entry, and applying it consults the session table that lives
//! in the replicated state itself: if the client's session already holds an answer for that
//! sequence number, the write is not applied again and the first answer is returned. So a client
//! that retries after "outcome unknown" with the same id (the library does it by itself) gets
//! the answer of the one application, however many copies of the request reached the log.
//!
//! The table is bounded, and everything about it is decided by the log alone, so every replica
//! keeps the same table: a session keeps the answers of its last [`ANSWERS_PER_CLIENT`]
//! requests; at most [`SESSIONS_MAX`] sessions are kept (a new client evicts the one idle
//! longest); a session idle for longer than the TTL the leader put in the entry expires, at most
//! [`EXPIRIES_PER_WRITE`] per write. Time is the leader's wall clock at proposal, carried in the
//! entry and never allowed to go back (the table's clock is the largest time seen). The table is
//! part of the state machine's tree, so snapshots carry it; backups copy keyspaces only.
//!
//! Caveats: a request retried after its session expired (idle longer than the TTL, default
//! 10 minutes) or was evicted is applied again. A retry of a request older than the newest
//! [`ANSWERS_PER_CLIENT`] of its client is refused as "outcome unknown", because the table no
//! longer knows. An answer larger than [`ANSWER_BYTES_KEPT_MAX`] (a transaction that read large
//! values, a CAS that found one) is not kept: its replay says the write was applied at its
//! revision and that the answer itself is gone.

use serde::{Deserialize, Serialize};

use super::apply::{apply, State};
use super::command::{Answer, Applied, Command, Refusal};
use crate::storage::codec::encode;

/// Answers kept per client: a retry of an older request is refused as too old.
pub const ANSWERS_PER_CLIENT: usize = 64;

/// Sessions kept at most: a new client evicts the session idle longest.
pub const SESSIONS_MAX: u64 = 1024;

/// Idle sessions removed per write at most, so one write never pays for a long sweep.
pub const EXPIRIES_PER_WRITE: usize = 16;

/// Answers larger than this (encoded) are not kept; their replay gets [`Refusal::AnswerNotKept`].
/// With [`SESSIONS_MAX`] and [`ANSWERS_PER_CLIENT`] this bounds the table to 256 MiB.
pub const ANSWER_BYTES_KEPT_MAX: usize = 4 * 1024;

/// The length of a client id.
pub const CLIENT_ID_BYTES: usize = 16;

/// A client's id: 16 random bytes, chosen by the client.
pub type ClientId = [u8; CLIENT_ID_BYTES];

/// Who sent a write, and which of its writes it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client: ClientId,
    pub sequence: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", hex::encode(self.client), self.sequence)
    }
}

/// A data command that is applied at most once per [`RequestId`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Once {
    pub id: RequestId,
    /// The leader's wall clock when it proposed the command, in ms since the epoch.
    pub at_ms: u64,
    /// Sessions idle for longer than this expire (the leader's `--session-ttl`).
    pub session_ttl_ms: u64,
    pub command: Box<Command>,
}

/// One client's session: when it was last active and the sequence numbers it has answers for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub last_ms: u64,
    /// Oldest first; at most [`ANSWERS_PER_CLIENT`].
    pub sequences: Vec<u64>,
}

/// What the table keeps of one request's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kept {
    Answer(Applied),
    /// Applied at `revision`; the answer was larger than [`ANSWER_BYTES_KEPT_MAX`].
    TooLarge {
        revision: u64,
    },
}

/// The session table as the state machine stores it.
pub trait Sessions {
    fn session(&self, client: &ClientId) -> Option<Session>;
    /// Stores (`Some`) or removes (`None`) a session, keeping the idle order in step.
    fn put_session(&mut self, client: &ClientId, before: Option<&Session>, after: Option<&Session>);
    fn kept(&self, client: &ClientId, sequence: u64) -> Option<Kept>;
    fn put_kept(&mut self, client: &ClientId, sequence: u64, kept: Option<Kept>);
    /// Up to `limit` sessions, the one idle longest first: `(last_ms, client)`.
    fn idlest(&self, limit: usize) -> Vec<(u64, ClientId)>;
    /// A time no session's `last_ms` is below, when the table knows one cheaply (`None`: not
    /// known); lets [`expire`] skip looking at the idlest sessions when none can have expired.
    fn idle_floor(&self) -> Option<u64> {
        None
    }
    /// Records that no session's `last_ms` is below `floor` (`u64::MAX`: there are no sessions).
    /// A table that remembers it must lower it when a session becomes idler than it.
    fn set_idle_floor(&mut self, _floor: u64) {}
    /// (number of sessions, the table's clock).
    fn table_meta(&self) -> (u64, u64);
    fn put_table_meta(&mut self, sessions: u64, clock_ms: u64);
}

/// Applies a [`Once`] entry found at `index`: the first answer for a request id seen before,
/// otherwise the command applied and its answer recorded.
pub fn apply_once(once: &Once, index: u64, state: &mut impl State) -> Applied {
    let (mut sessions, clock) = state.table_meta();
    let now = clock.max(once.at_ms);
    sessions -= expire(state, now, once.session_ttl_ms);

    let client = &once.id.client;
    let sequence = once.id.sequence;
    let before = state.session(client);
    if let Some(session) = &before {
        if session.sequences.contains(&sequence) {
            state.put_table_meta(sessions, now);
            return replay(state.kept(client, sequence), once.id);
        }
        let oldest = session.sequences.iter().min().copied().unwrap_or(0);
        if session.sequences.len() >= ANSWERS_PER_CLIENT && sequence < oldest {
            state.put_table_meta(sessions, now);
            return Err(Refusal::RequestTooOld {
                id: once.id.to_string(),
                oldest,
            });
        }
    } else {
        if sessions >= SESSIONS_MAX {
            for (_, idlest) in state.idlest(1) {
                remove_session(state, &idlest);
                sessions -= 1;
            }
        }
        sessions += 1;
    }

    let applied = apply(&once.command, index, state);
    let mut after = before.clone().unwrap_or_default();
    after.last_ms = now;
    after.sequences.push(sequence);
    if after.sequences.len() > ANSWERS_PER_CLIENT {
        let (at, &dropped) = after
            .sequences
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| **s)
            .expect("a full session has sequences");
        after.sequences.remove(at);
        state.put_kept(client, dropped, None);
    }
    state.put_kept(client, sequence, Some(keep(&applied)));
    state.put_session(client, before.as_ref(), Some(&after));
    state.put_table_meta(sessions, now);
    applied
}

/// Removes sessions idle for longer than `ttl_ms` at `now`; returns how many.
///
/// The idlest session left bounds every other session's idle time, so it becomes the table's
/// idle floor: while `floor + ttl_ms >= now` nothing can have expired and the idle order is not
/// read at all (within one apply call, that is one look per batch instead of one per write).
fn expire(state: &mut impl State, now: u64, ttl_ms: u64) -> u64 {
    if state
        .idle_floor()
        .is_some_and(|floor| floor.saturating_add(ttl_ms) >= now)
    {
        return 0;
    }
    let idlest = state.idlest(EXPIRIES_PER_WRITE);
    let looked_at = idlest.len();
    let mut removed = 0;
    for (last_ms, client) in idlest {
        if last_ms.saturating_add(ttl_ms) >= now {
            state.set_idle_floor(last_ms);
            return removed;
        }
        remove_session(state, &client);
        removed += 1;
    }
    if looked_at < EXPIRIES_PER_WRITE {
        // Every session was looked at and removed.
        state.set_idle_floor(u64::MAX);
    }
    removed
}

fn remove_session(state: &mut impl State, client: &ClientId) {
    let Some(session) = state.session(client) else {
        return;
    };
    for sequence in &session.sequences {
        state.put_kept(client, *sequence, None);
    }
    state.put_session(client, Some(&session), None);
}

fn keep(applied: &Applied) -> Kept {
    let kept = Kept::Answer(applied.clone());
    if encode(&kept).len() <= ANSWER_BYTES_KEPT_MAX {
        return kept;
    }
    let revision = match applied {
        Ok(Answer::Put(a)) => a.revision,
        Ok(Answer::Delete(a)) => a.revision,
        Ok(Answer::Cas(a)) => a.revision,
        Ok(Answer::Txn(a)) => a.revision,
        _ => 0,
    };
    Kept::TooLarge { revision }
}

fn replay(kept: Option<Kept>, id: RequestId) -> Applied {
    match kept {
        Some(Kept::Answer(applied)) => applied,
        Some(Kept::TooLarge { revision }) => Err(Refusal::AnswerNotKept {
            id: id.to_string(),
            revision,
        }),
        // The session lists the sequence, so its answer was written in the same batch.
        None => Err(Refusal::AnswerNotKept {
            id: id.to_string(),
            revision: 0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cp::apply::MemState;
    use crate::cp::command::{CreateKeyspace, Put, PutAnswer, Txn, TxnOp};
    use crate::mode::Mode;
    use proptest::prelude::*;

    const TTL: u64 = 60_000;

    fn bank() -> MemState {
        let mut state = MemState::default();
        let create = Command::CreateKeyspace(CreateKeyspace {
            name: "bank".into(),
            mode: Mode::Cp,
        });
        apply(&create, 1, &mut state).unwrap();
        state
    }

    fn once(client: u8, sequence: u64, at_ms: u64, command: Command) -> Once {
        Once {
            id: RequestId {
                client: [client; CLIENT_ID_BYTES],
                sequence,
            },
            at_ms,
            session_ttl_ms: TTL,
            command: Box::new(command),
        }
    }

    /// A txn that adds one to the counter `n` (read it, write it back plus one, under a compare).
    fn increment(state: &MemState) -> Command {
        let current = state
            .get("bank", b"n")
            .map_or(0, |v| String::from_utf8(v.value).unwrap().parse::<u64>().unwrap());
        Command::Txn(Txn {
            keyspace: "bank".into(),
            compares: vec![],
            success: vec![TxnOp::Put {
                key: b"n".to_vec(),
                value: (current + 1).to_string().into_bytes(),
            }],
            failure: vec![],
        })
    }

    fn put(key: &str) -> Command {
        Command::Put(Put {
            keyspace: "bank".into(),
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        })
    }

    #[test]
    fn a_replayed_request_returns_its_first_answer_and_changes_nothing() {
        let mut state = bank();
        let first = apply_once(&once(1, 1, 1000, put("a")), 2, &mut state).unwrap();
        assert_eq!(
            first,
            Answer::Put(PutAnswer {
                revision: 2,
                had_previous: false
            })
        );
        let before = state.clone();
        let again = apply_once(&once(1, 1, 2000, put("a")), 3, &mut state).unwrap();
        assert_eq!(again, first, "the replay answers as the first application did");
        assert_eq!(state.get("bank", b"a"), before.get("bank", b"a"), "and writes nothing");
        let next = apply_once(&once(1, 2, 3000, put("a")), 4, &mut state).unwrap();
        assert!(matches!(
            next,
            Answer::Put(PutAnswer {
                revision: 4,
                had_previous: true
            })
        ));
    }

    #[test]
    fn sessions_expire_after_the_ttl_and_then_a_replay_applies_again() {
        let mut state = bank();
        apply_once(&once(1, 1, 1000, put("a")), 2, &mut state).unwrap();
        assert!(state.session(&[1; 16]).is_some());
        // Another client writes after client 1 has been idle for longer than the TTL.
        apply_once(&once(2, 1, 1000 + TTL + 1, put("b")), 3, &mut state).unwrap();
        assert!(state.session(&[1; 16]).is_none(), "client 1's session expired");
        assert!(state.kept(&[1; 16], 1).is_none(), "with its answers");
        assert_eq!(state.table_meta().0, 1);
    }

    #[test]
    fn a_request_older_than_the_kept_answers_is_refused_not_applied() {
        let mut state = bank();
        for sequence in 0..=ANSWERS_PER_CLIENT as u64 {
            apply_once(&once(1, sequence + 10, 1000, put("a")), 2 + sequence, &mut state).unwrap();
        }
        let session = state.session(&[1; 16]).unwrap();
        assert_eq!(session.sequences.len(), ANSWERS_PER_CLIENT);
        assert!(state.kept(&[1; 16], 10).is_none(), "the oldest answer was dropped");
        let before = state.get("bank", b"a");
        let refused = apply_once(&once(1, 5, 1000, put("a")), 100, &mut state);
        assert!(
            matches!(refused, Err(Refusal::RequestTooOld { oldest: 11, .. })),
            "{refused:?}"
        );
        assert_eq!(state.get("bank", b"a"), before);
    }

    #[test]
    fn the_table_holds_at_most_sessions_max_clients_evicting_the_idlest() {
        let mut state = bank();
        for client in 0..SESSIONS_MAX + 1 {
            let id = RequestId {
                client: u128::from(client).to_be_bytes(),
                sequence: 1,
            };
            let op = Once {
                id,
                at_ms: 1000 + client,
                session_ttl_ms: TTL,
                command: Box::new(put("a")),
            };
            apply_once(&op, 2 + client, &mut state).unwrap();
        }
        assert_eq!(state.table_meta().0, SESSIONS_MAX);
        assert!(state.session(&0u128.to_be_bytes()).is_none(), "the idlest went");
        assert!(state.session(&u128::from(SESSIONS_MAX).to_be_bytes()).is_some());
    }

    #[test]
    fn a_large_answer_is_not_kept_and_its_replay_says_so() {
        let mut state = bank();
        let big = Command::Put(Put {
            keyspace: "bank".into(),
            key: b"big".to_vec(),
            value: vec![7; ANSWER_BYTES_KEPT_MAX * 2],
        });
        apply_once(&once(1, 1, 1000, big), 2, &mut state).unwrap();
        let read = Command::Txn(Txn {
            keyspace: "bank".into(),
            compares: vec![],
            success: vec![TxnOp::Get { key: b"big".to_vec() }],
            failure: vec![],
        });
        assert!(apply_once(&once(1, 2, 1000, read.clone()), 3, &mut state).is_ok());
        let replay = apply_once(&once(1, 2, 1000, read), 4, &mut state);
        assert!(
            matches!(replay, Err(Refusal::AnswerNotKept { revision: 3, .. })),
            "{replay:?}"
        );
    }

    proptest! {
        /// However requests are retried (each delivered 1-3 times, in any interleaving), the
        /// counter ends at the number of distinct requests: each increment applied exactly once.
        #[test]
        fn retried_increments_apply_exactly_once(deliveries in prop::collection::vec((0u8..3, 1usize..4), 1..40)) {
            let mut state = bank();
            let mut next = [0u64; 3];
            let mut distinct = 0u64;
            let mut index = 2;
            for (client, copies) in deliveries {
                next[client as usize] += 1;
                distinct += 1;
                // Built once from the state before its first delivery, then resent unchanged,
                // as a client resends the same request.
                let command = increment(&state);
                for _ in 0..copies {
                    apply_once(&once(client, next[client as usize], 1000, command.clone()), index, &mut state).unwrap();
                    index += 1;
                }
            }
            let n = state.get("bank", b"n").map(|v| String::from_utf8(v.value).unwrap());
            prop_assert_eq!(n, Some(distinct.to_string()));
        }
    }
}
