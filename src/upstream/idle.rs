//! The idle connections of one upstream host: a stack, newest on top, so that traffic
//! keeps reusing the same few warm connections and the surplus at the bottom ages out.
//! Pure bookkeeping over any `T` with a clock passed in; the pool owns the I/O, and
//! entries leave the stack to be probed or closed, so that no I/O happens under the
//! pool's lock.

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
        if self.entries.len() >= self.max {
            return Some(item);
        }
        self.entries.push_back((item, now + self.timeout));
        None
    }

    /// The most recently parked entry that has not been idle for `timeout`.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        let (item, expires) = self.entries.pop_back()?;
        // The newest has expired: then so has every other (see `expire`).
        (expires > now).then_some(item)
    }

    /// Takes out every entry idle for `timeout` or longer, for the caller to close.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let stale = self.entries.iter().take_while(|(_, expires)| *expires <= now).count();
        self.entries.drain(..stale).map(|(item, _)| item).collect()
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
        assert_eq!(s.pop(t0), Some(2));
        assert_eq!(s.pop(t0), Some(1));
        assert_eq!(s.pop(t0), None);
    }

    #[test]
    fn never_reuses_an_expired_entry() {
        let t0 = Instant::now();
        let mut s = IdleStack::new(8, 10 * SEC);
        s.push("old", t0);
        s.push("new", t0 + 5 * SEC);
        assert!(s.expire(t0 + 9 * SEC).is_empty());
        assert_eq!(s.expire(t0 + 10 * SEC), ["old"], "idle for exactly the timeout: gone");
        assert_eq!(s.pop(t0 + 15 * SEC), None, "the other one expired too");
        assert!(s.is_empty());
    }
}
