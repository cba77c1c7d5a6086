use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

/// An in-memory store; `fail_every` > 0 refuses every n-th request with "no quorum";
/// `lose_every` > 0 acknowledges every n-th swap without storing it (a broken store).
#[derive(Default)]
struct Fake {
    data: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    requests: AtomicU64,
    fail_every: u64,
    lose_every: u64,
}

impl Fake {
    fn tick(&self) -> Result<u64, Error> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if self.fail_every > 0 && n % self.fail_every == 0 {
            return Err(Error::NoQuorum("the fake refuses".into()));
        }
        Ok(n)
    }
}

impl Target for Fake {
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.tick()?;
        self.data.lock().unwrap().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    async fn get(&self, key: &[u8], _linearizable: bool) -> Result<Option<Vec<u8>>, Error> {
        self.tick()?;
        Ok(self.data.lock().unwrap().get(key).cloned())
    }

    async fn cas(&self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<bool, Error> {
        let n = self.tick()?;
        let mut data = self.data.lock().unwrap();
        if data.get(key).map(Vec::as_slice) != Some(expected) {
            return Ok(false);
        }
        if self.lose_every == 0 || n % self.lose_every != 0 {
            data.insert(key.to_vec(), new.to_vec());
        }
        Ok(true)
    }
}

fn workload(op: Op) -> Workload {
    Workload {
        op,
        keys: 100,
        value_size: 32,
        read_ratio: 0.5,
        linearizable: true,
        seed: 1,
    }
}

async fn bench(fake: Fake, op: Op, slo: Option<Slo>) -> (Report, Arc<Fake>) {
    let targets = vec![Arc::new(fake)];
    let w = workload(op);
    w.validate(4).unwrap();
    if w.needs_preload() {
        preload(&targets, &w, 4).await.unwrap();
    }
    let report = run(&targets, &w, 4, Duration::from_millis(200), slo, Arc::default()).await;
    (report, targets[0].clone())
}

#[tokio::test]
async fn a_put_run_measures_ops_and_ordered_percentiles() {
    let (r, fake) = bench(Fake::default(), Op::Put, None).await;
    assert!(r.ops > 0);
    assert_eq!(r.ops, fake.requests.load(Ordering::Relaxed));
    assert_eq!(r.errors.total, 0);
    assert!(r.p50_ms <= r.p90_ms && r.p90_ms <= r.p99_ms && r.p99_ms <= r.p999_ms && r.p999_ms <= r.max_ms);
    assert!(r.ops_per_s > 0.0);
    assert!(fake.data.lock().unwrap().values().all(|v| v.len() == 32));
    let json = serde_json::to_value(&r).unwrap();
    for field in [
        "ops_per_s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "errors",
        "slo",
    ] {
        assert!(json.get(field).is_some(), "missing {field} in {json}");
    }
    assert_eq!(json["op"], "put");
}

#[tokio::test]
async fn preload_writes_every_key_so_gets_find_them() {
    let (r, fake) = bench(Fake::default(), Op::Get, None).await;
    assert_eq!(fake.data.lock().unwrap().len(), 100);
    assert!(r.ops > 0 && r.errors.total == 0);
}

#[tokio::test]
async fn swaps_on_a_correct_store_never_hear_no() {
    let (r, _) = bench(Fake::default(), Op::Cas, None).await;
    assert!(r.ops > 0);
    assert_eq!(r.errors.total, 0, "{:?}", r.errors);
}

#[tokio::test]
async fn swaps_catch_a_store_that_loses_acknowledged_writes() {
    let fake = Fake {
        lose_every: 7,
        ..Fake::default()
    };
    let (r, _) = bench(fake, Op::Cas, None).await;
    assert!(r.errors.by_class.get("no").copied().unwrap_or(0) > 0, "{:?}", r.errors);
    assert!(r.errors.examples["no"].contains("did not hold"));
}

#[tokio::test]
async fn failures_are_counted_by_exit_class_and_break_the_slo() {
    let fake = Fake {
        fail_every: 10,
        ..Fake::default()
    };
    let slo: Slo = "10s@99.9".parse().unwrap();
    let (r, _) = bench(fake, Op::Mixed, Some(slo)).await;
    assert!(r.errors.by_class["not_applied"] > 0);
    assert_eq!(r.errors.total, r.errors.by_class["not_applied"]);
    assert!(r.errors.examples["not_applied"].contains("no quorum"));
    let verdict = r.slo.unwrap();
    assert!(!verdict.met, "{verdict:?}");
    assert!(verdict.sentence.contains("failed"), "{}", verdict.sentence);
}

#[test]
fn bad_numbers_are_refused_with_what_to_change() {
    let mut w = workload(Op::Cas);
    assert!(w.validate(200).unwrap_err().to_string().contains("--keys"));
    w.read_ratio = 1.5;
    assert!(w.validate(1).unwrap_err().to_string().contains("--read-ratio"));
    assert!("scan".parse::<Op>().unwrap_err().contains("put, get, mixed or cas"));
}
