//! The comparison matrix: each case run against etcd and capkv back to back, round after round,
//! with the order flipped every round so neither system always runs on a warmer (or busier)
//! machine. The table reports medians over rounds and the spread of the per-round ratios.

use std::fmt::Write as _;

use capkv::bench::{Op, Report};
use capkv::Error;
use clap::{Args, ValueEnum};

use crate::{run_capkv, run_etcd, Load, LoadArgs};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// etcd members' client addresses, HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    etcd: String,
    /// capkv nodes' client addresses, HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    capkv: String,
    /// The cp keyspace to load (it must exist).
    #[arg(long, default_value = "bench")]
    cp_keyspace: String,
    /// The ap keyspace for the `ap-put-c64` case (it must exist).
    #[arg(long, default_value = "bench_ap")]
    ap_keyspace: String,
    /// Rounds over the whole matrix.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Cases to run, in this order (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    cases: Vec<Case>,
    /// Also write every run's full report to this file, as a JSON array.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
}

/// A row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Case {
    PutC1,
    PutC64,
    PutC256,
    LinearizableGetC64,
    SerializableGetC64,
    /// capkv's ap put (no consensus) against etcd's put: what giving up consistency buys.
    ApPutC64,
    /// The same with `--acks 2`: the write waits for a second replica's disk, as etcd's waits
    /// for a majority.
    ApPutAcks2C64,
}

impl Case {
    const ALL: [Case; 7] = [
        Case::PutC1,
        Case::PutC64,
        Case::PutC256,
        Case::LinearizableGetC64,
        Case::SerializableGetC64,
        Case::ApPutC64,
        Case::ApPutAcks2C64,
    ];

    fn label(self) -> &'static str {
        match self {
            Case::PutC1 => "put, concurrency 1",
            Case::PutC64 => "put, concurrency 64",
            Case::PutC256 => "put, concurrency 256",
            Case::LinearizableGetC64 => "linearizable get, c 64",
            Case::SerializableGetC64 => "serializable get, c 64",
            Case::ApPutC64 => "capkv ap put vs etcd put, c 64",
            Case::ApPutAcks2C64 => "capkv ap put --acks 2 vs etcd put, c 64",
        }
    }

    fn load(self, args: &LoadArgs) -> Load {
        let (op, concurrency, linearizable) = match self {
            Case::PutC1 => (Op::Put, 1, true),
            Case::PutC64 | Case::ApPutC64 | Case::ApPutAcks2C64 => (Op::Put, 64, true),
            Case::PutC256 => (Op::Put, 256, true),
            Case::LinearizableGetC64 => (Op::Get, 64, true),
            Case::SerializableGetC64 => (Op::Get, 64, false),
        };
        Load {
            op,
            concurrency,
            linearizable,
            acks: if self == Case::ApPutAcks2C64 { 2 } else { 1 },
            args: args.clone(),
        }
    }
}

/// Every round's pair of reports for one case.
struct Row {
    case: Case,
    etcd: Vec<Report>,
    capkv: Vec<Report>,
}

pub async fn compare(args: &CompareArgs) -> Result<(), Error> {
    if args.rounds == 0 {
        return Err(Error::InvalidInput("--rounds must be at least 1".into()));
    }
    let etcd = capkv::client::parse_endpoints(&args.etcd);
    let capkv = capkv::client::parse_endpoints(&args.capkv);
    let cases = if args.cases.is_empty() {
        Case::ALL.to_vec()
    } else {
        args.cases.clone()
    };
    let mut rows: Vec<Row> = cases
        .iter()
        .map(|&case| Row {
            case,
            etcd: Vec::new(),
            capkv: Vec::new(),
        })
        .collect();
    for round in 0..args.rounds {
        for row in &mut rows {
            let load = row.case.load(&args.load);
            let keyspace = if matches!(row.case, Case::ApPutC64 | Case::ApPutAcks2C64) {
                &args.ap_keyspace
            } else {
                &args.cp_keyspace
            };
            // Flip the order each round: the second run of a pair sees a fuller store and page cache.
            let (e, c) = if round % 2 == 0 {
                let e = run_etcd(&etcd, &load).await?;
                (e, run_capkv(&capkv, keyspace, &load).await?)
            } else {
                let c = run_capkv(&capkv, keyspace, &load).await?;
                (run_etcd(&etcd, &load).await?, c)
            };
            eprintln!(
                "round {}/{} {:<32} etcd {:>9.0} ops/s ({} failed)  capkv {:>9.0} ops/s ({} failed)",
                round + 1,
                args.rounds,
                row.case.label(),
                e.ops_per_s,
                e.errors.total,
                c.ops_per_s,
                c.errors.total
            );
            row.etcd.push(e);
            row.capkv.push(c);
        }
    }
    if let Some(path) = &args.json {
        let all: Vec<_> = rows.iter().flat_map(|r| r.etcd.iter().chain(r.capkv.iter())).collect();
        let text = serde_json::to_string_pretty(&all).expect("reports serialize");
        std::fs::write(path, text).map_err(|e| Error::InvalidInput(format!("cannot write {}: {e}", path.display())))?;
    }
    print!("{}", table(&rows));
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn medians(reports: &[Report], field: impl Fn(&Report) -> f64) -> f64 {
    median(reports.iter().map(field).collect())
}

/// The markdown table: medians over rounds; the ratio column also gives the per-round spread.
fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| workload | etcd ops/s | capkv ops/s | capkv / etcd (min–max) | p50 ms etcd / capkv | p99 ms etcd / capkv | failed etcd / capkv |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for row in rows {
        let ratios: Vec<f64> = row
            .etcd
            .iter()
            .zip(&row.capkv)
            .map(|(e, c)| c.ops_per_s / e.ops_per_s.max(1e-9))
            .collect();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let failed = |reports: &[Report]| reports.iter().map(|r| r.errors.total).sum::<u64>();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.2} ({:.2}–{:.2}) | {:.2} / {:.2} | {:.2} / {:.2} | {} / {} |",
            row.case.label(),
            medians(&row.etcd, |r| r.ops_per_s),
            medians(&row.capkv, |r| r.ops_per_s),
            median(ratios.clone()),
            low,
            high,
            medians(&row.etcd, |r| r.p50_ms),
            medians(&row.capkv, |r| r.p50_ms),
            medians(&row.etcd, |r| r.p99_ms),
            medians(&row.capkv, |r| r.p99_ms),
            failed(&row.etcd),
            failed(&row.capkv),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
