//! Hinted handoff: writes kept for a peer that could not be reached, delivered when it is back.
//!
//! A hint is persisted in the AP store's hint queue for that peer, with the wall time it was
//! made. Each peer's queue is bounded ([`super::ReplicaOptions::hints_per_peer_max`]); a write
//! over the bound is not hinted (counted in `hints_dropped_full`) and left to anti-entropy.
//! Delivery sends the oldest hints in one push; hints older than the hint lifetime are dropped
//! instead (counted in `hints_dropped_expired`), so a hint can never outlive the tombstone
//! horizon and resurrect a collected delete.
//!
//! CAVEATS: the bound counts hints, not bytes; delivery is in queue order, one batch per call,
//! and the caller (the repair loop) decides when to call it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::store::{Entry, Hint};
use super::{PeerError, Replica, Request, Response, Transport};
use crate::error::Error;

impl<T: Transport> Replica<T> {
    /// Queues `entry` for `peer`, unless the peer's queue is full (then counts the drop).
    pub(super) fn hint(&self, peer: u64, entry: &Entry) -> Result<(), Error> {
        if cfg!(feature = "no-anti-entropy") {
            return Ok(()); // negative control: a write a peer missed stays missed
        }
        let hint = Hint {
            entry: entry.clone(),
            created_ms: self.wall_ms(),
        };
        if self.store.add_hint(peer, &hint, self.options.hints_per_peer_max)? {
            self.stats.hints_stored.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.hints_dropped_full.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Delivers stored hints to `peer`; returns how many were delivered.
    pub async fn deliver_hints(&self, peer: u64, batch: usize) -> Result<usize, PeerError> {
        let hints = self.store.hints(peer, batch)?;
        if hints.is_empty() {
            return Ok(0);
        }
        let now = self.wall_ms();
        let (fresh, expired): (Vec<_>, Vec<_>) = hints
            .into_iter()
            .partition(|(_, h)| now.saturating_sub(h.created_ms) <= self.options.hint_lifetime_ms);
        if !expired.is_empty() {
            self.stats
                .hints_dropped_expired
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
            self.store
                .remove_hints(peer, &expired.iter().map(|(s, _)| *s).collect::<Vec<_>>())?;
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        let entries = fresh.iter().map(|(_, h)| h.entry.clone()).collect();
        let timeout = Duration::from_millis(self.options.push_timeout_ms);
        let answer =
            (self.transport.call(peer, Request::Push(entries), timeout).await).map_err(PeerError::unreachable(peer))?;
        match answer {
            Response::Pushed => {
                self.store
                    .remove_hints(peer, &fresh.iter().map(|(s, _)| *s).collect::<Vec<_>>())?;
                self.stats
                    .hints_delivered
                    .fetch_add(fresh.len() as u64, Ordering::Relaxed);
                Ok(fresh.len())
            }
            other => Err(PeerError::unexpected(peer, "push", &other)),
        }
    }
}
