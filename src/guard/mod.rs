//! The canary guard: compares v2 with v1, per service, over a sliding window, and says
//! when v2 is worse beyond the thresholds (design: Flagger/Argo-style analysis). The
//! verdict is a pure function; [`Guard`] only keeps the windows.

pub mod window;

use std::time::Duration;

use http::StatusCode;
use serde::Serialize;

use crate::backend::{BackendId, PerBackend};
use crate::config::safety::GuardConfig;
use crate::routing::service::Service;
use window::{Stats, Window};

/// Why the guard tripped; the `reason` label of `switchyard_guard_rollbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripReason {
    /// v2's error ratio exceeds v1's by more than `max_error_ratio_increase`.
    ErrorRatio,
    /// v2's p99 exceeds `max_p99_ratio` times v1's.
    Latency,
}

impl TripReason {
    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            TripReason::ErrorRatio => "error_ratio",
            TripReason::Latency => "latency",
        }
    }
}

/// A trip: what, where, and the numbers that decided it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Trip {
    pub reason: TripReason,
    pub service: Service,
    pub detail: String,
}

/// The verdict on one service's window, each side judged without its heaviest
/// identity ([`Stats::without_heaviest`]). `None`: healthy, or not enough traffic on
/// either side to tell.
pub fn verdict(v1: &Stats, v2: &Stats, cfg: &GuardConfig) -> Option<(TripReason, String)> {
    let (v1, v2) = (v1.without_heaviest(), v2.without_heaviest());
    if v1.requests < cfg.min_requests || v2.requests < cfg.min_requests {
        return None;
    }
    let (e1, e2) = (v1.error_ratio, v2.error_ratio);
    if e2 - e1 > cfg.max_error_ratio_increase {
        return Some((
            TripReason::ErrorRatio,
            format!("error ratio v2 {e2:.3} vs v1 {e1:.3} over {} + {} requests", v2.requests, v1.requests),
        ));
    }
    let (p1, p2) = (v1.p99, v2.p99);
    if p2.saturating_sub(p1) >= cfg.min_p99_increase
        && p2.as_secs_f64() > cfg.max_p99_ratio * p1.as_secs_f64().max(0.001)
    {
        return Some((TripReason::Latency, format!("p99 v2 {p2:?} vs v1 {p1:?}")));
    }
    None
}

/// One request's outcome, as the guard weighs it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub status: StatusCode,
    /// From the request's arrival to its answer, less any wait for a connection.
    pub latency: Duration,
    /// Whose request it was (a hash of the identity).
    pub who: u64,
}

/// Sliding windows of outcomes, per service and backend.
pub struct Guard {
    windows: Vec<PerBackend<Window>>,
    start: tokio::time::Instant,
    /// The first second judged: outcomes before it were acted on already.
    from: std::sync::atomic::AtomicU64,
}

impl Guard {
    /// Windows of `span` (fixed for the process; a reload changing it applies at restart).
    pub fn new(span: Duration) -> Guard {
        let secs = span.as_secs().max(1) as usize;
        let windows =
            Service::ALL.iter().map(|_| PerBackend { v1: Window::new(secs), v2: Window::new(secs) }).collect();
        Guard { windows, start: tokio::time::Instant::now(), from: Default::default() }
    }

    /// Judges only what happens from the next second on: after a rollback, and when
    /// an operator clears it (else the failures it already acted on would trip it
    /// again at once).
    pub fn forget(&self) {
        self.from.store(self.now() + 1, std::sync::atomic::Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.second(tokio::time::Instant::now())
    }

    fn second(&self, at: tokio::time::Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs()
    }

    /// Records one proxied request's outcome, `at` its end, for identity `who` (a
    /// hash of the user id or client address). 5xx (the proxy's own 502/504 for
    /// upstream failures included) counts as an error.
    pub fn record(&self, backend: BackendId, service: Service, outcome: Outcome, at: tokio::time::Instant) {
        let w = self.windows[service.index()].get(backend);
        w.record(self.second(at), outcome.who, outcome.status.is_server_error(), outcome.latency);
    }

    /// The first service on which v2 is worse than v1, if any.
    pub fn evaluate(&self, cfg: &GuardConfig) -> Option<Trip> {
        let (now, from) = (self.now(), self.from.load(std::sync::atomic::Ordering::Relaxed));
        Service::ALL.iter().find_map(|s| {
            let w = &self.windows[s.index()];
            verdict(&w.v1.stats(now, from), &w.v2.stats(now, from), cfg).map(|(reason, detail)| Trip {
                reason,
                service: *s,
                detail,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::safety::RollbackTo;

    fn cfg() -> GuardConfig {
        GuardConfig {
            enabled: true,
            window: Duration::from_secs(60),
            min_requests: 50,
            max_error_ratio_increase: 0.05,
            max_p99_ratio: 2.0,
            min_p99_increase: Duration::from_millis(25),
            rollback_to: RollbackTo::Zero,
        }
    }

    fn stats(n: usize, errors: usize, ms: u64) -> Stats {
        let samples: Vec<(bool, Duration)> = (0..n).map(|i| (i < errors, Duration::from_millis(ms))).collect();
        Stats::from_samples(&samples)
    }

    #[test]
    fn trips_on_errors_and_latency_only_with_enough_traffic() {
        let c = cfg();
        assert_eq!(verdict(&stats(100, 0, 5), &stats(100, 20, 5), &c).unwrap().0, TripReason::ErrorRatio);
        assert_eq!(verdict(&stats(100, 0, 5), &stats(100, 0, 200), &c).unwrap().0, TripReason::Latency);
        assert_eq!(verdict(&stats(100, 0, 5), &stats(49, 49, 900), &c), None, "under min_requests");
        assert_eq!(verdict(&stats(49, 0, 5), &stats(100, 50, 900), &c), None, "v1 under min_requests");
        assert_eq!(verdict(&stats(100, 30, 400), &stats(100, 32, 400), &c), None, "equally bad");
        assert_eq!(verdict(&stats(100, 0, 5), &stats(100, 4, 9), &c), None, "within thresholds");
        assert_eq!(verdict(&stats(100, 0, 1), &stats(100, 0, 8), &c), None, "8x, but by a few milliseconds");
    }

    #[tokio::test(start_paused = true)]
    async fn windows_forget_old_failures() {
        let g = Guard::new(Duration::from_secs(10));
        let outcome = |status, who| Outcome { status, latency: Duration::from_millis(3), who };
        for who in 0..60 {
            let now = tokio::time::Instant::now();
            g.record(BackendId::V1, Service::Rest, outcome(StatusCode::OK, who), now);
            g.record(BackendId::V2, Service::Rest, outcome(StatusCode::BAD_GATEWAY, who), now);
        }
        let trip = g.evaluate(&cfg()).unwrap();
        assert_eq!((trip.reason, trip.service), (TripReason::ErrorRatio, Service::Rest));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(g.evaluate(&cfg()), None);
    }
}
