//! Live changes to the routing state: file reloads (watcher or SIGHUP), admin API
//! writes, the canary guard's rollbacks and the staged schedule. Each change is a
//! plain function of the rollout state ([`rollout`]); here it is applied: a whole new
//! snapshot swapped in, counted and logged. In fleet mode a change goes to the store
//! first (a compare-and-set on the fleet's generation) and is applied once it is
//! committed; every replica adopts what the store holds (docs/fleet.md).
//!
//! The most recent change wins: a reload whose file percentage is the one already
//! seen keeps a percentage set otherwise, while a file that changes the percentage
//! overrides it. An invalid file is refused whole and the old snapshot stays. A
//! tripped guard holds the rollback until an operator clears it.

pub mod rollout;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::safety::RollbackTo;
use crate::config::{Config, ConfigError, PercentageSource};
use crate::guard::Trip;
use crate::handoff::{Ended, Handoffs, Progress};
use crate::metrics::Metrics;
use crate::routing::band::Band;
use crate::state::{Snapshot, State};
pub use rollout::{Advance, Refused, Rollout, Tripped};

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
}

/// Why a change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The rollout's own rules refuse it.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Another change was committed first: the winner is now in force.
    #[error("another change was committed first (generation {0}): review the rollout and retry")]
    Conflict(u64),
    /// The fleet's store cannot be reached.
    #[error("the fleet's store is unreachable ({0}); retry, or pass ?local=true to change this replica alone")]
    Unavailable(String),
    /// The handoff of the moving band failed: the percentage stays.
    #[error("the handoff was aborted, the percentage stays: {0}")]
    Handoff(String),
}

/// What a compare-and-set on the store answers when it does not commit.
#[derive(Debug)]
pub enum Cas {
    /// The store is at another generation, holding this state.
    Conflict(Rollout, u64),
    /// The store cannot be reached (the reason, without secrets).
    Unavailable(String),
}

/// The future a [`Store`] call returns.
pub type StoreFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, Cas>> + Send + 'a>>;

/// Where the fleet's rollout state is kept (`crate::fleet`).
pub trait Store: Send + Sync {
    /// Writes `next` if the store is still at `generation`: the new generation.
    fn cas<'a>(&'a self, generation: u64, next: &'a Rollout) -> StoreFuture<'a>;
}

/// How a change meets a concurrent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// An operator's change: refused (409) when another came first.
    Once,
    /// The schedule's, a file's: recomputed on the winner and retried.
    Retry,
    /// The guard's trip: as `Retry`, and first in line among changes waiting for a
    /// handoff to end.
    Urgent,
    /// On this replica alone, not published (`?local=true`).
    Local,
}

struct Ledger {
    /// The state in force here.
    rollout: Rollout,
    /// Fleet mode: the state and generation the store last gave.
    fleet: Option<(Rollout, u64)>,
    /// A change in force here that the fleet does not have: a local-only write, or a
    /// guard trip the store could not take (then it is to be published).
    local: Option<Local>,
    /// The percentage the file (plus environment) said at the last successful load.
    file_percentage: u8,
    generation: u64,
    last_error: Option<String>,
    changed_at: SystemTime,
}

/// A change in force on this replica alone.
enum Local {
    /// Kept until the fleet's generation moves past `on`.
    Override { on: u64 },
    /// A trip to publish once the store is back.
    Trip(Trip, RollbackTo),
}

/// Applies changes to the shared [`State`].
pub struct Control {
    state: Arc<State>,
    metrics: Arc<Metrics>,
    path: Option<PathBuf>,
    ledger: Mutex<Ledger>,
    store: OnceLock<Arc<dyn Store>>,
    handoffs: OnceLock<Arc<Handoffs>>,
    /// Local changes one at a time: a change waits for a handoff in progress.
    serial: tokio::sync::Mutex<()>,
    /// Urgent changes (the guard's) waiting for their turn.
    urgent: std::sync::atomic::AtomicUsize,
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What identifies a file's content (and the environment's percentage with it): a
/// file change is published once per distinct content.
pub fn file_digest(path: &std::path::Path, config: &Config) -> Option<String> {
    use md5::{Digest, Md5};
    let bytes = std::fs::read(path).ok()?;
    let digest = Md5::new().chain_update(&bytes).chain_update([0, config.rollout.percentage]).finalize();
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

impl Control {
    /// Controls `state`, reloading from `path` when asked (no path: reloads are no-ops).
    pub fn new(state: Arc<State>, metrics: Arc<Metrics>, path: Option<PathBuf>) -> Control {
        let config = &state.load().config;
        let digest = path.as_deref().and_then(|p| file_digest(p, config));
        let rollout = Rollout::from_file(config.rollout.percentage, config.rollout.percentage_source, digest);
        metrics.rollout_percentage.set(rollout.percentage.into());
        let ledger = Ledger {
            file_percentage: rollout.percentage,
            rollout,
            fleet: None,
            local: None,
            generation: 0,
            last_error: None,
            changed_at: SystemTime::now(),
        };
        Control {
            state,
            metrics,
            path,
            ledger: Mutex::new(ledger),
            store: OnceLock::new(),
            handoffs: OnceLock::new(),
            serial: tokio::sync::Mutex::new(()),
            urgent: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fleet mode from now on: changes go to `store` first.
    pub fn attach(&self, store: Arc<dyn Store>) {
        let _ = self.store.set(store);
    }

    /// Percentage changes are carried out as handoffs by `handoffs` when `[handoff]`
    /// is on.
    pub fn attach_handoffs(&self, handoffs: Arc<Handoffs>) {
        let _ = self.handoffs.set(handoffs);
    }

    /// The handoff in progress, if any.
    pub fn handoff(&self) -> Option<Progress> {
        self.handoffs.get().and_then(|h| h.progress())
    }

    /// The state in force here, as the store would keep it.
    pub fn rollout(&self) -> Rollout {
        self.lock().rollout.clone()
    }

    /// Makes `next` the state in force: a new snapshot when the percentage moves.
    fn apply(&self, ledger: &mut Ledger, next: Rollout) {
        let tripped = next.tripped.is_some();
        if tripped != ledger.rollout.tripped.is_some() {
            self.metrics.guard_tripped.set(tripped.into());
        }
        let current = self.state.load();
        if (current.config.rollout.percentage, current.config.rollout.percentage_source)
            != (next.percentage, next.source)
        {
            let mut config = current.config.clone();
            config.rollout.percentage = next.percentage;
            config.rollout.percentage_source = next.source;
            self.metrics.rollout_percentage.set(next.percentage.into());
            self.state.store(Snapshot::new(config));
        }
        ledger.rollout = next;
        ledger.changed_at = SystemTime::now();
        if ledger.fleet.is_none() {
            ledger.generation += 1;
        }
        self.metrics.cluster_generation.set(i64::try_from(ledger.generation).unwrap_or(i64::MAX));
    }

    /// Adopts what the store holds at `generation` (a newer one than applied only). A
    /// local-only change stays until the fleet moves past it; an unpublished trip
    /// stays until it is published. `false`: `rollout` is out of range and refused.
    pub fn adopt(&self, rollout: Rollout, generation: u64) -> bool {
        if let Some(why) = rollout.invalid(&self.steps()) {
            tracing::error!(generation, error = %why, "the fleet's rollout state is invalid: refused, the last one stays");
            return false;
        }
        let mut ledger = self.lock();
        if ledger.fleet.as_ref().is_some_and(|(_, g)| *g >= generation) {
            return true;
        }
        ledger.fleet = Some((rollout.clone(), generation));
        ledger.generation = generation;
        self.metrics.cluster_generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
        match ledger.local {
            Some(Local::Trip(..)) => return true,
            Some(Local::Override { on }) if on >= generation => return true,
            _ => ledger.local = None,
        }
        if ledger.rollout != rollout {
            tracing::info!(generation, percentage = rollout.percentage, source = ?rollout.source, "fleet rollout state applied");
            self.apply(&mut ledger, rollout);
        }
        true
    }

    /// The generation applied here (the fleet's in fleet mode).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Makes `change` of the rollout, as `commit` says. `None`: nothing to change.
    pub async fn change(
        &self,
        commit: Commit,
        change: impl Fn(&Rollout) -> Result<Option<Rollout>, Refused>,
    ) -> Result<Option<Rollout>, ChangeError> {
        let store = self.store.get().filter(|_| commit != Commit::Local);
        let Some(store) = store else {
            let _turn = self.turn(commit == Commit::Urgent).await;
            let (current, next) = {
                let ledger = self.lock();
                (ledger.rollout.clone(), change(&ledger.rollout)?)
            };
            let Some(next) = next else { return Ok(None) };
            let apply = || {
                let mut ledger = self.lock();
                if let (Commit::Local, Some((_, on))) = (commit, &ledger.fleet) {
                    ledger.local = Some(Local::Override { on: *on });
                    tracing::warn!(
                        percentage = next.percentage,
                        "local-only change: this replica alone, until the fleet's next change"
                    );
                }
                self.apply(&mut ledger, next.clone());
            };
            match self.handoff_band(current.percentage, next.percentage) {
                Some((handoffs, band)) => {
                    // The guard's rollback happens even when its sync fails: v2 is failing.
                    let force = next.source == PercentageSource::Guard;
                    handoffs.run(&self.state, band, force, apply).await.map_err(ChangeError::Handoff)?;
                }
                None => apply(),
            }
            return Ok(Some(next));
        };
        loop {
            let (base, generation) = match &self.lock().fleet {
                Some((r, g)) => (r.clone(), *g),
                None => return Err(ChangeError::Unavailable("not connected yet".into())),
            };
            let Some(next) = change(&base)? else { return Ok(None) };
            match store.cas(generation, &next).await {
                Ok(committed) => {
                    self.adopt(next.clone(), committed);
                    return Ok(Some(next));
                }
                Err(Cas::Conflict(winner, at)) => {
                    if !self.adopt(winner, at) {
                        return Err(ChangeError::Unavailable("the fleet's stored state is invalid".into()));
                    }
                    if commit == Commit::Once {
                        return Err(ChangeError::Conflict(at));
                    }
                }
                Err(Cas::Unavailable(why)) => return Err(ChangeError::Unavailable(why)),
            }
        }
    }

    /// This change's turn among local changes (one at a time: a handoff can take a
    /// while). An urgent one goes first: the others that get the turn while one waits
    /// step back behind it.
    async fn turn(&self, urgent: bool) -> tokio::sync::MutexGuard<'_, ()> {
        use std::sync::atomic::Ordering::SeqCst;
        if urgent {
            self.urgent.fetch_add(1, SeqCst);
            let turn = self.serial.lock().await;
            self.urgent.fetch_sub(1, SeqCst);
            return turn;
        }
        loop {
            let turn = self.serial.lock().await;
            if self.urgent.load(SeqCst) == 0 {
                return turn;
            }
            drop(turn);
            tokio::task::yield_now().await;
        }
    }

    /// The handoff a change from `old` to `new` percent needs, when `[handoff]` is on
    /// and the percentage routes (nothing is forced to one backend).
    fn handoff_band(&self, old: u8, new: u8) -> Option<(&Arc<Handoffs>, Band)> {
        let snap = self.state.load();
        if snap.config.handoff.is_none() || snap.config.rollout.force.is_some() {
            return None;
        }
        Some((self.handoffs.get()?, Band::between(old, new)?))
    }

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
        let file_changed = {
            let mut ledger = self.lock();
            // The rest of the file applies at once; the percentage as the rollout says.
            config.rollout.percentage = ledger.rollout.percentage;
            config.rollout.percentage_source = ledger.rollout.source;
            // A handoff's fence stands through a reload.
            let fence = current.fence.clone();
            self.state.store(Snapshot { fence, ..Snapshot::new(config) });
            ledger.last_error = None;
            // A reload is a change here; in fleet mode the generation is the fleet's.
            if ledger.fleet.is_none() {
                ledger.generation += 1;
                ledger.changed_at = SystemTime::now();
            }
            std::mem::replace(&mut ledger.file_percentage, file_percentage) != file_percentage
        };
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
            tracing::info!("canary guard cleared by an operator");
        }
        Ok(cleared)
    }

    /// Whether the guard holds the rollout back.
    pub fn is_tripped(&self) -> bool {
        self.lock().rollout.tripped.is_some()
    }

    fn steps(&self) -> Vec<u8> {
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
            handoff: self.handoffs.get().and_then(|h| h.progress()),
            last_handoff: self.handoffs.get().and_then(|h| h.last()),
        }
    }
}

#[cfg(test)]
mod tests;
