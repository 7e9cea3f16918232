//! The idle connections of one upstream host: a stack, newest on top, so that traffic
//! keeps reusing the same few warm connections and the surplus at the bottom ages out.
//! Pure bookkeeping over any `T` with a clock passed in; the pool owns the I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Idle entries, oldest at the front, newest at the back, each with the instant it
/// expires (kept rather than when it went idle: a comparison per check, no arithmetic).
#[derive(Debug)]
pub struct IdleStack<T> {
    entries: VecDeque<(T, Instant)>,
    max: usize,
    timeout: Duration,
}

impl<T> IdleStack<T> {
    /// At most `max` entries, each reused only within `timeout` of going idle.
    pub fn new(max: usize, timeout: Duration) -> IdleStack<T> {
        IdleStack { entries: VecDeque::new(), max, timeout }
    }

    /// Parks `item`, idle since `now`. Returns it back when the stack is full.
    pub fn push(&mut self, item: T, now: Instant) -> Option<T> {
        self.expire(now);
        if self.entries.len() >= self.max {
            return Some(item);
        }
        self.entries.push_back((item, now + self.timeout));
        None
    }

    /// The most recently parked entry that `usable` accepts and that has not been idle
    /// for `timeout`. Entries passed over are dropped: expired or unusable ones are
    /// dead connections.
    pub fn pop(&mut self, now: Instant, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        self.expire(now);
        while let Some((mut item, _)) = self.entries.pop_back() {
            if usable(&mut item) {
                return Some(item);
            }
        }
        None
    }

    /// Drops every entry idle for `timeout` or longer; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut stale = 0;
        while self.entries.front().is_some_and(|(_, expires)| *expires <= now) {
            self.entries.pop_front();
            stale += 1;
        }
        stale
    }

    /// How many entries are parked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is parked.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn newest_first_and_bounded() {
        let t0 = Instant::now();
        let mut s = IdleStack::new(2, 10 * SEC);
        assert_eq!(s.push(1, t0), None);
        assert_eq!(s.push(2, t0), None);
        assert_eq!(s.push(3, t0), Some(3), "full: handed back");
        assert_eq!(s.pop(t0, |_| true), Some(2));
        assert_eq!(s.pop(t0, |_| true), Some(1));
        assert_eq!(s.pop(t0, |_| true), None);
    }

    #[test]
    fn never_reuses_an_expired_entry() {
        let t0 = Instant::now();
        let mut s = IdleStack::new(8, 10 * SEC);
        s.push("old", t0);
        s.push("new", t0 + 5 * SEC);
        assert_eq!(s.expire(t0 + 9 * SEC), 0);
        assert_eq!(s.expire(t0 + 10 * SEC), 1, "idle for exactly the timeout: gone");
        assert_eq!(s.pop(t0 + 15 * SEC, |_| true), None, "the other one expired too");
        assert!(s.is_empty());
    }

    #[test]
    fn unusable_entries_are_dropped_on_the_way() {
        let t0 = Instant::now();
        let mut s = IdleStack::new(8, 10 * SEC);
        for i in 0..4 {
            s.push(i, t0);
        }
        assert_eq!(s.pop(t0, |i| *i < 2), Some(1), "3 and 2 are dead");
        assert_eq!(s.len(), 1);
    }
}
