//! Shadow reads: for a fraction of GET/HEAD requests, a copy goes to the other
//! project off the request path, and the two answers are compared (Scientist/Diffy
//! style) so operations can check the data migration before moving users. The
//! client's response and latency never depend on it: concurrency and body size are
//! bounded, and a copy is dropped when saturated.

pub mod compare;
pub mod tap;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode, request};
use http_body_util::{BodyExt, Either, Empty, Limited};
use tokio::sync::Semaphore;

use crate::backend::BackendId;
use crate::forward::{self, ClientAddr};
use crate::identity::Token;
use crate::metrics::Metrics;
use crate::routing::service::Service;
use crate::state::Snapshot;
use crate::upstream::{Outbound, Upstream};
use tap::{Missed, Tap};

/// How one shadow comparison ended; the `result` label of `switchyard_shadow_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Match,
    Mismatch,
    /// The shadow request failed or timed out.
    Error,
    /// Not compared: saturated, a body over the limit, or the client went away.
    Dropped,
}

impl Outcome {
    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Mismatch => "mismatch",
            Outcome::Error => "error",
            Outcome::Dropped => "dropped",
        }
    }
}

/// Whether a request of `method` gets a shadow copy at `fraction` (reads only: a
/// write must never happen twice).
pub fn wanted(method: &Method, fraction: f64) -> bool {
    matches!(*method, Method::GET | Method::HEAD) && fraction > 0.0 && fastrand::f64() < fraction
}

/// Shadow machinery shared by all requests.
pub struct Shadow {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    upstream: Upstream,
    /// Mismatch log lines left this minute: (minute, count).
    log_minute: AtomicU64,
    log_count: AtomicU64,
}

/// What a shadow copy needs from the primary request.
pub struct Copy {
    pub head: request::Parts,
    pub token: Option<Token>,
    pub to: BackendId,
    pub service: Service,
    pub peer: ClientAddr,
}

impl Shadow {
    /// At most `max_concurrent` shadow requests at once (fixed for the process).
    pub fn new(max_concurrent: usize, metrics: Arc<Metrics>, upstream: Upstream) -> Shadow {
        Shadow {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            metrics,
            upstream,
            log_minute: AtomicU64::new(0),
            log_count: AtomicU64::new(0),
        }
    }

    /// Sends `copy` to the other project in the background; the returned tap feeds it
    /// the primary body. `None` (and counted as dropped) when saturated.
    pub fn start(self: &Arc<Self>, snap: Arc<Snapshot>, copy: Copy, primary: StatusCode) -> Option<Tap> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.shadow(copy.service, Outcome::Dropped.as_str());
            return None;
        };
        let (tap, primary_body) = Tap::new(snap.config.shadow.max_body_bytes);
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (service, path, to) = (copy.service, copy.head.uri.path().to_string(), copy.to);
            let (outcome, shadow_status) = this.compare(&snap, copy, primary, primary_body).await;
            this.metrics.shadow(service, outcome.as_str());
            if outcome == Outcome::Mismatch && this.may_log(snap.config.shadow.mismatch_log_per_minute) {
                // The path only: queries and headers may carry user data or tokens.
                tracing::warn!(service = service.as_str(), %path, shadow = %to, primary = primary.as_u16(), shadow_status, "shadow read mismatch");
            }
        });
        Some(tap)
    }

    async fn compare(
        &self,
        snap: &Snapshot,
        copy: Copy,
        primary: StatusCode,
        primary_body: tokio::sync::oneshot::Receiver<Result<Bytes, Missed>>,
    ) -> (Outcome, u16) {
        let cfg = &snap.config.shadow;
        let mut parts = copy.head;
        let survey = forward::Survey::of(&parts.headers);
        let Ok((_, forwarded)) = forward::prepare(snap, &mut parts, copy.to, copy.token.as_ref(), &copy.peer, survey)
        else {
            return (Outcome::Error, 0);
        };
        let out = Outbound { req: Request::from_parts(parts, Either::Right(Empty::<Bytes>::new())), forwarded };
        let target = &snap.config.backends.get(copy.to).url;
        let Ok(resp) = self
            .upstream
            .send(&target.scheme, &target.authority, out, cfg.timeout, tokio::time::Instant::now(), None)
            .await
        else {
            return (Outcome::Error, 0);
        };
        let status = resp.status().as_u16();
        let body =
            tokio::time::timeout(cfg.timeout, Limited::new(resp.into_body(), cfg.max_body_bytes).collect()).await;
        let shadow_body = match body {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return (Outcome::Dropped, status),
            _ => return (Outcome::Error, status),
        };
        let Ok(Ok(Ok(primary_body))) = tokio::time::timeout(cfg.timeout, primary_body).await else {
            return (Outcome::Dropped, status);
        };
        let same = compare::same((primary.as_u16(), &primary_body), (status, &shadow_body), &cfg.ignore_fields);
        (if same { Outcome::Match } else { Outcome::Mismatch }, status)
    }

    /// Rate limit for mismatch log lines (`shadow.mismatch_log_per_minute`).
    fn may_log(&self, limit: u32) -> bool {
        let minute = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() / 60;
        if self.log_minute.swap(minute, Relaxed) != minute {
            self.log_count.store(0, Relaxed);
        }
        self.log_count.fetch_add(1, Relaxed) < u64::from(limit)
    }
}
