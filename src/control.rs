//! Live changes to the routing state: file reloads (watcher or SIGHUP) and admin API
//! writes. Changes are serialised here and each one swaps in a whole new snapshot. The
//! most recent change wins: a reload whose file percentage is the one already seen
//! keeps a percentage set through the API, while a file that changes the percentage
//! overrides it. An invalid file is refused whole and the old snapshot stays.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Config, ConfigError, PercentageSource};
use crate::metrics::Metrics;
use crate::state::{Snapshot, State};

/// What `GET /admin/rollout` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    /// The effective percentage.
    pub percentage: u8,
    /// Where it came from: file, env or api.
    pub source: PercentageSource,
    /// `v1`/`v2` when everything is forced to one backend.
    pub force_backend: Option<crate::backend::BackendId>,
    /// Changes applied since start.
    pub generation: u64,
    /// The last reload's error, if it failed.
    pub last_reload_error: Option<String>,
    /// Seconds since the epoch of the last change.
    pub changed_at: u64,
}

struct Ledger {
    /// The percentage the file (plus environment) said at the last successful load.
    file_percentage: u8,
    generation: u64,
    last_error: Option<String>,
    changed_at: SystemTime,
}

/// Applies changes to the shared [`State`].
pub struct Control {
    state: Arc<State>,
    metrics: Arc<Metrics>,
    path: Option<PathBuf>,
    ledger: Mutex<Ledger>,
}

impl Control {
    /// Controls `state`, reloading from `path` when asked (no path: reloads are no-ops).
    pub fn new(state: Arc<State>, metrics: Arc<Metrics>, path: Option<PathBuf>) -> Control {
        let file_percentage = state.load().config.rollout.percentage;
        metrics.rollout_percentage.set(file_percentage.into());
        let ledger = Ledger { file_percentage, generation: 0, last_error: None, changed_at: SystemTime::now() };
        Control { state, metrics, path, ledger: Mutex::new(ledger) }
    }

    /// The config file this control reloads, if any.
    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    fn publish(&self, ledger: &mut Ledger, config: Config) {
        self.metrics.rollout_percentage.set(config.rollout.percentage.into());
        self.state.store(Snapshot::new(config));
        ledger.generation += 1;
        ledger.changed_at = SystemTime::now();
    }

    /// Re-reads the config file. `trigger` says why, for the log.
    pub fn reload(&self, trigger: &'static str) -> Result<(), ConfigError> {
        let Some(path) = &self.path else { return Ok(()) };
        let loaded = Config::load(path);
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
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
        let api_in_force = current.config.rollout.percentage_source == PercentageSource::Api;
        if api_in_force && file_percentage == ledger.file_percentage {
            // The file did not change the percentage: the later API change still wins.
            config.rollout.percentage = current.config.rollout.percentage;
            config.rollout.percentage_source = PercentageSource::Api;
        }
        ledger.file_percentage = file_percentage;
        ledger.last_error = None;
        tracing::info!(
            trigger,
            percentage = config.rollout.percentage,
            source = ?config.rollout.percentage_source,
            "config reloaded"
        );
        self.publish(&mut ledger, config);
        self.metrics.config_reloads.with_label_values(&["success"]).inc();
        self.metrics.config_last_reload_success.set(1);
        Ok(())
    }

    /// Sets the rollout percentage (admin API). Callers validate `percentage <= 100`.
    pub fn set_percentage(&self, percentage: u8) -> RolloutStatus {
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let mut config = self.state.load().config.clone();
        tracing::info!(
            from = config.rollout.percentage,
            to = percentage,
            "rollout percentage set through the admin API"
        );
        config.rollout.percentage = percentage;
        config.rollout.percentage_source = PercentageSource::Api;
        self.publish(&mut ledger, config);
        self.status_locked(&ledger)
    }

    fn status_locked(&self, ledger: &Ledger) -> RolloutStatus {
        let snap = self.state.load();
        RolloutStatus {
            percentage: snap.config.rollout.percentage,
            source: snap.config.rollout.percentage_source,
            force_backend: snap.config.rollout.force,
            generation: ledger.generation,
            last_reload_error: ledger.last_error.clone(),
            changed_at: ledger.changed_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        }
    }

    /// The current rollout, as the admin API reports it.
    pub fn status(&self) -> RolloutStatus {
        let ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        self.status_locked(&ledger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[rollout]\npercentage = 10\n[backends.v1]\nurl = \"http://127.0.0.1:1\"\n[backends.v2]\nurl = \"http://127.0.0.1:2\"\n";

    fn setup(name: &str) -> (PathBuf, Control) {
        let dir = std::env::temp_dir().join(format!("switchyard-control-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("switchyard.toml");
        std::fs::write(&path, BASE).unwrap();
        let state = Arc::new(State::new(Config::load(&path).unwrap()));
        (path.clone(), Control::new(state, Arc::new(Metrics::new()), Some(path)))
    }

    #[test]
    fn the_most_recent_change_wins() {
        let (path, control) = setup("recent");
        assert_eq!(control.set_percentage(40).percentage, 40);
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
        let (path, control) = setup("invalid");
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
}
