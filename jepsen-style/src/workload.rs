//! Client workloads: what each client task invokes, and how it records the outcome.
//!
//! Every client task is bound to one node's endpoint (no failover) with a short timeout, so the
//! history says which side of a partition served each operation. Outcomes follow capkv's exit
//! codes: `3` (definitely not applied) and `1` are `fail`, `4` (outcome unknown) and internal
//! errors are `info`. A CAS that ran and did not match is `ok` with `succeeded: false`.
//!
//! * **register**: reads, unique-value writes and (cp only) CAS over [`ACTIVE_KEYS`] keys at a
//!   time; a key is retired after [`OPS_PER_KEY`] invocations, so each key's linearizability
//!   search stays small.
//! * **set**: adds of unique elements by read-modify-write of [`SET_KEY`], and reads of the set.
//! * **bank** (cp): transfers by transaction (compare both balances, put both) and reads of every
//!   account in one transaction.
//!
//! Caveat: a client whose operation ended `info` moves to a fresh process id (Jepsen's convention),
//! so the number of processes in the history exceeds the concurrency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capkv::proto::{self, compare, txn_op};
use capkv::Client;
use rand::rngs::StdRng;
use rand::Rng;

use crate::ap_register::Stamp;
use crate::bank;
use crate::history::{Kind, Op, Value, F};

/// The keyspace every run uses.
pub const KEYSPACE: &str = "jepsen";
/// Register keys in use at once.
pub const ACTIVE_KEYS: usize = 4;
/// Invocations per register key before it is retired for a fresh one.
pub const OPS_PER_KEY: u32 = 100;
/// Writes/CAS of unknown outcome a key may collect before it is retired: every unknown write is
/// optional forever in the linearizability search, which grows exponentially with them.
pub const UNKNOWN_PER_KEY_MAX: u32 = 3;
/// The set workload's key.
pub const SET_KEY: &str = "set";
/// Read-modify-write attempts of one cp set add before it gives up (each mismatch is harmless).
pub const SET_ADD_ATTEMPTS: u32 = 3;
/// Bank accounts.
pub const BANK_ACCOUNTS: usize = 5;
/// Initial balance of each account.
pub const BANK_BALANCE: i64 = 100;
/// Largest single transfer.
pub const BANK_TRANSFER_MAX: i64 = 20;

/// Which workload a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Single-key registers.
    Register,
    /// A grow-only set in one key.
    Set,
    /// Bank transfers between accounts.
    Bank,
}

impl Workload {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::Bank => "bank",
        }
    }
}

/// The name of bank account `i`.
pub fn account(i: usize) -> String {
    format!("acct-{i}")
}

#[derive(Default)]
struct Keys {
    next: u64,
    /// (key, invocations, last known value, unknown writes).
    active: Vec<(String, u32, Option<String>, u32)>,
}

/// State shared by the client tasks and the runner.
pub struct Shared {
    /// When the test started; history times are ns since then.
    pub t0: Instant,
    /// Clients stop invoking at this instant.
    pub deadline: Instant,
    /// `cp` or `ap`.
    pub mode: &'static str,
    /// The workload.
    pub workload: Workload,
    /// How many client tasks run (process ids step by this after an `info`).
    pub concurrency: u64,
    history: Mutex<Vec<Op>>,
    versions: Mutex<HashMap<String, Stamp>>,
    next_value: AtomicU64,
    keys: Mutex<Keys>,
}

/// Converts a wire version into a [`Stamp`].
pub fn stamp(v: &proto::Version) -> Stamp {
    (v.physical_ms, v.logical, v.node_id)
}

fn classify(e: &capkv::Error) -> Kind {
    match e {
        capkv::Error::InvalidInput(_) => Kind::Fail,
        _ if matches!(e.exit_code(), 1 | 3) => Kind::Fail,
        _ => Kind::Info,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Shared {
    /// Fresh shared state for a test starting now.
    pub fn new(mode: &'static str, workload: Workload, concurrency: u64, time_limit: Duration) -> Self {
        let t0 = Instant::now();
        Self {
            t0,
            deadline: t0 + time_limit,
            mode,
            workload,
            concurrency,
            history: Mutex::new(Vec::new()),
            versions: Mutex::new(HashMap::new()),
            next_value: AtomicU64::new(1),
            keys: Mutex::new(Keys::default()),
        }
    }

    /// ns since the test started.
    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Appends one event; returns its index.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        process: u64,
        kind: Kind,
        f: F,
        key: &str,
        value: Option<Value>,
        node: Option<u64>,
        succeeded: Option<bool>,
        error: Option<String>,
    ) -> u64 {
        let mut h = self.history.lock().expect("history lock");
        let index = h.len() as u64;
        h.push(Op {
            index,
            time_ns: self.now_ns(),
            process,
            kind,
            f,
            key: key.to_owned(),
            value,
            node,
            succeeded,
            error,
        });
        index
    }

    /// A copy of the history so far.
    pub fn history(&self) -> Vec<Op> {
        self.history.lock().expect("history lock").clone()
    }

    /// Every ap version learned so far (value → version).
    pub fn versions(&self) -> HashMap<String, Stamp> {
        self.versions.lock().expect("versions lock").clone()
    }

    /// Remembers the version of a value.
    pub fn learn_version(&self, value: &str, v: Option<&proto::Version>) {
        if let Some(v) = v {
            self.versions
                .lock()
                .expect("versions lock")
                .insert(value.to_owned(), stamp(v));
        }
    }

    fn fresh_value(&self) -> String {
        self.next_value.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Every register key used so far.
    pub fn register_keys(&self) -> Vec<String> {
        (0..self.keys.lock().expect("keys lock").next)
            .map(|i| format!("r{i}"))
            .collect()
    }

    fn pick_key(&self, rng: &mut StdRng) -> (String, Option<String>) {
        let mut keys = self.keys.lock().expect("keys lock");
        while keys.active.len() < ACTIVE_KEYS {
            let name = format!("r{}", keys.next);
            keys.next += 1;
            keys.active.push((name, 0, None, 0));
        }
        let i = rng.gen_range(0..keys.active.len());
        let slot = &mut keys.active[i];
        slot.1 += 1;
        let picked = (slot.0.clone(), slot.2.clone());
        if slot.1 >= OPS_PER_KEY {
            keys.active.swap_remove(i);
        }
        picked
    }

    fn note_unknown(&self, key: &str) {
        let mut keys = self.keys.lock().expect("keys lock");
        if let Some(i) = keys.active.iter().position(|s| s.0 == key) {
            keys.active[i].3 += 1;
            if keys.active[i].3 >= UNKNOWN_PER_KEY_MAX {
                keys.active.swap_remove(i);
            }
        }
    }

    fn note_value(&self, key: &str, value: &str) {
        let mut keys = self.keys.lock().expect("keys lock");
        if let Some(slot) = keys.active.iter_mut().find(|s| s.0 == key) {
            slot.2 = Some(value.to_owned());
        }
    }
}

/// One client task's identity.
pub struct ClientTask {
    /// Current process id.
    pub process: u64,
    /// The node it talks to.
    pub node: u64,
    /// Its client, bound to that node only.
    pub client: Client,
}

impl ClientTask {
    fn done(&mut self, shared: &Shared, kind: Kind, f: F, key: &str, value: Option<Value>, err: Option<String>) {
        shared.record(self.process, kind, f, key, value, Some(self.node), None, err);
        if kind == Kind::Info && matches!(f, F::Write | F::Cas) {
            shared.note_unknown(key);
        }
        if kind == Kind::Info {
            self.process += shared.concurrency;
        }
    }

    fn invoke(&self, shared: &Shared, f: F, key: &str, value: Option<Value>) {
        shared.record(self.process, Kind::Invoke, f, key, value, Some(self.node), None, None);
    }

    /// Runs one operation of the shared workload.
    pub async fn step(&mut self, shared: &Shared, rng: &mut StdRng) {
        match shared.workload {
            Workload::Register => self.register_op(shared, rng).await,
            Workload::Set => self.set_op(shared, rng).await,
            Workload::Bank => self.bank_op(shared, rng).await,
        }
    }

    fn consistency(shared: &Shared) -> proto::Consistency {
        if shared.mode == "cp" {
            proto::Consistency::Linearizable
        } else {
            proto::Consistency::Default
        }
    }

    async fn read_register(&mut self, shared: &Shared, f: F, key: &str) -> Option<Option<String>> {
        self.invoke(shared, f, key, None);
        match self
            .client
            .get(KEYSPACE, key.as_bytes(), Self::consistency(shared))
            .await
        {
            Ok(resp) => {
                let kv = resp.kv.filter(|_| resp.found);
                let value = kv.as_ref().map(|kv| text(&kv.value));
                if let (Some(v), Some(kv)) = (&value, &kv) {
                    shared.learn_version(v, kv.ap_version.as_ref());
                }
                self.done(shared, Kind::Ok, f, key, value.clone().map(Value::Single), None);
                Some(value)
            }
            Err(e) => {
                self.done(shared, classify(&e), f, key, None, Some(e.to_string()));
                None
            }
        }
    }

    async fn register_op(&mut self, shared: &Shared, rng: &mut StdRng) {
        let (key, last) = shared.pick_key(rng);
        let dice = rng.gen_range(0..100);
        if dice < 50 {
            if let Some(Some(v)) = self.read_register(shared, F::Read, &key).await {
                shared.note_value(&key, &v);
            }
        } else if dice < 80 || shared.mode == "ap" {
            let value = shared.fresh_value();
            self.invoke(shared, F::Write, &key, Some(Value::single(&value)));
            match self.client.put(KEYSPACE, key.as_bytes(), value.as_bytes()).await {
                Ok(resp) => {
                    shared.learn_version(&value, resp.version.as_ref());
                    shared.note_value(&key, &value);
                    self.done(shared, Kind::Ok, F::Write, &key, Some(Value::single(value)), None);
                }
                Err(e) => self.done(
                    shared,
                    classify(&e),
                    F::Write,
                    &key,
                    Some(Value::single(value)),
                    Some(e.to_string()),
                ),
            }
        } else {
            self.cas(shared, &key, last).await;
        }
    }

    async fn cas(&mut self, shared: &Shared, key: &str, expected: Option<String>) {
        let new = shared.fresh_value();
        let arg = Value::cas(expected.as_deref(), &new);
        self.invoke(shared, F::Cas, key, Some(arg.clone()));
        let result = self
            .client
            .cas(
                KEYSPACE,
                key.as_bytes(),
                expected.as_deref().map(str::as_bytes),
                new.as_bytes(),
            )
            .await;
        match result {
            Ok(resp) => {
                if resp.succeeded {
                    shared.note_value(key, &new);
                }
                shared.record(
                    self.process,
                    Kind::Ok,
                    F::Cas,
                    key,
                    Some(arg),
                    Some(self.node),
                    Some(resp.succeeded),
                    None,
                );
            }
            Err(e) => self.done(shared, classify(&e), F::Cas, key, Some(arg), Some(e.to_string())),
        }
    }

    async fn set_op(&mut self, shared: &Shared, rng: &mut StdRng) {
        if rng.gen_range(0..100) < 30 {
            self.read_register(shared, F::Read, SET_KEY).await;
            return;
        }
        let element = shared.fresh_value();
        let arg = Some(Value::single(&element));
        self.invoke(shared, F::Add, SET_KEY, arg.clone());
        let (kind, err) = self.add_element(shared, &element).await;
        self.done(shared, kind, F::Add, SET_KEY, arg, err);
    }

    async fn add_element(&self, shared: &Shared, element: &str) -> (Kind, Option<String>) {
        let attempts = if shared.mode == "cp" { SET_ADD_ATTEMPTS } else { 1 };
        for _ in 0..attempts {
            let current = match self
                .client
                .get(KEYSPACE, SET_KEY.as_bytes(), Self::consistency(shared))
                .await
            {
                Ok(resp) => resp.kv.filter(|_| resp.found).map(|kv| text(&kv.value)),
                Err(e) => return (Kind::Fail, Some(format!("reading the set: {e}"))),
            };
            let new = match &current {
                Some(c) if !c.is_empty() => format!("{c},{element}"),
                _ => element.to_owned(),
            };
            let result = if shared.mode == "cp" {
                let expected = current.as_deref().map(str::as_bytes);
                self.client
                    .cas(KEYSPACE, SET_KEY.as_bytes(), expected, new.as_bytes())
                    .await
                    .map(|r| r.succeeded)
            } else {
                self.client
                    .put(KEYSPACE, SET_KEY.as_bytes(), new.as_bytes())
                    .await
                    .map(|_| true)
            };
            match result {
                Ok(true) => return (Kind::Ok, None),
                Ok(false) => continue,
                Err(e) => return (classify(&e), Some(e.to_string())),
            }
        }
        (
            Kind::Fail,
            Some("every compare-and-swap attempt lost a race; nothing was added".into()),
        )
    }

    /// Reads every account in one transaction: balances in account order.
    pub async fn read_accounts(&self) -> Result<Vec<Option<i64>>, capkv::Error> {
        let success = (0..BANK_ACCOUNTS)
            .map(|i| proto::TxnOp {
                op: Some(txn_op::Op::Get(proto::GetOp {
                    key: account(i).into_bytes(),
                })),
            })
            .collect();
        let req = proto::TxnRequest {
            keyspace: KEYSPACE.into(),
            compares: Vec::new(),
            success,
            failure: Vec::new(),
            request_id: None,
        };
        let resp = self.client.txn(req).await?;
        Ok(resp
            .results
            .iter()
            .map(|r| {
                r.kv.as_ref()
                    .filter(|_| r.found)
                    .and_then(|kv| text(&kv.value).parse().ok())
            })
            .collect())
    }

    async fn bank_op(&mut self, shared: &Shared, rng: &mut StdRng) {
        if rng.gen_range(0..100) < 40 {
            self.invoke(shared, F::Read, bank::READ_KEY, None);
            match self.read_accounts().await {
                Ok(b) => self.done(
                    shared,
                    Kind::Ok,
                    F::Read,
                    bank::READ_KEY,
                    Some(Value::single(bank::format_balances(&b))),
                    None,
                ),
                Err(e) => self.done(shared, classify(&e), F::Read, bank::READ_KEY, None, Some(e.to_string())),
            }
            return;
        }
        let from = rng.gen_range(0..BANK_ACCOUNTS);
        let to = (from + rng.gen_range(1..BANK_ACCOUNTS)) % BANK_ACCOUNTS;
        let amount = rng.gen_range(1..=BANK_TRANSFER_MAX);
        let Ok(balances) = self.read_accounts().await else {
            return;
        };
        let (Some(bf), Some(bt)) = (balances[from], balances[to]) else {
            return;
        };
        if bf < amount {
            return;
        }
        let arg = Some(Value::single(format!("{from}:{to}:{amount}")));
        self.invoke(shared, F::Transfer, bank::READ_KEY, arg.clone());
        let (kind, err) = match self.client.txn(transfer(from, to, bf, bt, amount)).await {
            Ok(r) if r.succeeded => (Kind::Ok, None),
            Ok(_) => (
                Kind::Fail,
                Some("a balance changed since it was read; nothing moved".into()),
            ),
            Err(e) => (classify(&e), Some(e.to_string())),
        };
        self.done(shared, kind, F::Transfer, bank::READ_KEY, arg, err);
    }
}

fn value_is(key: String, value: i64) -> proto::Compare {
    proto::Compare {
        key: key.into_bytes(),
        target: compare::Target::Value as i32,
        op: compare::Op::Equal as i32,
        value: value.to_string().into_bytes(),
        number: 0,
    }
}

fn put(key: String, value: i64) -> proto::TxnOp {
    proto::TxnOp {
        op: Some(txn_op::Op::Put(proto::PutOp {
            key: key.into_bytes(),
            value: value.to_string().into_bytes(),
        })),
    }
}

/// The transfer transaction: if both balances are still as read, move `amount`.
fn transfer(from: usize, to: usize, bf: i64, bt: i64, amount: i64) -> proto::TxnRequest {
    proto::TxnRequest {
        keyspace: KEYSPACE.into(),
        compares: vec![value_is(account(from), bf), value_is(account(to), bt)],
        success: vec![put(account(from), bf - amount), put(account(to), bt + amount)],
        failure: Vec::new(),
        request_id: None,
    }
}

/// The transaction that opens every account with [`BANK_BALANCE`].
pub fn open_accounts() -> proto::TxnRequest {
    proto::TxnRequest {
        keyspace: KEYSPACE.into(),
        compares: Vec::new(),
        success: (0..BANK_ACCOUNTS).map(|i| put(account(i), BANK_BALANCE)).collect(),
        failure: Vec::new(),
        request_id: None,
    }
}

/// Drives one client task until the deadline.
pub async fn drive(shared: Arc<Shared>, mut task: ClientTask, mut rng: StdRng) {
    while Instant::now() < shared.deadline {
        task.step(&shared, &mut rng).await;
        let think_ms = rng.gen_range(5..25);
        tokio::time::sleep(Duration::from_millis(think_ms)).await;
    }
}
