//! What each request of a run is: the operation mix, the keys and the values.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::Target;
use crate::error::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Get,
    Mixed,
    Cas,
}

impl FromStr for Op {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "put" => Ok(Op::Put),
            "get" => Ok(Op::Get),
            "mixed" => Ok(Op::Mixed),
            "cas" => Ok(Op::Cas),
            other => Err(format!("unknown bench op '{other}'; use put, get, mixed or cas")),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Mixed => "mixed",
            Op::Cas => "cas",
        })
    }
}

/// The shape of a run; workers derive their own random streams from `seed`.
#[derive(Clone, Debug)]
pub struct Workload {
    pub op: Op,
    pub keys: u64,
    pub value_size: usize,
    /// `mixed` only: the share of requests that are reads.
    pub read_ratio: f64,
    pub linearizable: bool,
    pub seed: u64,
}

impl Workload {
    /// Checks the numbers a user typed, with a sentence that says what to change.
    pub fn validate(&self, concurrency: usize) -> Result<(), Error> {
        if self.keys == 0 {
            return Err(Error::InvalidInput("--keys must be at least 1".into()));
        }
        if concurrency == 0 {
            return Err(Error::InvalidInput("--concurrency must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(Error::InvalidInput(format!(
                "--read-ratio {} is not between 0 and 1",
                self.read_ratio
            )));
        }
        if self.op == Op::Cas && self.keys < concurrency as u64 {
            return Err(Error::InvalidInput(format!(
                "--op cas gives each worker keys of its own: --keys ({}) must be at least --concurrency ({concurrency})",
                self.keys
            )));
        }
        Ok(())
    }

    /// Whether the run reads keys that must exist first.
    pub fn needs_preload(&self) -> bool {
        self.op != Op::Put
    }

    pub fn key(&self, i: u64) -> Vec<u8> {
        format!("bench-{i:010}").into_bytes()
    }

    /// The value the preload writes to key `i`; `cas` workers start from it.
    pub fn initial_value(&self, i: u64) -> Vec<u8> {
        let mut v = format!("initial-{i}-").into_bytes();
        v.resize(self.value_size, b'.');
        v
    }

    pub(super) fn worker(&self, index: usize, workers: usize) -> Worker {
        Worker {
            workload: self.clone(),
            index: index as u64,
            workers: workers as u64,
            rng: StdRng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(index as u64)),
            last_seen: HashMap::new(),
        }
    }
}

/// One worker's state: its random stream and, for `cas`, the value it last saw per owned key.
pub(super) struct Worker {
    workload: Workload,
    index: u64,
    workers: u64,
    rng: StdRng,
    /// `None`: the value is not known (a swap failed or timed out); read it before the next swap.
    last_seen: HashMap<u64, Option<Vec<u8>>>,
}

/// How one request ended, short of a transport or server error.
pub(super) enum Answer {
    Done,
    /// The store answered no: a compare did not hold.
    No(String),
}

impl Worker {
    fn value(&mut self) -> Vec<u8> {
        (&mut self.rng)
            .sample_iter(Alphanumeric)
            .take(self.workload.value_size)
            .collect()
    }

    fn any_key(&mut self) -> u64 {
        self.rng.gen_range(0..self.workload.keys)
    }

    /// A key only this worker swaps: i ≡ index (mod workers).
    fn owned_key(&mut self) -> u64 {
        let owned = (self.workload.keys - self.index).div_ceil(self.workers);
        self.index + self.rng.gen_range(0..owned) * self.workers
    }

    pub(super) async fn step<T: Target>(&mut self, target: &T) -> Result<Answer, Error> {
        let read = match self.workload.op {
            Op::Put => false,
            Op::Get => true,
            Op::Mixed => self.rng.gen_bool(self.workload.read_ratio),
            Op::Cas => return self.swap(target).await,
        };
        let i = self.any_key();
        let key = self.workload.key(i);
        if read {
            target.get(&key, self.workload.linearizable).await?;
        } else {
            let value = self.value();
            target.put(&key, &value).await?;
        }
        Ok(Answer::Done)
    }

    async fn swap<T: Target>(&mut self, target: &T) -> Result<Answer, Error> {
        let i = self.owned_key();
        let key = self.workload.key(i);
        let known = match self.last_seen.get(&i) {
            None => Some(self.workload.initial_value(i)),
            Some(v) => v.clone(),
        };
        let expected = match known {
            Some(v) => v,
            None => match target.get(&key, true).await? {
                Some(v) => v,
                None => {
                    self.last_seen.insert(i, None);
                    return Ok(Answer::No(format!(
                        "key {} is missing although the preload wrote it",
                        String::from_utf8_lossy(&key)
                    )));
                }
            },
        };
        let new = self.value();
        // Until the answer arrives the outcome is open; an error leaves it unknown.
        self.last_seen.insert(i, None);
        if target.cas(&key, &expected, &new).await? {
            self.last_seen.insert(i, Some(new));
            Ok(Answer::Done)
        } else {
            Ok(Answer::No(format!(
                "key {} did not hold the value this worker saw last, and no other worker writes it",
                String::from_utf8_lossy(&key)
            )))
        }
    }
}
