//! The fence of a handoff: while a band of users moves, their writes are held here
//! (not forwarded), then released in arrival order — to the new side once the band's
//! rows are there, or to the old side when the handoff is aborted. Also the count of
//! writes in flight per percentile, which tells when the old side has drained.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::routing::band::Band;

/// Where held writes go when the fence opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The band moved: to the new side.
    New,
    /// The handoff was aborted: to the old side.
    Old,
}

/// A fence around one band.
pub struct Fence {
    pub band: Band,
    pub max_hold: Duration,
    /// Held writes, in arrival order.
    waiting: Mutex<VecDeque<oneshot::Sender<Release>>>,
    held: AtomicUsize,
}

/// A held write's place at the fence.
pub struct Held<'a> {
    fence: &'a Fence,
    opened: oneshot::Receiver<Release>,
}

impl Fence {
    pub fn new(band: Band, max_hold: Duration) -> Fence {
        Fence { band, max_hold, waiting: Mutex::default(), held: AtomicUsize::new(0) }
    }

    /// Whether a write from percentile `p` is held.
    pub fn holds(&self, p: u8) -> bool {
        self.band.contains(p)
    }

    /// Takes a place in the queue.
    pub fn hold(&self) -> Held<'_> {
        let (tx, opened) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_back(tx);
        self.held.fetch_add(1, Ordering::Relaxed);
        Held { fence: self, opened }
    }

    /// Writes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Opens the fence: every held write is released, in arrival order, to `to`.
    pub fn open(&self, to: Release) {
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for w in waiting {
            // A write that gave up (held too long, or its client left) is skipped.
            let _ = w.send(to);
        }
    }
}

impl Held<'_> {
    /// Waits for the fence to open, at most `max_hold`. `None`: held too long (the
    /// write is then never forwarded).
    pub async fn released(mut self) -> Option<Release> {
        tokio::time::timeout(self.fence.max_hold, &mut self.opened).await.ok()?.ok()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.fence.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes in flight to a backend, per user percentile.
pub struct Writes([AtomicU32; 100]);

impl Default for Writes {
    fn default() -> Self {
        Writes(std::array::from_fn(|_| AtomicU32::new(0)))
    }
}

impl Writes {
    /// One more write from percentile `p`. Sequentially consistent with the routing
    /// snapshot's loads and stores: see [`Writes::in_band`].
    pub fn start(&self, p: u8) {
        self.0[usize::from(p.min(99))].fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// One write from percentile `p` answered (or abandoned).
    pub fn end(&self, p: u8) {
        self.0[usize::from(p.min(99))].fetch_sub(1, Ordering::Relaxed);
    }

    /// Writes from `band` in flight. Read after the fence is in the snapshot: a write
    /// counted before that is seen here, and one counted after sees the fence.
    pub fn in_band(&self, band: &Band) -> u32 {
        std::sync::atomic::fence(Ordering::SeqCst);
        (band.low..band.high).map(|p| self.0[usize::from(p)].load(Ordering::SeqCst)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendId;

    fn band() -> Band {
        Band { low: 10, high: 20, from: BackendId::V1, to: BackendId::V2 }
    }

    #[tokio::test]
    async fn held_writes_are_released_in_arrival_order_and_late_ones_give_up() {
        let fence = Fence::new(band(), Duration::from_secs(5));
        assert!(fence.holds(10) && fence.holds(19) && !fence.holds(20));
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let held = fence.hold();
            let order = order.clone();
            tasks.push(async move {
                let r = held.released().await;
                order.lock().unwrap().push(i);
                r
            });
        }
        assert_eq!(fence.held(), 3);
        fence.open(Release::New);
        let got = futures_util::future::join_all(tasks).await;
        assert!(got.iter().all(|r| *r == Some(Release::New)));
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        assert_eq!(fence.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_held_past_max_hold_is_never_released() {
        let fence = Fence::new(band(), Duration::from_secs(10));
        let held = fence.hold();
        assert_eq!(held.released().await, None);
        fence.open(Release::Old);
        assert_eq!(fence.held(), 0);
    }

    #[test]
    fn writes_are_counted_per_band() {
        let w = Writes::default();
        w.start(12);
        w.start(12);
        w.start(25);
        assert_eq!(w.in_band(&band()), 2);
        w.end(12);
        assert_eq!(w.in_band(&band()), 1);
    }
}
