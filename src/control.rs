//! Live changes to the routing state: file reloads (watcher or SIGHUP), admin API
//! writes, the canary guard's rollbacks and the staged schedule. Changes are
//! serialised here and each one swaps in a whole new snapshot. The most recent change
//! wins: a reload whose file percentage is the one already seen keeps a percentage set
//! otherwise, while a file that changes the percentage overrides it. An invalid file is
//! refused whole and the old snapshot stays. A tripped guard holds the rollback until
//! an operator clears it: nothing raises the percentage meanwhile.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::config::safety::RollbackTo;
use crate::config::{Config, ConfigError, PercentageSource};
use crate::guard::Trip;
use crate::metrics::Metrics;
use crate::state::{Snapshot, State};

/// A tripped guard, as `GET /admin/rollout` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Tripped {
    #[serde(flatten)]
    pub trip: Trip,
    /// Seconds since the epoch.
    pub at: u64,
    pub from_percentage: u8,
    pub rolled_back_to: u8,
}

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
    /// Changes applied since start.
    pub generation: u64,
    /// The last reload's error, if it failed.
    pub last_reload_error: Option<String>,
    /// Seconds since the epoch of the last change.
    pub changed_at: u64,
    /// The guard: enabled, and the trip holding the rollout back, if any.
    pub guard_enabled: bool,
    pub guard_tripped: Option<Tripped>,
    pub schedule: Option<ScheduleStatus>,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The guard holds the rollout back.
    #[error("the canary guard rolled back and holds the percentage at {0}: clear it first (POST /admin/guard/clear)")]
    GuardTripped(u8),
    /// There is no schedule to pause or resume.
    #[error("no [rollout.schedule] is configured")]
    NoSchedule,
}

struct Schedule {
    index: usize,
    step_started: Instant,
    paused: bool,
}

struct Ledger {
    /// The percentage the file (plus environment) said at the last successful load.
    file_percentage: u8,
    /// The percentage before the last raise (guard `previous_step` without schedule).
    before_last_raise: u8,
    generation: u64,
    last_error: Option<String>,
    changed_at: SystemTime,
    tripped: Option<Tripped>,
    schedule: Option<Schedule>,
}

/// Applies changes to the shared [`State`].
pub struct Control {
    state: Arc<State>,
    metrics: Arc<Metrics>,
    path: Option<PathBuf>,
    ledger: Mutex<Ledger>,
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Control {
    /// Controls `state`, reloading from `path` when asked (no path: reloads are no-ops).
    pub fn new(state: Arc<State>, metrics: Arc<Metrics>, path: Option<PathBuf>) -> Control {
        let file_percentage = state.load().config.rollout.percentage;
        metrics.rollout_percentage.set(file_percentage.into());
        let ledger = Ledger {
            file_percentage,
            before_last_raise: 0,
            generation: 0,
            last_error: None,
            changed_at: SystemTime::now(),
            tripped: None,
            schedule: None,
        };
        Control { state, metrics, path, ledger: Mutex::new(ledger) }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, ledger: &mut Ledger, config: Config) {
        let old = self.state.load().config.rollout.percentage;
        if config.rollout.percentage > old {
            ledger.before_last_raise = old;
        }
        self.metrics.rollout_percentage.set(config.rollout.percentage.into());
        self.state.store(Snapshot::new(config));
        ledger.generation += 1;
        ledger.changed_at = SystemTime::now();
    }

    fn set_locked(&self, ledger: &mut Ledger, percentage: u8, source: PercentageSource) {
        let mut config = self.state.load().config.clone();
        config.rollout.percentage = percentage;
        config.rollout.percentage_source = source;
        self.publish(ledger, config);
    }

    /// Re-reads the config file. `trigger` says why, for the log.
    pub fn reload(&self, trigger: &'static str) -> Result<(), ConfigError> {
        let Some(path) = &self.path else { return Ok(()) };
        let loaded = Config::load(path);
        let mut ledger = self.lock();
        let mut config = match loaded {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(trigger, key = %e.key, error = %e.message, "config reload refused; the previous config stays in force");
                self.metrics.config_reloads.with_label_values(&["failure"]).inc();
                self.metrics.config_last_reload_success.set(0);
                ledger.last_error = Some(e.to_string());
                return Err(e);
            }
        };
        let current = self.state.load();
        if current.config.server != config.server
            || current.config.upstream.connect_timeout != config.upstream.connect_timeout
        {
            tracing::warn!(trigger, "listener and connection settings changed: they apply at the next restart");
        }
        let file_percentage = config.rollout.percentage;
        let file_changed = file_percentage != ledger.file_percentage;
        let now = &current.config.rollout;
        if !file_changed && now.percentage_source != config.rollout.percentage_source {
            // The file did not change the percentage: the later change still wins.
            config.rollout.percentage = now.percentage;
            config.rollout.percentage_source = now.percentage_source;
        } else if file_changed && let Some(s) = ledger.schedule.as_mut() {
            s.paused = true;
            tracing::info!("the file changed the percentage: schedule paused");
        }
        if let Some(t) = &ledger.tripped
            && config.rollout.percentage > t.rolled_back_to
        {
            tracing::warn!(
                trigger,
                wanted = config.rollout.percentage,
                "guard tripped: holding the rolled-back percentage"
            );
            config.rollout.percentage = t.rolled_back_to;
            config.rollout.percentage_source = PercentageSource::Guard;
        }
        ledger.file_percentage = file_percentage;
        ledger.last_error = None;
        tracing::info!(trigger, percentage = config.rollout.percentage, source = ?config.rollout.percentage_source, "config reloaded");
        self.publish(&mut ledger, config);
        self.metrics.config_reloads.with_label_values(&["success"]).inc();
        self.metrics.config_last_reload_success.set(1);
        Ok(())
    }

    /// Sets the rollout percentage (admin API; callers validate `percentage <= 100`).
    /// A manual change pauses the schedule; a tripped guard refuses raises.
    pub fn set_percentage(&self, percentage: u8) -> Result<RolloutStatus, Refused> {
        let mut ledger = self.lock();
        if let Some(t) = &ledger.tripped
            && percentage > t.rolled_back_to
        {
            return Err(Refused::GuardTripped(t.rolled_back_to));
        }
        if let Some(s) = ledger.schedule.as_mut() {
            s.paused = true;
        }
        let from = self.state.load().config.rollout.percentage;
        tracing::info!(from, to = percentage, "rollout percentage set through the admin API");
        self.set_locked(&mut ledger, percentage, PercentageSource::Api);
        Ok(self.status_locked(&ledger))
    }

    /// Rolls back for `trip` (the guard's evaluator calls this), unless already tripped.
    pub fn trip(&self, trip: Trip, rollback_to: RollbackTo) {
        let mut ledger = self.lock();
        if ledger.tripped.is_some() {
            return;
        }
        let from = self.state.load().config.rollout.percentage;
        let target = match (rollback_to, &ledger.schedule) {
            (RollbackTo::Zero, _) => 0,
            (RollbackTo::PreviousStep, Some(s)) if s.index > 0 => self.steps()[s.index - 1],
            (RollbackTo::PreviousStep, Some(_)) => 0,
            (RollbackTo::PreviousStep, None) => ledger.before_last_raise.min(from),
        };
        tracing::error!(
            reason = trip.reason.as_str(), service = trip.service.as_str(), detail = %trip.detail, from, to = target,
            "canary guard: v2 is worse than v1, rolling back; clear with POST /admin/guard/clear"
        );
        self.metrics.guard_rollback(trip.reason);
        if let Some(s) = ledger.schedule.as_mut() {
            s.paused = true;
            if rollback_to == RollbackTo::PreviousStep {
                s.index = s.index.saturating_sub(1);
            }
        }
        ledger.tripped =
            Some(Tripped { trip, at: epoch(SystemTime::now()), from_percentage: from, rolled_back_to: target });
        self.set_locked(&mut ledger, target, PercentageSource::Guard);
    }

    /// Clears a tripped guard (the percentage stays where it is). Whether it was tripped.
    pub fn clear_guard(&self) -> bool {
        let mut ledger = self.lock();
        let was = ledger.tripped.take().is_some();
        self.metrics.guard_tripped.set(0);
        if was {
            tracing::info!("canary guard cleared by an operator");
        }
        was
    }

    /// Whether the guard holds the rollout back.
    pub fn is_tripped(&self) -> bool {
        self.lock().tripped.is_some()
    }

    fn steps(&self) -> Vec<u8> {
        self.state.load().config.rollout.schedule.as_ref().map(|s| s.steps.clone()).unwrap_or_default()
    }

    /// Starts the configured schedule at its first step. Whether there is one.
    pub fn start_schedule(&self) -> bool {
        let Some(first) = self.steps().first().copied() else { return false };
        let mut ledger = self.lock();
        ledger.schedule = Some(Schedule { index: 0, step_started: Instant::now(), paused: false });
        tracing::info!(percentage = first, "schedule started");
        self.set_locked(&mut ledger, first, PercentageSource::Schedule);
        true
    }

    /// Advances the schedule when its step has been held long enough and nothing holds
    /// it. Returns how long to wait before asking again; `None` once the last step is in
    /// force (or there is no schedule).
    pub fn advance_schedule(&self) -> Option<Duration> {
        let steps = self.steps();
        let hold = self.state.load().config.rollout.schedule.as_ref()?.hold;
        let mut ledger = self.lock();
        let tripped = ledger.tripped.is_some();
        let s = ledger.schedule.as_mut()?;
        if s.index + 1 >= steps.len() {
            return None;
        }
        if s.paused || tripped {
            return Some(Duration::from_secs(1));
        }
        let held = s.step_started.elapsed();
        if held < hold {
            return Some(hold - held);
        }
        s.index += 1;
        s.step_started = Instant::now();
        let p = steps[s.index];
        tracing::info!(step = s.index, percentage = p, "schedule advanced");
        self.set_locked(&mut ledger, p, PercentageSource::Schedule);
        Some(hold)
    }

    /// Pauses (`true`) or resumes the schedule; resuming re-applies the current step
    /// and holds it for a full period.
    pub fn pause_schedule(&self, pause: bool) -> Result<RolloutStatus, Refused> {
        let steps = self.steps();
        let mut ledger = self.lock();
        let tripped = ledger.tripped.as_ref().map(|t| t.rolled_back_to);
        let s = ledger.schedule.as_mut().ok_or(Refused::NoSchedule)?;
        let step = steps[s.index];
        if !pause && let Some(held_at) = tripped {
            return Err(Refused::GuardTripped(held_at));
        }
        s.paused = pause;
        if !pause {
            s.step_started = Instant::now();
            self.set_locked(&mut ledger, step, PercentageSource::Schedule);
        }
        Ok(self.status_locked(&ledger))
    }

    fn status_locked(&self, ledger: &Ledger) -> RolloutStatus {
        let snap = self.state.load();
        let schedule = snap.config.rollout.schedule.as_ref().zip(ledger.schedule.as_ref()).map(|(cfg, s)| {
            let next = cfg.steps.get(s.index + 1).copied();
            ScheduleStatus {
                steps: cfg.steps.clone(),
                step: s.index,
                next_percentage: next,
                seconds_to_next: next
                    .filter(|_| !s.paused)
                    .map(|_| cfg.hold.saturating_sub(s.step_started.elapsed()).as_secs()),
                paused: s.paused,
            }
        });
        RolloutStatus {
            percentage: snap.config.rollout.percentage,
            source: snap.config.rollout.percentage_source,
            force_backend: snap.config.rollout.force,
            generation: ledger.generation,
            last_reload_error: ledger.last_error.clone(),
            changed_at: epoch(ledger.changed_at),
            guard_enabled: snap.config.guard.enabled,
            guard_tripped: ledger.tripped.clone(),
            schedule,
        }
    }

    /// The current rollout, as the admin API reports it.
    pub fn status(&self) -> RolloutStatus {
        let ledger = self.lock();
        self.status_locked(&ledger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::TripReason;
    use crate::routing::service::Service;

    const BASE: &str = "[rollout]\npercentage = 10\n[backends.v1]\nurl = \"http://127.0.0.1:1\"\n[backends.v2]\nurl = \"http://127.0.0.1:2\"\n";

    fn setup(name: &str, text: &str) -> (PathBuf, Control) {
        let dir = std::env::temp_dir().join(format!("switchyard-control-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("switchyard.toml");
        std::fs::write(&path, text).unwrap();
        let state = Arc::new(State::new(Config::load(&path).unwrap()));
        (path.clone(), Control::new(state, Arc::new(Metrics::new()), Some(path)))
    }

    fn trip() -> Trip {
        Trip { reason: TripReason::ErrorRatio, service: Service::Rest, detail: "test".into() }
    }

    #[test]
    fn the_most_recent_change_wins() {
        let (path, control) = setup("recent", BASE);
        assert_eq!(control.set_percentage(40).unwrap().percentage, 40);
        // Same file percentage: the API change stays.
        control.reload("test").unwrap();
        assert_eq!((control.status().percentage, control.status().source), (40, PercentageSource::Api));
        // The file changes the percentage: it wins.
        std::fs::write(&path, BASE.replace("= 10", "= 50")).unwrap();
        control.reload("test").unwrap();
        assert_eq!((control.status().percentage, control.status().source), (50, PercentageSource::File));
    }

    #[test]
    fn an_invalid_file_is_refused_whole() {
        let (path, control) = setup("invalid", BASE);
        std::fs::write(&path, BASE.replace("= 10", "= 20").replace("http://127.0.0.1:2", "nope")).unwrap();
        let err = control.reload("test").unwrap_err();
        assert_eq!(err.key, "backends.v2.url");
        let status = control.status();
        assert_eq!(status.percentage, 10);
        assert!(status.last_reload_error.unwrap().contains("backends.v2.url"));
        let text = control.metrics.render();
        assert!(text.contains("switchyard_config_reloads_total{result=\"failure\"} 1"));
        assert!(text.contains("switchyard_config_last_reload_success 0"));
    }

    #[test]
    fn a_tripped_guard_holds_until_cleared() {
        let (path, control) = setup("guard", BASE);
        control.set_percentage(50).unwrap();
        control.trip(trip(), RollbackTo::Zero);
        let s = control.status();
        assert_eq!((s.percentage, s.source), (0, PercentageSource::Guard));
        assert_eq!(s.guard_tripped.as_ref().unwrap().from_percentage, 50);
        assert_eq!(control.set_percentage(10).unwrap_err(), Refused::GuardTripped(0));
        std::fs::write(&path, BASE.replace("= 10", "= 80")).unwrap();
        control.reload("test").unwrap();
        assert_eq!(control.status().percentage, 0, "a file raise does not undo the rollback");
        assert!(control.clear_guard());
        assert_eq!(control.set_percentage(10).unwrap().percentage, 10);
        assert!(control.metrics.render().contains("switchyard_guard_rollbacks_total{reason=\"error_ratio\"} 1"));
    }

    #[test]
    fn previous_step_without_a_schedule_is_the_value_before_the_last_raise() {
        let (_, control) = setup("previous", BASE);
        control.set_percentage(25).unwrap();
        control.set_percentage(50).unwrap();
        control.trip(trip(), RollbackTo::PreviousStep);
        assert_eq!(control.status().percentage, 25);
    }

    const SCHEDULED: &str = "[rollout.schedule]\nsteps = [10, 25, 50, 100]\nhold_seconds = 600\n";

    #[tokio::test(start_paused = true)]
    async fn the_schedule_advances_on_time_and_halts_when_the_guard_trips() {
        let (_, control) = setup("schedule", &format!("{BASE}{SCHEDULED}"));
        assert!(control.start_schedule());
        assert_eq!(control.status().percentage, 10);
        assert_eq!(control.advance_schedule(), Some(Duration::from_secs(600)));
        tokio::time::advance(Duration::from_secs(599)).await;
        assert_eq!(control.advance_schedule(), Some(Duration::from_secs(1)));
        assert_eq!(control.status().percentage, 10, "not before the hold is over");
        tokio::time::advance(Duration::from_secs(1)).await;
        control.advance_schedule();
        let s = control.status();
        assert_eq!((s.percentage, s.source), (25, PercentageSource::Schedule));
        assert_eq!(s.schedule.as_ref().unwrap().next_percentage, Some(50));
        assert_eq!(s.schedule.as_ref().unwrap().seconds_to_next, Some(600));

        control.trip(trip(), RollbackTo::PreviousStep);
        assert_eq!(control.status().percentage, 10, "back to the previous step");
        tokio::time::advance(Duration::from_secs(3600)).await;
        control.advance_schedule();
        assert_eq!(control.status().percentage, 10, "halted while tripped");
        assert_eq!(control.pause_schedule(false).unwrap_err(), Refused::GuardTripped(10));
        control.clear_guard();
        assert_eq!(control.pause_schedule(false).unwrap().percentage, 10);
        tokio::time::advance(Duration::from_secs(600)).await;
        control.advance_schedule();
        assert_eq!(control.status().percentage, 25);

        control.pause_schedule(true).unwrap();
        tokio::time::advance(Duration::from_secs(6000)).await;
        control.advance_schedule();
        assert_eq!(control.status().percentage, 25, "paused");
        control.pause_schedule(false).unwrap();
        for want in [50, 100] {
            tokio::time::advance(Duration::from_secs(600)).await;
            control.advance_schedule();
            assert_eq!(control.status().percentage, want);
        }
        assert_eq!(control.advance_schedule(), None, "done");
    }
}
