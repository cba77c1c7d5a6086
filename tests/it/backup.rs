//! Backup and restore: `file://` and `s3://` written by the CLI or by a node (`--via`; a real moto server on loopback,
//! read back with boto3), restore into a fresh cluster of a backup taken during a partition,
//! corrupt and missing objects, existing keyspaces, interrupted backups, a storage server killed
//! in the middle of an upload, an unreachable replica, the crash-restore story (`cluster up` +
//! `backup restore`), and scheduled backups with retention.
//!
//! The S3 tests need `moto_server` and boto3 (scripts/test.sh installs them into a virtual
//! environment and sets `CAPKV_TEST_PYTHON`); without them they print why and skip. They set the
//! AWS_* variables process-wide, which only the CLI processes and nodes they start read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capkv::proto::{self, txn_op};
use capkv::Client as Lib;
use serde_json::Value;

use crate::harness::{
    consecutive_free_ports, free_ports, http_get, run, runtime, wait_until, Cluster, DetachedCluster, Output, BIN,
};

/// cp keys written by the round-trip tests (in transactions of [`TXN_PUTS`]).
const CP_KEYS: usize = 2_000;
const TXN_PUTS: usize = 100;
/// ap keys written through the majority side, and through the minority side alone.
const AP_KEYS: usize = 1_000;
const AP_MINORITY_KEYS: usize = 50;
/// ap keys deleted after they were written (their tombstones travel in the backup).
const AP_DELETED: usize = 20;

/// (value, version) of one ap key; version is (physical_ms, logical, node); `None` value = tombstone.
type ApView = BTreeMap<Vec<u8>, (Vec<u8>, (u64, u32, u64))>;

fn lib(endpoints: &str) -> Lib {
    Lib::from_list(endpoints, Duration::from_secs(20)).expect("a client for the endpoints")
}

fn value_of(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(i % 64)).into_bytes()
}

/// Writes the cp keys in transactions.
async fn write_cp(client: &Lib, keyspace: &str, keys: usize) {
    for start in (0..keys).step_by(TXN_PUTS) {
        let success = (start..(start + TXN_PUTS).min(keys))
            .map(|i| proto::TxnOp {
                op: Some(txn_op::Op::Put(proto::PutOp {
                    key: format!("acct{i:05}").into_bytes(),
                    value: value_of(i),
                })),
            })
            .collect();
        client
            .txn(proto::TxnRequest {
                keyspace: keyspace.into(),
                compares: vec![],
                success,
                failure: vec![],
                request_id: None,
            })
            .await
            .unwrap_or_else(|e| panic!("cp txn at {start}: {e}"));
    }
}

/// Every key of a keyspace, as one node's scan shows it (linearizable on cp, local on ap).
async fn scan_all(client: &Lib, keyspace: &str) -> Vec<proto::KeyValue> {
    let mut out = Vec::new();
    let mut start_after = Vec::new();
    loop {
        let page = client
            .scan(proto::ScanRequest {
                keyspace: keyspace.into(),
                start_after: start_after.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("scan {keyspace}: {e}"));
        if let Some(last) = page.items.last() {
            start_after = last.key.clone();
        }
        out.extend(page.items);
        if !page.more {
            return out;
        }
    }
}

fn cp_view(items: Vec<proto::KeyValue>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    items.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

fn ap_view(items: Vec<proto::KeyValue>) -> ApView {
    items
        .into_iter()
        .map(|kv| {
            let v = kv.ap_version.expect("ap keys carry versions");
            (kv.key, (kv.value, (v.physical_ms, v.logical, v.node_id)))
        })
        .collect()
}

/// The LWW merge of every node's local ap replica: what a complete backup must hold.
async fn merged_ap_view(cluster: &Cluster, keyspace: &str) -> ApView {
    let mut merged = ApView::new();
    for id in cluster.ids() {
        for (key, (value, version)) in ap_view(scan_all(&lib(&cluster.endpoint(id)), keyspace).await) {
            let keep = merged.get(&key).is_none_or(|(_, v)| version > *v);
            if keep {
                merged.insert(key, (value, version));
            }
        }
    }
    merged
}

/// Fills `bank` (cp) and `carts` (ap): ap writes on both sides of a partition, some deleted.
/// Returns the expected cp and ap contents (taken with the partition still in place).
fn fill(cluster: &Cluster, rt: &tokio::runtime::Runtime) -> (BTreeMap<Vec<u8>, Vec<u8>>, ApView) {
    let client = cluster.client();
    client.create_keyspace("bank", "cp");
    client.create_keyspace("carts", "ap");
    let all = lib(&cluster.endpoints_of(&cluster.ids()));
    rt.block_on(async {
        write_cp(&all, "bank", CP_KEYS).await;
        let majority = lib(&cluster.endpoint(1));
        for i in 0..AP_KEYS {
            majority
                .put("carts", format!("item{i:05}").as_bytes(), &value_of(i))
                .await
                .unwrap_or_else(|e| panic!("ap put {i}: {e}"));
        }
        for i in 0..AP_DELETED {
            majority
                .delete("carts", format!("item{i:05}").as_bytes())
                .await
                .unwrap_or_else(|e| panic!("ap delete {i}: {e}"));
        }
    });
    client.run(&["fault", "partition", "1,2", "3"]).expect_code(0);
    rt.block_on(async {
        let minority = lib(&cluster.endpoint(3));
        for i in 0..AP_MINORITY_KEYS {
            minority
                .put(
                    "carts",
                    format!("only3-{i:03}").as_bytes(),
                    b"written on the minority side",
                )
                .await
                .unwrap_or_else(|e| panic!("ap put on node 3: {e}"));
        }
    });
    let majority_leader = cluster.wait_for_leader_among(&[1, 2], Duration::from_secs(20));
    let cp = rt.block_on(async { cp_view(scan_all(&lib(&cluster.endpoint(majority_leader)), "bank").await) });
    let ap = rt.block_on(merged_ap_view(cluster, "carts"));
    assert_eq!(cp.len(), CP_KEYS);
    assert_eq!(ap.len(), AP_KEYS - AP_DELETED + AP_MINORITY_KEYS);
    (cp, ap)
}

/// Checks that every node of `cluster` holds exactly the expected contents.
fn check_restored(cluster: &Cluster, rt: &tokio::runtime::Runtime, cp: &BTreeMap<Vec<u8>, Vec<u8>>, ap: &ApView) {
    let keyspaces = cluster.client().run(&["keyspace", "list"]);
    let listed = keyspaces.ok_json()["keyspaces"].as_array().cloned().unwrap_or_default();
    let mode = |name: &str| {
        listed
            .iter()
            .find(|k| k["name"] == name)
            .map(|k| k["mode"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(mode("bank").as_deref(), Some("cp"), "{}", keyspaces.describe());
    assert_eq!(mode("carts").as_deref(), Some("ap"), "{}", keyspaces.describe());
    rt.block_on(async {
        let restored_cp = cp_view(scan_all(&lib(&cluster.endpoints_of(&cluster.ids())), "bank").await);
        assert!(restored_cp == *cp, "cp keyspace differs after restore");
        for id in cluster.ids() {
            let restored_ap = ap_view(scan_all(&lib(&cluster.endpoint(id)), "carts").await);
            if restored_ap != *ap {
                let missing = ap.keys().find(|k| !restored_ap.contains_key(*k));
                let differs = ap.iter().find(|(k, v)| restored_ap.get(*k).is_some_and(|r| r != *v));
                panic!(
                    "node {id}'s ap replica differs after restore: {} keys vs {}; first missing {missing:?}, first different {differs:?}",
                    restored_ap.len(),
                    ap.len()
                );
            }
        }
    });
}

fn backup_id(out: &Output) -> String {
    out.ok_json()["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id\n{}", out.describe()))
        .to_string()
}

/// The first data object of a backup directory on disk.
fn first_object(dir: &Path, id: &str) -> PathBuf {
    let data = dir.join(id).join("data").join("bank");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap_or_else(|e| panic!("read {}: {e}", data.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.into_iter().next().expect("the bank keyspace has a data object")
}

#[test]
fn file_backup_restores_cp_and_ap_into_a_fresh_cluster() {
    let rt = runtime();
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let (cp, ap, id) = {
        let cluster = Cluster::start(3);
        let (cp, ap) = fill(&cluster, &rt);
        // Taken during the partition: cp from the majority's leader, ap from all three nodes.
        let out = cluster
            .client()
            .with_timeout("20s")
            .run(&["backup", "create", "--to", &url]);
        let json = out.ok_json().clone();
        let id = backup_id(&out);
        let keyspaces = json["keyspaces"].as_array().unwrap();
        let bank = keyspaces.iter().find(|k| k["name"] == "bank").unwrap();
        let carts = keyspaces.iter().find(|k| k["name"] == "carts").unwrap();
        assert_eq!(bank["keys"].as_u64(), Some(CP_KEYS as u64), "{}", out.describe());
        assert_eq!(carts["keys"].as_u64(), Some(ap.len() as u64), "{}", out.describe());
        assert!(json["raft_index"].as_u64().unwrap() > 0, "{}", out.describe());
        for field in ["url", "objects", "bytes", "seconds"] {
            assert!(json.get(field).is_some(), "no {field}: {}", out.describe());
        }
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(store.path().join(&id).join("manifest.json")).unwrap()).unwrap();
        let carts_entry = manifest["keyspaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "carts")
            .unwrap()
            .clone();
        assert_eq!(carts_entry["contributors"], serde_json::json!([1, 2, 3]), "{manifest}");
        assert_eq!(
            carts_entry["tombstones"].as_u64(),
            Some(AP_DELETED as u64),
            "{manifest}"
        );
        // The cluster keeps serving after the backup.
        cluster.client_at(1).put("bank", "after", "1").expect_code(0);
        (cp, ap, id)
    };
    let cluster = Cluster::start(3);
    let client = cluster.client().with_timeout("20s");
    let listed = client.run(&["backup", "list", "--from", &url]);
    assert_eq!(
        listed.ok_json()["backups"][0]["id"],
        id.as_str(),
        "{}",
        listed.describe()
    );
    client.run(&["backup", "verify", "--from", &url]).expect_code(0);
    let restored = client.run(&["backup", "restore", "--from", &url]);
    restored.expect_code(0);
    check_restored(&cluster, &rt, &cp, &ap);

    // Existing keyspaces are refused (exit 3, nothing touched) unless --replace.
    cluster.client_at(1).put("bank", "extra", "1").expect_code(0);
    let again = client.run(&["backup", "restore", "--from", &url, "--id", &id]);
    again.expect_error(3);
    assert!(again.stderr.contains("--replace"), "{}", again.describe());
    client
        .run(&["backup", "restore", "--from", &url, "--replace"])
        .expect_code(0);
    check_restored(&cluster, &rt, &cp, &ap);

    // A corrupt object: verify and restore name it and refuse.
    let object = first_object(store.path(), &id);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&object, bytes).unwrap();
    let name = object.file_name().unwrap().to_str().unwrap();
    let verify = client.run(&["backup", "verify", "--from", &url, "--id", &id]);
    assert_ne!(verify.code, 0, "{}", verify.describe());
    assert!(
        verify.stderr.contains(name) && verify.stderr.contains("corrupt"),
        "{}",
        verify.describe()
    );
    let restore = client.run(&["backup", "restore", "--from", &url, "--replace"]);
    assert_ne!(restore.code, 0, "{}", restore.describe());
    assert!(restore.stderr.contains(name), "{}", restore.describe());
    // A missing object is named too.
    std::fs::remove_file(&object).unwrap();
    let verify = client.run(&["backup", "verify", "--from", &url]);
    assert_ne!(verify.code, 0, "{}", verify.describe());
    assert!(
        verify.stderr.contains(name) && verify.stderr.contains("missing"),
        "{}",
        verify.describe()
    );
}

/// Blobs written by the interruption tests: 4 MiB of incompressible values in an ap keyspace,
/// backed up in objects of [`SMALL_CHUNK`] bytes (the smallest allowed), so about 64 objects
/// follow the first and a kill when the first appears lands in the middle.
const BLOBS: usize = 64;
const BLOB_BYTES: usize = 64 * 1024;
const SMALL_CHUNK: &str = "65536";

fn write_blobs(cluster: &Cluster, rt: &tokio::runtime::Runtime, mut seed: u64) {
    cluster.client().create_keyspace("blobs", "ap");
    rt.block_on(async {
        let client = lib(&cluster.endpoint(1));
        for i in 0..BLOBS {
            let value: Vec<u8> = (0..BLOB_BYTES)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            client
                .put("blobs", format!("blob{i:02}").as_bytes(), &value)
                .await
                .unwrap_or_else(|e| panic!("put blob {i}: {e}"));
        }
    });
}

#[test]
fn an_interrupted_backup_is_never_listed() {
    let rt = runtime();
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let cluster = Cluster::start(3);
    write_blobs(&cluster, &rt, 0x9e37_79b9_7f4a_7c15);
    let mut child = Command::new(BIN)
        .args(["--endpoints", &cluster.endpoints_of(&cluster.ids()), "--timeout", "20s"])
        .args(["backup", "create", "--to", &url, "--chunk-bytes", SMALL_CHUNK])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let first_object_written = || {
        walk(store.path())
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "gz"))
    };
    while !first_object_written() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first_object_written(), "the backup wrote no data object in 60 s");
    let listed = cluster.client().run(&["backup", "list", "--from", &url]);
    let json = listed.ok_json();
    assert_eq!(
        json["backups"].as_array().map(Vec::len),
        Some(0),
        "{}",
        listed.describe()
    );
    assert_eq!(
        json["incomplete"].as_array().map(Vec::len),
        Some(1),
        "{}",
        listed.describe()
    );
    let restore = cluster.client().run(&["backup", "restore", "--from", &url]);
    assert_ne!(restore.code, 0, "{}", restore.describe());
    assert!(restore.stderr.contains("no complete backup"), "{}", restore.describe());
    // The cluster kept serving, and the next backup completes.
    cluster
        .client()
        .with_timeout("10s")
        .put_retrying("blobs", "after", "1", Duration::from_secs(30))
        .expect_code(0);
    let out = cluster
        .client()
        .with_timeout("30s")
        .run(&["backup", "create", "--to", &url]);
    out.expect_code(0);
    cluster
        .client()
        .run(&["backup", "verify", "--from", &url])
        .expect_code(0);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// S3: a real S3-compatible server (moto) on loopback
// ---------------------------------------------------------------------------------------------

/// A `moto_server` process on a loopback port; killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts moto on `port`; `None` (with the reason printed) when moto is not installed.
    fn start(port: u16) -> Option<Moto> {
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                println!("SKIPPED: moto_server is not installed ({e}); scripts/test.sh installs it");
                return None;
            }
        };
        let moto = Moto { child, port };
        wait_until(Duration::from_secs(30), "moto_server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a boto3 snippet against this server (an independent S3 client); returns stdout.
    fn boto3(&self, script: &str) -> String {
        let program = format!(
            "import boto3, json, sys\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n{script}",
            self.endpoint()
        );
        let out = Command::new(python())
            .args(["-c", &program])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The python that has boto3: the test venv's when scripts/test.sh made one.
fn python() -> String {
    std::env::var("CAPKV_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Held by every test that sets the AWS variables: they are process-wide, so two S3 tests run
/// in parallel (`cargo test` without `--test-threads=1`) would point each other's CLI at the
/// wrong server.
static AWS_ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn aws_env_lock() -> std::sync::MutexGuard<'static, ()> {
    AWS_ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn set_aws_env(moto: &Moto) {
    // Only the CLI processes this test starts read these.
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", moto.endpoint());
    std::env::set_var("AWS_ALLOW_HTTP", "true");
}

#[test]
fn s3_backup_is_readable_by_boto3_verified_and_restored() {
    let _env = aws_env_lock();
    let port = free_ports(1)[0];
    let Some(moto) = Moto::start(port) else { return };
    set_aws_env(&moto);
    moto.boto3("s3.create_bucket(Bucket='backups')");
    let url = "s3://backups/capkv";
    let rt = runtime();
    let (cp, ap, id) = {
        let cluster = Cluster::start(3);
        let (cp, ap) = fill(&cluster, &rt);
        // Written by this process: the CLI reads the records and uploads them itself.
        let by_cli = cluster
            .client()
            .with_timeout("20s")
            .run(&["backup", "create", "--to", url, "--via", "cli"]);
        assert_eq!(by_cli.ok_json()["written_by"], "cli", "{}", by_cli.describe());
        // By default a node uploads: the CLI, pointed at an S3 server that is not there,
        // never talks to the storage, and the backup still lands (the nodes have the address).
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", free_ports(1)[0]));
        let out = cluster
            .client()
            .with_timeout("20s")
            .run(&["backup", "create", "--to", url]);
        set_aws_env(&moto);
        assert_eq!(out.ok_json()["written_by"], "node", "{}", out.describe());
        let id = backup_id(&out);
        (cp, ap, id)
    };
    // An independent client reads what capkv uploaded.
    let manifest = moto.boto3(&format!(
        "m = json.loads(s3.get_object(Bucket='backups', Key='capkv/{id}/manifest.json')['Body'].read())\nprint(json.dumps(m))"
    ));
    let manifest: Value = serde_json::from_str(manifest.trim()).unwrap();
    assert_eq!(manifest["id"], id.as_str());
    let objects = manifest["objects"].as_array().unwrap().clone();
    let keys = moto.boto3(&format!(
        "print('\\n'.join(o['Key'] for o in s3.list_objects_v2(Bucket='backups', Prefix='capkv/{id}/data/')['Contents']))"
    ));
    for o in &objects {
        let path = format!("capkv/{id}/{}", o["path"].as_str().unwrap());
        assert!(keys.lines().any(|k| k == path), "{path} not in {keys}");
    }
    let cluster = Cluster::start(3);
    let client = cluster.client().with_timeout("20s");
    client.run(&["backup", "verify", "--from", url]).expect_code(0);
    client.run(&["backup", "restore", "--from", url]).expect_code(0);

    // A wrong bucket and an S3 server that is not there: a sentence, a non-zero exit, in time.
    let wrong = client.run(&["backup", "create", "--to", "s3://no-such-bucket/capkv"]);
    assert_ne!(wrong.code, 0, "{}", wrong.describe());
    assert!(wrong.stderr.contains("no-such-bucket"), "{}", wrong.describe());
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", free_ports(1)[0]));
    let gone = cluster
        .client()
        .with_timeout("2s")
        .run(&["backup", "list", "--from", url]);
    set_aws_env(&moto);
    assert_ne!(gone.code, 0, "{}", gone.describe());
    assert!(gone.elapsed < Duration::from_secs(10), "{}", gone.describe());
    check_restored(&cluster, &rt, &cp, &ap);

    // Corrupt one object with boto3: verify and restore name it and refuse.
    let victim = format!("capkv/{id}/{}", objects[0]["path"].as_str().unwrap());
    moto.boto3(&format!(
        "s3.put_object(Bucket='backups', Key='{victim}', Body=b'not the original bytes')"
    ));
    let verify = client.run(&["backup", "verify", "--from", url]);
    assert_ne!(verify.code, 0, "{}", verify.describe());
    assert!(
        verify.stderr.contains(objects[0]["path"].as_str().unwrap()),
        "{}",
        verify.describe()
    );
    let restore = client.run(&["backup", "restore", "--from", url, "--replace"]);
    assert_ne!(restore.code, 0, "{}", restore.describe());
    assert!(restore.stderr.contains("corrupt"), "{}", restore.describe());
}

#[test]
fn s3_server_killed_mid_upload_leaves_no_backup_and_the_cluster_serving() {
    let _env = aws_env_lock();
    let port = free_ports(1)[0];
    let set_up = Instant::now();
    let Some(mut moto) = Moto::start(port) else { return };
    set_aws_env(&moto);
    moto.boto3("s3.create_bucket(Bucket='backups')");
    let url = "s3://backups/capkv";
    let cluster = Cluster::start(3);
    let rt = runtime();
    write_blobs(&cluster, &rt, 0x2545_f491_4f6c_dd1d);
    let endpoints = cluster.endpoints_of(&cluster.ids());
    println!("blobs written after {:?}", set_up.elapsed());
    let started = Instant::now();
    let backup = std::thread::spawn(move || {
        run(&[
            "--endpoints",
            &endpoints,
            "--timeout",
            "5s",
            "-o",
            "json",
            "backup",
            "create",
            "--to",
            url,
            "--chunk-bytes",
            SMALL_CHUNK,
        ])
    });
    // Wait until the first object is in, then pull the plug.
    // (Polled with a raw GET, which moto answers unsigned: boto3 would start too slowly.)
    let moto_addr = format!("127.0.0.1:{port}");
    // A tight loop: the harness's polling backs off to 250 ms, longer than the whole upload.
    let uploading = || http_get(&moto_addr, "/backups?list-type=2").is_ok_and(|r| r.body.contains("<Key>"));
    while !backup.is_finished() && !uploading() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no object uploaded within 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    println!("first object uploaded {:?} after the backup began", started.elapsed());
    assert!(
        !backup.is_finished(),
        "the backup ended before the kill: {}",
        backup.join().unwrap().describe()
    );
    moto.kill();
    let out = backup.join().unwrap();
    assert_ne!(out.code, 0, "{}", out.describe());
    assert!(!out.stderr.trim().is_empty(), "{}", out.describe());
    assert!(started.elapsed() < Duration::from_secs(60), "{}", out.describe());
    cluster
        .client()
        .with_timeout("10s")
        .put_retrying("blobs", "after", "1", Duration::from_secs(30))
        .expect_code(0);
    // The server comes back (empty: moto keeps no state); the next backup succeeds.
    let moto = Moto::start(port).expect("moto restarts");
    moto.boto3("s3.create_bucket(Bucket='backups')");
    let client = cluster.client().with_timeout("30s");
    let listed = client.run(&["backup", "list", "--from", url]);
    assert_eq!(
        listed.ok_json()["backups"].as_array().map(Vec::len),
        Some(0),
        "{}",
        listed.describe()
    );
    client.run(&["backup", "create", "--to", url]).expect_code(0);
    let listed = client.run(&["backup", "list", "--from", url]);
    assert_eq!(
        listed.ok_json()["backups"].as_array().map(Vec::len),
        Some(1),
        "{}",
        listed.describe()
    );
    client.run(&["backup", "verify", "--from", url]).expect_code(0);
}

// ---------------------------------------------------------------------------------------------
// Scheduled backups and retention
// ---------------------------------------------------------------------------------------------

/// Starts a cluster whose nodes take scheduled backups to `to` (the node flags read these
/// variables; they are removed again once the nodes run, so later clusters do not inherit them).
fn cluster_with_schedule(every: &str, to: &str, keep: usize) -> Cluster {
    std::env::set_var("CAPKV_BACKUP_EVERY", every);
    std::env::set_var("CAPKV_BACKUP_TO", to);
    std::env::set_var("CAPKV_BACKUP_KEEP", keep.to_string());
    let cluster = Cluster::start(3);
    for var in ["CAPKV_BACKUP_EVERY", "CAPKV_BACKUP_TO", "CAPKV_BACKUP_KEEP"] {
        std::env::remove_var(var);
    }
    cluster
}

fn leader_metric(cluster: &Cluster, name: &str) -> f64 {
    let leader = cluster.leader_id();
    http_get(&cluster.http_addr(leader), "/metrics")
        .ok()
        .and_then(|r| crate::harness::metric_value(&r.body, name))
        .unwrap_or(0.0)
}

#[test]
fn scheduled_backups_keep_the_newest_and_report_on_health() {
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let cluster = cluster_with_schedule("1s", &url, 2);
    cluster.client().create_keyspace("bank", "cp");
    cluster.client().put("bank", "alice", "100").expect_code(0);
    wait_until(Duration::from_secs(60), "four scheduled backups", || {
        leader_metric(&cluster, "capkv_backup_success_total") >= 4.0
    });
    // Retention runs right after each backup, so between two ticks exactly two remain.
    let count = || {
        let listed = cluster.client().run(&["backup", "list", "--from", &url]);
        listed.ok_json()["backups"].as_array().map_or(0, Vec::len)
    };
    wait_until(Duration::from_secs(10), "exactly two kept backups", || count() == 2);
    assert!(
        count() <= 3,
        "retention keeps at most one more than --backup-keep in flight"
    );
    assert!(leader_metric(&cluster, "capkv_backup_last_success_timestamp_seconds") > 0.0);
    let health = http_get(&cluster.http_addr(cluster.leader_id()), "/health").unwrap();
    let json: Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(json["backup"]["ok"], true, "{}", health.body);
    // The newest scheduled backup restores like any other: it verifies.
    cluster
        .client()
        .run(&["backup", "verify", "--from", &url])
        .expect_code(0);
    drop(cluster);

    // A schedule whose target cannot be written is reported overdue on the leader's /health.
    let blocker = store.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let broken = format!("file://{}/backups", blocker.display());
    let cluster = cluster_with_schedule("1s", &broken, 2);
    wait_until(
        Duration::from_secs(30),
        "the leader to report an overdue backup",
        || {
            http_get(&cluster.http_addr(cluster.leader_id()), "/health")
                .ok()
                .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
                .is_some_and(|j| j["backup"]["ok"] == false && j["status"] == "degraded")
        },
    );
    assert!(leader_metric(&cluster, "capkv_backup_failures_total") >= 1.0);
}

/// `--via node` with file://: the node writes under its `--backup-dir` and nowhere else.
#[test]
fn a_node_writes_file_backups_only_under_its_backup_dir() {
    let store = tempfile::tempdir().unwrap();
    let allowed = store.path().join("allowed");
    std::env::set_var("CAPKV_BACKUP_DIR", &allowed);
    let cluster = Cluster::start(3);
    std::env::remove_var("CAPKV_BACKUP_DIR");
    let client = cluster.client().with_timeout("20s");
    client.create_keyspace("bank", "cp");
    client.create_keyspace("carts", "ap");
    for i in 0..50 {
        client.put("bank", &format!("k{i}"), &format!("v{i}")).expect_code(0);
        client.put("carts", &format!("c{i}"), &format!("w{i}")).expect_code(0);
    }
    let url = format!("file://{}/nightly", allowed.display());
    let out = client.run(&["backup", "create", "--to", &url, "--via", "node"]);
    let json = out.ok_json();
    assert_eq!(json["written_by"], "node", "{}", out.describe());
    let keys: Vec<u64> = json["keyspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["keys"].as_u64().unwrap())
        .collect();
    assert_eq!(keys, [50, 50], "{}", out.describe());
    let id = backup_id(&out);
    assert!(allowed.join("nightly").join(&id).join("manifest.json").is_file());
    client.run(&["backup", "verify", "--from", &url]).expect_code(0);

    // Outside the directory, or escaping it with '..': refused before anything is written.
    let outside = store.path().join("outside");
    for url in [
        format!("file://{}", outside.display()),
        format!("file://{}/../outside", allowed.display()),
    ] {
        let refused = client.run(&["backup", "create", "--to", &url, "--via", "node"]);
        refused.expect_error(3);
        assert!(refused.stderr.contains("--backup-dir"), "{}", refused.describe());
    }
    assert!(!outside.exists(), "a refused backup created {}", outside.display());
    // Written by the CLI instead, the same path is fine: it is this machine's.
    let out = client.run(&[
        "backup",
        "create",
        "--to",
        &format!("file://{}", outside.display()),
        "--via",
        "cli",
    ]);
    assert_eq!(out.ok_json()["written_by"], "cli", "{}", out.describe());
    drop(cluster); // one cluster at a time

    // Restored into a fresh cluster, the node-written backup holds what was written.
    let fresh = Cluster::start(3);
    let fresh_client = fresh.client().with_timeout("20s");
    fresh_client.run(&["backup", "restore", "--from", &url]).expect_code(0);
    crate::harness::expect_value(&fresh_client.get("bank", "k7"), "v7");
    crate::harness::expect_value(&fresh_client.get("carts", "c7"), "w7");
}

#[test]
fn an_unreachable_replica_is_named_and_the_others_are_merged() {
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    client.create_keyspace("carts", "ap");
    client.create_keyspace("bank", "cp");
    for i in 0..20 {
        cluster.client_at(1).put("carts", &format!("k{i}"), "v").expect_code(0);
    }
    cluster.kill9(3);
    let out =
        cluster
            .client_of(&[1, 2])
            .with_timeout("10s")
            .run(&["backup", "create", "--to", &url, "--keyspace", "carts"]);
    let json = out.ok_json();
    let keyspaces = json["keyspaces"].as_array().unwrap();
    assert_eq!(
        keyspaces.len(),
        1,
        "--keyspace selects one keyspace\n{}",
        out.describe()
    );
    assert_eq!(keyspaces[0]["keys"].as_u64(), Some(20), "{}", out.describe());
    assert_eq!(
        keyspaces[0]["unreachable"],
        serde_json::json!([3]),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("could not be read"), "{}", out.describe());
    // Restoring a keyspace the backup does not hold is refused before anything happens.
    let restore = cluster
        .client_of(&[1, 2])
        .run(&["backup", "restore", "--from", &url, "--keyspace", "bank"]);
    assert_ne!(restore.code, 0, "{}", restore.describe());
    assert!(restore.stderr.contains("no keyspace 'bank'"), "{}", restore.describe());
}

// ---------------------------------------------------------------------------------------------
// The crash-restore story: a cluster lost, `cluster up` fresh, `backup restore`
// ---------------------------------------------------------------------------------------------

#[test]
fn a_lost_cluster_is_recovered_with_cluster_up_and_restore() {
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let (cp_value, ap_version) = {
        let mut cluster = Cluster::start(3);
        let client = cluster.client();
        client.create_keyspace("bank", "cp");
        client.create_keyspace("carts", "ap");
        client.put("bank", "alice", "100").expect_code(0);
        let put = cluster.client_at(2).put("carts", "alice", "book");
        let version = put.ok_json()["version"].clone();
        client
            .with_timeout("20s")
            .run(&["backup", "create", "--to", &url])
            .expect_code(0);
        // The crash: a node killed with SIGKILL, then the whole cluster lost with its data.
        let leader = cluster.leader_id();
        cluster.kill9(leader);
        ("100", version)
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    let _down = DetachedCluster(data.clone());
    let (base, http, peer) = (
        consecutive_free_ports(3),
        consecutive_free_ports(3),
        consecutive_free_ports(3),
    );
    let up = run(&[
        "cluster",
        "up",
        "--detach",
        "--data-dir",
        data.to_str().unwrap(),
        "--base-port",
        &base.to_string(),
        "--http-base-port",
        &http.to_string(),
        "--peer-base-port",
        &peer.to_string(),
    ]);
    up.expect_code(0);
    let endpoints = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",");
    let client = crate::harness::Client::new(endpoints).with_timeout("20s");
    client.run(&["backup", "restore", "--from", &url]).expect_code(0);
    let got = client.get("bank", "alice");
    assert_eq!(got.ok_json()["value"], cp_value, "{}", got.describe());
    let got = client.get_local("carts", "alice");
    assert_eq!(got.ok_json()["value"], "book", "{}", got.describe());
    assert_eq!(
        got.ok_json()["version"],
        ap_version,
        "the ap version survives\n{}",
        got.describe()
    );
}

/// The `stored` count of keyspace `name` in a `backup create -o json` answer.
fn stored(out: &Output, name: &str) -> u64 {
    out.ok_json()["keyspaces"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["name"] == name))
        .and_then(|k| k["stored"].as_u64())
        .unwrap_or_else(|| panic!("no stored count for {name}\n{}", out.describe()))
}

#[test]
fn incremental_backups_store_the_changes_and_restore_the_whole_chain() {
    let rt = runtime();
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}", store.path().display());
    let (cp, ap, last) = {
        let cluster = Cluster::start(3);
        let client = cluster.client().with_timeout("20s");
        client.create_keyspace("bank", "cp");
        client.create_keyspace("carts", "ap");
        let all = lib(&cluster.endpoints_of(&cluster.ids()));
        rt.block_on(async {
            write_cp(&all, "bank", 500).await;
            for i in 0..200 {
                all.put("carts", format!("item{i:05}").as_bytes(), &value_of(i))
                    .await
                    .unwrap_or_else(|e| panic!("ap put {i}: {e}"));
            }
        });
        let full = client.run(&["backup", "create", "--to", &url]);
        let base = backup_id(&full);
        assert_eq!(stored(&full, "bank"), 500, "{}", full.describe());

        // 10 new cp keys, 5 overwritten, 5 deleted; 5 new ap keys and 3 deleted.
        rt.block_on(async {
            for i in 500..510 {
                all.put("bank", format!("acct{i:05}").as_bytes(), b"new").await.unwrap();
            }
            for i in 0..5 {
                all.put("bank", format!("acct{i:05}").as_bytes(), b"changed")
                    .await
                    .unwrap();
            }
            for i in 100..105 {
                all.delete("bank", format!("acct{i:05}").as_bytes()).await.unwrap();
            }
            for i in 200..205 {
                all.put("carts", format!("item{i:05}").as_bytes(), b"new")
                    .await
                    .unwrap();
            }
            for i in 0..3 {
                all.delete("carts", format!("item{i:05}").as_bytes()).await.unwrap();
            }
        });
        // ap writes reach every replica before the backup reads them (a put waits for one).
        wait_until(Duration::from_secs(20), "ap writes reach every replica", || {
            let views: Vec<ApView> = cluster
                .ids()
                .into_iter()
                .map(|id| rt.block_on(async { ap_view(scan_all(&lib(&cluster.endpoint(id)), "carts").await) }))
                .collect();
            views.windows(2).all(|w| w[0] == w[1])
        });
        let first = client.run(&["backup", "create", "--to", &url, "--incremental-from", &base]);
        let first_id = backup_id(&first);
        assert_eq!(
            first.ok_json()["incremental_from"],
            base.as_str(),
            "{}",
            first.describe()
        );
        assert_eq!(
            stored(&first, "bank"),
            20,
            "10 new + 5 changed + 5 removed: {}",
            first.describe()
        );
        assert_eq!(stored(&first, "carts"), 8, "5 new + 3 tombstones: {}", first.describe());
        let bank = first.ok_json()["keyspaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "bank")
            .unwrap()
            .clone();
        assert_eq!(
            bank["keys"].as_u64(),
            Some(505),
            "the count is the whole keyspace's: {bank}"
        );

        // A second link, from the newest backup: one cp delete.
        rt.block_on(async { all.delete("bank", b"acct00400").await.unwrap() });
        let second = client.run(&["backup", "create", "--to", &url, "--incremental-from", "latest"]);
        assert_eq!(
            second.ok_json()["incremental_from"],
            first_id.as_str(),
            "{}",
            second.describe()
        );
        assert_eq!(stored(&second, "bank"), 1, "{}", second.describe());
        assert_eq!(stored(&second, "carts"), 0, "{}", second.describe());
        let last = backup_id(&second);

        let listed = client.run(&["backup", "list", "--from", &url]);
        let backups = listed.ok_json()["backups"].as_array().unwrap().clone();
        assert_eq!(backups.len(), 3, "{}", listed.describe());
        assert!(backups[0].get("parent").is_none(), "{}", listed.describe());
        assert_eq!(backups[2]["parent"], first_id.as_str(), "{}", listed.describe());
        let verify = client.run(&["backup", "verify", "--from", &url]);
        assert_eq!(
            verify.ok_json()["chain"],
            serde_json::json!([base, first_id, last]),
            "{}",
            verify.describe()
        );

        let cp = rt.block_on(async { cp_view(scan_all(&all, "bank").await) });
        let ap = rt.block_on(merged_ap_view(&cluster, "carts"));
        assert_eq!(cp.len(), 504);
        (cp, ap, last)
    };

    // The newest link restores the state it saw, read through the whole chain.
    let cluster = Cluster::start(3);
    let client = cluster.client().with_timeout("20s");
    client
        .run(&["backup", "restore", "--from", &url, "--id", &last])
        .expect_code(0);
    check_restored(&cluster, &rt, &cp, &ap);

    // Without its full backup the chain is broken: restore says so and loads nothing.
    let base = std::fs::read_dir(store.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .min()
        .unwrap();
    std::fs::remove_file(store.path().join(&base).join("manifest.json")).unwrap();
    let broken = client.run(&["backup", "restore", "--from", &url, "--id", &last, "--replace"]);
    assert_ne!(broken.code, 0, "{}", broken.describe());
    assert!(
        broken.stderr.contains("chain is broken") && broken.stderr.contains(&base),
        "{}",
        broken.describe()
    );
}
