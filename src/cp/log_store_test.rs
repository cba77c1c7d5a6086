//! The Raft log store on the simulated disk: its records mean what openraft expects, and a
//! crash at any point (a property test) keeps every acknowledged change and nothing torn.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;

use super::*;
use crate::cp::command::{Command, Put};
use crate::storage::wal::sim::SimDisk;
use crate::storage::wal::{Wal, WalOptions};

/// Segments of a few hundred bytes, so runs rotate and remove segments often.
fn small() -> WalOptions {
    WalOptions {
        segment_bytes_max: 300,
        zeroed_bytes: 128,
    }
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    let value = vec![index as u8; (index % 40) as usize];
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Command::Put(Put {
            keyspace: "k".into(),
            key: index.to_be_bytes().to_vec(),
            value,
        })),
    }
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn open(disk: &SimDisk) -> LogStore {
    LogStore::open_on(Arc::new(disk.clone()), small()).expect("the log recovers")
}

fn ignore() -> Done {
    Box::new(|_| {})
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime starts")
}

#[test]
fn truncate_purge_vote_and_committed_survive_a_restart() {
    runtime().block_on(async {
        let disk = SimDisk::new();
        let store = open(&disk);
        store
            .append_entries((1..=10).map(|i| entry(1, i)), ignore())
            .await
            .unwrap();
        store.truncate_from(8).await.unwrap();
        store
            .append_entries((8..=9).map(|i| entry(2, i)), ignore())
            .await
            .unwrap();
        store.purge_upto(log_id(1, 3)).await.unwrap();
        store.save_vote_durably(&Vote::new(2, 1)).await.unwrap();
        store.save_committed_lazily(Some(log_id(2, 8))).await;
        store.save_vote_durably(&Vote::new(2, 1)).await.unwrap();
        drop(store);
        let mut store = open(&disk.reboot(1));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 9)));
        let entries = store.try_get_log_entries(0..100).await.unwrap();
        let expected: Vec<_> = (4..=7)
            .map(|i| entry(1, i))
            .chain((8..=9).map(|i| entry(2, i)))
            .collect();
        assert_eq!(entries, expected);
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 8)));
    });
}

#[test]
fn purged_segments_are_removed_and_their_state_restated() {
    runtime().block_on(async {
        let disk = SimDisk::new();
        let store = open(&disk);
        store.save_vote_durably(&Vote::new(3, 1)).await.unwrap();
        for i in 1..=60 {
            store.append_entries([entry(3, i)], ignore()).await.unwrap();
        }
        store.save_vote_durably(&Vote::new(3, 1)).await.unwrap();
        let before = disk.list().unwrap().len();
        store.purge_upto(log_id(3, 55)).await.unwrap();
        // The removal follows the purge's sync; one more write makes sure it ran.
        store.save_vote_durably(&Vote::new(3, 1)).await.unwrap();
        let after = disk.list().unwrap().len();
        assert!(
            before > 5 && after < before / 2,
            "segments before {before}, after {after}"
        );
        drop(store);
        let mut store = open(&disk.reboot(2));
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new(3, 1)),
            "the vote is restated"
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 55)));
        let entries = store.try_get_log_entries(0..).await.unwrap();
        assert_eq!(entries, (56..=60).map(|i| entry(3, i)).collect::<Vec<_>>());
    });
}

#[test]
fn a_vote_survives_when_a_crash_left_the_newest_segment_without_its_head() {
    runtime().block_on(async {
        // A run wrote the vote to the first segment, rotated, and crashed before the head of
        // the new segment (which restates the vote) reached the disk.
        let disk = SimDisk::new();
        let mut wal = Wal::open(Arc::new(disk.clone()), small(), |_, _| Ok(())).unwrap();
        wal.write(&record(VOTE, &encode(&Vote::<NodeId>::new(7, 1)))).unwrap();
        wal.rotate().unwrap();
        wal.sync().unwrap();
        drop(wal);
        // The next run purges everything the first segment holds, which lets it be removed.
        let store = open(&disk);
        store.append_entries([entry(7, 1)], ignore()).await.unwrap();
        // Segments are removed after the purge's sync, before the purge is reported done.
        store.purge_upto(log_id(7, 1)).await.unwrap();
        assert!(
            !disk.list().unwrap().contains(&crate::storage::wal::segment_name(0)),
            "the first segment was removed"
        );
        drop(store);
        let mut store = open(&disk.reboot(3));
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new(7, 1)),
            "the vote was restated before the removal"
        );
    });
}

#[test]
fn after_a_disk_failure_every_write_is_refused_with_what_to_do() {
    runtime().block_on(async {
        let disk = SimDisk::new();
        let store = open(&disk);
        store.save_vote_durably(&Vote::new(1, 1)).await.unwrap();
        disk.crash();
        assert!(store.save_vote_durably(&Vote::new(2, 1)).await.is_err());
        let disk_ok_again = store.purge_upto(log_id(1, 0)).await.unwrap_err().to_string();
        assert!(disk_ok_again.contains("restart the node"), "{disk_ok_again}");
    });
}

#[test]
fn a_data_dir_with_a_sled_raft_log_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::storage::open(dir.path()).unwrap();
    db.open_tree("raft_log").unwrap().insert(b"x", b"y").unwrap();
    let err = refuse_sled_log(&db, dir.path()).unwrap_err().to_string();
    assert!(err.contains("older capkv") && err.contains("empty --data-dir"), "{err}");
    let vote_only = tempfile::tempdir().unwrap();
    let db = crate::storage::open(vote_only.path()).unwrap();
    db.open_tree("raft_meta").unwrap().insert(b"vote", b"v").unwrap();
    assert!(
        refuse_sled_log(&db, vote_only.path()).is_err(),
        "a vote in sled is refused too"
    );
    let fresh = tempfile::tempdir().unwrap();
    let db = crate::storage::open(fresh.path()).unwrap();
    refuse_sled_log(&db, fresh.path()).expect("a fresh data dir is fine");
}

/// A membership of `voters` (each config of a joint one as a slice), applied at index 1.
fn membership(configs: &[&[NodeId]]) -> StoredMembership<NodeId, BasicNode> {
    let configs = configs.iter().map(|c| c.iter().copied().collect()).collect();
    StoredMembership::new(Some(log_id(1, 1)), Membership::new(configs, ()))
}

fn membership_entry(term: u64, index: u64, voters: &[NodeId]) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Membership(Membership::new(vec![voters.iter().copied().collect()], ())),
    }
}

/// The log of node 1, leader of `term` with three voters, early acknowledgement on.
async fn leader_log(disk: &SimDisk, term: u64) -> LogStore {
    let store = open(disk);
    store.ack_own_appends_early(1, &membership(&[&[1, 2, 3]]));
    store.save_vote_durably(&Vote::new_committed(term, 1)).await.unwrap();
    store
}

/// Whether node 1, with `vote` stored and `applied` as the state machine's membership, has
/// `entries` acknowledged before their sync: the disk is dead, so an acknowledgement that
/// waited for the sync is an error.
fn acked_early(vote: Vote<NodeId>, applied: Option<&[&[NodeId]]>, entries: Vec<Entry<TypeConfig>>) -> bool {
    runtime().block_on(async {
        let disk = SimDisk::new();
        let store = open(&disk);
        if let Some(configs) = applied {
            store.ack_own_appends_early(1, &membership(configs));
        }
        store.save_vote_durably(&vote).await.unwrap();
        disk.crash();
        let (tell, told) = std::sync::mpsc::channel();
        let done: Done = Box::new(move |outcome| tell.send(outcome.is_ok()).unwrap());
        store.append_entries(entries, done).await.unwrap();
        told.recv().expect("every append hears its outcome")
    })
}

#[test]
fn only_a_leaders_own_appends_with_a_peer_in_every_quorum_are_acknowledged_before_their_sync() {
    let leader = Vote::new_committed(2, 1);
    let three: &[&[NodeId]] = &[&[1, 2, 3]];
    let own = || (5..=7).map(|i| entry(2, i)).collect::<Vec<_>>();
    assert!(acked_early(leader, Some(three), own()), "the leader's own entries");
    assert!(!acked_early(leader, None, own()), "early acks not turned on");
    assert!(!acked_early(Vote::new(2, 1), Some(three), own()), "a candidate's vote");
    assert!(
        !acked_early(Vote::new_committed(2, 2), Some(three), own()),
        "a follower of node 2"
    );
    assert!(
        !acked_early(leader, Some(three), vec![entry(1, 5)]),
        "an entry of an earlier term"
    );
    assert!(
        !acked_early(leader, Some(&[&[1]]), own()),
        "a single voter commits alone"
    );
    assert!(
        !acked_early(leader, Some(&[&[1, 2, 3], &[1]]), own()),
        "a joint config whose new half is the leader alone"
    );
    assert!(
        !acked_early(leader, Some(three), vec![entry(2, 5), membership_entry(2, 6, &[1, 2])]),
        "a batch that changes the membership"
    );
    assert!(acked_early(leader, Some(&[&[1, 2]]), own()), "two voters");
}

#[test]
fn the_newest_membership_in_the_log_decides_and_a_truncation_restores_the_one_before() {
    runtime().block_on(async {
        let disk = SimDisk::new();
        let store = leader_log(&disk, 2).await;
        let early = |store: &LogStore| {
            let log = store.log();
            let leading = store.leading();
            leading.may_ack_early(&log, &[entry(2, 100)])
        };
        assert!(early(&store));
        store
            .append_entries([membership_entry(2, 2, &[1])], ignore())
            .await
            .unwrap();
        assert!(!early(&store), "the leader alone is a quorum now");
        store.truncate_from(2).await.unwrap();
        assert!(early(&store), "the truncated change no longer counts");
        store
            .append_entries([membership_entry(2, 2, &[1])], ignore())
            .await
            .unwrap();
        store.append_entries([entry(2, 3)], ignore()).await.unwrap();
        store.purge_upto(log_id(2, 3)).await.unwrap();
        assert!(!early(&store), "a purged membership stays in effect until a newer one");
        drop(store);
        let store = leader_log(&disk.reboot(4), 2).await;
        assert!(
            early(&store),
            "after a restart the applied membership counts until the log has a newer one"
        );
    });
}

#[test]
fn answers_wait_for_the_leaders_sync_and_never_pass_a_failed_one() {
    runtime().block_on(async {
        let disk = SimDisk::new();
        let store = leader_log(&disk, 1).await;
        let own = store.own_appends();
        store
            .append_entries((1..=3).map(|i| entry(1, i)), ignore())
            .await
            .unwrap();
        own.durable_through(3).await.expect("a good disk syncs");
        disk.crash();
        store
            .append_entries((4..=5).map(|i| entry(1, i)), ignore())
            .await
            .unwrap();
        own.durable_through(3)
            .await
            .expect("entries synced before the failure are still on disk");
        let refused = own
            .durable_through(4)
            .await
            .expect_err("the failed sync never releases an answer");
        assert!(refused.contains("own copy of the log"), "{refused}");
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// The leader appends its own entries (acknowledged before their sync), a follower's answer
    /// up to the last of them is released when `durable_through` says so, and the disk dies at
    /// a random point: after recovery the leader still has every entry an answer was released
    /// for, so no commit counted a copy that was lost.
    #[test]
    fn no_answer_is_released_for_a_leader_copy_a_crash_can_lose(
        batches in prop::collection::vec((1u64..5, any::<bool>()), 1..40),
        crash_after in 0u64..60,
        seed in any::<u64>(),
    ) {
        runtime().block_on(async {
            let disk = SimDisk::new();
            let store = leader_log(&disk, 1).await;
            let own = store.own_appends();
            disk.crash_after(crash_after);
            let (mut last, mut released) = (0, 0);
            for (n, answer) in batches {
                store.append_entries((last + 1..=last + n).map(|i| entry(1, i)), ignore()).await.unwrap();
                last += n;
                if answer {
                    match own.durable_through(last).await {
                        Ok(()) => released = last,
                        Err(_) => break,
                    }
                }
            }
            drop(store);
            let recovered = open(&disk.reboot(seed)).snapshot();
            let kept = recovered.last_log_id().map_or(0, |l| l.index);
            prop_assert!(kept >= released, "an answer was released up to {released}, the leader kept up to {kept}");
            prop_assert_eq!(recovered.entries.into_values().collect::<Vec<_>>(), (1..=kept).map(|i| entry(1, i)).collect::<Vec<_>>());
            Ok::<(), TestCaseError>(())
        })?;
    }
}

/// One step of a random run, interpreted against the current log (see `run`).
#[derive(Clone, Debug)]
enum Step {
    /// Append `n` entries; `wait`: await durability before the next step.
    Append {
        n: u8,
        new_term: bool,
        wait: bool,
    },
    /// Truncate from `back` entries before the last.
    Truncate {
        back: u8,
    },
    /// Purge up to `back` entries before the last.
    Purge {
        back: u8,
    },
    Vote,
    Committed,
    /// The disk dies after this many more mutating calls.
    ArmCrash {
        after_ops: u8,
    },
    /// Stop, lose what the crash loses (chosen by `seed`), recover and check.
    Reboot {
        seed: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u8..5, any::<bool>(), any::<bool>()).prop_map(|(n, new_term, wait)| Step::Append { n, new_term, wait }),
        1 => (0u8..4).prop_map(|back| Step::Truncate { back }),
        1 => (0u8..8).prop_map(|back| Step::Purge { back }),
        1 => Just(Step::Vote),
        1 => Just(Step::Committed),
        1 => (0u8..10).prop_map(|after_ops| Step::ArmCrash { after_ops }),
        1 => any::<u64>().prop_map(|seed| Step::Reboot { seed }),
    ]
}

/// The states the log went through since the last recovery, and the last one acknowledged.
struct Run {
    history: Vec<RaftLog>,
    acked: Arc<AtomicUsize>,
    term: u64,
}

impl Run {
    fn model(&self) -> RaftLog {
        self.history
            .last()
            .expect("history starts with the recovered state")
            .clone()
    }

    fn ack(&self, step: usize) {
        self.acked.fetch_max(step, Ordering::SeqCst);
    }

    /// Applies one step to the store and to the model (recording each state it passes through);
    /// returns false when it does not apply.
    async fn apply(&mut self, store: &LogStore, step: &Step) -> bool {
        let mut model = self.model();
        let last = model.last_log_id().map_or(0, |l| l.index);
        let first_live = model.purged.map_or(1, |p| p.index + 1);
        let at = self.history.len();
        match *step {
            Step::Append { n, new_term, wait } => {
                self.term += u64::from(new_term);
                let entries: Vec<_> = (last + 1..=last + u64::from(n)).map(|i| entry(self.term, i)).collect();
                // One record per entry: a crash may keep a prefix of the batch, a log prefix too.
                for e in &entries[..entries.len() - 1] {
                    model.append(e.clone());
                    self.history.push(model.clone());
                }
                model.append(entries.last().expect("n > 0").clone());
                let at = self.history.len();
                let (acked, (tell, told)) = (self.acked.clone(), tokio::sync::oneshot::channel());
                let done: Done = Box::new(move |outcome: std::io::Result<()>| {
                    if outcome.is_ok() {
                        acked.fetch_max(at, Ordering::SeqCst);
                    }
                    let _ = tell.send(());
                });
                store.append_entries(entries, done).await.unwrap();
                if wait {
                    let _ = told.await;
                }
            }
            Step::Truncate { back } => {
                let from = last.saturating_sub(back.into()).max(first_live);
                if model.entries.is_empty() {
                    return false;
                }
                model.truncate(from);
                if store.truncate_from(from).await.is_ok() {
                    self.ack(at);
                }
            }
            Step::Purge { back } => {
                let upto = last.saturating_sub(back.into());
                let Some(upto_entry) = model.entries.get(&upto) else {
                    return false;
                };
                let upto = upto_entry.log_id;
                model.purge(upto);
                if store.purge_upto(upto).await.is_ok() {
                    self.ack(at);
                }
            }
            Step::Vote => {
                self.term += 1;
                let vote = Vote::new(self.term, 1);
                model.vote = Some(vote);
                if store.save_vote_durably(&vote).await.is_ok() {
                    self.ack(at);
                }
            }
            Step::Committed => {
                model.committed = model.last_log_id();
                store.save_committed_lazily(model.committed).await;
            }
            Step::ArmCrash { .. } | Step::Reboot { .. } => unreachable!("handled by the caller"),
        }
        self.history.push(model);
        true
    }
}

/// A one-line description of a log: entries as index/term, purged, vote term, committed.
fn brief(log: &RaftLog) -> String {
    let entries: Vec<String> = log
        .entries
        .values()
        .map(|e| format!("{}/{}", e.log_id.index, e.log_id.leader_id.term))
        .collect();
    format!(
        "entries [{}] purged {:?} vote {:?} committed {:?}",
        entries.join(" "),
        log.purged.map(|p| p.index),
        log.vote.map(|v| v.leader_id.term),
        log.committed.map(|c| c.index)
    )
}

fn check_recovery(run: &Run, recovered: &RaftLog) -> Result<(), TestCaseError> {
    let acked = run.acked.load(Ordering::SeqCst);
    let matched = run.history.iter().rposition(|state| state == recovered);
    prop_assert!(
        matched.is_some_and(|m| m >= acked),
        "recovered a log that is not a state at or after the last acknowledged step {acked} \
         (matches step {matched:?} of {}): {}\nstates since the last recovery:\n{}",
        run.history.len() - 1,
        brief(recovered),
        run.history.iter().map(brief).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Appends, truncates, purges, votes and commits, with crashes at random points: after
    /// each recovery the log is exactly the state after some step at or after the last
    /// acknowledged one, so every acknowledged change is there, in order, and no torn record
    /// was applied.
    #[test]
    fn every_acknowledged_change_survives_a_crash(steps in prop::collection::vec(step(), 1..80)) {
        runtime().block_on(async {
            let mut disk = SimDisk::new();
            let mut store = open(&disk);
            let mut run = Run { history: vec![RaftLog::default()], acked: Arc::new(AtomicUsize::new(0)), term: 1 };
            let reboot = |seed: u64, store: LogStore, disk: &SimDisk| {
                drop(store);
                disk.reboot(seed)
            };
            for step in steps.iter().chain([&Step::Reboot { seed: 0 }]) {
                match step {
                    Step::ArmCrash { after_ops } => disk.crash_after((*after_ops).into()),
                    Step::Reboot { seed } => {
                        disk = reboot(*seed, store, &disk);
                        store = open(&disk);
                        let recovered = store.snapshot();
                        check_recovery(&run, &recovered)?;
                        let term = run.term.max(recovered.vote.map_or(0, |v| v.leader_id.term));
                        run = Run { history: vec![recovered], acked: Arc::new(AtomicUsize::new(0)), term };
                    }
                    step => {
                        run.apply(&store, step).await;
                    }
                }
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}
