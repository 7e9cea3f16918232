//! A replica's lease on the fleet's store, with `[handoff]` and `[cluster]` both on.
//! A handoff's leader only waits for the replicas whose heartbeat is within their
//! lease; one whose lease has run out (it lost the store, or stalled) must therefore
//! hold every user's writes itself until it has read the store again — it cannot know
//! which band moves meanwhile. The request path checks the deadline on every write,
//! so the hold starts the moment the lease runs out, not when a timer notices.
//!
//! A replica counts its lease from when it *sent* the heartbeat that renewed it, so it
//! ends no later than the leader, reading the heartbeat's time in the store, thinks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::fence::{Fence, Release};

/// The lease, and the fence it holds writes at while it has run out.
pub struct Lease {
    /// Off without a fleet or without handoffs: never runs out.
    on: bool,
    base: Instant,
    /// Milliseconds after `base` when it runs out (0: not held yet).
    until_ms: AtomicU64,
    fence: ArcSwap<Fence>,
}

impl Lease {
    /// A lease that is `on` (held from the first heartbeat), holding writes for at
    /// most `max_hold` while it has run out.
    pub fn new(on: bool, max_hold: Duration) -> Lease {
        let fence = ArcSwap::from_pointee(Fence::everything(max_hold));
        Lease { on, base: Instant::now(), until_ms: AtomicU64::new(0), fence }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// The fence to hold a write at while the lease has run out.
    pub fn holding(&self) -> Option<Arc<Fence>> {
        (self.on && self.now_ms() >= self.until_ms.load(Ordering::SeqCst)).then(|| self.fence.load_full())
    }

    /// Whether the lease is held now.
    pub fn valid(&self) -> bool {
        self.holding().is_none()
    }

    /// Renewed by a heartbeat sent at `sent` for `lease`. Writes held while it had run
    /// out go on (to be routed, or fenced, by what the store now says).
    pub fn renew(&self, sent: Instant, lease: Duration) {
        let until = (sent + lease).saturating_duration_since(self.base).as_millis() as u64;
        let was_out = !self.valid();
        self.until_ms.store(until, Ordering::SeqCst);
        if was_out && self.valid() {
            let fence = self.fence.swap(Arc::new(Fence::everything(self.fence.load().max_hold)));
            fence.open(Release::Old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::fence::Write;

    #[tokio::test(start_paused = true)]
    async fn writes_are_held_until_the_lease_is_held_and_after_it_runs_out() {
        let lease = Lease::new(true, Duration::from_secs(10));
        let held = lease.holding().expect("held from the start");
        assert!(held.holds(Write { percentile: None, who: Some(7) }));
        let place = held.hold();
        lease.renew(Instant::now(), Duration::from_secs(3));
        assert!(lease.valid());
        assert_eq!(place.released(Instant::now()).await, Some(Release::Old), "released at the renewal");
        tokio::time::advance(Duration::from_millis(2_999)).await;
        assert!(lease.valid());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(lease.holding().is_some(), "run out");
        assert!(!Arc::ptr_eq(&lease.holding().unwrap(), &held), "a fresh fence");
        assert!(Lease::new(false, Duration::from_secs(1)).valid(), "off: always valid");
    }
}
