//! A sliding window of request outcomes in one-second buckets, updated with atomics
//! so that recording on the request path takes no lock. Counts are approximate at a
//! bucket's turnover (a racing increment may land in the old second): fine for
//! comparing two error ratios.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in milliseconds (the last is unbounded).
const BOUNDS_MS: [u64; 14] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, u64::MAX];

struct Bucket {
    /// The second (since the guard's start) these counts belong to, plus one (0 = empty).
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BOUNDS_MS.len()],
}

/// Aggregated outcomes over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    latency: [u64; BOUNDS_MS.len()],
}

impl Stats {
    /// Errors over requests (0 when there were none).
    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }

    /// The 99th percentile latency, as the upper bound of its bucket.
    pub fn p99(&self) -> Duration {
        let total: u64 = self.latency.iter().sum();
        let rank = total - total / 100;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank && *n > 0 {
                return Duration::from_millis(BOUNDS_MS[i].min(60_000));
            }
        }
        Duration::ZERO
    }

    /// Stats from plain numbers (tests and the pure verdict).
    pub fn from_samples(samples: &[(bool, Duration)]) -> Stats {
        let w = Window::new(1);
        for (error, latency) in samples {
            w.record(0, *error, *latency);
        }
        w.stats(0)
    }
}

/// One window: `span` one-second buckets.
pub struct Window {
    buckets: Vec<Bucket>,
}

impl Window {
    /// A window of `span` seconds.
    pub fn new(span: usize) -> Window {
        let bucket = || Bucket {
            second: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        Window { buckets: (0..span.max(1)).map(|_| bucket()).collect() }
    }

    /// Records one outcome in second `now`.
    pub fn record(&self, now: u64, error: bool, latency: Duration) {
        let b = &self.buckets[(now % self.buckets.len() as u64) as usize];
        let tag = now + 1;
        let seen = b.second.load(Relaxed);
        if seen != tag && b.second.compare_exchange(seen, tag, Relaxed, Relaxed).is_ok() {
            b.requests.store(0, Relaxed);
            b.errors.store(0, Relaxed);
            b.latency.iter().for_each(|c| c.store(0, Relaxed));
        }
        b.requests.fetch_add(1, Relaxed);
        if error {
            b.errors.fetch_add(1, Relaxed);
        }
        let ms = latency.as_millis() as u64;
        let i = BOUNDS_MS.iter().position(|bound| ms <= *bound).unwrap_or(BOUNDS_MS.len() - 1);
        b.latency[i].fetch_add(1, Relaxed);
    }

    /// Sums the buckets of the last `span` seconds up to `now`.
    pub fn stats(&self, now: u64) -> Stats {
        let span = self.buckets.len() as u64;
        let mut s = Stats::default();
        for b in &self.buckets {
            let tag = b.second.load(Relaxed);
            if tag == 0 || tag > now + 1 || now + 1 - tag >= span {
                continue;
            }
            s.requests += b.requests.load(Relaxed);
            s.errors += b.errors.load(Relaxed);
            for (acc, c) in s.latency.iter_mut().zip(&b.latency) {
                *acc += c.load(Relaxed);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_seconds_fall_out_of_the_window() {
        let w = Window::new(3);
        w.record(0, true, Duration::from_millis(3));
        w.record(1, false, Duration::from_millis(3));
        w.record(2, false, Duration::from_millis(3));
        assert_eq!((w.stats(2).requests, w.stats(2).errors), (3, 1));
        assert_eq!((w.stats(3).requests, w.stats(3).errors), (2, 0));
        w.record(3, false, Duration::from_millis(3));
        assert_eq!(w.stats(3).requests, 3, "bucket of second 0 reused for second 3");
        assert_eq!(w.stats(10).requests, 0);
    }

    #[test]
    fn p99_and_ratio() {
        let mut samples = vec![(false, Duration::from_millis(4)); 99];
        samples.push((true, Duration::from_millis(900)));
        let s = Stats::from_samples(&samples);
        assert_eq!(s.p99(), Duration::from_millis(5));
        assert!((s.error_ratio() - 0.01).abs() < 1e-9);
        samples.extend(vec![(false, Duration::from_millis(900)); 5]);
        assert_eq!(Stats::from_samples(&samples).p99(), Duration::from_millis(1000));
    }
}
