//! Percentiles already computed, remembered per thread: a user sends request after
//! request, and the MD5 is the largest single cost of routing one (about 800
//! instructions; a look-up here is about 100). No locks: one bounded map per worker
//! thread, emptied when full (every user then costs one MD5 again) and when the seed
//! changes (a reload).

use std::cell::RefCell;
use std::collections::HashMap;

/// Users remembered per thread (about 300 KiB when full of UUIDs).
const MAX_USERS: usize = 4096;
/// Longer ids are hashed every time (Supabase user ids are 36-byte UUIDs).
const MAX_ID: usize = 128;

#[derive(Default)]
struct Table {
    /// The seed every remembered percentile was computed with.
    seed: Box<[u8]>,
    /// Seeded at random per thread, so that nobody can aim ids at one bucket.
    percentiles: HashMap<Box<str>, u8, foldhash::fast::RandomState>,
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::default();
}

/// The percentile of `id` under `seed`: remembered, or `compute`d and remembered.
pub fn remembered(seed: &[u8], id: &str, compute: impl FnOnce() -> u8) -> u8 {
    if id.len() > MAX_ID {
        return compute();
    }
    TABLE.with_borrow_mut(|t| {
        if *t.seed != *seed {
            t.seed = seed.into();
            t.percentiles.clear();
        }
        if let Some(&p) = t.percentiles.get(id) {
            return p;
        }
        if t.percentiles.len() >= MAX_USERS {
            t.percentiles.clear();
        }
        let p = compute();
        t.percentiles.insert(id.into(), p);
        p
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
    fn long_ids_are_computed_every_time() {
        let long = "u".repeat(MAX_ID + 1);
        assert_eq!(remembered(b"", &long, || 3), 3);
        assert_eq!(remembered(b"", &long, || 4), 4);
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
        assert_eq!(computed, 1000, "each user computed once");
        for i in 0..3 * MAX_USERS {
            remembered(b"ws", &i.to_string(), || 2);
        }
        TABLE.with_borrow(|t| assert!(t.percentiles.len() <= MAX_USERS));
    }

    #[test]
    fn each_thread_has_its_own_table() {
        remembered(b"", "memo-thread", || 5);
        let other = std::thread::spawn(|| remembered(b"", "memo-thread", || 6)).join().unwrap();
        assert_eq!(other, 6);
    }
}
