//! What `GET /admin/rollout` reports of the rollout, and how it is read.

use std::time::Duration;

use serde::Serialize;

use super::{Control, Tripped, epoch, now_ms};
use crate::config::PercentageSource;
use crate::handoff::stranded::Stranded;
use crate::handoff::{Ended, Progress};

/// The schedule, as `GET /admin/rollout` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleStatus {
    pub steps: Vec<u8>,
    /// Index of the step in force.
    pub step: usize,
    pub next_percentage: Option<u8>,
    pub seconds_to_next: Option<u64>,
    pub paused: bool,
}

/// What `GET /admin/rollout` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    /// The effective percentage.
    pub percentage: u8,
    /// Where it came from: file, env, api, guard or schedule.
    pub source: PercentageSource,
    /// `v1`/`v2` when everything is forced to one backend.
    pub force_backend: Option<crate::backend::BackendId>,
    /// Changes applied since start; in fleet mode, the fleet's generation.
    pub generation: u64,
    /// The last reload's error, if it failed.
    pub last_reload_error: Option<String>,
    /// Seconds since the epoch of the last change.
    pub changed_at: u64,
    /// The guard: enabled, and the trip holding the rollout back, if any.
    pub guard_enabled: bool,
    pub guard_tripped: Option<Tripped>,
    pub schedule: Option<ScheduleStatus>,
    /// Fleet mode: a change made on this replica alone is in force (`?local=true`,
    /// or a guard trip not yet published).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
    /// The handoff in progress (`[handoff]`), if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Progress>,
    /// How the last handoff ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_handoff: Option<Ended>,
    /// Users whose v2 writes forced rollbacks did not carry back, until the guard is
    /// cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stranded: Option<Stranded>,
}

impl Control {
    /// The current rollout, as the admin API reports it.
    pub fn status(&self) -> RolloutStatus {
        let ledger = self.lock();
        let snap = self.state.load();
        let r = &ledger.rollout;
        let schedule = snap.config.rollout.schedule.as_ref().zip(r.schedule.as_ref()).map(|(cfg, p)| {
            let next = cfg.steps.get(p.index + 1).copied();
            let held = Duration::from_millis(now_ms().saturating_sub(p.started_ms));
            ScheduleStatus {
                steps: cfg.steps.clone(),
                step: p.index,
                next_percentage: next,
                seconds_to_next: next.filter(|_| !p.paused).map(|_| cfg.hold.saturating_sub(held).as_secs()),
                paused: p.paused,
            }
        });
        RolloutStatus {
            percentage: r.percentage,
            source: r.source,
            force_backend: snap.config.rollout.force,
            generation: ledger.generation,
            last_reload_error: ledger.last_error.clone(),
            changed_at: epoch(ledger.changed_at),
            guard_enabled: snap.config.guard.enabled,
            guard_tripped: r.tripped.clone(),
            schedule,
            local_only: ledger.local.is_some(),
            handoff: self.handoffs.get().and_then(|h| h.progress()).or_else(|| {
                // Fenced for another replica's handoff.
                let f = snap.fence.as_ref().filter(|f| f.id.is_some())?;
                Some(Progress { phase: "fenced", band: f.band.clone(), started_at: f.since, held: f.held() })
            }),
            last_handoff: self.handoffs.get().and_then(|h| h.last()),
            stranded: self.handoffs.get().and_then(|h| h.stranded()),
        }
    }
}
