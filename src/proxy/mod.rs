//! The request path: identity → route decision → upstream → response, in
//! [`Proxy::handle`]. Everything it decides is delegated to pure functions
//! ([`crate::identity`], [`crate::routing`], [`headers`]); this module only wires them
//! to I/O and counts what happened.

pub mod headers;
pub mod route;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus::IntGauge;

use crate::error::{Error, Kind as ErrorKind};
use crate::guard::Guard;
use crate::metrics::Metrics;
use crate::routing::service::Service;
use crate::state::{Snapshot, State};
use crate::translate;
use crate::upstream::Upstream;
pub use route::{Route, route, route_user};

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
    /// Outcome windows the canary guard judges.
    pub guard: Arc<Guard>,
    upstream: Upstream,
}

impl Proxy {
    /// A proxy over `state`, sending through `upstream`.
    pub fn new(state: Arc<State>, upstream: Upstream, metrics: Arc<Metrics>) -> Proxy {
        let tunnels = tunnel::Tunnels::new(metrics.tunnels.clone());
        let guard = Arc::new(Guard::new(state.load().config.guard.window));
        Proxy { state, metrics, tunnels, guard, upstream }
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

        let route = route::route(&snap, service, req.headers(), req.uri());
        let decision = route.decision;
        let result = match route.refused {
            Some(reason) => {
                self.metrics.auth_rejected(reason);
                Err(Error::unauthorized(decision.backend, reason))
            }
            None => {
                let result = self.forward(req, &snap, &route, peer).await;
                // The guard judges the backends, not the clients' requests.
                if result.as_ref().map_or_else(|e| e.is_upstream(), |_| true) {
                    let status = result.as_ref().map_or_else(|e| e.status(), |r| r.status());
                    self.guard.record(decision.backend, service, status, started.elapsed());
                }
                result
            }
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(err) => {
                if err.kind() == ErrorKind::CrossSchemaEmbed {
                    self.metrics.translated(translate::Kind::EmbedRejected);
                }
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
        self.metrics.observe(decision.backend, service, &method, resp.status(), started.elapsed());
        resp
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        snap: &Snapshot,
        route: &Route,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Error> {
        let backend = route.decision.backend;
        let upgrade = headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let target = &snap.config.backends.get(backend).url;
        headers::prepare_request(&mut parts, target, peer.ip(), upgrade)
            .map_err(|e| Error::bad_request(backend, e.to_string()))?;
        if let Some(qa) = &snap.config.overrides.qa_header {
            // It carries a secret: never forwarded, valid or not.
            parts.headers.remove(qa);
        }
        let mut applied = snap
            .translator
            .request(&mut parts, backend, route.token.as_ref())
            .map_err(|e| Error::cross_schema_embed(backend, &e))?;
        let mut resp =
            self.upstream.send(backend, Request::from_parts(parts, body), snap.config.upstream.timeout).await?;
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client)) = (switching, client_upgrade) {
            self.tunnels.spawn(client, hyper::upgrade::on(&mut resp));
        }
        headers::prepare_response(resp.headers_mut(), switching, backend);
        snap.translator.response(resp.headers_mut(), &mut applied);
        for kind in applied.kinds {
            self.metrics.translated(kind);
        }
        Ok(resp.map(Either::Left))
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
