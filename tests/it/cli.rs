//! The CLI's own contract on real processes: `-o json get` names the cp write count and the ap
//! version apart, `capkv txn` runs a transfer (and refuses one whose compare fails, writing
//! nothing), values come from stdin, a file or hex, shell completion scripts parse, and
//! `capkv node --help` lists server flags only.

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{expect_value, run, Client, Cluster, Output, BIN};

/// No CLI call fed on stdin may take longer than this; it is killed and reported as code -1.
const STDIN_CALL_CAP: Duration = Duration::from_secs(30);

/// `capkv --endpoints E -o json <args>` with `input` on stdin.
fn run_with_stdin(client: &Client, args: &[&str], input: &[u8]) -> Output {
    let mut all = vec!["--endpoints", client.endpoints(), "-o", "json"];
    all.extend_from_slice(args);
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(&all)
        .env_remove("CAPKV_ENDPOINTS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start capkv");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let input_len = input.len();
    // A writer thread, so a child that stops reading early cannot block the test.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let deadline = started + STDIN_CALL_CAP;
    while child.try_wait().expect("poll capkv").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().expect("collect capkv output");
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Output {
        cmd: format!("capkv {} < ({input_len} bytes on stdin)", all.join(" ")),
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(stdout.trim()).ok(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

#[track_caller]
fn value_hex(client: &Client, keyspace: &str, key: &str) -> String {
    let out = client.get(keyspace, key);
    out.ok_json()["value_hex"]
        .as_str()
        .unwrap_or_else(|| panic!("no value_hex\n{}", out.describe()))
        .to_string()
}

#[test]
fn json_get_shows_cp_write_count_and_ap_version_apart() {
    let cluster = Cluster::start(3);
    let client = cluster.client();
    client.create_keyspace("bank", "cp");
    client.create_keyspace("carts", "ap");
    for balance in ["100", "90", "80"] {
        client.put("bank", "alice", balance).expect_code(0);
    }
    let out = client.get("bank", "alice");
    let json = out.ok_json();
    assert_eq!(
        json["write_count"],
        3,
        "three writes since creation\n{}",
        out.describe()
    );
    assert!(
        json["version"].is_null(),
        "cp keys carry no ap version\n{}",
        out.describe()
    );
    assert_eq!(json["value"], "80");

    client.put("carts", "bob", "book").expect_code(0);
    let out = client.get("carts", "bob");
    let json = out.ok_json();
    let version = &json["version"];
    assert!(
        version["physical_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{}",
        out.describe()
    );
    assert_eq!(version["node"].as_u64().map(|n| (1..=3).contains(&n)), Some(true));
    let hlc = format!("{}.{}", version["physical_ms"], version["logical"]);
    assert_eq!(version["hlc"], hlc.as_str(), "{}", out.describe());
    assert_eq!(json["write_count"], 0, "ap keys count no writes\n{}", out.describe());
}

#[test]
fn txn_transfers_when_compares_hold_and_writes_nothing_when_not() {
    let cluster = Cluster::start(3);
    let client = cluster.client();
    client.create_keyspace("bank", "cp");
    client.put("bank", "alice", "100").expect_code(0);
    client.put("bank", "bob", "50").expect_code(0);

    // etcdctl-style blocks on stdin: compares, success, failure.
    let transfer = "val(alice) = \"100\"\nval(bob) = \"50\"\n\nput alice 90\nput bob 60\n\nget alice\n";
    let out = run_with_stdin(&client, &["txn", "bank"], transfer.as_bytes());
    let json = out.ok_json();
    assert_eq!(json["succeeded"], true, "{}", out.describe());
    assert_eq!(json["results"].as_array().map(Vec::len), Some(2), "{}", out.describe());
    assert_eq!(json["results"][0]["op"], "put");
    assert_eq!(
        json["results"][0]["value"], "100",
        "a put reports the value it replaced"
    );
    expect_value(&client.get("bank", "alice"), "90");
    expect_value(&client.get("bank", "bob"), "60");

    // The same transfer again: alice no longer holds 100, so the failure branch runs.
    let out = client.run(&[
        "txn",
        "bank",
        "--compare",
        "val(alice) = 100",
        "--compare",
        "mod(bob) > 0",
        "--success",
        "put alice 80",
        "--success",
        "put bob 70",
        "--failure",
        "get alice",
    ]);
    out.expect_code(1);
    let json = out.json_obj();
    assert_eq!(json["succeeded"], false, "{}", out.describe());
    assert_eq!(json["results"][0]["op"], "get");
    assert_eq!(json["results"][0]["value"], "90", "{}", out.describe());
    assert!(out.stderr.contains("compares did not hold"), "{}", out.describe());
    expect_value(&client.get("bank", "alice"), "90");
    expect_value(&client.get("bank", "bob"), "60");

    // The table rendering says which branch ran.
    let table = run(&[
        "--endpoints",
        client.endpoints(),
        "txn",
        "bank",
        "--compare",
        "absent(carol)",
    ]);
    table.expect_code(0);
    assert!(table.stdout.starts_with("SUCCESS"), "{}", table.describe());

    // ap keyspaces have no transactions: refused, definitely not applied.
    client.create_keyspace("carts", "ap");
    client.run(&["txn", "carts", "--success", "put k v"]).expect_error(3);
    client.get("carts", "k").expect_code(1);

    // Nothing on stdin and no flags: an empty transaction is refused, not sent.
    let empty = client.run(&["txn", "bank"]);
    empty.expect_error(5);
    assert!(
        empty.stderr.contains("the transaction is empty"),
        "{}",
        empty.describe()
    );

    // A grammar mistake is refused before anything is sent, naming the fix.
    let bad = client.run(&["txn", "bank", "--compare", "val(alice) ~ 1"]);
    bad.expect_error(5);
    assert!(bad.stderr.contains("capkv txn --help"), "{}", bad.describe());
}

#[test]
fn values_come_from_stdin_files_and_hex() {
    let cluster = Cluster::start(3);
    let client = cluster.client();
    client.create_keyspace("blobs", "cp");
    let dir = tempfile::tempdir().expect("temporary directory");

    // A binary value on stdin (`-` as the value): every byte survives.
    let binary: Vec<u8> = (0..=255u8).collect();
    run_with_stdin(&client, &["put", "blobs", "bin", "-"], &binary).expect_code(0);
    assert_eq!(value_hex(&client, "blobs", "bin"), hex::encode(&binary));
    // With --hex the key is typed in hex too ("bin").
    let shown = run(&["--endpoints", client.endpoints(), "--hex", "get", "blobs", "62696e"]);
    assert_eq!(shown.expect_code(0).stdout.trim(), hex::encode(&binary));

    // A value over the 128 KiB argument limit, from a file, and from `--value-file -`.
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &big).expect("write the value file");
    let path_text = path.to_str().expect("utf-8 path");
    client
        .run(&["put", "blobs", "big", "--value-file", path_text])
        .expect_code(0);
    assert_eq!(value_hex(&client, "blobs", "big"), hex::encode(&big));
    run_with_stdin(&client, &["put", "blobs", "piped", "--value-file", "-"], &big).expect_code(0);
    assert_eq!(value_hex(&client, "blobs", "piped"), hex::encode(&big));

    // --hex decodes the key and the value on input, matching --hex on output.
    client.run(&["--hex", "put", "blobs", "6b6579", "00ff"]).expect_code(0);
    assert_eq!(value_hex(&client, "blobs", "key"), "00ff");
    let out = client.run(&["get", "blobs", "6b6579", "--hex"]);
    assert_eq!(out.ok_json()["value_hex"], "00ff", "{}", out.describe());
    client.run(&["--hex", "put", "blobs", "6b6579", "zz"]).expect_error(5);
    let out = client.run(&["--hex", "cas", "blobs", "6b6579", "--expect", "00ff", "01"]);
    assert_eq!(out.ok_json()["succeeded"], true, "{}", out.describe());
    assert_eq!(value_hex(&client, "blobs", "key"), "01");

    // Over 1 MiB: refused before sending (exit 5), and nothing is stored.
    let huge = dir.path().join("huge.bin");
    std::fs::write(&huge, vec![b'x'; 1024 * 1024 + 1]).expect("write the huge file");
    let out = client.run(&["put", "blobs", "huge", "--value-file", huge.to_str().expect("utf-8")]);
    out.expect_error(5);
    assert!(out.stderr.contains("over the limit"), "{}", out.describe());
    client.get("blobs", "huge").expect_code(1);
    let out = client.run(&["put", "blobs", "gone", "--value-file", "/nonexistent/capkv-value"]);
    out.expect_error(5);
    assert!(out.stderr.contains("cannot read the value"), "{}", out.describe());
}

#[test]
fn completion_scripts_parse_and_node_help_lists_server_flags_only() {
    let bash = run(&["completion", "bash"]);
    bash.expect_code(0);
    let dir = tempfile::tempdir().expect("temporary directory");
    let script = dir.path().join("capkv.bash");
    std::fs::write(&script, &bash.stdout).expect("write the script");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash is installed");
    assert!(
        check.status.success(),
        "bash -n rejects the completion script: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for word in ["txn", "completion", "--value-file"] {
        assert!(bash.stdout.contains(word), "{word} missing from the bash completion");
    }
    for shell in ["zsh", "fish"] {
        let out = run(&["completion", shell]);
        assert!(out.expect_code(0).stdout.contains("capkv"), "{}", out.describe());
    }
    run(&["completion", "tcsh"]).expect_code(2);

    let help = run(&["node", "--help"]);
    help.expect_code(0);
    assert!(help.stdout.contains("--peers"), "{}", help.describe());
    for flag in ["--endpoints", "--timeout", "--output", "--hex"] {
        assert!(
            !help.stdout.contains(flag),
            "node --help lists {flag}\n{}",
            help.describe()
        );
    }
    // A node needs at least one worker thread; 0 is a usage error that names the flag.
    let zero = run(&[
        "node",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:1",
        "--http",
        "127.0.0.1:2",
        "--data-dir",
        "/nonexistent",
        "--peers",
        "1=127.0.0.1:1",
        "--worker-threads",
        "0",
    ]);
    assert!(
        zero.expect_code(2).stderr.contains("--worker-threads"),
        "{}",
        zero.describe()
    );
    let get_help = run(&["get", "--help"]);
    assert!(
        get_help.expect_code(0).stdout.contains("--endpoints"),
        "{}",
        get_help.describe()
    );
}
