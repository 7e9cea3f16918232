//! The upstream client: HTTP/1.1 (TLS through rustls) to the projects, over one
//! connection [`pool`] per scheme + authority, so pools outlive every config change,
//! all within one [`budget`] of busy connections. HTTP/1.1 only, as nginx does
//! upstream: it keeps WebSocket upgrades simple and every Supabase service speaks it.
//! Each exchange runs in the request's own task ([`exchange`], [`body`]), over the
//! wire format in [`wire`] and [`chunked`].

mod body;
mod budget;
mod capped;
pub mod chunked;
mod conn;
mod exchange;
mod idle;
mod pool;
pub mod wire;

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::{Either, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

pub use body::UpstreamBody;
use budget::Budget;
pub use capped::{Arrived, Capped, ClientBody, TooLarge};
pub use conn::Conn;
pub use exchange::Failure;
use pool::{Pool, PoolSettings};
use wire::Forwarded;

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's settings, fixed for the process.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// An idle connection older than this is closed, never reused.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// Busy (or connecting) connections to all hosts together.
    pub max_connections: usize,
    /// Busy (or connecting) connections to one host.
    pub max_connections_per_host: usize,
    /// Trusted for https upstreams besides the webpki roots.
    pub extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// What the proxy sends upstream: the client's body, streamed, or nothing (shadow
/// reads).
pub type OutBody = Either<Capped, Empty<Bytes>>;

/// A request for the upstream (origin-form URI), and the headers the proxy sets on it.
pub struct Outbound {
    /// The request, its headers cleaned and translated.
    pub req: Request<OutBody>,
    /// `Host` and `X-Forwarded-*`, written after the request's own headers.
    pub forwarded: Forwarded,
}

/// How long a request waited for a connection (`max_connections` were busy, or its
/// host's `max_connections_per_host`): time the backend had no part in. Set on the
/// response only when the request waited.
#[derive(Debug, Clone, Copy)]
pub struct Queued(pub Duration);

/// The pools, one per scheme + authority.
type Pools = Vec<(Scheme, Authority, Arc<Pool>)>;

/// The shared upstream client.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    connector: HttpsConnector<HttpConnector>,
    settings: PoolSettings,
    /// Busy connections to all hosts together ([`budget`]).
    shared: Arc<tokio::sync::Semaphore>,
    /// Read on every request without a lock; written when a new host first appears.
    pools: ArcSwap<Pools>,
}

impl Upstream {
    /// Builds the client, and the task that closes expired idle connections (it ends
    /// with the last clone). Connect and pool settings are fixed for the process.
    pub fn new(cfg: &Settings) -> Upstream {
        let settings = PoolSettings {
            max_connections: cfg.max_connections_per_host,
            max_idle: cfg.pool_max_idle_per_host,
            idle_timeout: cfg.pool_idle_timeout,
        };
        let shared = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
        let inner = Arc::new(Inner { connector: connector(cfg), settings, shared, pools: ArcSwap::default() });
        tokio::spawn(reap(Arc::downgrade(&inner), (cfg.pool_idle_timeout / 4).clamp(REAP_MIN, REAP_MAX)));
        Upstream { inner }
    }

    /// Sends `out` to `scheme://authority`, waiting at most `timeout` from `now` for a
    /// connection and the response headers. The body then streams for as long as it
    /// takes. (`now` is the caller's: reading the clock once per request is enough.)
    /// `arrived`, when the request has a body, tells a late answer to an upload still
    /// coming (the client's doing) from a late upstream.
    pub fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        out: Outbound,
        timeout: Duration,
        now: tokio::time::Instant,
        arrived: Option<Arc<Arrived>>,
    ) -> Sending<impl Future<Output = Result<Response<UpstreamBody>, Failure>> + Send + 'static + use<>> {
        let pool = self.pool(scheme, authority);
        let sent = pool.send(out, now.into_std(), timeout);
        let timer = tokio::time::sleep_until(now + timeout);
        Sending { inner: sent, timer, arrived }
    }

    /// Each upstream host's connections: in use (or connecting), and idle. Read at
    /// scrape time, so that requests pay nothing for the gauges.
    pub fn usage(&self) -> Vec<(String, usize, usize)> {
        let pools = self.inner.pools.load();
        let usage = |(_, authority, pool): &(Scheme, Authority, Arc<Pool>)| {
            let (busy, idle) = pool.usage();
            (authority.to_string(), busy, idle)
        };
        pools.iter().map(usage).collect()
    }

    /// The pool for `scheme://authority`, made on first use. A linear scan: there is
    /// one host per backend, so a handful at most.
    fn pool(&self, scheme: &Scheme, authority: &Authority) -> Arc<Pool> {
        // The text compared first: the same backend's authority, byte for byte, is the
        // usual case, and `Authority`'s own comparison ignores case a byte at a time.
        let same = |a: &Authority| a.as_str() == authority.as_str() || a == authority;
        let found = |pools: &Pools| pools.iter().find(|(s, a, _)| s == scheme && same(a)).map(|p| p.2.clone());
        if let Some(pool) = found(&self.inner.pools.load()) {
            return pool;
        }
        let inner = &self.inner;
        let mut created = None;
        inner.pools.rcu(|pools| {
            let mut pools = Pools::clone(pools);
            let pool = found(&pools).unwrap_or_else(|| {
                let target =
                    Uri::from_parts(target_parts(scheme, authority)).expect("scheme, authority and / make a URI");
                let budget = Budget::new(inner.shared.clone(), inner.settings.max_connections);
                let pool = Arc::new(Pool::new(target, inner.connector.clone(), inner.settings, budget));
                pools.push((scheme.clone(), authority.clone(), pool.clone()));
                pool
            });
            created = Some(pool);
            pools
        });
        created.expect("rcu ran at least once")
    }
}

pin_project! {
    /// A request on its way upstream, until the response head (or the time-out).
    pub struct Sending<F> {
        #[pin]
        inner: F,
        #[pin]
        timer: Sleep,
        // Whether the client's body has all come: a late answer to an upload that is
        // still coming is the client's doing.
        arrived: Option<Arc<Arrived>>,
    }
}

impl<F: Future<Output = Result<Response<UpstreamBody>, Failure>>> Future for Sending<F> {
    type Output = Result<Response<UpstreamBody>, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answered) = this.inner.poll(cx) {
            return Poll::Ready(answered);
        }
        if this.timer.poll(cx).is_pending() {
            return Poll::Pending;
        }
        let upload_incomplete = this.arrived.as_ref().is_some_and(|a| !a.is_complete());
        Poll::Ready(Err(Failure::TimedOut { upload_incomplete }))
    }
}

const REAP_MIN: Duration = Duration::from_millis(100);
const REAP_MAX: Duration = Duration::from_secs(5);

async fn reap(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        for (_, _, pool) in inner.pools.load().iter() {
            pool.reap();
        }
    }
}

fn target_parts(scheme: &Scheme, authority: &Authority) -> http::uri::Parts {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    parts
}

fn connector(cfg: &Settings) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    let tls = tls_config(&cfg.extra_roots);
    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http)
}

/// A TLS client setup trusting the webpki roots and `extra_roots`.
pub fn tls_config(extra_roots: &[rustls_pki_types::CertificateDer<'static>]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    // Parsed at config load, so nothing is left to refuse here.
    let (_added, _ignored) = roots.add_parsable_certificates(extra_roots.iter().cloned());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
