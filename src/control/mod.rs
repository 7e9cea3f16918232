//! Live changes to the routing state: file reloads (watcher or SIGHUP), admin API
//! writes, the canary guard's rollbacks and the staged schedule. Each change is a
//! plain function of the rollout state ([`rollout`]); here it is applied: a whole new
//! snapshot swapped in, counted and logged. In fleet mode a change goes to the store
//! first (a compare-and-set on the fleet's generation, [`commit`]) and is applied once
//! it is committed; every replica adopts what the store holds (docs/fleet.md). The
//! changes themselves are in [`changes`], the status in [`status`].
//!
//! The most recent change wins: a reload whose file percentage is the one already
//! seen keeps a percentage set otherwise, while a file that changes the percentage
//! overrides it. An invalid file is refused whole and the old snapshot stays. A
//! tripped guard holds the rollback until an operator clears it.

mod changes;
pub mod commit;
pub mod rollout;
mod status;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::SystemTime;

use crate::config::safety::RollbackTo;
use crate::config::{Config, PercentageSource};
use crate::guard::Trip;
use crate::handoff::coordinate::Pending;
use crate::handoff::fence::{Fence, Release};
use crate::handoff::{Handoffs, Progress};
use crate::metrics::Metrics;
use crate::routing::band::Band;
use crate::state::State;
pub use commit::{Cas, ChangeError, Commit, Store, StoreFuture};
pub use rollout::{Advance, Refused, Rollout, Tripped};
pub use status::{RolloutStatus, ScheduleStatus};

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
            self.state.store(self.state.snapshot(config));
            // A handoff's fence falls with the percentage it held for: its writes go on
            // to the new side.
            if let Some(f) = &current.fence {
                f.open(Release::New);
            }
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
        if commit == Commit::Local && self.store.get().is_some() && self.state.load().config.handoff.is_some() {
            // The other replicas would not fence: the band's writes there would be left behind.
            return Err(Refused::LocalWithHandoff.into());
        }
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
        // With handoffs, changes here go one at a time (the store orders the fleet's).
        let _turn = match self.handoffs.get() {
            Some(_) if self.state.load().config.handoff.is_some() => Some(self.turn(commit == Commit::Urgent).await),
            _ => None,
        };
        loop {
            let (base, generation) = match &self.lock().fleet {
                Some((r, g)) => (r.clone(), *g),
                None => return Err(ChangeError::Unavailable("not connected yet".into())),
            };
            let Some(next) = change(&base)? else { return Ok(None) };
            if let Some((handoffs, band)) = self.handoff_band(base.percentage, next.percentage) {
                let committed = self.lead(store.as_ref(), handoffs, band, generation, &next).await?;
                self.adopt(next.clone(), committed);
                return Ok(Some(next));
            }
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

    /// Leads the fleet's handoff of `band` for the change from the store's state at
    /// `generation` to `next`: the generation it committed.
    async fn lead(
        &self,
        store: &dyn Store,
        handoffs: &Handoffs,
        band: Band,
        generation: u64,
        next: &Rollout,
    ) -> Result<u64, ChangeError> {
        let committed = std::sync::atomic::AtomicU64::new(0);
        let finish = |id: String| {
            let committed = &committed;
            async move {
                match store.finish(generation, next, &id).await {
                    Ok(g) => {
                        committed.store(g, std::sync::atomic::Ordering::SeqCst);
                        Ok(())
                    }
                    Err(Cas::Conflict(_, at)) => Err(format!(
                        "the fleet's state changed during the handoff (now generation {at}), or the handoff was abandoned"
                    )),
                    Err(Cas::Unavailable(why)) => Err(format!("the fleet's store: {why}")),
                }
            }
        };
        let force = next.source == PercentageSource::Guard;
        let leader = self.state.load().config.cluster.as_ref().map(|c| c.replica_id.clone()).unwrap_or_default();
        handoffs.lead(store.coordinator(), &leader, band, force, finish).await.map_err(ChangeError::Handoff)?;
        Ok(committed.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Fences for the fleet's handoff in progress (`pending`), or lifts the fence of
    /// one that ended without a change (aborted, or abandoned): its held writes go to
    /// the old side. A fence replaced by a change of percentage was opened to the new
    /// side already ([`Control::apply`]). The fence now standing for `pending`.
    pub fn follow(&self, pending: Option<&Pending>) -> Option<Arc<Fence>> {
        let snap = self.state.load();
        let standing = snap.fence.clone().filter(|f| f.id.is_some());
        match (pending, standing) {
            (Some(p), Some(f)) if f.id.as_deref() == Some(p.id.as_str()) => Some(f),
            (Some(p), other) => {
                let max_hold = std::time::Duration::from_millis(p.max_hold_ms);
                let fence = Arc::new(Fence::fleet(p.id.clone(), p.band.clone(), max_hold));
                self.state.store(self.state.fenced(snap.config.clone(), fence.clone()));
                tracing::info!(id = %p.id, leader = %p.leader, low = p.band.low, high = p.band.high, "fleet handoff: band fenced");
                if let Some(o) = other {
                    o.open(Release::Old);
                }
                Some(fence)
            }
            (None, Some(f)) => {
                self.state.store(self.state.snapshot(snap.config.clone()));
                f.open(Release::Old);
                None
            }
            (None, None) => None,
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
        let pinned = snap.config.overrides.users.keys().cloned();
        Some((self.handoffs.get()?, Band::between(old, new)?.without(pinned)))
    }
}

#[cfg(test)]
mod tests;
