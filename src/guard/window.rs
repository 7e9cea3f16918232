//! A sliding window of request outcomes in one-second buckets, updated with atomics
//! so that recording on the request path takes no lock. Counts are approximate at a
//! bucket's turnover (a racing increment may land in the old second): fine for
//! comparing two error ratios.
//!
//! Outcomes are kept per identity slot (a hash of the user id, or of the client
//! address for anonymous requests), so that a verdict can be taken without the one
//! identity that weighs most: no single user — however many requests, slow queries or
//! errors of their own they produce — decides the guard (docs/operations.md).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in milliseconds (the last is unbounded).
const BOUNDS_MS: [u64; 14] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, u64::MAX];
/// Identity slots per bucket. Identities share a slot by hash; leaving a slot out
/// leaves out its one heavy user along with a few others.
pub const SLOTS: usize = 32;

#[derive(Default)]
struct Slot {
    errors: AtomicU32,
    latency: [AtomicU32; BOUNDS_MS.len()],
}

struct Bucket {
    /// The second (since the guard's start) these counts belong to, plus one (0 = empty).
    second: AtomicU64,
    slots: [Slot; SLOTS],
}

/// One slot's outcomes over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    errors: u64,
    latency: [u64; BOUNDS_MS.len()],
}

impl Counts {
    fn requests(&self) -> u64 {
        self.latency.iter().sum()
    }

    fn add(&mut self, other: &Counts, sign: i64) {
        let apply = |a: &mut u64, b: u64| *a = a.wrapping_add_signed(sign * b as i64);
        apply(&mut self.errors, other.errors);
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            apply(a, b);
        }
    }
}

/// Aggregated outcomes over a window, per identity slot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    total: Counts,
    slots: Vec<Counts>,
}

/// What a verdict is taken on: one side's numbers without its heaviest identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged {
    pub requests: u64,
    pub error_ratio: f64,
    pub p99: Duration,
}

impl Stats {
    /// Requests in the window.
    pub fn requests(&self) -> u64 {
        self.total.requests()
    }

    /// The numbers without the one slot that would make them worst: the lowest
    /// error ratio and the lowest p99 among the totals less any one slot. An
    /// identity alone in the window leaves nothing to judge.
    pub fn without_heaviest(&self) -> Judged {
        let without = |s: &Counts| {
            let mut c = self.total;
            c.add(s, -1);
            c
        };
        let rest: Vec<Counts> = self.slots.iter().filter(|s| s.requests() > 0).map(without).collect();
        let requests = rest.iter().map(Counts::requests).min().unwrap_or(0);
        let error_ratio = rest.iter().map(error_ratio).fold(f64::INFINITY, f64::min);
        let p99 = rest.iter().map(p99).min().unwrap_or(Duration::ZERO);
        Judged { requests, error_ratio: if error_ratio.is_finite() { error_ratio } else { 0.0 }, p99 }
    }

    /// Stats from plain numbers, as if each sample came from another identity (tests
    /// and the pure verdict).
    pub fn from_samples(samples: &[(bool, Duration)]) -> Stats {
        let w = Window::new(1);
        for (i, (error, latency)) in samples.iter().enumerate() {
            w.record(0, i as u64, *error, *latency);
        }
        w.stats(0, 0)
    }
}

/// Errors over requests (0 when there were none).
fn error_ratio(c: &Counts) -> f64 {
    let n = c.requests();
    if n == 0 { 0.0 } else { c.errors as f64 / n as f64 }
}

/// The 99th percentile latency, as the upper bound of its bucket.
fn p99(c: &Counts) -> Duration {
    let total = c.requests();
    let rank = total - total / 100;
    let mut seen = 0;
    for (i, n) in c.latency.iter().enumerate() {
        seen += n;
        if seen >= rank && *n > 0 {
            return Duration::from_millis(BOUNDS_MS[i].min(60_000));
        }
    }
    Duration::ZERO
}

/// One window: `span` one-second buckets.
pub struct Window {
    buckets: Vec<Bucket>,
}

impl Window {
    /// A window of `span` seconds.
    pub fn new(span: usize) -> Window {
        let bucket = || Bucket { second: AtomicU64::new(0), slots: Default::default() };
        Window { buckets: (0..span.max(1)).map(|_| bucket()).collect() }
    }

    /// Records one outcome of identity `who` (any hash of it) in second `now`.
    pub fn record(&self, now: u64, who: u64, error: bool, latency: Duration) {
        let b = &self.buckets[(now % self.buckets.len() as u64) as usize];
        let tag = now + 1;
        let seen = b.second.load(Relaxed);
        if seen != tag && b.second.compare_exchange(seen, tag, Relaxed, Relaxed).is_ok() {
            for slot in &b.slots {
                slot.errors.store(0, Relaxed);
                slot.latency.iter().for_each(|c| c.store(0, Relaxed));
            }
        }
        let slot = &b.slots[(who % SLOTS as u64) as usize];
        if error {
            slot.errors.fetch_add(1, Relaxed);
        }
        let ms = latency.as_millis() as u64;
        let i = BOUNDS_MS.iter().position(|bound| ms <= *bound).unwrap_or(BOUNDS_MS.len() - 1);
        slot.latency[i].fetch_add(1, Relaxed);
    }

    /// Sums the buckets of the last `span` seconds up to `now`, none before second
    /// `from`.
    pub fn stats(&self, now: u64, from: u64) -> Stats {
        let span = self.buckets.len() as u64;
        let mut slots = vec![Counts::default(); SLOTS];
        for b in &self.buckets {
            let tag = b.second.load(Relaxed);
            if tag == 0 || tag > now + 1 || now + 1 - tag >= span || tag - 1 < from {
                continue;
            }
            for (acc, slot) in slots.iter_mut().zip(&b.slots) {
                acc.errors += u64::from(slot.errors.load(Relaxed));
                for (a, c) in acc.latency.iter_mut().zip(&slot.latency) {
                    *a += u64::from(c.load(Relaxed));
                }
            }
        }
        let mut total = Counts::default();
        for s in &slots {
            total.add(s, 1);
        }
        Stats { total, slots }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(3);

    #[test]
    fn old_seconds_fall_out_of_the_window() {
        let w = Window::new(3);
        w.record(0, 1, true, MS);
        w.record(1, 2, false, MS);
        w.record(2, 3, false, MS);
        assert_eq!((w.stats(2, 0).requests(), w.stats(2, 0).total.errors), (3, 1));
        assert_eq!((w.stats(3, 0).requests(), w.stats(3, 0).total.errors), (2, 0));
        w.record(3, 4, false, MS);
        assert_eq!(w.stats(3, 0).requests(), 3, "bucket of second 0 reused for second 3");
        assert_eq!(w.stats(10, 0).requests(), 0);
        // Judged from second 3 on: second 2's outcomes are forgotten.
        assert_eq!(w.stats(3, 3).requests(), 1);
    }

    #[test]
    fn p99_and_ratio() {
        let mut samples = vec![(false, Duration::from_millis(4)); 199];
        samples.push((true, Duration::from_millis(900)));
        let s = Stats::from_samples(&samples);
        assert_eq!(p99(&s.total), Duration::from_millis(5));
        assert!((error_ratio(&s.total) - 0.005).abs() < 1e-9);
        samples.extend(vec![(false, Duration::from_millis(900)); 10]);
        assert_eq!(p99(&Stats::from_samples(&samples).total), Duration::from_millis(1000));
    }

    #[test]
    fn one_identity_weighs_as_one_however_many_requests_it_makes() {
        let w = Window::new(10);
        // 100 identities with healthy requests, one with 1,000 slow failures.
        for who in 0..100 {
            w.record(0, who, false, MS);
        }
        for _ in 0..1000 {
            w.record(0, 7, true, Duration::from_secs(3));
        }
        let s = w.stats(0, 0);
        assert!(error_ratio(&s.total) > 0.9, "the raw numbers are dominated by it");
        let judged = s.without_heaviest();
        assert_eq!(judged.error_ratio, 0.0);
        assert_eq!(judged.p99, Duration::from_millis(5));
        assert!(judged.requests >= 90);
    }

    #[test]
    fn errors_spread_over_identities_still_count() {
        let samples: Vec<(bool, Duration)> = (0..200).map(|i| (i % 5 == 0, MS)).collect();
        let judged = Stats::from_samples(&samples).without_heaviest();
        assert!(judged.error_ratio > 0.15, "{judged:?}");
    }

    #[test]
    fn a_single_identity_leaves_nothing_to_judge() {
        let w = Window::new(10);
        for _ in 0..500 {
            w.record(0, 42, true, MS);
        }
        assert_eq!(w.stats(0, 0).without_heaviest().requests, 0);
    }
}
