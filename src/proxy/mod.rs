//! The request path: identity → route decision → upstream → response, in
//! [`Proxy::handle`]. Everything it decides is delegated to pure functions
//! ([`crate::identity`], [`crate::routing`], [`crate::forward`]); this module only wires them
//! to I/O and counts what happened.

mod handling;
pub mod route;
pub mod tunnel;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{TryFutureExt, future};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use crate::backend::BackendId;
use crate::error::{Error, Kind as ErrorKind};
pub use crate::forward::ClientAddr;
use crate::forward::{self, headers};
use crate::guard::{Guard, Outcome};
use crate::handoff::fence::{Fence, Write, Writes};
use crate::handoff::lease::Lease;
use crate::handoff::stranded::Writers;
use crate::identity::{AuthReason, Signature, Token};
use crate::metrics::Metrics;
use crate::routing::{self, service::Service};
use crate::shadow::{self, Shadow, tap::Tapped};
use crate::spool::{self, ReadAhead};
use crate::state::{Snapshot, State};
use crate::translate;
use crate::translate::Applied;
use crate::upstream::{Capped, ClientBody, Outbound, Queued, Upstream, UpstreamBody};
pub use handling::Handling;
pub use route::{Route, route, route_user};

/// The body of every proxied response: the upstream's, streamed (and perhaps tapped
/// for a shadow comparison), or the proxy's own.
pub type Body = Either<Tapped, Full<Bytes>>;

/// The proxy: shared by every connection.
pub struct Proxy {
    /// Routing state, swapped on reload.
    pub state: Arc<State>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Open WebSocket tunnels.
    pub tunnels: tunnel::Tunnels,
    /// Outcome windows the canary guard judges.
    pub guard: Arc<Guard>,
    shadow: Arc<Shadow>,
    upstream: Upstream,
    /// Answers read ahead of slow clients.
    read_ahead: ReadAhead,
    /// Requests being handled: what load shedding reads (the gauge is set from it
    /// at scrape time).
    in_flight: AtomicUsize,
    /// Writes in flight per user percentile (what a handoff's drain waits on).
    pub writes: Arc<Writes>,
    /// Users that wrote on v2 (what a forced rollback leaves behind).
    pub wrote_v2: Arc<Writers>,
    /// This replica's lease on the fleet's store (holds writes when it runs out).
    pub lease: Arc<Lease>,
}

impl Proxy {
    /// A proxy over `state`, sending through `upstream`.
    pub fn new(state: Arc<State>, upstream: Upstream, metrics: Arc<Metrics>) -> Proxy {
        let tunnels = tunnel::Tunnels::new(metrics.tunnels.clone());
        let config = &state.load().config;
        let guard = Arc::new(Guard::new(config.guard.window));
        // Shadow copies have a client of their own, with as many connections as they may
        // have requests in flight: they never take a connection from live traffic.
        let mut shadow_upstream = config.upstream.clone();
        shadow_upstream.max_connections = config.shadow.max_concurrent.max(1);
        shadow_upstream.max_connections_per_host = shadow_upstream.max_connections;
        shadow_upstream.pool_max_idle_per_host = shadow_upstream.max_connections;
        let shadow_upstream = Upstream::new(&shadow_upstream.client());
        let shadow = Arc::new(Shadow::new(config.shadow.max_concurrent, metrics.clone(), shadow_upstream));
        let read_ahead = ReadAhead::new(read_ahead_limits(config));
        Proxy {
            state,
            metrics,
            tunnels,
            guard,
            shadow,
            upstream,
            read_ahead,
            in_flight: AtomicUsize::new(0),
            writes: Arc::default(),
            wrote_v2: Arc::default(),
            lease: Arc::new(Lease::new(config.cluster.is_some() && config.handoff.is_some(), max_hold(config))),
        }
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The Prometheus text of every metric, the upstream connection gauges read now.
    pub fn metrics_text(&self) -> String {
        self.metrics.upstream_usage(&self.upstream.usage());
        self.metrics.read_ahead(self.read_ahead.usage());
        self.metrics.in_flight.set(i64::try_from(self.in_flight.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        let held = self.state.load().fence.as_ref().map_or(0, |f| f.held());
        self.metrics.handoff_held.set(i64::try_from(held).unwrap_or(i64::MAX));
        self.metrics.render()
    }

    /// Handles one request from `client`, end to end: the decisions are made here, before
    /// anything is awaited; the returned future only waits for the upstream. It never
    /// fails: errors become responses in the client's native shape.
    ///
    /// The request head is encoded for the upstream and dropped before this returns.
    /// That matters: hyper parses header values as slices of the connection's read
    /// buffer, and while any is alive it reads the next bytes into a fresh buffer
    /// instead of reusing that one in place.
    pub fn handle(
        self: Arc<Self>,
        req: Request<ClientBody>,
        client: &Client,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static + use<> {
        match self.clone().start_handling(req, client, true, true) {
            Start::Now(handling) => future::Either::Left(handling),
            Start::Wait(wait, req) => future::Either::Right(Box::pin(self.waiting(wait, req, client.addr.clone()))),
        }
    }

    /// A request that waits before it is started: for a handoff's fence to open, or
    /// for its token's issuer's keys to be fetched again (once).
    async fn waiting(
        self: Arc<Self>,
        mut wait: Wait,
        mut req: Request<ClientBody>,
        addr: ClientAddr,
    ) -> Result<Response<Body>, Infallible> {
        loop {
            match wait {
                Wait::Fence(fence) => return self.held(fence, req, addr).await,
                Wait::Keys(project) => self.state.keyring().refetch(project).await,
            }
            // Checked again, without waiting for keys a second time.
            match self.clone().start_handling(req, &Client { addr: addr.clone() }, true, false) {
                Start::Now(handling) => return handling.await,
                Start::Wait(w, r) => (wait, req) = (w, r),
            }
        }
    }

    /// Routes the request and starts it, unless a handoff's fence holds it (when
    /// `fenced`: a write from a user whose data is moving), or (when `keys_wait`) its
    /// token names a key its issuer may publish by now.
    fn start_handling(
        self: Arc<Self>,
        req: Request<ClientBody>,
        client: &Client,
        fenced: bool,
        keys_wait: bool,
    ) -> Start<impl Future<Output = Result<Response<UpstreamBody>, Error>> + Send + 'static + use<>> {
        let started = Instant::now();
        let mut snap = self.state.load();
        let service = Service::from_path(req.uri().path());
        let method = req.method().clone();
        // One pass over the header names, for what would otherwise be looked up by name.
        let survey = headers::Survey::of(req.headers());

        let (route, write) = loop {
            let route = route::route(&snap, service, req.headers(), req.uri());
            if let (true, Some(AuthReason::UnknownKey(project))) = (keys_wait, route.refused) {
                return Start::Wait(Wait::Keys(project), req);
            }
            // A write of a user (or routed by a percentile): counted while in flight
            // (a handoff's drain waits for its band's), or held while its band moves.
            let w = Write { percentile: route.decision.percentile, who: route.who };
            if !is_write(&method) || w == (Write { percentile: None, who: None }) {
                break (route, None);
            }
            // Counted first, then the snapshot checked again: a handoff fences, then
            // reads the counts, so either it waits for this write or this write sees
            // its fence. A snapshot swapped meanwhile means routing again.
            self.writes.start(w);
            let now = self.state.load();
            if !Arc::ptr_eq(&now, &snap) {
                self.writes.end(w);
                snap = now;
                continue;
            }
            if fenced {
                // A handoff's fence; or, in a fleet, this replica's lease run out.
                let fence = snap.fence.as_ref().filter(|f| f.holds(w)).cloned().or_else(|| self.lease.holding());
                if let Some(fence) = fence {
                    self.writes.end(w);
                    return Start::Wait(Wait::Fence(fence), req);
                }
            }
            break (route, Some(w));
        };
        let decision = route.decision;
        if let (Some(_), Some(user), BackendId::V2) = (write, &route.user, decision.backend) {
            self.wrote_v2.record(user.clone(), decision.percentile);
        }
        let done = Done {
            proxy: InFlight::enter(self, write),
            snap,
            started,
            method,
            service,
            versioned: survey.versioned(),
            backend: decision.backend,
            set_cookie: decision.set_cookie,
            who: route.who.unwrap_or_else(|| route::who(client.addr.as_bytes())),
        };
        let proxy = &done.proxy.0;
        let exchange =
            proxy.admit(&done.snap, &route, &req).and_then(|()| proxy.start(req, survey, &route, client, &done));
        Start::Now(Handling::new(exchange, done))
    }

    /// A write held at a handoff's fence: sent on when the fence opens (to whichever
    /// side the routing then says, unless another fence holds it), or answered 503
    /// once held for the first fence's `max_hold` in all.
    async fn held(
        self: Arc<Self>,
        mut fence: Arc<Fence>,
        mut req: Request<ClientBody>,
        addr: ClientAddr,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let deadline = started + fence.max_hold;
        let (service, method) = (Service::from_path(req.uri().path()), req.method().clone());
        let versioned = headers::Survey::of(req.headers()).versioned();
        let client = Client { addr };
        while fence.hold().released(deadline).await.is_some() {
            match self.clone().start_handling(req, &client, true, false) {
                Start::Now(handling) => return handling.await,
                Start::Wait(Wait::Fence(again), r) => (fence, req) = (again, r),
                Start::Wait(Wait::Keys(_), r) => req = r,
            }
        }
        let backend = fence.band.from;
        let resp = self.error_response(Error::held_too_long(backend), service, versioned);
        self.metrics.observe(backend, service, &method, resp.status(), started.elapsed());
        Ok(resp)
    }

    /// Whether the request may go upstream at all: a target that cannot be routed,
    /// load shedding, declared body size, a refused bearer token.
    fn admit<B>(&self, snap: &Snapshot, route: &Route, req: &Request<B>) -> Result<(), Error> {
        let (backend, limits) = (route.decision.backend, &snap.config.limits);
        if let Some(refusal) = unroutable(req) {
            return Err(Error::bad_request(backend, refusal));
        }
        if self.in_flight.load(Ordering::Relaxed) > limits.max_in_flight {
            return Err(Error::overloaded(backend));
        }
        if declared_too_large(req, limits.max_body_bytes) {
            return Err(Error::too_large(backend, limits.max_body_bytes.unwrap_or(0)));
        }
        if let Some(reason) = route.refused {
            self.metrics.auth_rejected(reason);
            return Err(Error::unauthorized(backend, reason));
        }
        // A token that would have to be re-signed for `backend`, but could not be
        // verified for want of its issuer's keys: never re-signed unverified.
        if let Some(Token::Jwt { issuer: Some(from), signature: Signature::KeysUnavailable, .. }) = &route.token
            && *from != backend
        {
            return Err(Error::keys_unavailable(backend, *from));
        }
        Ok(())
    }

    /// The one place a request-path error becomes a response (counted and logged).
    fn error_response(&self, err: Error, service: Service, versioned: bool) -> Response<Body> {
        if err.kind() == ErrorKind::CrossSchemaEmbed {
            self.metrics.translated(translate::Kind::EmbedRejected);
        }
        if let Some(kind) = err.client_label() {
            self.metrics.client_error(kind);
        }
        if err.is_upstream() {
            self.metrics.upstream_error(err.backend(), err.upstream_label());
            tracing::warn!(backend = %err.backend(), service = service.as_str(), error = %err, "upstream failed");
        }
        let backend = err.backend();
        let mut resp = err.into_response(service, versioned).map(Either::Right);
        headers::prepare_response(resp.headers_mut(), false, backend);
        resp
    }

    /// Turns the request into the one for its backend and starts sending it.
    fn start(
        &self,
        mut req: Request<ClientBody>,
        survey: headers::Survey,
        route: &Route,
        client: &Client,
        done: &Done,
    ) -> Result<(impl Future<Output = Result<Response<UpstreamBody>, Error>> + Send + 'static + use<>, After), Error>
    {
        let (snap, service, now) = (&done.snap, done.service, done.started);
        let backend = route.decision.backend;
        let upgrade = survey.upgrade();
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let shadow = (!upgrade && shadow::wanted(&parts.method, snap.config.shadow.fraction)).then(|| {
            Box::new(shadow::Copy {
                head: clone_head(&parts),
                token: route.token.clone(),
                to: backend.other(),
                service,
                peer: client.addr.clone(),
            })
        });
        let (applied, forwarded) =
            forward::prepare(snap, &mut parts, backend, route.token.as_ref(), &client.addr, survey)?;
        let (body, arrived) = Capped::new(body, snap.config.limits.max_body_bytes);
        let req = Request::from_parts(parts, Either::Left(body));
        let out = Outbound { req, forwarded };
        let target = &snap.config.backends.get(backend).url;
        let after = After { client_upgrade, applied, shadow };
        let timeout = snap.config.upstream.timeout;
        let sent = self.upstream.send(&target.scheme, &target.authority, out, timeout, now, arrived);
        Ok((sent.map_err(move |failure| Error::upstream(backend, failure, timeout)), after))
    }

    /// The upstream's response, made the client's: tunnel started for an upgrade,
    /// headers cleaned and translated back, shadow comparison fed.
    fn answer(
        &self,
        snap: &Arc<Snapshot>,
        backend: BackendId,
        after: After,
        mut resp: Response<UpstreamBody>,
    ) -> Response<Body> {
        let After { client_upgrade, mut applied, shadow } = after;
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client)) = (switching, client_upgrade)
            && let Some(upstream) = resp.body_mut().take_upgraded()
        {
            self.tunnels.spawn(client, upstream);
        }
        headers::prepare_response(resp.headers_mut(), switching, backend);
        snap.translator.response(resp.headers_mut(), &mut applied);
        for kind in applied.kinds {
            self.metrics.translated(kind);
        }
        let tap = shadow.and_then(|copy| self.shadow.start(snap.clone(), *copy, resp.status()));
        resp.map(|body| Either::Left(Tapped::new(self.read_ahead.spool(body), tap)))
    }
}

/// The read-ahead caps, fixed for the process.
fn read_ahead_limits(config: &crate::config::Config) -> spool::Limits {
    let b = &config.upstream.buffer;
    spool::Limits {
        memory_per_answer: b.memory_per_answer,
        memory_total: b.memory_total,
        file_per_answer: b.file_per_answer,
        file_total: b.file_total,
        dir: b.dir.clone(),
        send_timeout: config.limits.send_timeout,
    }
}

/// The client connection a request came on.
pub struct Client {
    /// Its address, for `X-Forwarded-For`.
    pub addr: ClientAddr,
}

/// What a request sent upstream still needs when the answer comes.
#[derive(Default)]
struct After {
    client_upgrade: Option<OnUpgrade>,
    applied: Applied,
    shadow: Option<Box<shadow::Copy>>,
}

/// Everything that makes the final response and records it, whatever happened.
struct Done {
    /// The proxy, counted in flight until this is dropped.
    proxy: InFlight,
    snap: Arc<Snapshot>,
    started: Instant,
    method: Method,
    service: Service,
    versioned: bool,
    backend: BackendId,
    set_cookie: Option<u8>,
    /// Whose request it is, for the guard: the user, or the client's address.
    who: u64,
}

impl Done {
    fn finish(self, result: Result<(Response<UpstreamBody>, After), Error>) -> Response<Body> {
        let Done { proxy, snap, started, method, service, versioned, backend, set_cookie, who } = self;
        let proxy = &proxy.0;
        let result = result.map(|(resp, after)| proxy.answer(&snap, backend, after, resp));
        // The guard judges the backends, not the clients' requests: an answer, or an
        // upstream failure (a request refused before it went out is neither).
        let judged = result.as_ref().map_or_else(Error::is_upstream, |_| true);
        let mut resp = result.unwrap_or_else(|err| proxy.error_response(err, service, versioned));
        if let Some(p) = set_cookie {
            let cookie = headers::cohort_cookie(&snap.config.identity.cookie_name, p);
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        let now = Instant::now();
        let took = now.saturating_duration_since(started);
        // A wait for a connection (the per-host cap) is the proxy's, not the backend's:
        // under load it falls on the busier backend and would bias the comparison.
        let queued = resp.extensions_mut().remove::<Queued>().map_or(Duration::ZERO, |q| q.0);
        if !queued.is_zero() {
            proxy.metrics.queued(backend, queued);
        }
        if judged {
            let outcome = Outcome { status: resp.status(), latency: took.saturating_sub(queued), who };
            proxy.guard.record(backend, service, outcome, now);
        }
        proxy.metrics.observe(backend, service, &method, resp.status(), took);
        resp
    }
}

/// Why a request cannot be routed at all: a tunnel request, a server-wide target, or a
/// path the upstream would resolve elsewhere than where it is routed.
fn unroutable<B>(req: &Request<B>) -> Option<&'static str> {
    if req.method() == Method::CONNECT {
        return Some("CONNECT is not supported: this is a reverse proxy");
    }
    let path = req.uri().path();
    if path == "*" {
        return Some("a request for the whole server ('*') cannot be forwarded");
    }
    routing::path::has_dot_segments(path).then_some("the path has '.' or '..' segments")
}

/// Whether the request declares a body longer than `limit`.
fn declared_too_large<B>(req: &Request<B>, limit: Option<u64>) -> bool {
    let Some(limit) = limit else { return false };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| crate::upstream::wire::parse_length(v.as_bytes()));
    declared.is_some_and(|n| n > limit)
}

/// A copy of a request head without its extensions (which hold the connection's
/// upgrade handle and are not clonable).
fn clone_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut b = Request::builder().method(parts.method.clone()).uri(parts.uri.clone()).version(parts.version);
    if let Some(h) = b.headers_mut() {
        *h = parts.headers.clone();
    }
    b.body(()).expect("parts of a valid request").into_parts().0
}

/// The proxy, held by a request in flight: keeps the in-flight gauge right even when
/// the client goes away mid-request and the request future is dropped.
struct InFlight(Arc<Proxy>, Option<Write>);

impl InFlight {
    /// One more request in flight; `write`: a write, already counted in
    /// [`Proxy::writes`] (this ends it).
    fn enter(proxy: Arc<Proxy>, write: Option<Write>) -> InFlight {
        proxy.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(proxy, write)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(w) = self.1 {
            self.0.writes.end(w);
        }
    }
}

/// What [`Proxy::start_handling`] did with a request.
enum Start<F> {
    /// Started: the future answers it.
    Now(Handling<F>),
    /// To be started after a wait.
    Wait(Wait, Request<ClientBody>),
}

/// What a request waits for before it starts.
enum Wait {
    /// A handoff's fence to open.
    Fence(Arc<Fence>),
    /// A fetch of this project's signing keys.
    Keys(BackendId),
}

/// How long a write may be held at a fence.
fn max_hold(config: &crate::config::Config) -> Duration {
    config.handoff.as_ref().map_or(Duration::from_secs(10), |h| h.max_hold)
}

/// Whether `method` may change data (what a handoff fences).
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}
