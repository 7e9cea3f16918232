//! Prometheus metrics, in seconds and `_total` counters, with a `backend` label
//! everywhere (docs/operations.md). One explicit [`Registry`] per proxy, so tests and
//! several proxies in one process never share series.

use std::sync::OnceLock;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::backend::BackendId;
use crate::routing::service::Service;

/// Buckets sized for API calls: 1 ms … 10 s.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    series: Series,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    /// Waits for an upstream connection, by backend (index).
    upstream_queue: [Histogram; 2],
    /// Upstream connections by host and state, set at scrape time.
    upstream_connections: IntGaugeVec,
    /// Requests being handled now.
    pub in_flight: IntGauge,
    /// The effective rollout percentage.
    pub rollout_percentage: IntGauge,
    /// Live WebSocket tunnels.
    pub tunnels: IntGauge,
    /// Config reloads by `result` (success | failure).
    pub config_reloads: IntCounterVec,
    /// 1 when the last reload attempt succeeded.
    pub config_last_reload_success: IntGauge,
    translations: IntCounterVec,
    auth_rejections: IntCounterVec,
    guard_rollbacks: IntCounterVec,
    shadow: IntCounterVec,
    /// 1 while the canary guard holds the rollout back.
    pub guard_tripped: IntGauge,
    /// Requests that failed through their client, by kind: never the backends'.
    client_errors: IntCounterVec,
    /// Answers read ahead of their clients, by where (memory, file); set at scrape.
    response_buffer: IntGaugeVec,
    response_buffer_files: IntGauge,
    /// 1 with `[cluster]`: the other cluster metrics are the fleet's.
    pub cluster_enabled: IntGauge,
    /// `[cluster]`: the fleet's generation applied here.
    pub cluster_generation: IntGauge,
    /// `[cluster]`: 1 while this replica has a session with the store.
    pub cluster_connected: IntGauge,
    /// `[cluster]`: replicas that reported within three heartbeats.
    pub cluster_replicas: IntGauge,
    /// `[cluster]`: stored states refused as invalid.
    pub cluster_invalid_state: IntCounter,
    handoffs: IntCounterVec,
    handoff_phases: HistogramVec,
    /// Writes held at a handoff's fence; set at scrape.
    pub handoff_held: IntGauge,
    handoff_stranded: IntCounter,
    tls_not_after: IntGauge,
    tls_warning: IntGauge,
    tls_reloads: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    jwks_fetches: IntCounterVec,
    jwks_keys: IntGaugeVec,
}

/// The `kind` labels of `switchyard_client_errors_total`.
pub const CLIENT_ERROR_KINDS: [&str; 6] =
    ["malformed_body", "aborted_body", "slow_upload", "body_too_large", "slow_reader", "rapid_reset"];

/// Method labels; arbitrary methods share `OTHER` (bounded cardinality).
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const SERVICES: usize = Service::ALL.len();

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn class_index(s: StatusCode) -> usize {
    (usize::from(s.as_u16() / 100)).clamp(1, 5) - 1
}

/// Series resolved once and kept, so the request path does no label hashing.
struct Series {
    requests: Vec<OnceLock<IntCounter>>,
    duration: Vec<OnceLock<Histogram>>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("unique metric names");
        let requests = IntCounterVec::new(
            Opts::new("switchyard_requests_total", "Proxied requests by backend, service, method and status class."),
            &["backend", "service", "method", "status_class"],
        )
        .expect("valid");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request received to response headers sent, by backend and service.",
            )
            .buckets(BUCKETS.to_vec()),
            &["backend", "service"],
        )
        .expect("valid");
        let upstream_errors = IntCounterVec::new(
            Opts::new("switchyard_upstream_errors_total", "Upstream failures by backend and kind."),
            &["backend", "kind"],
        )
        .expect("valid");
        let upstream_queue = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_upstream_queue_seconds",
                "Time requests waited for an upstream connection (upstream.max_connections busy, or \
                 their host's max_connections_per_host), by backend. Only requests that waited are counted.",
            )
            .buckets(BUCKETS.to_vec()),
            &["backend"],
        )
        .expect("valid");
        reg(Box::new(upstream_queue.clone()));
        let upstream_queue = BackendId::ALL.map(|b| upstream_queue.with_label_values(&[b.as_str()]));
        let upstream_connections = IntGaugeVec::new(
            Opts::new(
                "switchyard_upstream_connections",
                "Upstream connections by host and state: busy (in use or connecting; all hosts together \
                 at most upstream.max_connections) or idle.",
            ),
            &["host", "state"],
        )
        .expect("valid");
        reg(Box::new(upstream_connections.clone()));
        let in_flight = IntGauge::new("switchyard_requests_in_flight", "Requests being handled.").expect("valid");
        let rollout_percentage =
            IntGauge::new("switchyard_rollout_percentage", "Effective V2 rollout percentage.").expect("valid");
        let tunnels = IntGauge::new("switchyard_websocket_tunnels", "Open WebSocket tunnels.").expect("valid");
        let config_reloads = IntCounterVec::new(
            Opts::new("switchyard_config_reloads_total", "Configuration reload attempts by result."),
            &["result"],
        )
        .expect("valid");
        let config_last_reload_success = IntGauge::new(
            "switchyard_config_last_reload_success",
            "1 if the last configuration reload succeeded, else 0.",
        )
        .expect("valid");
        let build_info =
            IntGaugeVec::new(Opts::new("switchyard_build_info", "Build information."), &["version"]).expect("valid");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        config_last_reload_success.set(1);
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        reg(Box::new(requests.clone()));
        reg(Box::new(duration.clone()));
        reg(Box::new(upstream_errors.clone()));
        reg(Box::new(in_flight.clone()));
        reg(Box::new(rollout_percentage.clone()));
        reg(Box::new(tunnels.clone()));
        reg(Box::new(config_reloads.clone()));
        reg(Box::new(config_last_reload_success.clone()));
        reg(Box::new(build_info));
        let translations = IntCounterVec::new(
            Opts::new("switchyard_translations_total", "Requests rewritten for the other project, by kind."),
            &["kind"],
        )
        .expect("valid");
        let auth_rejections = IntCounterVec::new(
            Opts::new("switchyard_auth_rejections_total", "Bearer tokens refused with 401, by reason."),
            &["reason"],
        )
        .expect("valid");
        reg(Box::new(translations.clone()));
        reg(Box::new(auth_rejections.clone()));
        let guard_rollbacks = IntCounterVec::new(
            Opts::new("switchyard_guard_rollbacks_total", "Automatic rollbacks by the canary guard, by reason."),
            &["reason"],
        )
        .expect("valid");
        let guard_tripped =
            IntGauge::new("switchyard_guard_tripped", "1 while the canary guard holds the rollout back.")
                .expect("valid");
        for reason in ["error_ratio", "latency"] {
            guard_rollbacks.with_label_values(&[reason]);
        }
        reg(Box::new(guard_rollbacks.clone()));
        let shadow = IntCounterVec::new(
            Opts::new("switchyard_shadow_total", "Shadow reads sent to the other backend, by service and result."),
            &["service", "result"],
        )
        .expect("valid");
        reg(Box::new(shadow.clone()));
        reg(Box::new(guard_tripped.clone()));
        let cluster_generation = IntGauge::new(
            "switchyard_cluster_generation",
            "The fleet's rollout generation this replica has applied ([cluster]; without it, changes since start).",
        )
        .expect("valid");
        let cluster_connected =
            IntGauge::new("switchyard_cluster_connected", "1 while this replica has a session with the fleet's store.")
                .expect("valid");
        let cluster_replicas =
            IntGauge::new("switchyard_cluster_replicas", "Replicas that reported to the fleet's store lately.")
                .expect("valid");
        let cluster_invalid_state = IntCounter::new(
            "switchyard_cluster_invalid_state_total",
            "Rollout states read from the fleet's store and refused as invalid.",
        )
        .expect("valid");
        let cluster_enabled =
            IntGauge::new("switchyard_cluster_enabled", "1 when this replica keeps its rollout state with a fleet.")
                .expect("valid");
        reg(Box::new(cluster_enabled.clone()));
        reg(Box::new(cluster_generation.clone()));
        reg(Box::new(cluster_connected.clone()));
        reg(Box::new(cluster_replicas.clone()));
        reg(Box::new(cluster_invalid_state.clone()));
        let handoffs = IntCounterVec::new(
            Opts::new("switchyard_handoffs_total", "Handoffs of a moving band, by result: done, aborted, forced."),
            &["result"],
        )
        .expect("valid");
        for result in ["done", "aborted", "forced"] {
            handoffs.with_label_values(&[result]);
        }
        let handoff_phases = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_handoff_phase_seconds",
                "Handoff phases: drain (old side's writes finishing), sync, and fenced (writes held, all told).",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["phase"],
        )
        .expect("valid");
        let handoff_held =
            IntGauge::new("switchyard_handoff_held_writes", "Writes held at a handoff's fence now.").expect("valid");
        reg(Box::new(handoffs.clone()));
        reg(Box::new(handoff_phases.clone()));
        reg(Box::new(handoff_held.clone()));
        let handoff_stranded = IntCounter::new(
            "switchyard_handoff_stranded_users_total",
            "Users whose v2 writes a forced rollback did not carry back to v1.",
        )
        .expect("valid");
        reg(Box::new(handoff_stranded.clone()));
        let tls_not_after = IntGauge::new(
            "switchyard_tls_certificate_not_after_seconds",
            "When the TLS certificate in force expires (seconds since the epoch).",
        )
        .expect("valid");
        let tls_warning = IntGauge::new(
            "switchyard_tls_certificate_warning_seconds",
            "How long before the certificate's expiry it is to be renewed (server.tls.expiry_warning_days).",
        )
        .expect("valid");
        let tls_reloads = IntCounterVec::new(
            Opts::new("switchyard_tls_reloads_total", "TLS certificate reloads, by result: success, failure."),
            &["result"],
        )
        .expect("valid");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "switchyard_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason: error, timeout.",
            ),
            &["reason"],
        )
        .expect("valid");
        for result in ["success", "failure"] {
            tls_reloads.with_label_values(&[result]);
        }
        for reason in ["error", "timeout"] {
            tls_handshake_failures.with_label_values(&[reason]);
        }
        reg(Box::new(tls_not_after.clone()));
        reg(Box::new(tls_warning.clone()));
        reg(Box::new(tls_reloads.clone()));
        reg(Box::new(tls_handshake_failures.clone()));
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "switchyard_jwks_fetches_total",
                "Fetches of a project's published signing keys, by backend and result: success, failure.",
            ),
            &["backend", "result"],
        )
        .expect("valid");
        let jwks_keys = IntGaugeVec::new(
            Opts::new("switchyard_jwks_keys", "Signing keys (ES256, RS256) a project publishes, as last fetched."),
            &["backend"],
        )
        .expect("valid");
        for b in BackendId::ALL {
            for result in ["success", "failure"] {
                jwks_fetches.with_label_values(&[b.as_str(), result]);
            }
        }
        reg(Box::new(jwks_fetches.clone()));
        reg(Box::new(jwks_keys.clone()));
        let client_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_client_errors_total",
                "Requests that failed through their client (a malformed, aborted, stalled or oversized upload; a \
                 client that took nothing of its answer for the send timeout), by kind. Never counted against a \
                 backend.",
            ),
            &["kind"],
        )
        .expect("valid");
        for kind in CLIENT_ERROR_KINDS {
            client_errors.with_label_values(&[kind]);
        }
        reg(Box::new(client_errors.clone()));
        let response_buffer = IntGaugeVec::new(
            Opts::new(
                "switchyard_response_buffer_bytes",
                "Bytes of upstream answers read ahead of their clients, by where they wait (memory, file).",
            ),
            &["where"],
        )
        .expect("valid");
        reg(Box::new(response_buffer.clone()));
        let response_buffer_files = IntGauge::new(
            "switchyard_response_buffer_files",
            "Temporary files holding answers read ahead of their clients.",
        )
        .expect("valid");
        reg(Box::new(response_buffer_files.clone()));
        let series = Series {
            requests: (0..2 * SERVICES * METHODS.len() * CLASSES.len()).map(|_| OnceLock::new()).collect(),
            duration: (0..2 * SERVICES).map(|_| OnceLock::new()).collect(),
        };
        Metrics {
            registry,
            series,
            requests,
            duration,
            upstream_errors,
            upstream_queue,
            upstream_connections,
            in_flight,
            rollout_percentage,
            tunnels,
            config_reloads,
            config_last_reload_success,
            translations,
            auth_rejections,
            guard_rollbacks,
            guard_tripped,
            shadow,
            client_errors,
            response_buffer,
            response_buffer_files,
            cluster_enabled,
            cluster_generation,
            cluster_connected,
            cluster_replicas,
            cluster_invalid_state,
            handoffs,
            handoff_phases,
            handoff_held,
            handoff_stranded,
            tls_not_after,
            tls_warning,
            tls_reloads,
            tls_handshake_failures,
            jwks_fetches,
            jwks_keys,
        }
    }

    /// Counts a fetch of `backend`'s signing keys; `keys` when it succeeded.
    pub fn jwks_fetched(&self, backend: BackendId, result: &str, keys: Option<usize>) {
        self.jwks_fetches.with_label_values(&[backend.as_str(), result]).inc();
        if let Some(n) = keys {
            self.jwks_keys.with_label_values(&[backend.as_str()]).set(n as i64);
        }
    }

    /// Counts one handoff by how it ended.
    pub fn handoff(&self, result: &str) {
        self.handoffs.with_label_values(&[result]).inc();
    }

    /// The TLS certificate in force: its expiry, and how long before it to renew.
    pub fn tls_certificate(&self, not_after: i64, warning: std::time::Duration) {
        self.tls_not_after.set(not_after);
        self.tls_warning.set(i64::try_from(warning.as_secs()).unwrap_or(i64::MAX));
    }

    /// Counts a certificate reload by result.
    pub fn tls_reload(&self, result: &str) {
        self.tls_reloads.with_label_values(&[result]).inc();
    }

    /// Counts a failed TLS handshake by reason.
    pub fn tls_handshake_failed(&self, reason: &str) {
        self.tls_handshake_failures.with_label_values(&[reason]).inc();
    }

    /// Counts users a forced rollback left behind on v2.
    pub fn handoff_stranded(&self, users: usize) {
        self.handoff_stranded.inc_by(users as u64);
    }

    /// Records how long a handoff phase took.
    pub fn handoff_phase(&self, phase: &str, took: std::time::Duration) {
        self.handoff_phases.with_label_values(&[phase]).observe(took.as_secs_f64());
    }

    /// Counts one request that failed through its client.
    pub fn client_error(&self, kind: &'static str) {
        self.client_errors.with_label_values(&[kind]).inc();
    }

    /// Sets the read-ahead gauges from `usage`.
    pub fn read_ahead(&self, usage: &crate::spool::Usage) {
        use std::sync::atomic::Ordering::Relaxed;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.response_buffer.with_label_values(&["memory"]).set(gauge(usage.memory.load(Relaxed)));
        self.response_buffer.with_label_values(&["file"]).set(gauge(usage.file.load(Relaxed)));
        self.response_buffer_files.set(gauge(usage.files.load(Relaxed)));
    }

    /// Counts one shadow read by its result.
    pub fn shadow(&self, service: Service, result: &str) {
        self.shadow.with_label_values(&[service.as_str(), result]).inc();
    }

    /// Counts one guard rollback and marks the guard tripped.
    pub fn guard_rollback(&self, reason: crate::guard::TripReason) {
        self.guard_rollbacks.with_label_values(&[reason.as_str()]).inc();
        self.guard_tripped.set(1);
    }

    /// Counts one translation.
    pub fn translated(&self, kind: crate::translate::Kind) {
        self.translations.with_label_values(&[kind.as_str()]).inc();
    }

    /// Counts one refused token.
    pub fn auth_rejected(&self, reason: crate::identity::AuthReason) {
        self.auth_rejections.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts one finished request.
    pub fn observe(&self, backend: BackendId, service: Service, method: &Method, status: StatusCode, took: Duration) {
        let (b, s, m, c) = (backend.index(), service.index(), method_index(method), class_index(status));
        let pair = b * SERVICES + s;
        self.series.requests[(pair * METHODS.len() + m) * CLASSES.len() + c]
            .get_or_init(|| {
                self.requests.with_label_values(&[backend.as_str(), service.as_str(), METHODS[m], CLASSES[c]])
            })
            .inc();
        self.series.duration[pair]
            .get_or_init(|| self.duration.with_label_values(&[backend.as_str(), service.as_str()]))
            .observe(took.as_secs_f64());
    }

    /// Records a request's wait for an upstream connection.
    pub fn queued(&self, backend: BackendId, waited: Duration) {
        self.upstream_queue[backend.index()].observe(waited.as_secs_f64());
    }

    /// Sets the upstream connection gauges from `usage` (host, busy, idle).
    pub fn upstream_usage(&self, usage: &[(String, usize, usize)]) {
        for (host, busy, idle) in usage {
            let gauge = |state| self.upstream_connections.with_label_values(&[host.as_str(), state]);
            gauge("busy").set(i64::try_from(*busy).unwrap_or(i64::MAX));
            gauge("idle").set(i64::try_from(*idle).unwrap_or(i64::MAX));
        }
    }

    /// Counts one upstream failure.
    pub fn upstream_error(&self, backend: BackendId, kind: &'static str) {
        self.upstream_errors.with_label_values(&[backend.as_str(), kind]).inc();
    }

    /// Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_series() {
        let m = Metrics::new();
        m.observe(BackendId::V2, Service::Rest, &Method::GET, StatusCode::OK, Duration::from_millis(3));
        m.observe(
            BackendId::V1,
            Service::Auth,
            &Method::from_bytes(b"PURGE").unwrap(),
            StatusCode::BAD_GATEWAY,
            Duration::ZERO,
        );
        m.upstream_error(BackendId::V1, "connect");
        let text = m.render();
        assert!(
            text.contains(
                r#"switchyard_requests_total{backend="v2",method="GET",service="rest",status_class="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"switchyard_requests_total{backend="v1",method="OTHER",service="auth",status_class="5xx"} 1"#
            )
        );
        assert!(text.contains(r#"switchyard_upstream_errors_total{backend="v1",kind="connect"} 1"#));
        assert!(text.contains("switchyard_request_duration_seconds_bucket"));
        assert!(text.contains(r#"switchyard_build_info{version=""#));
    }
}
