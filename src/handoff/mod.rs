//! Handoffs: a change of the percentage carried out so that the users it moves move
//! with their data (`[handoff]`, docs/handoff.md). The band's writes are fenced (held
//! at the proxy), the old side drains, the band's rows are synced to the new side,
//! and the routing flips; held writes then go on to the new side in arrival order.
//! A sync that fails or outlasts `handoff.timeout_seconds` aborts: the percentage
//! stays and held writes go to the old side. Nothing is forwarded twice or lost.

pub mod fence;
pub mod sync;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::config::handoff::Sync;
use crate::metrics::Metrics;
use crate::routing::band::Band;
use crate::state::{Snapshot, State};
use fence::{Fence, Release, Writes};
pub use sync::Synced;

/// A handoff in progress, as `GET /admin/rollout` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// `drain` or `sync`.
    pub phase: &'static str,
    pub band: Band,
    /// Seconds since the epoch.
    pub started_at: u64,
    /// Writes held at the fence now.
    pub held: usize,
}

/// How the last handoff ended.
#[derive(Debug, Clone, Serialize)]
pub struct Ended {
    /// `done`, `aborted`, or `forced` (a guard rollback that flipped although its sync
    /// failed: the band's writes on the side it left were not carried back).
    pub result: &'static str,
    pub band: Band,
    /// Seconds since the epoch.
    pub at: u64,
    pub fenced_ms: u64,
    pub error: Option<String>,
    pub synced: Option<Synced>,
}

/// The proxy's handoffs: the one in progress and the last one's end.
pub struct Handoffs {
    /// Writes in flight per percentile (the request path counts them).
    pub writes: Arc<Writes>,
    metrics: Arc<Metrics>,
    current: Mutex<Option<(Arc<Fence>, Progress)>>,
    last: Mutex<Option<Ended>>,
}

fn epoch() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Handoffs {
    pub fn new(writes: Arc<Writes>, metrics: Arc<Metrics>) -> Handoffs {
        Handoffs { writes, metrics, current: Mutex::default(), last: Mutex::default() }
    }

    /// The handoff in progress.
    pub fn progress(&self) -> Option<Progress> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|(fence, p)| Progress { held: fence.held(), ..p.clone() })
    }

    /// How the last handoff ended.
    pub fn last(&self) -> Option<Ended> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn phase(&self, phase: &'static str) {
        if let Some((_, p)) = self.current.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            p.phase = phase;
        }
    }

    /// Hands `band` over, then `flip`s the routing (which must swap in a snapshot
    /// with the new percentage and no fence). `force`: flip even when the sync fails
    /// (the guard's rollback: the side being left is failing).
    pub async fn run(&self, state: &State, band: Band, force: bool, flip: impl FnOnce()) -> Result<Synced, String> {
        let snap = state.load();
        let Some(cfg) = snap.config.handoff.clone() else {
            flip();
            return Ok(Synced::default());
        };
        let fence = Arc::new(Fence::new(band, cfg.max_hold));
        let started = Instant::now();
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((fence.clone(), Progress { phase: "drain", band, started_at: epoch(), held: 0 }));
        state.store(Snapshot::fenced(snap.config.clone(), fence.clone()));
        tracing::info!(low = band.low, high = band.high, from = %band.from, to = %band.to, "handoff: band fenced");
        let deadline = started + cfg.timeout;
        let work = async {
            while self.writes.in_band(&band) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            self.metrics.handoff_phase("drain", started.elapsed());
            self.phase("sync");
            let syncing = Instant::now();
            let synced = match &cfg.sync {
                Sync::Postgres => sync::postgres(&snap.config, &cfg, band).await,
                Sync::Command(program) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    sync::command(program, &snap.config, &cfg, band, left).await
                }
            };
            self.metrics.handoff_phase("sync", syncing.elapsed());
            synced
        };
        let result = tokio::time::timeout_at(deadline, work).await.unwrap_or_else(|_| {
            Err(format!("not done within handoff.timeout_seconds ({} s)", cfg.timeout.as_secs_f64()))
        });
        let (outcome, release) = match (&result, force) {
            (Ok(_), _) => ("done", Release::New),
            (Err(_), true) => ("forced", Release::New),
            (Err(_), false) => ("aborted", Release::Old),
        };
        match release {
            Release::New => flip(),
            // The percentage stays: the same config, without the fence.
            Release::Old => state.store(Snapshot::new(state.load().config.clone())),
        }
        fence.open(release);
        let fenced = started.elapsed();
        self.metrics.handoff_phase("fenced", fenced);
        self.metrics.handoff(outcome);
        match &result {
            Ok(s) => {
                tracing::info!(rows = s.rows, tables = s.tables, fenced_ms = fenced.as_millis() as u64, "handoff done")
            }
            Err(e) => tracing::error!(error = %e, result = outcome, "handoff failed"),
        }
        let ended = Ended {
            result: outcome,
            band,
            at: epoch(),
            fenced_ms: fenced.as_millis() as u64,
            error: result.as_ref().err().cloned(),
            synced: result.as_ref().ok().cloned(),
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(ended);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if force { Ok(result.unwrap_or_default()) } else { result }
    }
}
