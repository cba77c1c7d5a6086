//! Multi-process integration tests: real `capkv node` processes on loopback, driven through the
//! `capkv` CLI exactly as a user or script would (see the contracts in DESIGN.md, §1 and §3 item 3).
//!
//! Run them one at a time, the machine has two cores and each test starts a 3-node cluster:
//! `cargo test --test it -- --test-threads=1` (the harness also serializes clusters itself).

mod ap;
mod bad_input;
mod durability;
mod harness;
mod limits;
mod ops;
mod tour;
