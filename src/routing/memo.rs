//! Percentiles already computed, remembered per thread: a user sends request after
//! request, and the MD5 is the largest single cost of routing one (about 700
//! instructions; a look-up here is under 100). No locks and no allocation: one table
//! of fixed slots per worker thread, two candidate slots per user id (an empty one is
//! taken, else one of the two at random), so that a miss, the usual case when users
//! come once each, costs the MD5 and little more.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};

/// Slots per thread (320 KiB, touched only as users arrive).
const SLOTS: usize = 8192;
/// Longer ids are hashed every time (Supabase user ids are 36-byte UUIDs).
const MAX_ID: usize = 38;

/// One user id (`len` 0: empty) and its percentile.
#[derive(Clone, Copy)]
struct Slot {
    len: u8,
    percentile: u8,
    id: [u8; MAX_ID],
}

impl Slot {
    const EMPTY: Slot = Slot { len: 0, percentile: 0, id: [0; MAX_ID] };

    fn holds(&self, id: &[u8]) -> bool {
        usize::from(self.len) == id.len() && self.id[..id.len()] == *id
    }
}

struct Table {
    /// The seed every remembered percentile was computed with.
    seed: Box<[u8]>,
    /// Seeded at random per thread, so that nobody can aim ids at one slot.
    hasher: foldhash::fast::RandomState,
    slots: Box<[Slot]>,
}

impl Table {
    fn candidates(&self, id: &[u8]) -> [usize; 2] {
        let mut h = self.hasher.build_hasher();
        h.write(id);
        let hash = h.finish();
        // Truncation is fine: only the low bits pick the slots.
        [hash as usize % SLOTS, (hash >> 32) as usize % SLOTS]
    }
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table {
        seed: Box::default(),
        hasher: foldhash::fast::RandomState::default(),
        slots: vec![Slot::EMPTY; SLOTS].into_boxed_slice(),
    });
}

/// The percentile of `id` under `seed`: remembered, or `compute`d and remembered.
pub fn remembered(seed: &[u8], id: &str, compute: impl FnOnce() -> u8) -> u8 {
    let id = id.as_bytes();
    if id.is_empty() || id.len() > MAX_ID {
        return compute();
    }
    TABLE.with_borrow_mut(|t| {
        if *t.seed != *seed {
            t.seed = seed.into();
            t.slots.fill(Slot::EMPTY);
        }
        let [a, b] = t.candidates(id);
        if let Some(slot) = [a, b].into_iter().map(|i| &t.slots[i]).find(|s| s.holds(id)) {
            return slot.percentile;
        }
        let percentile = compute();
        let at = if t.slots[a].len == 0 || t.slots[b].len != 0 && fastrand::bool() { a } else { b };
        let slot = &mut t.slots[at];
        slot.id[..id.len()].copy_from_slice(id);
        // Fits: at most MAX_ID.
        slot.len = id.len() as u8;
        slot.percentile = percentile;
        percentile
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_from_memory_only_for_the_same_seed_and_id() {
        assert_eq!(remembered(b"", "memo-user", || 41), 41);
        assert_eq!(remembered(b"", "memo-user", || panic!("computed again")), 41);
        assert_eq!(remembered(b"", "memo-user2", || 9), 9, "another id");
        assert_eq!(remembered(b"", "memo-use", || 8), 8, "a prefix of a known id");
        assert_eq!(remembered(b"", "memo-user", || panic!("computed again")), 41);
        assert_eq!(remembered(b"salt", "memo-user", || 7), 7, "another seed");
        assert_eq!(remembered(b"", "memo-user", || 40), 40, "forgotten when the seed changed");
    }

    #[test]
    fn long_and_empty_ids_are_computed_every_time() {
        let long = "u".repeat(MAX_ID + 1);
        assert_eq!(remembered(b"", &long, || 3), 3);
        assert_eq!(remembered(b"", &long, || 4), 4);
        assert_eq!(remembered(b"", "", || 5), 5);
        assert_eq!(remembered(b"", "", || 6), 6);
    }

    #[test]
    fn a_thousand_users_stay_remembered_and_the_table_stays_bounded() {
        let ids: Vec<String> = (0..1000).map(|i| format!("working-set-{i}")).collect();
        let mut computed = 0;
        for _ in 0..3 {
            for id in &ids {
                remembered(b"ws", id, || {
                    computed += 1;
                    1
                });
            }
        }
        // Two slots each in a table eight times the users: a user whose both slots
        // are taken by others is rare (0-10 of 1000 in 300 runs), and only that user is
        // computed again.
        assert!(computed <= 1000 + 30, "computed {computed} times for 1000 users");
        // Far more users than slots: whatever is found is still right.
        for i in 0..3 * SLOTS {
            remembered(b"ws", &format!("u{i}"), || (i % 100) as u8);
        }
        let right = (0..3 * SLOTS).filter(|&i| remembered(b"ws", &format!("u{i}"), || 200) == (i % 100) as u8).count();
        assert!(right > 0 && right <= SLOTS, "{right}");
    }

    #[test]
    fn each_thread_has_its_own_table() {
        remembered(b"", "memo-thread", || 5);
        let other = std::thread::spawn(|| remembered(b"", "memo-thread", || 6)).join().unwrap();
        assert_eq!(other, 6);
    }
}
