//! The bank workload's checker: money is neither created nor destroyed, and never goes negative.
//!
//! Accounts hold decimal balances. Transfers are cp transactions that compare both balances with
//! the values the client read and then put both new balances, so a transfer either moves money
//! atomically or does not happen. Reads fetch every account in one transaction; a completed read
//! carries the balances as `value`, comma-separated in account order, with `-` for an account
//! that was not found.
//!
//! Every ok read must show all accounts, sum to the initial total and hold no negative balance.
//! Transfers themselves are not checked: their effect is only visible through reads.
//!
//! Caveat: a history with no successful read checks nothing; the runner reads often.

use crate::history::{Op, F};
use crate::pairing::{pair_events, Outcome};
use crate::results::Anomaly;

/// The key bank reads are recorded under.
pub const READ_KEY: &str = "accounts";

/// What the bank checker found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BankOutcome {
    /// Ok reads checked.
    pub reads: u64,
    /// Reads whose total differs from the initial total (or that miss an account).
    pub bad_totals: u64,
    /// Reads holding a negative balance.
    pub negative_balances: u64,
    /// One anomaly per bad read (capped).
    pub anomalies: Vec<Anomaly>,
}

/// Most bank anomalies listed (the counts stay exact).
const BANK_ANOMALIES_MAX: usize = 20;

/// Formats balances the way reads record them.
pub fn format_balances(balances: &[Option<i64>]) -> String {
    balances
        .iter()
        .map(|b| b.map_or_else(|| "-".to_owned(), |b| b.to_string()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks every ok read of a bank history against `total`.
pub fn check(history: &[Op], accounts: usize, total: i64) -> BankOutcome {
    let mut out = BankOutcome::default();
    for e in pair_events(history) {
        if e.invoke.f != F::Read || e.outcome() != Outcome::Ok {
            continue;
        }
        out.reads += 1;
        let text = e.result().unwrap_or_default();
        let balances: Vec<Option<i64>> = text.split(',').map(|b| b.parse().ok()).collect();
        let ops = vec![e.invoke.index, e.completion.map_or(e.invoke.index, |c| c.index)];
        let complete = balances.len() == accounts && balances.iter().all(Option::is_some);
        let sum: i64 = balances.iter().flatten().sum();
        if !complete || sum != total {
            out.bad_totals += 1;
            if out.anomalies.len() < BANK_ANOMALIES_MAX {
                out.anomalies.push(Anomaly::new(
                    "bad-total",
                    READ_KEY,
                    format!("read [{text}] sums to {sum}, expected {total} over {accounts} accounts"),
                    ops.clone(),
                ));
            }
        }
        if balances.iter().flatten().any(|b| *b < 0) {
            out.negative_balances += 1;
            if out.anomalies.len() < BANK_ANOMALIES_MAX {
                out.anomalies.push(Anomaly::new(
                    "negative-balance",
                    READ_KEY,
                    format!("read [{text}] holds a negative balance"),
                    ops,
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Recorder;

    fn reads(values: &[&str]) -> Vec<Op> {
        let mut r = Recorder::new();
        for v in values {
            r.invoke_read(0, READ_KEY);
            r.ok_read(0, Some(v));
        }
        r.invoke_read(1, READ_KEY);
        r.fail(1);
        r.into_ops()
    }

    #[test]
    fn good_reads_pass() {
        let out = check(&reads(&["10,10,10", "0,25,5"]), 3, 30);
        assert_eq!(
            out,
            BankOutcome {
                reads: 2,
                ..Default::default()
            }
        );
        assert_eq!(format_balances(&[Some(1), None]), "1,-");
    }

    #[test]
    fn bad_totals_missing_accounts_and_negatives_are_rejected() {
        let out = check(&reads(&["10,10,11", "10,-"]), 3, 30);
        assert_eq!(out.bad_totals, 2);
        assert_eq!(out.anomalies[0].kind, "bad-total");
        assert_eq!(out.anomalies[0].ops, vec![0, 1]);
        let out = check(&reads(&["-5,20,15"]), 3, 30);
        assert_eq!((out.bad_totals, out.negative_balances), (0, 1));
        assert_eq!(out.anomalies[0].kind, "negative-balance");
    }
}
