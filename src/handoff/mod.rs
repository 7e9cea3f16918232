//! Handoffs: a change of the percentage carried out so that the users it moves move
//! with their data (`[handoff]`, docs/handoff.md). The band's writes are fenced (held
//! at the proxy), the old side drains, the band's rows are synced to the new side,
//! and the routing flips; held writes then go on to the new side in arrival order.
//! A sync that fails or outlasts `handoff.timeout_seconds` aborts: the percentage
//! stays and held writes go to the old side. Nothing is forwarded twice or lost.

pub mod coordinate;
pub mod delta;
pub mod fence;
mod lead;
pub mod lease;
pub mod stranded;
pub mod sync;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::config::Config;
use crate::config::handoff::{HandoffConfig, Sync};
use crate::metrics::Metrics;
use crate::routing::band::Band;
use crate::state::State;
use fence::{Fence, Release, Writes};
use stranded::{Stranded, Writers};
pub use sync::Synced;

/// A handoff in progress, as `GET /admin/rollout` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// `precopy` (before the fence), `drain` or `sync`; on a replica fenced for
    /// another's handoff, `fenced`.
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
    /// A forced rollback: the users whose v2 writes were not carried back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stranded: Option<Stranded>,
}

/// What the pre-copy did, for the fenced pass.
struct Precopied {
    rows: u64,
    prepared: Option<delta::Prepared>,
}

/// The proxy's handoffs: the one in progress and the last one's end.
pub struct Handoffs {
    /// Writes in flight per percentile (the request path counts them).
    pub writes: Arc<Writes>,
    /// Users that wrote on v2 (the request path records them).
    wrote_v2: Arc<Writers>,
    metrics: Arc<Metrics>,
    /// The routing state (its fence holds the writes shown as held).
    state: Arc<State>,
    current: Mutex<Option<Progress>>,
    last: Mutex<Option<Ended>>,
    /// Every user a forced rollback left behind, until the guard is cleared.
    stranded: Mutex<Stranded>,
}

fn epoch() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Handoffs {
    pub fn new(state: Arc<State>, writes: Arc<Writes>, wrote_v2: Arc<Writers>, metrics: Arc<Metrics>) -> Handoffs {
        let (current, last, stranded) = Default::default();
        Handoffs { writes, wrote_v2, metrics, state, current, last, stranded }
    }

    /// The users forced rollbacks left behind since the guard was last cleared.
    pub fn stranded(&self) -> Option<Stranded> {
        let s = self.stranded.lock().unwrap_or_else(PoisonError::into_inner);
        (s.count > 0).then(|| s.clone())
    }

    /// Forgets the stranded users (the operator has dealt with them: the guard is cleared).
    pub fn clear_stranded(&self) {
        *self.stranded.lock().unwrap_or_else(PoisonError::into_inner) = Stranded::default();
    }

    /// What the users of `band` wrote on v2, once the band has left it: forgotten when
    /// carried, reported when not.
    fn left_v2(&self, band: &Band, carried: bool) -> Option<Stranded> {
        if band.from != crate::backend::BackendId::V2 {
            return None;
        }
        let taken = self.wrote_v2.take(band);
        if carried {
            return None;
        }
        self.metrics.handoff_stranded(taken.count);
        tracing::error!(
            users = taken.count, listed = ?taken.users, unrecorded_writes = taken.unrecorded,
            "forced rollback: these users' writes on v2 were not carried back to v1"
        );
        let mut all = self.stranded.lock().unwrap_or_else(PoisonError::into_inner);
        all.count += taken.count;
        let room = stranded::MAX_LISTED.saturating_sub(all.users.len());
        all.users.extend(taken.users.iter().take(room).cloned());
        all.unrecorded = taken.unrecorded;
        Some(taken)
    }

    /// The handoff in progress.
    pub fn progress(&self) -> Option<Progress> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let held = self.state.load().fence.as_ref().map_or(0, |f| f.held());
        current.as_ref().map(|p| Progress { held, ..p.clone() })
    }

    /// How the last handoff ended.
    pub fn last(&self) -> Option<Ended> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn phase(&self, phase: &'static str) {
        if let Some(p) = self.current.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
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
        let precopied = match self.precopy(&snap.config, &cfg, &band).await {
            Ok(rows) => rows,
            Err(e) => return self.failed_early(&band, force, e, flip),
        };
        let fence = Arc::new(Fence::new(band.clone(), cfg.max_hold));
        let started = Instant::now();
        state.store(state.fenced(snap.config.clone(), fence.clone()));
        tracing::info!(low = band.low, high = band.high, from = %band.from, to = %band.to, "handoff: band fenced");
        let deadline = started + cfg.timeout;
        let work = async {
            while self.writes.in_band(&band) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            self.metrics.handoff_phase("drain", started.elapsed());
            self.fenced_sync(&snap.config, &cfg, &band, precopied, deadline).await
        };
        let result = tokio::time::timeout_at(deadline, work).await.unwrap_or_else(|_| Err(timed_out(cfg.timeout)));
        let (outcome, release) = match (&result, force) {
            (Ok(_), _) => ("done", Release::New),
            (Err(_), true) => ("forced", Release::New),
            (Err(_), false) => ("aborted", Release::Old),
        };
        match release {
            Release::New => flip(),
            // The percentage stays: the same config, without the fence.
            Release::Old => state.store(state.snapshot(state.load().config.clone())),
        }
        fence.open(release);
        let result = self.end(&band, outcome, result, started.elapsed());
        if force { Ok(result.unwrap_or_default()) } else { result }
    }

    /// The pre-copy, before the fence (the built-in sync), and what the fenced pass
    /// reads of the new side. Shown as the handoff's first phase.
    async fn precopy(&self, config: &Config, cfg: &HandoffConfig, band: &Band) -> Result<Precopied, String> {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Progress { phase: "precopy", band: band.clone(), started_at: epoch(), held: 0 });
        if cfg.sync != Sync::Postgres {
            return Ok(Precopied { rows: 0, prepared: None });
        }
        let copying = Instant::now();
        let copy = async {
            let rows = sync::postgres(config, cfg, band).await?.precopied;
            Ok(Precopied { rows, prepared: Some(delta::prepare(config, cfg, band).await?) })
        };
        let copied = tokio::time::timeout(cfg.timeout, copy).await;
        self.metrics.handoff_phase("precopy", copying.elapsed());
        copied.unwrap_or_else(|_| Err(timed_out(cfg.timeout)))
    }

    /// A handoff that failed before anything was held: aborted, or for the guard's
    /// rollback (which does not wait for a second failure) flipped at once.
    fn failed_early(&self, band: &Band, force: bool, e: String, flip: impl FnOnce()) -> Result<Synced, String> {
        if !force {
            return self.end(band, "aborted", Err(e), Duration::ZERO);
        }
        flip();
        Ok(self.end(band, "forced", Err(e), Duration::ZERO).unwrap_or_default())
    }

    /// The sync inside the fence, once drained.
    async fn fenced_sync(
        &self,
        config: &Config,
        cfg: &HandoffConfig,
        band: &Band,
        precopied: Precopied,
        deadline: Instant,
    ) -> Result<Synced, String> {
        self.phase("sync");
        let syncing = Instant::now();
        let synced = match (&cfg.sync, precopied.prepared) {
            (Sync::Postgres, Some(p)) => delta::carry(p).await.map(|s| Synced { precopied: precopied.rows, ..s }),
            (Sync::Postgres, None) => Err("no pre-copy".into()),
            (Sync::Command(program), _) => {
                let left = deadline.saturating_duration_since(Instant::now());
                sync::command(program, config, cfg, band, left).await
            }
        };
        self.metrics.handoff_phase("sync", syncing.elapsed());
        synced
    }

    /// Records how a handoff ended (counted, logged, shown), and that none runs.
    fn end(
        &self,
        band: &Band,
        outcome: &'static str,
        result: Result<Synced, String>,
        fenced: Duration,
    ) -> Result<Synced, String> {
        self.metrics.handoff(outcome);
        match &result {
            Ok(s) => tracing::info!(
                precopied = s.precopied,
                rows = s.rows,
                deleted = s.deleted,
                tables = s.tables,
                fenced_ms = fenced.as_millis() as u64,
                "handoff done"
            ),
            Err(e) => tracing::error!(error = %e, result = outcome, "handoff failed"),
        }
        if !fenced.is_zero() {
            self.metrics.handoff_phase("fenced", fenced);
        }
        let stranded = if outcome == "aborted" { None } else { self.left_v2(band, outcome == "done") };
        let ended = Ended {
            result: outcome,
            stranded,
            band: band.clone(),
            at: epoch(),
            fenced_ms: fenced.as_millis() as u64,
            error: result.as_ref().err().cloned(),
            synced: result.as_ref().ok().cloned(),
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(ended);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        result
    }
}

fn timed_out(limit: Duration) -> String {
    format!("not done within handoff.timeout_seconds ({} s)", limit.as_secs_f64())
}
