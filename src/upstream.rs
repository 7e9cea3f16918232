//! The upstream client: one pooled HTTP/1.1 client (TLS through rustls) shared by both
//! backends; the pool is keyed by scheme and authority, so it outlives every config
//! change. HTTP/1.1 only, as nginx does upstream: it keeps WebSocket upgrades simple
//! and every Supabase service speaks it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::backend::BackendId;
use crate::config::UpstreamConfig;
use crate::error::Error;
use crate::proxy::capped::Capped;

/// What the proxy sends upstream: the client's body, streamed, or nothing (shadow
/// reads).
pub type OutBody = Either<Capped, Empty<Bytes>>;

/// The shared upstream client.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, OutBody>,
}

impl Upstream {
    /// Builds the client. Connect timeout and pool settings are fixed for the process.
    pub fn new(cfg: &UpstreamConfig) -> Upstream {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        // Parsed at config load, so nothing is left to refuse here.
        let (_added, _ignored) = roots.add_parsable_certificates(cfg.extra_roots.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // Without a timer the pool's idle timeout does nothing (design.md §9).
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(https);
        Upstream { client }
    }

    /// Sends `req` to `backend`, waiting at most `timeout` for the response headers.
    /// The body then streams for as long as it takes.
    pub async fn send(
        &self,
        backend: BackendId,
        req: Request<OutBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, Error> {
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(Error::upstream(backend, e)),
            Err(_) => Err(Error::timeout(backend, timeout)),
        }
    }
}
