//! Tokens and roles: `cluster up --auth` as a user runs it, and what each role may do.
//!
//! `tokens_and_roles_decide_who_may_do_what`: a cluster started with `--tls --auth` (tokens under
//! `<data-dir>/auth/`, mode 0600) refuses a request without a token or with an unknown one, and
//! lets each role do exactly what it may: readonly reads, readwrite also writes, admin also
//! creates keyspaces and injects faults. Refusals are exit 3 with one sentence; health checks
//! over HTTP need no token.

use crate::harness::{http_get, run, Output, UpCluster};
use std::os::unix::fs::PermissionsExt;

#[test]
fn tokens_and_roles_decide_who_may_do_what() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = UpCluster::start(dir.path(), &["--tls", "--auth"]);
    let ca = cluster.data.join("tls").join("ca.pem");
    let ca = ca.to_str().unwrap();
    let (up, data, http) = (&cluster.up, &cluster.data, cluster.http);
    assert!(up.stdout.contains("export CAPKV_TOKEN="), "{}", up.describe());

    let token = |role: &str| {
        let path = data.join("auth").join(format!("{role}.token"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is private", path.display());
        std::fs::read_to_string(&path).unwrap().trim().to_string()
    };
    let (admin, readwrite, readonly) = (token("admin"), token("readwrite"), token("readonly"));
    let endpoints = cluster.endpoints();
    let as_role = |token: Option<&str>, args: &[&str]| -> Output {
        let mut all = vec!["--endpoints", &endpoints, "--timeout", "5s", "--cacert", ca];
        if let Some(t) = token {
            all.extend(["--token", t]);
        }
        all.extend(args);
        run(&all)
    };
    let refused = |out: Output, why: &str| {
        out.expect_code(3);
        assert!(out.stderr.contains(why), "expected '{why}': {}", out.describe());
    };

    refused(as_role(None, &["keyspace", "list"]), "requires a token");
    refused(
        as_role(Some("not-a-token-0123456789"), &["keyspace", "list"]),
        "does not know this token",
    );

    as_role(Some(&admin), &["keyspace", "create", "bank", "--mode", "cp"]).expect_code(0);
    refused(
        as_role(Some(&readwrite), &["keyspace", "create", "other", "--mode", "cp"]),
        "role readwrite may not create keyspaces",
    );
    refused(
        as_role(Some(&readonly), &["put", "bank", "alice", "100"]),
        "permission denied: role readonly may not put",
    );
    as_role(Some(&readwrite), &["put", "bank", "alice", "100"]).expect_code(0);
    let got = as_role(Some(&readonly), &["get", "bank", "alice", "-o", "json"]);
    assert_eq!(got.ok_json()["value"], "100", "{}", got.describe());
    refused(
        as_role(Some(&readwrite), &["fault", "partition", "1", "2,3"]),
        "role readwrite may not",
    );
    as_role(Some(&admin), &["fault", "partition", "1", "2,3"]).expect_code(0);
    as_role(Some(&admin), &["fault", "heal"]).expect_code(0);
    // The token also comes from the environment, as CAPKV_TOKEN.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_capkv"))
        .args(["--endpoints", &endpoints, "--cacert", ca, "get", "bank", "alice"])
        .env("CAPKV_TOKEN", &readonly)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    for i in 0..3 {
        let health = http_get(&format!("127.0.0.1:{}", http + i), "/health").expect("GET /health");
        assert_eq!(health.status, 200, "probes need no token");
    }
}
