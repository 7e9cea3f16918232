//! The named changes: a file reload, an operator's percentage, the guard's trip and
//! its clearing, the schedule's start, steps, pause and resume. Each computes its
//! new rollout with a [`super::rollout`] function and commits it through
//! [`Control::change`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::{Advance, ChangeError, Commit, Control, Local, Rollout, RolloutStatus, file_digest, now_ms};
use crate::backend::BackendId;
use crate::config::safety::RollbackTo;
use crate::config::{Config, ConfigError};
use crate::guard::Trip;
use crate::identity::keyring::FIRST_WAIT;
use crate::routing::band::{self, Band};
use crate::state::Snapshot;

/// Gives `user` the pin `from` has for them (or none).
fn repin(pins: &mut HashMap<String, BackendId>, from: &HashMap<String, BackendId>, user: &str) {
    match from.get(user) {
        Some(b) => pins.insert(user.to_string(), *b),
        None => pins.remove(user),
    };
}

impl Control {
    /// Re-reads the config file. `trigger` says why, for the log.
    pub async fn reload(&self, trigger: &'static str) -> Result<(), ConfigError> {
        let Some(path) = self.path.clone() else { return Ok(()) };
        // Reading the files is blocking I/O.
        let read = tokio::task::spawn_blocking(move || {
            let loaded = Config::load(&path);
            let digest = loaded.as_ref().ok().and_then(|c| file_digest(&path, c));
            (loaded, digest)
        });
        let (loaded, digest) = read.await.map_err(|e| ConfigError::new("file", e.to_string()))?;
        let mut config = match loaded {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(trigger, key = %e.key, error = %e.message, "config reload refused; the previous config stays in force");
                self.metrics.config_reloads.with_label_values(&["failure"]).inc();
                self.metrics.config_last_reload_success.set(0);
                self.lock().last_error = Some(e.to_string());
                return Err(e);
            }
        };
        let current = self.state.load();
        if current.config.server != config.server
            || current.config.upstream.connect_timeout != config.upstream.connect_timeout
            || current.config.cluster != config.cluster
        {
            tracing::warn!(
                trigger,
                "listener, connection and cluster settings changed: they apply at the next restart"
            );
        }
        let (file_percentage, source) = (config.rollout.percentage, config.rollout.percentage_source);
        // Users whose pins change move with a handoff of their own: until it is done
        // their old pins stay.
        let repinned = self.repinned(&current.config, &config);
        // Projects whose keys the new config reads from elsewhere: the old keys stop
        // being accepted when it is in force, and the reload ends with the new ones.
        let keys_moved: Vec<BackendId> = BackendId::ALL
            .into_iter()
            .filter(|id| current.config.backends.get(*id).keys.jwks != config.backends.get(*id).keys.jwks)
            .collect();
        let new_pins = config.overrides.users.clone();
        for band in &repinned {
            for u in band.users.iter() {
                repin(&mut config.overrides.users, &current.config.overrides.users, u);
            }
        }
        let file_changed = {
            let mut ledger = self.lock();
            // The rest of the file applies at once; the percentage as the rollout says.
            config.rollout.percentage = ledger.rollout.percentage;
            config.rollout.percentage_source = ledger.rollout.source;
            // A handoff's fence stands through a reload.
            let fence = current.fence.clone();
            self.state.store(Snapshot { fence, ..self.state.snapshot(config) });
            ledger.last_error = None;
            // A reload is a change here; in fleet mode the generation is the fleet's.
            if ledger.fleet.is_none() {
                ledger.generation += 1;
                ledger.changed_at = SystemTime::now();
            }
            std::mem::replace(&mut ledger.file_percentage, file_percentage) != file_percentage
        };
        for band in repinned {
            let _turn = self.turn(false).await;
            let users = band.users.clone();
            let flip = || {
                let mut config = self.state.load().config.clone();
                for u in users.iter() {
                    repin(&mut config.overrides.users, &new_pins, u);
                }
                self.state.store(self.state.snapshot(config));
            };
            if let Some(h) = self.handoffs.get()
                && let Err(e) = h.run(&self.state, band, false, flip).await
            {
                tracing::error!(trigger, error = %e, "changed pins not handed off: those users stay where they were");
            }
        }
        let keyring = self.state.keyring();
        futures_util::future::join_all(keys_moved.iter().map(|id| keyring.settled(*id, FIRST_WAIT))).await;
        if file_changed {
            let published = self
                .change(Commit::Retry, |r| {
                    // Another replica published this very content already.
                    let seen = digest.is_some() && r.file_digest == digest;
                    Ok((!seen).then(|| r.file(file_percentage, source, digest.clone())))
                })
                .await;
            if let Err(e) = published {
                tracing::error!(trigger, error = %e, "the file's new percentage was not published");
            }
        }
        let r = self.rollout();
        tracing::info!(trigger, percentage = r.percentage, source = ?r.source, "config reloaded");
        self.metrics.config_reloads.with_label_values(&["success"]).inc();
        self.metrics.config_last_reload_success.set(1);
        Ok(())
    }

    /// The single users a reload from `old` to `new` moves by changing their pins,
    /// when `[handoff]` is on.
    fn repinned(&self, old: &Config, new: &Config) -> Vec<Band> {
        if new.handoff.is_none() || new.rollout.force.is_some() || self.handoffs.get().is_none() {
            return Vec::new();
        }
        let percentage = self.lock().rollout.percentage;
        band::repinned(&old.overrides.users, &new.overrides.users, &new.rollout.hash_seed, percentage)
    }

    /// Sets the rollout percentage (admin API; callers validate `percentage <= 100`).
    /// A manual change pauses the schedule; a tripped guard refuses raises.
    pub async fn set_percentage(&self, percentage: u8, commit: Commit) -> Result<RolloutStatus, ChangeError> {
        let from = self.rollout().percentage;
        self.change(commit, |r| r.set(percentage).map(Some)).await?;
        tracing::info!(from, to = percentage, "rollout percentage set through the admin API");
        Ok(self.status())
    }

    /// Rolls back for `trip` (the guard's evaluator calls this), unless already
    /// tripped. With the fleet's store unreachable it rolls back here at once and
    /// publishes the trip when the store is back ([`Control::publish_pending`]).
    pub async fn trip(&self, trip: Trip, rollback_to: RollbackTo) {
        let steps = self.steps();
        let reason = trip.reason;
        let change = |r: &Rollout| Ok(r.trip(trip.clone(), rollback_to, &steps, now_ms()));
        let tripped = match self.change(Commit::Urgent, change).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "canary guard: the trip could not be published; rolling back here now");
                let mut ledger = self.lock();
                let next = ledger.rollout.trip(trip.clone(), rollback_to, &steps, now_ms());
                if let Some(next) = &next {
                    ledger.local = Some(Local::Trip(trip.clone(), rollback_to));
                    self.apply(&mut ledger, next.clone());
                }
                next
            }
        };
        if let Some(t) = tripped.as_ref().and_then(|r| r.tripped.as_ref()) {
            tracing::error!(
                reason = reason.as_str(), service = t.trip.service.as_str(), detail = %t.trip.detail,
                from = t.from_percentage, to = t.rolled_back_to,
                "canary guard: v2 is worse than v1, rolling back; clear with POST /admin/guard/clear"
            );
            self.metrics.guard_rollback(reason);
        }
    }

    /// Publishes a trip made while the store was unreachable (the fleet's sync calls
    /// this once it has read the store again).
    pub async fn publish_pending(&self) {
        let pending = match &self.lock().local {
            Some(Local::Trip(trip, to)) => (trip.clone(), *to),
            _ => return,
        };
        let steps = self.steps();
        let published =
            self.change(Commit::Urgent, |r| Ok(r.trip(pending.0.clone(), pending.1, &steps, now_ms()))).await;
        if published.is_ok() {
            let mut ledger = self.lock();
            ledger.local = None;
            if let Some((fleet, _)) = ledger.fleet.clone() {
                self.apply(&mut ledger, fleet);
            }
            tracing::info!("canary guard: the trip made while the store was unreachable is published");
        }
    }

    /// Clears a tripped guard (the percentage stays where it is). Whether it was tripped.
    pub async fn clear_guard(&self, commit: Commit) -> Result<bool, ChangeError> {
        let cleared = self.change(commit, |r| Ok(r.clear_guard())).await?.is_some();
        if cleared {
            let mut ledger = self.lock();
            if matches!(ledger.local, Some(Local::Trip(..))) {
                ledger.local = None;
            }
            if let Some(h) = self.handoffs.get() {
                h.clear_stranded();
            }
            tracing::info!("canary guard cleared by an operator");
        }
        Ok(cleared)
    }

    /// Whether the guard holds the rollout back.
    pub fn is_tripped(&self) -> bool {
        self.lock().rollout.tripped.is_some()
    }

    pub(super) fn steps(&self) -> Vec<u8> {
        self.state.load().config.rollout.schedule.as_ref().map(|s| s.steps.clone()).unwrap_or_default()
    }

    /// Starts the configured schedule at its first step, unless it has started (in
    /// fleet mode: anywhere in the fleet). Whether there is a schedule.
    pub async fn start_schedule(&self) -> bool {
        let steps = self.steps();
        if steps.is_empty() {
            return false;
        }
        match self.change(Commit::Retry, |r| Ok(r.start_schedule(&steps, now_ms()))).await {
            Ok(Some(r)) => tracing::info!(percentage = r.percentage, "schedule started"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "the schedule could not be started"),
        }
        true
    }

    /// Advances the schedule when its step has been held long enough and nothing holds
    /// it. Returns how long to wait before asking again; `None` once the last step is in
    /// force (or there is no schedule).
    pub async fn advance_schedule(&self) -> Option<Duration> {
        let steps = self.steps();
        let hold = self.state.load().config.rollout.schedule.as_ref()?.hold;
        // A schedule not started yet (the fleet's store was away at start) starts here.
        let step = |r: &Rollout| match r.advance(&steps, hold, now_ms()) {
            _ if r.schedule.is_none() => Ok(r.start_schedule(&steps, now_ms())),
            Advance::Step(next) => Ok(Some(next)),
            Advance::Wait(_) | Advance::Done => Ok(None),
        };
        match self.change(Commit::Retry, step).await {
            Ok(Some(r)) => tracing::info!(percentage = r.percentage, "schedule advanced"),
            Ok(None) => {}
            // Tried again at the next tick; the fleet's state says why (degraded).
            Err(e) => tracing::debug!(error = %e, "the schedule could not advance"),
        }
        let r = self.rollout();
        match r.advance(&steps, hold, now_ms()) {
            _ if r.schedule.is_none() => Some(Duration::from_secs(1)),
            Advance::Done => None,
            Advance::Wait(d) => Some(d),
            Advance::Step(_) => Some(Duration::from_secs(1)),
        }
    }

    /// Pauses (`true`) or resumes the schedule; resuming re-applies the current step
    /// and holds it for a full period.
    pub async fn pause_schedule(&self, pause: bool, commit: Commit) -> Result<RolloutStatus, ChangeError> {
        let steps = self.steps();
        self.change(commit, |r| r.pause(pause, &steps, now_ms()).map(Some)).await?;
        Ok(self.status())
    }
}
