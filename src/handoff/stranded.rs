//! Who wrote on v2: the users whose v2 writes a forced rollback (the guard's, when its
//! reverse sync fails) leaves behind. The request path records each write of a user
//! forwarded to v2 without waiting (a bounded channel); the record is gathered here
//! when a handoff asks. A band handed back to v1 in full is forgotten (its writes were
//! carried); a forced one is reported: counted, logged and listed for the operator.
//!
//! What is known is what this process saw since it started: writes made before, or
//! through another replica, are not in it (docs/handoff.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::routing::band::Band;

/// Users remembered at most; past it, writers are counted as not recorded.
const MAX_USERS: usize = 200_000;
/// Users listed at most in a report (the count is always whole).
pub const MAX_LISTED: usize = 1_000;

/// The users that wrote on v2, by id, with their percentile (none when pinned).
pub struct Writers {
    tx: mpsc::Sender<(Arc<str>, Option<u8>)>,
    rx: Mutex<mpsc::Receiver<(Arc<str>, Option<u8>)>>,
    seen: Mutex<HashMap<Arc<str>, Option<u8>>>,
    /// Writes not recorded (the channel or the map full).
    lost: AtomicU64,
}

/// Users whose writes were not carried back by a forced rollback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stranded {
    /// How many users.
    pub count: usize,
    /// Their ids (the first [`MAX_LISTED`]).
    pub users: Vec<String>,
    /// Writes on v2 that could not be recorded (some users may be missing above).
    pub unrecorded: u64,
}

impl Default for Writers {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(65_536);
        Writers { tx, rx: Mutex::new(rx), seen: Mutex::default(), lost: AtomicU64::new(0) }
    }
}

impl Writers {
    /// One write of `user` forwarded to v2 (never waits).
    pub fn record(&self, user: Arc<str>, percentile: Option<u8>) {
        if self.tx.try_send((user, percentile)).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Moves what the request path recorded into the map. Called by a ticker and
    /// before each report, so the channel does not fill.
    pub fn gather(&self) {
        let mut rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        while let Ok((user, p)) = rx.try_recv() {
            if seen.len() < MAX_USERS || seen.contains_key(&user) {
                seen.insert(user, p);
            } else {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes the band's users out: forgotten (`carried`), or reported as stranded.
    pub fn take(&self, band: &Band) -> Stranded {
        self.gather();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let pinned = |u: &str| band.pinned.iter().any(|p| p.as_str() == u);
        let named = |u: &str| band.users.iter().any(|n| n.as_str() == u);
        let mut users: Vec<String> = Vec::new();
        seen.retain(|u, p| {
            let moved = named(u) || (p.is_some_and(|p| band.contains(p)) && !pinned(u));
            if moved {
                users.push(u.to_string());
            }
            !moved
        });
        users.sort();
        let count = users.len();
        users.truncate(MAX_LISTED);
        Stranded { count, users, unrecorded: self.lost.load(Ordering::Relaxed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendId;

    #[test]
    fn the_band_s_writers_are_taken_and_the_others_stay() {
        let w = Writers::default();
        w.record("a".into(), Some(5));
        w.record("b".into(), Some(50));
        w.record("a".into(), Some(5));
        w.record("pinned".into(), None);
        w.record("kept".into(), Some(6));
        let band = Band::between(10, 0).unwrap().without(["kept".to_string()]);
        assert_eq!(w.take(&band), Stranded { count: 1, users: vec!["a".into()], unrecorded: 0 });
        assert_eq!(w.take(&band).count, 0, "taken once");
        let single = Band::users(vec!["pinned".into()], BackendId::V2, BackendId::V1).unwrap();
        assert_eq!(w.take(&single).users, ["pinned"]);
        assert_eq!(w.take(&Band::between(100, 0).unwrap()).users, ["b", "kept"]);
    }

    #[test]
    fn a_full_record_counts_what_it_cannot_keep() {
        let w = Writers::default();
        for i in 0..70_000 {
            w.record(format!("u{i}").into(), Some(1));
        }
        let s = w.take(&Band::between(2, 0).unwrap());
        assert_eq!((s.count, s.users.len(), s.unrecorded), (65_536, MAX_LISTED, 70_000 - 65_536));
    }
}
