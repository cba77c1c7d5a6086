//! The log's recovery rules on the simulated disk: torn tails dropped, corruption reported,
//! rotation and segment removal, and (a property test) that a crash at any point keeps every
//! synced record and returns only whole records, in order.

use std::sync::Arc;

use proptest::prelude::*;

use super::sim::SimDisk;
use super::*;

/// Small segments, so records rotate often, with zeroed space written ahead in small chunks.
fn small() -> WalOptions {
    WalOptions {
        segment_bytes_max: 64,
        zeroed_bytes: 24,
    }
}

/// Segments that end at their last record (no zeroed space ahead).
fn unzeroed() -> WalOptions {
    WalOptions {
        zeroed_bytes: 0,
        ..WalOptions::default()
    }
}

/// Opens the log on `disk` and returns it with the records it recovered.
fn open(disk: &SimDisk, options: WalOptions) -> Result<(Wal, Vec<Vec<u8>>), WalError> {
    let mut records = Vec::new();
    let wal = Wal::open(Arc::new(disk.clone()), options, |_, payload| {
        records.push(payload.to_vec());
        Ok(())
    })?;
    Ok((wal, records))
}

fn record(n: u32) -> Vec<u8> {
    format!("record {n}").into_bytes()
}

/// Writes records `from..to`, rotating when the segment is full, and syncs.
fn write_range(wal: &mut Wal, from: u32, to: u32) {
    for n in from..to {
        if wal.is_full() {
            wal.rotate().unwrap();
        }
        wal.write(&record(n)).unwrap();
    }
    wal.sync().unwrap();
}

#[test]
fn synced_records_come_back_in_order() {
    let disk = SimDisk::new();
    let (mut wal, recovered) = open(&disk, WalOptions::default()).unwrap();
    assert!(recovered.is_empty());
    write_range(&mut wal, 0, 10);
    let (_, recovered) = open(&disk.reboot(1), WalOptions::default()).unwrap();
    assert_eq!(recovered, (0..10).map(record).collect::<Vec<_>>());
}

#[test]
fn a_torn_tail_is_cut_and_never_returned() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, unzeroed()).unwrap();
    write_range(&mut wal, 0, 3);
    let name = segment_name(0);
    let good_len = disk.len(&name).unwrap();
    // Half of a fourth record's frame reached the disk, then the power went.
    let mut torn = Vec::new();
    frame(&record(3), &mut torn);
    disk.append(&name, &torn[..torn.len() / 2]).unwrap();
    disk.sync_data(&name).unwrap();
    let disk = disk.reboot(2);
    let (mut wal, recovered) = open(&disk, unzeroed()).unwrap();
    assert_eq!(recovered, (0..3).map(record).collect::<Vec<_>>());
    assert_eq!(
        disk.len(&name).unwrap(),
        good_len,
        "the torn bytes are cut from the file"
    );
    write_range(&mut wal, 3, 5);
    let (_, recovered) = open(&disk.reboot(3), unzeroed()).unwrap();
    assert_eq!(recovered, (0..5).map(record).collect::<Vec<_>>());
}

#[test]
fn a_garbled_last_record_is_dropped() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, unzeroed()).unwrap();
    write_range(&mut wal, 0, 3);
    let len = disk.len(&segment_name(0)).unwrap() as usize;
    disk.corrupt(&segment_name(0), len - 2);
    let (_, recovered) = open(&disk.reboot(4), unzeroed()).unwrap();
    assert_eq!(recovered, (0..2).map(record).collect::<Vec<_>>());
}

#[test]
fn zeroed_space_after_the_last_record_is_a_clean_end() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, WalOptions::default()).unwrap();
    write_range(&mut wal, 0, 3);
    let name = segment_name(0);
    assert_eq!(
        disk.len(&name).unwrap(),
        ZEROED_BYTES,
        "zeros written ahead of the records"
    );
    let disk = disk.reboot(11);
    let (mut wal, recovered) = open(&disk, WalOptions::default()).unwrap();
    assert_eq!(recovered, (0..3).map(record).collect::<Vec<_>>());
    assert_eq!(
        disk.len(&name).unwrap(),
        ZEROED_BYTES,
        "nothing is cut from clean zeros"
    );
    write_range(&mut wal, 3, 6);
    let (_, recovered) = open(&disk.reboot(12), WalOptions::default()).unwrap();
    assert_eq!(
        recovered,
        (0..6).map(record).collect::<Vec<_>>(),
        "later records go over the zeros"
    );
}

#[test]
fn a_torn_record_over_zeroed_space_is_cut_and_the_log_goes_on() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, WalOptions::default()).unwrap();
    write_range(&mut wal, 0, 3);
    let name = segment_name(0);
    let mut good = Vec::new();
    (0..3).for_each(|n| frame(&record(n), &mut good));
    // Half of a fourth record's frame landed over the zeros, then the power went.
    let mut torn = Vec::new();
    frame(&record(3), &mut torn);
    disk.write_at(&name, good.len() as u64, &torn[..torn.len() / 2])
        .unwrap();
    disk.sync_data(&name).unwrap();
    let disk = disk.reboot(13);
    let (mut wal, recovered) = open(&disk, WalOptions::default()).unwrap();
    assert_eq!(recovered, (0..3).map(record).collect::<Vec<_>>());
    assert_eq!(
        disk.len(&name).unwrap(),
        good.len() as u64,
        "the torn bytes and what follows are cut"
    );
    write_range(&mut wal, 3, 5);
    assert_eq!(
        disk.len(&name).unwrap(),
        ZEROED_BYTES,
        "zeroed space again ahead of the records"
    );
    let (_, recovered) = open(&disk.reboot(14), WalOptions::default()).unwrap();
    assert_eq!(recovered, (0..5).map(record).collect::<Vec<_>>());
}

#[test]
fn garbage_after_zeroed_space_in_an_older_segment_is_corruption() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, small()).unwrap();
    write_range(&mut wal, 0, 40);
    let first = segment_name(0);
    let len = disk.len(&first).unwrap() as usize;
    disk.corrupt(&first, len - 1);
    let err = open(&disk.reboot(15), small()).err().expect("corruption is an error");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

#[test]
fn rotation_spreads_records_over_segments_and_keeps_them_all() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, small()).unwrap();
    write_range(&mut wal, 0, 40);
    let segments = wal.segments();
    assert!(segments.len() > 5, "64-byte segments rotate often: {segments:?}");
    let (wal, recovered) = open(&disk.reboot(5), small()).unwrap();
    assert_eq!(recovered, (0..40).map(record).collect::<Vec<_>>());
    assert_eq!(wal.segments(), segments);
}

#[test]
fn removal_takes_only_a_prefix_and_never_the_current_segment() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, small()).unwrap();
    write_range(&mut wal, 0, 40);
    let segments = wal.segments();
    let removed = wal.remove_segments(|first| first != segments[2]).unwrap();
    assert_eq!(
        removed,
        segments[..2].to_vec(),
        "stops at the first segment still needed"
    );
    let removed = wal.remove_segments(|_| true).unwrap();
    assert_eq!(removed, segments[2..segments.len() - 1].to_vec());
    assert_eq!(wal.segments(), vec![*segments.last().unwrap()]);
    let (_, recovered) = open(&disk.reboot(6), small()).unwrap();
    let first = *segments.last().unwrap() as u32;
    assert_eq!(recovered, (first..40).map(record).collect::<Vec<_>>());
}

#[test]
fn a_bad_record_in_an_older_segment_is_corruption_not_a_torn_write() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, small()).unwrap();
    write_range(&mut wal, 0, 40);
    disk.corrupt(&segment_name(0), 10);
    let err = open(&disk.reboot(7), small()).err().expect("corruption is an error");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&segment_name(0)) && text.contains("not a torn write"),
        "{text}"
    );
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, small()).unwrap();
    write_range(&mut wal, 0, 40);
    let segments = wal.segments();
    disk.remove(&segment_name(segments[1])).unwrap();
    let err = open(&disk.reboot(8), small()).err().expect("a gap is an error");
    assert!(err.to_string().contains("starts at record"), "{err}");
}

#[test]
fn oversized_and_empty_records_are_refused() {
    let disk = SimDisk::new();
    let (mut wal, _) = open(&disk, small()).unwrap();
    assert!(matches!(wal.write(&[]), Err(WalError::TooLarge(0))));
    assert!(wal.write(&vec![0; RECORD_BYTES_MAX + 1]).is_err());
}

/// One step of a random run: write some records, sync or not, or crash.
#[derive(Clone, Debug)]
enum Step {
    Write(u8),
    Sync,
    Crash { after_ops: u8, seed: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..6).prop_map(Step::Write),
        2 => Just(Step::Sync),
        1 => (0u8..6, any::<u64>()).prop_map(|(after_ops, seed)| Step::Crash { after_ops, seed }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// After any crash, the log holds a prefix of what was written that includes every record
    /// a successful sync covered, and nothing else.
    #[test]
    fn a_crash_keeps_a_prefix_that_includes_every_synced_record(
        steps in prop::collection::vec(step(), 1..60),
        zeroed in prop::sample::select(vec![0u64, 5, 24, 100]),
    ) {
        let options = WalOptions { zeroed_bytes: zeroed, ..small() };
        let mut disk = SimDisk::new();
        let (mut wal, _) = open(&disk, options.clone()).unwrap();
        let mut written: Vec<Vec<u8>> = Vec::new();
        let mut synced = 0;
        let mut next = 0u32;
        for step in steps {
            match step {
                Step::Write(n) => {
                    for _ in 0..n {
                        let body = record(next).repeat(1 + next as usize % 3);
                        next += 1;
                        if wal.is_full() && wal.rotate().is_err() { break; }
                        if wal.write(&body).is_ok() { written.push(body); }
                    }
                }
                Step::Sync => if wal.sync().is_ok() { synced = written.len() },
                Step::Crash { after_ops, seed } => {
                    disk.crash_after(after_ops.into());
                    let _ = wal.sync().map(|_| synced = written.len());
                    disk = disk.reboot(seed);
                    let (reopened, recovered) = open(&disk, options.clone()).unwrap();
                    prop_assert!(recovered.len() >= synced, "lost synced records: {} < {synced}", recovered.len());
                    prop_assert_eq!(&recovered[..], &written[..recovered.len()]);
                    wal = reopened;
                    written = recovered;
                    synced = written.len();
                }
            }
        }
    }
}
