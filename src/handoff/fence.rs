//! The fence of a handoff: while a band of users moves, their writes are held here
//! (not forwarded), then released in arrival order — to the new side once the band's
//! rows are there, or to the old side when the handoff is aborted. Also the count of
//! writes in flight per percentile (and per user, for single users moving), which
//! tells when the old side has drained.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::routing::band::Band;
use crate::routing::who;

/// A write in flight, as the fence and the drain know it: its user's percentile (when
/// routed by one) and its user (a hash, when it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub percentile: Option<u8>,
    pub who: Option<u64>,
}

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
    /// A fleet's handoff: its id (every replica fences for it).
    pub id: Option<String>,
    /// When it was put up (seconds since the epoch).
    pub since: u64,
    /// Holds every write of a user, whatever the band: a replica without a valid
    /// lease on the fleet's store does not know which band may be moving.
    all: bool,
    /// The band's single users, hashed as the request path knows them.
    users: HashSet<u64>,
    /// Held writes, in arrival order; once open, where it opened to.
    waiting: Mutex<(VecDeque<oneshot::Sender<Release>>, Option<Release>)>,
    held: AtomicUsize,
}

/// A held write's place at the fence.
pub struct Held<'a> {
    fence: &'a Fence,
    opened: oneshot::Receiver<Release>,
}

impl Fence {
    pub fn new(band: Band, max_hold: Duration) -> Fence {
        let users = band.users.iter().map(|u| who(u.as_bytes())).collect();
        let (id, all, waiting, held) = (None, false, Mutex::default(), AtomicUsize::new(0));
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Fence { band, max_hold, id, since, all, users, waiting, held }
    }

    /// The fence of the fleet's handoff `id`.
    pub fn fleet(id: String, band: Band, max_hold: Duration) -> Fence {
        Fence { id: Some(id), ..Fence::new(band, max_hold) }
    }

    /// A fence around every user's writes.
    pub fn everything(max_hold: Duration) -> Fence {
        Fence { all: true, ..Fence::new(Band::between(0, 100).expect("a band"), max_hold) }
    }

    /// Whether `write` is held: its user is in the band (by percentile, or by name).
    pub fn holds(&self, write: Write) -> bool {
        self.all
            || write.percentile.is_some_and(|p| self.band.contains(p))
            || write.who.is_some_and(|w| self.users.contains(&w))
    }

    /// Takes a place in the queue (released at once if the fence is open already).
    pub fn hold(&self) -> Held<'_> {
        let (tx, opened) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match waiting.1 {
            Some(to) => {
                let _ = tx.send(to);
            }
            None => waiting.0.push_back(tx),
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        Held { fence: self, opened }
    }

    /// Writes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Opens the fence: every held write is released, in arrival order, to `to`. Only
    /// the first opening counts.
    pub fn open(&self, to: Release) {
        let waiting = {
            let mut waiting = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if waiting.1.is_some() {
                return;
            }
            waiting.1 = Some(to);
            std::mem::take(&mut waiting.0)
        };
        for w in waiting {
            // A write that gave up (held too long, or its client left) is skipped.
            let _ = w.send(to);
        }
    }
}

impl Held<'_> {
    /// Waits for the fence to open, until `deadline`. `None`: held too long (the
    /// write is then never forwarded).
    pub async fn released(mut self, deadline: tokio::time::Instant) -> Option<Release> {
        tokio::time::timeout_at(deadline, &mut self.opened).await.ok()?.ok()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.fence.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Slots of users' writes in flight: a user's writes count in the slot of their hash.
const USER_SLOTS: usize = 64;

/// Writes in flight to a backend, per user percentile and per slot of users.
pub struct Writes {
    percentiles: [AtomicU32; 100],
    users: [AtomicU32; USER_SLOTS],
}

impl Default for Writes {
    fn default() -> Self {
        Writes {
            percentiles: std::array::from_fn(|_| AtomicU32::new(0)),
            users: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Writes {
    fn counters(&self, w: Write) -> impl Iterator<Item = &AtomicU32> {
        let p = w.percentile.map(|p| &self.percentiles[usize::from(p.min(99))]);
        let u = w.who.map(|h| &self.users[(h % USER_SLOTS as u64) as usize]);
        p.into_iter().chain(u)
    }

    /// One more write. Sequentially consistent with the routing snapshot's loads and
    /// stores: see [`Writes::in_band`].
    pub fn start(&self, w: Write) {
        for c in self.counters(w) {
            c.fetch_add(1, Ordering::SeqCst);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// One write answered (or abandoned).
    pub fn end(&self, w: Write) {
        for c in self.counters(w) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Writes from `band` in flight (for its single users: from any user of their
    /// slots). Read after the fence is in the snapshot: a write counted before that is
    /// seen here, and one counted after sees the fence.
    pub fn in_band(&self, band: &Band) -> u32 {
        std::sync::atomic::fence(Ordering::SeqCst);
        let range = (band.low..band.high).map(|p| self.percentiles[usize::from(p)].load(Ordering::SeqCst));
        let slots: HashSet<usize> =
            band.users.iter().map(|u| (who(u.as_bytes()) % USER_SLOTS as u64) as usize).collect();
        range.chain(slots.into_iter().map(|s| self.users[s].load(Ordering::SeqCst))).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendId;

    fn band() -> Band {
        Band::between(10, 20).unwrap()
    }

    #[tokio::test]
    async fn held_writes_are_released_in_arrival_order_and_late_ones_give_up() {
        let fence = Fence::new(band(), Duration::from_secs(5));
        let at = |p| Write { percentile: Some(p), who: None };
        assert!(fence.holds(at(10)) && fence.holds(at(19)) && !fence.holds(at(20)));
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let held = fence.hold();
            let order = order.clone();
            let deadline = tokio::time::Instant::now() + fence.max_hold;
            tasks.push(async move {
                let r = held.released(deadline).await;
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
        assert_eq!(held.released(tokio::time::Instant::now() + fence.max_hold).await, None);
        fence.open(Release::Old);
        assert_eq!(fence.held(), 0);
    }

    #[tokio::test]
    async fn a_write_that_comes_to_an_open_fence_goes_on() {
        let fence = Fence::everything(Duration::from_secs(10));
        assert!(fence.holds(Write { percentile: None, who: Some(1) }));
        fence.open(Release::New);
        fence.open(Release::Old);
        let soon = tokio::time::Instant::now() + Duration::from_secs(1);
        assert_eq!(fence.hold().released(soon).await, Some(Release::New), "the first opening counts");
    }

    #[test]
    fn writes_are_counted_per_band_and_per_user() {
        let w = Writes::default();
        let at = |p| Write { percentile: Some(p), who: Some(who(b"someone")) };
        w.start(at(12));
        w.start(at(12));
        w.start(at(25));
        assert_eq!(w.in_band(&band()), 2);
        w.end(at(12));
        assert_eq!(w.in_band(&band()), 1);
        let pinned = Write { percentile: None, who: Some(who(b"u1")) };
        let single = Band::users(vec!["u1".into()], BackendId::V1, BackendId::V2).unwrap();
        let fence = Fence::new(single.clone(), Duration::from_secs(1));
        assert!(fence.holds(pinned) && !fence.holds(Write { percentile: Some(12), who: None }));
        assert_eq!(w.in_band(&single), 0);
        w.start(pinned);
        assert_eq!(w.in_band(&single), 1);
        assert_eq!(w.in_band(&band()), 1, "a pinned write is not in any percentile");
    }
}
