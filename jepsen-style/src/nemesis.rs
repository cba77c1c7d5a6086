//! Nemeses: which faults a run injects, when, and in what shape. Pure: no IO, no clocks.
//!
//! A run's fault plan has two halves:
//!
//! * the **schedule** ([`schedule`]): a seeded list of fault windows in milliseconds since the test
//!   started. It opens with a quiet period, alternates fault windows of
//!   [`WINDOW_MS_MIN`]..=[`WINDOW_MS_MAX`] with healed gaps, and keeps the last
//!   [`HEALED_TAIL_FRACTION`] of the time limit healed, so every run ends with a stretch in which
//!   the cluster must recover;
//! * the **shape** of each fault ([`plan`]): a pure function of the node ids, the window's own seed
//!   and, for the shapes that need it, the leader at the moment the window opens. Partitions are
//!   lists of groups with capkv's meaning: two nodes talk when some group holds both, so
//!   overlapping groups build bridges and rings.
//!
//! The runner applies a [`Fault`] through a *layer* ([`crate::layer`]): capkv's own fault-injection
//! filter (`capkv fault partition|heal|clock`), or network namespaces with iptables rules
//! ([`crate::netns`]); kill and pause are signals and clock skew is capkv's fault API on both.
//!
//! # Caveats
//!
//! * `partition-oneway` is refused on the built-in layer: capkv's filter is symmetric (a group
//!   either talks both ways or not at all), and faking a one-way cut with a symmetric one would
//!   mislabel the result. The netns layer runs it. `mixed` never draws it, so a seed gives the
//!   same schedule on both layers.
//! * Shapes that depend on the leader use the leader the runner observed just before the window;
//!   if leadership moves at that instant the shape targets the previous leader.
//! * `mixed` draws one fault per window; faults never overlap, so a window's effect is always
//!   attributable to one nemesis.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::fault::Fault;
use crate::layer::Layer;

/// Quiet time before the first fault (shortened for short runs, see [`schedule`]).
pub const QUIET_MS: u64 = 5_000;
/// Shortest fault window.
pub const WINDOW_MS_MIN: u64 = 5_000;
/// Longest fault window.
pub const WINDOW_MS_MAX: u64 = 10_000;
/// Shortest healed gap between two windows.
pub const GAP_MS_MIN: u64 = 4_000;
/// Longest healed gap between two windows.
pub const GAP_MS_MAX: u64 = 6_000;
/// The tail of the time limit that stays healed.
pub const HEALED_TAIL_FRACTION: f64 = 0.25;
/// A window cut shorter than this by the healed tail is dropped rather than run.
pub const WINDOW_MS_USEFUL: u64 = 2_000;
/// Largest clock skew applied by `clock-skew`, either way.
pub const CLOCK_SKEW_MS_MAX: i64 = 10_000;
/// Smallest clock skew applied by `clock-skew`, either way.
pub const CLOCK_SKEW_MS_MIN: i64 = 1_000;

/// A nemesis as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum NemesisKind {
    /// The nodes split into two halves (the smaller one is the minority).
    PartitionHalves,
    /// A majority and a minority, with the leader on the side the seed chooses.
    PartitionMajority,
    /// The leader alone against everyone else.
    IsolateLeader,
    /// Every node sees a majority, but each a different one (overlapping groups).
    MajoritiesRing,
    /// Two halves that only talk through one bridge node.
    Bridge,
    /// One-way partitions (halves; traffic from one half to the other is dropped): netns layer only.
    PartitionOneway,
    /// SIGKILL a node; restart it on the same data dir when the window closes.
    Kill,
    /// SIGSTOP a node; SIGCONT when the window closes.
    Pause,
    /// Shift one node's clock (ap timestamps) by a few seconds either way.
    ClockSkew,
    /// `member remove` a node (the leader or another, by the seed) and kill it; when the window
    /// closes it starts again on an empty data dir with `--join` and is added back (cp only).
    Membership,
    /// A seeded random sequence of the others.
    Mixed,
}

/// Every nemesis, in the order `--help` lists them.
pub const ALL: [NemesisKind; 11] = [
    NemesisKind::PartitionHalves,
    NemesisKind::PartitionMajority,
    NemesisKind::IsolateLeader,
    NemesisKind::MajoritiesRing,
    NemesisKind::Bridge,
    NemesisKind::PartitionOneway,
    NemesisKind::Kill,
    NemesisKind::Pause,
    NemesisKind::ClockSkew,
    NemesisKind::Membership,
    NemesisKind::Mixed,
];

impl NemesisKind {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::PartitionHalves => "partition-halves",
            NemesisKind::PartitionMajority => "partition-majority",
            NemesisKind::IsolateLeader => "isolate-leader",
            NemesisKind::MajoritiesRing => "majorities-ring",
            NemesisKind::Bridge => "bridge",
            NemesisKind::PartitionOneway => "partition-oneway",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::ClockSkew => "clock-skew",
            NemesisKind::Membership => "membership",
            NemesisKind::Mixed => "mixed",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Result<Self, String> {
        ALL.iter().copied().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|k| k.name()).collect();
            format!("unknown nemesis '{name}'; choose one of: {}", names.join(", "))
        })
    }

    /// Why `layer` cannot run this nemesis for `mode` (`"cp"`/`"ap"`), if it cannot.
    pub fn refusal_on(self, mode: &str, layer: Layer) -> Option<String> {
        match (self, layer) {
            (NemesisKind::PartitionOneway, Layer::Netns) => None,
            _ => self.refusal(mode),
        }
    }

    /// Why the built-in layer cannot run this nemesis for `mode` (`"cp"`/`"ap"`), if it cannot.
    pub fn refusal(self, mode: &str) -> Option<String> {
        match self {
            NemesisKind::PartitionOneway => Some(
                "partition-oneway is not available: capkv's built-in fault filter is symmetric (two nodes either \
                 talk both ways or not at all), and a symmetric cut would only pretend to be one-way; it needs the \
                 netns/iptables layer: run it with --layer netns (root, ip and iptables)"
                    .into(),
            ),
            NemesisKind::Membership if mode != "cp" => Some(
                "membership changes are checked on the cp register (Raft membership); run it with --mode cp".into(),
            ),
            NemesisKind::ClockSkew if mode == "cp" => Some(
                "clock-skew only moves ap timestamps (capkv's Raft path does not read the skewed clock), so on a cp \
                 keyspace it would inject nothing; run it with --mode ap"
                    .into(),
            ),
            _ => None,
        }
    }

    /// The concrete nemeses `mixed` draws from for `mode`.
    pub fn mixable(mode: &str) -> Vec<NemesisKind> {
        ALL.iter()
            .copied()
            // Membership is left out so a seed's `mixed` schedule stays what it was.
            .filter(|k| !matches!(k, NemesisKind::Mixed | NemesisKind::Membership) && k.refusal(mode).is_none())
            .collect()
    }
}

/// One scheduled fault window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    /// The concrete nemesis of this window (never `Mixed`).
    pub kind: NemesisKind,
    /// When the fault starts, ms since the test started.
    pub start_ms: u64,
    /// When the fault stops, ms since the test started.
    pub stop_ms: u64,
    /// Seed for this window's shape (see [`plan`]).
    pub seed: u64,
}

/// The seeded fault windows for a run of `time_limit_ms` under `kind` (`mixed` draws each window's
/// nemesis from `NemesisKind::mixable(mode)`).
///
/// Short runs scale the quiet period down to 15% of the time limit so a 20 s run still gets a
/// fault window; the last [`HEALED_TAIL_FRACTION`] always stays healed.
pub fn schedule(kind: NemesisKind, mode: &str, time_limit_ms: u64, seed: u64) -> Vec<Window> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
    let fault_end_ms = (time_limit_ms as f64 * (1.0 - HEALED_TAIL_FRACTION)) as u64;
    let mut t = QUIET_MS.min(time_limit_ms * 15 / 100);
    let choices = NemesisKind::mixable(mode);
    let mut windows = Vec::new();
    while t + WINDOW_MS_USEFUL <= fault_end_ms {
        let length_ms = rng.gen_range(WINDOW_MS_MIN..=WINDOW_MS_MAX).min(fault_end_ms - t);
        let window_kind = if kind == NemesisKind::Mixed {
            *choices
                .choose(&mut rng)
                .expect("mixed has at least one nemesis to choose from")
        } else {
            kind
        };
        windows.push(Window {
            kind: window_kind,
            start_ms: t,
            stop_ms: t + length_ms,
            seed: rng.gen(),
        });
        t += length_ms + rng.gen_range(GAP_MS_MIN..=GAP_MS_MAX);
    }
    windows
}

/// The smallest majority of `n` nodes.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

fn shuffled(nodes: &[u64], rng: &mut StdRng) -> Vec<u64> {
    let mut v = nodes.to_vec();
    v.sort_unstable();
    v.shuffle(rng);
    v
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

/// Which nodes can reach a majority (themselves included) under `groups`.
pub fn sides_of(nodes: &[u64], groups: &[Vec<u64>]) -> (Vec<u64>, Vec<u64>) {
    let need = quorum(nodes.len());
    let (mut majority, mut minority) = (Vec::new(), Vec::new());
    for &n in nodes {
        let seen = nodes
            .iter()
            .filter(|&&m| m == n || groups.iter().any(|g| g.contains(&n) && g.contains(&m)))
            .count();
        if seen >= need {
            majority.push(n);
        } else {
            minority.push(n);
        }
    }
    (sorted(majority), sorted(minority))
}

/// The partition with these groups, its sides computed.
pub fn partition(nodes: &[u64], groups: Vec<Vec<u64>>) -> Fault {
    let groups: Vec<Vec<u64>> = groups.into_iter().map(sorted).collect();
    let (majority, minority) = sides_of(nodes, &groups);
    Fault::Partition {
        groups,
        majority,
        minority,
    }
}

/// Two halves at random; the smaller (`n/2` nodes) is the minority.
pub fn partition_halves(nodes: &[u64], seed: u64) -> Fault {
    let v = shuffled(nodes, &mut StdRng::seed_from_u64(seed));
    let (small, large) = v.split_at(nodes.len() / 2);
    partition(nodes, vec![small.to_vec(), large.to_vec()])
}

/// A majority and a minority, with the leader (when known) on the side the seed picks.
pub fn partition_majority(nodes: &[u64], seed: u64, leader: Option<u64>) -> Fault {
    let mut rng = StdRng::seed_from_u64(seed);
    let leader_in_majority: bool = rng.gen();
    let mut v = shuffled(nodes, &mut rng);
    let minority_len = nodes.len() - quorum(nodes.len());
    if let Some(l) = leader.filter(|l| nodes.contains(l)) {
        v.retain(|&n| n != l);
        if leader_in_majority {
            v.push(l);
        } else {
            v.insert(0, l);
        }
    }
    let (minority, majority) = v.split_at(minority_len);
    partition(nodes, vec![minority.to_vec(), majority.to_vec()])
}

/// The leader (or, when none is known, a seeded node) alone against the rest.
pub fn isolate_leader(nodes: &[u64], seed: u64, leader: Option<u64>) -> Fault {
    let victim = leader
        .filter(|l| nodes.contains(l))
        .unwrap_or_else(|| shuffled(nodes, &mut StdRng::seed_from_u64(seed))[0]);
    let rest: Vec<u64> = nodes.iter().copied().filter(|&n| n != victim).collect();
    partition(nodes, vec![vec![victim], rest])
}

/// Nodes on a seeded ring; each talks to its neighbours within distance `d`, where `d` is the
/// smallest distance that lets every node see a majority. Each node sees a different majority,
/// and no two of them need agree.
pub fn majorities_ring(nodes: &[u64], seed: u64) -> Fault {
    let ring = shuffled(nodes, &mut StdRng::seed_from_u64(seed));
    let n = ring.len();
    let reach = quorum(n).saturating_sub(1).div_ceil(2).max(1);
    let groups = (0..n)
        .map(|i| (0..=reach).map(|j| ring[(i + j) % n]).collect())
        .collect();
    partition(nodes, groups)
}

/// Two halves that only talk through one bridge node, which is in both groups.
pub fn bridge(nodes: &[u64], seed: u64) -> Fault {
    let v = shuffled(nodes, &mut StdRng::seed_from_u64(seed));
    let half = (nodes.len().saturating_sub(1)) / 2;
    let (left, rest) = v.split_at(half);
    let bridge = rest[0];
    let mut left = left.to_vec();
    left.push(bridge);
    partition(nodes, vec![left, rest.to_vec()])
}

/// Two halves at random; the seed picks which half's packets to the other are dropped. The
/// larger half counts as the majority side.
pub fn partition_oneway(nodes: &[u64], seed: u64) -> Fault {
    let mut rng = StdRng::seed_from_u64(seed);
    let v = shuffled(nodes, &mut rng);
    let (small, large) = v.split_at(nodes.len() / 2);
    let (small, large) = (sorted(small.to_vec()), sorted(large.to_vec()));
    let (from, to) = if rng.gen() {
        (small.clone(), large.clone())
    } else {
        (large.clone(), small.clone())
    };
    Fault::PartitionOneway {
        from,
        to,
        majority: large,
        minority: small,
    }
}

/// A victim: the leader or another node, by the seed.
fn victim(nodes: &[u64], rng: &mut StdRng, leader: Option<u64>) -> u64 {
    let pick_leader: bool = rng.gen();
    match leader.filter(|l| pick_leader && nodes.contains(l)) {
        Some(l) => l,
        None => shuffled(nodes, rng)[0],
    }
}

/// The concrete fault of a window. `kind` must not be `Mixed`.
pub fn plan(kind: NemesisKind, nodes: &[u64], seed: u64, leader: Option<u64>) -> Fault {
    assert!(!nodes.is_empty(), "a fault needs nodes");
    let mut rng = StdRng::seed_from_u64(seed);
    match kind {
        NemesisKind::PartitionHalves => partition_halves(nodes, seed),
        NemesisKind::PartitionMajority => partition_majority(nodes, seed, leader),
        NemesisKind::IsolateLeader => isolate_leader(nodes, seed, leader),
        NemesisKind::MajoritiesRing => majorities_ring(nodes, seed),
        NemesisKind::Bridge => bridge(nodes, seed),
        NemesisKind::Kill => Fault::Kill {
            node: victim(nodes, &mut rng, leader),
        },
        NemesisKind::Pause => Fault::Pause {
            node: victim(nodes, &mut rng, leader),
        },
        NemesisKind::Membership => Fault::Replace {
            node: victim(nodes, &mut rng, leader),
        },
        NemesisKind::ClockSkew => {
            let node = shuffled(nodes, &mut rng)[0];
            let magnitude = rng.gen_range(CLOCK_SKEW_MS_MIN..=CLOCK_SKEW_MS_MAX);
            let offset_ms = if rng.gen() { magnitude } else { -magnitude };
            Fault::ClockSkew { node, offset_ms }
        }
        NemesisKind::PartitionOneway => partition_oneway(nodes, seed),
        NemesisKind::Mixed => {
            panic!("plan() got {kind:?}: the runner must expand it first")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE: [u64; 5] = [1, 2, 3, 4, 5];

    fn talk(groups: &[Vec<u64>], a: u64, b: u64) -> bool {
        a == b || groups.iter().any(|g| g.contains(&a) && g.contains(&b))
    }

    fn groups(f: &Fault) -> &[Vec<u64>] {
        match f {
            Fault::Partition { groups, .. } => groups,
            other => panic!("expected a partition, got {other:?}"),
        }
    }

    #[test]
    fn membership_is_cp_only_and_never_drawn_by_mixed() {
        assert!(NemesisKind::Membership.refusal("ap").is_some());
        assert!(NemesisKind::Membership.refusal("cp").is_none());
        assert!(!NemesisKind::mixable("cp").contains(&NemesisKind::Membership));
        assert!(matches!(
            plan(NemesisKind::Membership, &[1, 2, 3], 4, Some(1)),
            Fault::Replace { .. }
        ));
    }

    #[test]
    fn names_round_trip() {
        for k in ALL {
            assert_eq!(NemesisKind::parse(k.name()), Ok(k));
        }
        assert!(NemesisKind::parse("nope").unwrap_err().contains("partition-halves"));
    }

    #[test]
    fn oneway_is_refused_and_clock_skew_only_for_ap() {
        assert!(NemesisKind::PartitionOneway
            .refusal("ap")
            .unwrap()
            .contains("symmetric"));
        assert!(NemesisKind::ClockSkew.refusal("cp").is_some());
        assert!(NemesisKind::ClockSkew.refusal("ap").is_none());
        assert!(!NemesisKind::mixable("cp").contains(&NemesisKind::ClockSkew));
        assert!(NemesisKind::mixable("ap").contains(&NemesisKind::ClockSkew));
        assert!(!NemesisKind::mixable("ap").contains(&NemesisKind::PartitionOneway));
        assert!(NemesisKind::PartitionOneway.refusal_on("cp", Layer::BuiltIn).is_some());
        assert!(NemesisKind::PartitionOneway.refusal_on("cp", Layer::Netns).is_none());
        assert!(NemesisKind::ClockSkew.refusal_on("cp", Layer::Netns).is_some());
    }

    #[test]
    fn oneway_splits_halves_in_a_seeded_direction() {
        let (mut small_sends, mut large_sends) = (0, 0);
        for seed in 0..40 {
            let f = partition_oneway(&FIVE, seed);
            assert_eq!(f, partition_oneway(&FIVE, seed));
            let Fault::PartitionOneway {
                from,
                to,
                majority,
                minority,
            } = &f
            else {
                panic!("{f:?}")
            };
            assert_eq!((majority.len(), minority.len()), (3, 2));
            assert_eq!(from.len() + to.len(), 5);
            assert!(from.iter().all(|n| !to.contains(n)));
            if from.len() == 2 {
                small_sends += 1
            } else {
                large_sends += 1
            }
            assert!(f.detail().starts_with("one-way partition {"), "{}", f.detail());
        }
        assert!(small_sends > 5 && large_sends > 5, "{small_sends} / {large_sends}");
    }

    #[test]
    fn halves_split_two_three_and_are_seeded() {
        for seed in 0..50 {
            let f = partition_halves(&FIVE, seed);
            assert_eq!(f, partition_halves(&FIVE, seed), "same seed, same shape");
            let (maj, min) = f.sides();
            assert_eq!((maj.len(), min.len()), (3, 2), "seed {seed}: {f:?}");
            let g = groups(&f);
            assert!(!talk(g, min[0], maj[0]));
            assert!(talk(g, min[0], min[1]));
        }
        let shapes: std::collections::BTreeSet<String> = (0..20).map(|s| partition_halves(&FIVE, s).detail()).collect();
        assert!(shapes.len() > 3, "the seed moves the cut: {shapes:?}");
    }

    #[test]
    fn majority_puts_the_leader_on_both_sides_across_seeds() {
        let (mut in_majority, mut in_minority) = (0, 0);
        for seed in 0..40 {
            let (maj, min) = partition_majority(&FIVE, seed, Some(3)).sides();
            assert_eq!((maj.len(), min.len()), (3, 2));
            if maj.contains(&3) {
                in_majority += 1;
            } else {
                assert!(min.contains(&3));
                in_minority += 1;
            }
        }
        assert!(in_majority > 5 && in_minority > 5, "{in_majority} / {in_minority}");
    }

    #[test]
    fn isolate_leader_cuts_the_leader_off() {
        let f = isolate_leader(&FIVE, 9, Some(4));
        assert_eq!(f.sides(), (vec![1, 2, 3, 5], vec![4]));
        assert_eq!(groups(&f), &[vec![4], vec![1, 2, 3, 5]]);
        let (_, min) = isolate_leader(&FIVE, 9, None).sides();
        assert_eq!(min.len(), 1, "without a known leader a seeded node is isolated");
    }

    #[test]
    fn ring_gives_every_node_a_different_majority() {
        for seed in 0..20 {
            let f = majorities_ring(&FIVE, seed);
            let g = groups(&f);
            let mut views = std::collections::BTreeSet::new();
            for &n in &FIVE {
                let view: Vec<u64> = FIVE.iter().copied().filter(|&m| talk(g, n, m)).collect();
                assert_eq!(view.len(), 3, "seed {seed}: node {n} sees {view:?}");
                views.insert(view);
            }
            assert_eq!(views.len(), 5, "every view differs");
            assert_eq!(f.sides().0, FIVE.to_vec(), "everyone sees a majority");
        }
    }

    #[test]
    fn bridge_has_one_node_in_both_groups() {
        let f = bridge(&FIVE, 3);
        let g = groups(&f);
        assert_eq!(g.len(), 2);
        let both: Vec<u64> = FIVE
            .iter()
            .copied()
            .filter(|n| g[0].contains(n) && g[1].contains(n))
            .collect();
        assert_eq!(both.len(), 1);
        let left: Vec<u64> = g[0].iter().copied().filter(|n| *n != both[0]).collect();
        let right: Vec<u64> = g[1].iter().copied().filter(|n| *n != both[0]).collect();
        assert_eq!((left.len(), right.len()), (2, 2));
        assert!(!talk(g, left[0], right[0]));
        assert!(talk(g, left[0], both[0]) && talk(g, right[0], both[0]));
    }

    #[test]
    fn schedule_is_seeded_quiet_first_and_healed_last() {
        let s = schedule(NemesisKind::PartitionHalves, "cp", 60_000, 7);
        assert_eq!(s, schedule(NemesisKind::PartitionHalves, "cp", 60_000, 7));
        assert_ne!(s, schedule(NemesisKind::PartitionHalves, "cp", 60_000, 8));
        assert!(s.len() >= 2, "{s:?}");
        assert_eq!(s[0].start_ms, QUIET_MS);
        for w in &s {
            assert!(w.stop_ms > w.start_ms && w.stop_ms - w.start_ms <= WINDOW_MS_MAX);
            assert!(w.stop_ms <= 45_000, "the last quarter stays healed: {w:?}");
        }
        for pair in s.windows(2) {
            assert!(pair[1].start_ms >= pair[0].stop_ms + GAP_MS_MIN, "healed gap: {pair:?}");
        }
    }

    #[test]
    fn short_runs_still_get_a_window() {
        let s = schedule(NemesisKind::Kill, "cp", 20_000, 1);
        assert!(!s.is_empty());
        assert_eq!(s[0].start_ms, 3_000);
        assert!(s.last().unwrap().stop_ms <= 15_000);
        assert!(schedule(NemesisKind::Kill, "cp", 2_000, 1).is_empty());
    }

    #[test]
    fn mixed_draws_several_kinds() {
        let kinds: std::collections::BTreeSet<&str> = (0..10)
            .flat_map(|seed| schedule(NemesisKind::Mixed, "cp", 120_000, seed))
            .map(|w| w.kind.name())
            .collect();
        assert!(kinds.len() >= 4, "{kinds:?}");
        assert!(!kinds.contains("mixed") && !kinds.contains("clock-skew") && !kinds.contains("partition-oneway"));
    }

    #[test]
    fn victims_and_skews_are_seeded() {
        assert_eq!(
            plan(NemesisKind::Kill, &FIVE, 5, Some(2)),
            plan(NemesisKind::Kill, &FIVE, 5, Some(2))
        );
        let victims: std::collections::BTreeSet<u64> = (0..30)
            .map(|s| match plan(NemesisKind::Pause, &FIVE, s, Some(2)) {
                Fault::Pause { node } => node,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(victims.contains(&2) && victims.len() > 2, "{victims:?}");
        for s in 0..20 {
            match plan(NemesisKind::ClockSkew, &FIVE, s, None) {
                Fault::ClockSkew { offset_ms, .. } => {
                    assert!((CLOCK_SKEW_MS_MIN..=CLOCK_SKEW_MS_MAX).contains(&offset_ms.abs()))
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
