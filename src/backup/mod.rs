//! Backups of keyspaces to external storage (`file://` and `s3://`), and their restore.
//!
//! DESIGN
//!
//! A coordinator (the CLI, or with `--via node` a node of the cluster) drives the backup; the
//! nodes export and import. [`create`] asks the
//! leader for every cp keyspace (one export, copied at one applied Raft index after a read
//! barrier) and every member for each ap keyspace (merged by last-writer-wins as the pages
//! stream in, tombstones and versions kept). Records become [`chunk`]s: framed, compressed data
//! objects of at most [`chunk::CHUNK_BYTES_DEFAULT`] bytes each (`--chunk-bytes`), uploaded as soon as they fill,
//! each with its SHA-256. The [`manifest`] is written last, so an interrupted backup has none and
//! [`target::Target::list`] never offers it. [`restore`] verifies every checksum before it loads
//! anything, creates each keyspace with its mode, and loads cp keyspaces through Raft and ap
//! keyspaces with their original versions. An incremental backup (`--incremental-from ID`)
//! stores only the records that changed since its parent and removal markers; a restore reads
//! the chain back as one keyspace ([`chain`]).
//!
//! GUARANTEES
//!
//! - cp: the backup is the state at one Raft index that is at or after every write acknowledged
//!   before `backup create` began (linearizable point in time).
//! - ap: every write that reached at least one replica the backup could read is in it, with its
//!   version; the manifest names the replicas that contributed and those that could not be read.
//! - Memory stays bounded by a few pages and one chunk, whatever the data size.
//!
//! CAVEATS
//!
//! - One process coordinates and uploads the whole backup: a node asked through the `Create`
//!   RPC ([`create::create_through_node`], the default for s3://), or the CLI itself. Members do
//!   not each upload their own part, and a restore streams every byte through the CLI.
//! - Incremental backups store only what changed but still read every record from the cluster
//!   ([`chain`]). Scheduled backups and retention: [`schedule`].
//! - An ap backup is not a point in time: writes made during the backup may or may not be in it.

pub mod chain;
pub mod chunk;
pub mod create;
pub mod manifest;
pub mod restore;
pub mod schedule;
pub mod target;

pub use manifest::Manifest;
pub use target::Target;
