//! The request path: identity → route decision → upstream → response, in
//! [`Proxy::handle`]. Everything it decides is delegated to pure functions
//! ([`crate::identity`], [`crate::routing`], [`headers`]); this module only wires them
//! to I/O and counts what happened.

pub mod headers;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus::IntGauge;

use crate::config::Config;
use crate::error::Error;
use crate::identity::{self, AuthReason, Identity};
use crate::metrics::Metrics;
use crate::routing::service::Service;
use crate::routing::{self, Decision, Rollout, Subject};
use crate::state::{Snapshot, State};
use crate::upstream::Upstream;

/// The body of every proxied response: the upstream's, streamed, or the proxy's own.
pub type Body = Either<Incoming, Full<Bytes>>;

/// The proxy: shared by every connection.
pub struct Proxy {
    /// Routing state, swapped on reload.
    pub state: Arc<State>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Open WebSocket tunnels.
    pub tunnels: tunnel::Tunnels,
    upstream: Upstream,
}

impl Proxy {
    /// A proxy over `state`, sending through `upstream`.
    pub fn new(state: Arc<State>, upstream: Upstream, metrics: Arc<Metrics>) -> Proxy {
        let tunnels = tunnel::Tunnels::new(metrics.tunnels.clone());
        Proxy {
            state,
            metrics,
            tunnels,
            upstream,
        }
    }

    /// Handles one request from `peer`, end to end. Never fails: errors become
    /// responses in the client's native shape.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let _in_flight = InFlight::enter(&self.metrics.in_flight);
        let snap = self.state.load();
        let service = Service::from_path(req.uri().path());
        let method = req.method().clone();
        let versioned = req.headers().contains_key("x-supabase-api-version");

        let (decision, refused) = route(&snap, service, req.headers(), req.uri().path());
        let result = match refused {
            Some(reason) => Err(Error::unauthorized(decision.backend, reason)),
            None => self.forward(req, &snap, &decision, peer).await,
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(err) => {
                if err.is_upstream() {
                    self.metrics.upstream_error(err.backend(), err.upstream_label());
                    tracing::warn!(backend = %err.backend(), service = service.as_str(), error = %err, "upstream failed");
                }
                let mut resp = err.into_response(service, versioned).map(Either::Right);
                headers::prepare_response(resp.headers_mut(), false, decision.backend);
                resp
            }
        };
        if let Some(p) = decision.set_cookie {
            let cookie = headers::cohort_cookie(&snap.config.identity.cookie_name, p);
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        self.metrics
            .observe(decision.backend, service, &method, resp.status(), started.elapsed());
        resp
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        snap: &Snapshot,
        decision: &Decision,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Error> {
        let backend = decision.backend;
        let upgrade = headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let target = &snap.config.backends.get(backend).url;
        headers::prepare_request(&mut parts, target, peer.ip(), upgrade)
            .map_err(|e| Error::bad_request(backend, e.to_string()))?;
        let mut resp = self
            .upstream
            .send(backend, Request::from_parts(parts, body), snap.config.upstream.timeout)
            .await?;
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client)) = (switching, client_upgrade) {
            self.tunnels.spawn(client, hyper::upgrade::on(&mut resp));
        }
        headers::prepare_response(resp.headers_mut(), switching, backend);
        Ok(resp.map(Either::Left))
    }
}

/// Decides where a request goes, from its headers and path under `snap`. A refused
/// bearer token still gets a decision (as an anonymous request) so the refusal is
/// counted against the backend it was meant for.
pub fn route(snap: &Snapshot, service: Service, headers: &HeaderMap, path: &str) -> (Decision, Option<AuthReason>) {
    let id = &snap.config.identity;
    let (identity, refused) = match identity::extract(headers, path, &id.sources, &id.header, &snap.verifier) {
        Ok(identity) => (identity, None),
        Err(reason) => (
            Identity {
                user: None,
                token: None,
            },
            Some(reason),
        ),
    };
    let subject = match &identity.user {
        Some((user, _)) => Subject::User(user),
        None => Subject::Anonymous {
            cookie: identity::cookie_percentile(headers, &id.cookie_name),
        },
    };
    let policy = snap.config.services.get(service);
    (
        routing::decide(&rollout(&snap.config), policy, subject, || fastrand::u8(0..100)),
        refused,
    )
}

/// The backend a user id goes to under `snap`, as the `route` command reports it.
pub fn route_user(snap: &Snapshot, service: Service, user: &str) -> Decision {
    let cfg = &snap.config;
    routing::decide(&rollout(cfg), cfg.services.get(service), Subject::User(user), || 0)
}

fn rollout(cfg: &Config) -> Rollout<'_> {
    Rollout {
        percentage: cfg.rollout.percentage,
        seed: &cfg.rollout.hash_seed,
        force: cfg.rollout.force,
        anonymous: cfg.identity.anonymous,
    }
}

/// Keeps the in-flight gauge right even when the client goes away mid-request and
/// the request future is dropped.
struct InFlight(IntGauge);

impl InFlight {
    fn enter(gauge: &IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
