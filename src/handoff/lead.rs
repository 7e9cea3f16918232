//! Leading a handoff across a fleet ([`super::coordinate`]): the pre-copy, then the
//! handoff published in the store, every live replica's acknowledgement that it has
//! fenced and drained the band, the fenced sync, and the commit that flips every
//! replica at one generation — or the abort that releases them all to the old side.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::coordinate::{Coordinator, Pending, new_id};
use super::{Handoffs, Synced, timed_out};
use crate::routing::band::Band;

impl Handoffs {
    /// Hands `band` over across the fleet as `leader`; `finish(id)` commits the new
    /// percentage together with the end of handoff `id`. `force`: commit even when
    /// the sync fails (the guard's rollback).
    pub async fn lead<F>(
        &self,
        coord: &dyn Coordinator,
        leader: &str,
        band: Band,
        force: bool,
        finish: impl FnOnce(String) -> F,
    ) -> Result<Synced, String>
    where
        F: Future<Output = Result<(), String>>,
    {
        let snap = self.state.load();
        let cfg = snap.config.handoff.clone().ok_or("handoffs are off")?;
        let precopied = self.precopy(&snap.config, &cfg, &band).await;
        if let (Err(e), false) = (&precopied, force) {
            let e = e.clone();
            return self.end(&band, "aborted", Err(e), Duration::ZERO);
        }
        let max_hold_ms = cfg.max_hold.as_millis() as u64;
        let pending = Pending { id: new_id(), band: band.clone(), max_hold_ms, leader: leader.to_string() };
        let started = Instant::now();
        let deadline = started + cfg.timeout;
        // One handoff at a time in the fleet: wait for another replica's to end.
        let begun = async {
            while !coord.begin(&pending).await? {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, String>(())
        };
        let begun = tokio::time::timeout_at(deadline, begun).await.unwrap_or_else(|_| {
            Err(format!("another handoff ran past handoff.timeout_seconds ({} s)", cfg.timeout.as_secs_f64()))
        });
        if let Err(e) = begun {
            return self.end(&band, "aborted", Err(e), Duration::ZERO);
        }
        let id = pending.id.as_str();
        tracing::info!(id, low = band.low, high = band.high, from = %band.from, to = %band.to, "handoff: fleet fencing");
        self.phase("drain");
        let unacknowledged = Mutex::new(Vec::new());
        let work = async {
            loop {
                let waiting = coord.waiting(id).await?;
                if waiting.is_empty() {
                    break;
                }
                *unacknowledged.lock().unwrap_or_else(PoisonError::into_inner) = waiting;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.metrics.handoff_phase("drain", started.elapsed());
            let precopied = precopied?;
            self.fenced_sync(&snap.config, &cfg, &band, precopied, deadline).await
        };
        let renew = async {
            loop {
                tokio::time::sleep(coord.lease() / 3).await;
                if !coord.renew(id).await? {
                    return Err("the handoff was taken as abandoned (not renewed within the lease)".to_string());
                }
            }
        };
        let result = tokio::select! {
            done = tokio::time::timeout_at(deadline, work) => done.unwrap_or_else(|_| {
                let waiting = unacknowledged.lock().unwrap_or_else(PoisonError::into_inner).join(", ");
                let not_acked = if waiting.is_empty() { String::new() } else { format!(": not acknowledged by {waiting}") };
                Err(format!("{}{not_acked}", timed_out(cfg.timeout)))
            }),
            lost = renew => lost,
        };
        let (mut outcome, commit) = match (&result, force) {
            (Ok(_), _) => ("done", true),
            (Err(_), true) => ("forced", true),
            (Err(_), false) => ("aborted", false),
        };
        let result = match commit {
            true => match finish(pending.id.clone()).await {
                Ok(()) => result,
                Err(e) => {
                    outcome = "aborted";
                    Err(e)
                }
            },
            false => result,
        };
        if outcome == "aborted"
            && let Err(e) = coord.abort(id).await
        {
            tracing::error!(error = %e, "handoff: the abort could not be published; replicas release when the lease runs out");
        }
        let committed = outcome != "aborted";
        let result = self.end(&band, outcome, result, started.elapsed());
        if force && committed { Ok(result.unwrap_or_default()) } else { result }
    }
}
