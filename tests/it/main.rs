//! Multi-process integration tests: real `capkv node` processes on loopback, driven through the
//! `capkv` CLI exactly as a user or script would (the CLI contract is in README: commands, `-o json`, exit codes).
//!
//! Run them one at a time, the machine has two cores and each test starts a 3-node cluster:
//! `cargo test --test it -- --test-threads=1` (the harness also serializes clusters itself).

mod ap;
mod ap_scale;
mod auth;
mod backup;
mod bad_input;
mod bench;
mod cli;
mod durability;
mod exactly_once;
mod failover;
mod garbage;
mod harness;
mod limits;
mod members;
mod ops;
mod probes;
mod syscalls;
mod tls;
mod tour;
