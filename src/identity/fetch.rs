//! Keeps each project's published keys fresh in the [`Keyring`]: fetched at start,
//! every `jwks_refresh_seconds`, sooner after a failure (1 s, doubling up to the
//! refresh), and when a token names a `kid` nobody publishes (at most once per
//! [`super::keyring::MIN_REFETCH`]). A failed fetch keeps the keys in force. docs/identity.md.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio_util::sync::CancellationToken;

use super::keyring::Keyring;
use crate::backend::BackendId;
use crate::config::Config;
use crate::config::keys::JwksSource;
use crate::jwk::{self, KeySet};
use crate::metrics::Metrics;
use crate::state::State;

type Https = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait before a failed fetch is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A client for key sets, trusting what the upstreams' TLS trusts.
pub fn client(config: &Config) -> Https {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.upstream.connect_timeout));
    let tls = crate::upstream::tls_config(&config.upstream.extra_roots);
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

/// Reads `id`'s key set once, from its configured source.
pub async fn fetch(client: &Https, config: &Config, id: BackendId) -> Result<KeySet, String> {
    let backend = config.backends.get(id);
    let body = match &backend.keys.jwks {
        JwksSource::Disabled => return Err("not fetched (jwks_enabled = false)".into()),
        JwksSource::File(path) => {
            let text = tokio::fs::read(path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Bytes::from(text)
        }
        JwksSource::Url(url) => {
            let mut req = http::Request::get(url.as_str());
            // A project's gateway may want its public key even for the key set.
            if let Some(key) = backend.publishable_key.as_ref().or(backend.anon_key.as_ref()) {
                req = req.header("apikey", key.expose());
            }
            let req = req.body(Empty::new()).map_err(|e| format!("bad URL {url}: {e}"))?;
            let got = async {
                let resp = client.request(req).await.map_err(|e| format!("{url}: {}", chain(&e)))?;
                if !resp.status().is_success() {
                    return Err(format!("{url} answered {}", resp.status()));
                }
                let body = Limited::new(resp.into_body(), jwk::MAX_BYTES).collect().await;
                body.map(|b| b.to_bytes()).map_err(|e| format!("{url}: {e}"))
            };
            tokio::time::timeout(FETCH_TIMEOUT, got).await.map_err(|_| format!("{url}: no answer within 5 s"))??
        }
    };
    jwk::key_set(&body)
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |e| e.source()).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

/// Fetches both projects' keys until `shutdown`; returns once the first fetch of each
/// has ended or `first_wait` has passed, the fetching going on in the background.
pub async fn start(state: Arc<State>, metrics: Arc<Metrics>, first_wait: Duration, shutdown: CancellationToken) {
    let client = client(&state.load().config);
    let mut firsts = Vec::new();
    for id in BackendId::ALL {
        let (tx, rx) = tokio::sync::oneshot::channel();
        firsts.push(rx);
        let keeper = Keeper { id, state: state.clone(), metrics: metrics.clone(), client: client.clone() };
        tokio::spawn(keeper.run(tx, shutdown.clone()));
    }
    let _ = tokio::time::timeout(first_wait, futures_util::future::join_all(firsts)).await;
}

struct Keeper {
    id: BackendId,
    state: Arc<State>,
    metrics: Arc<Metrics>,
    client: Https,
}

impl Keeper {
    async fn run(self, first: tokio::sync::oneshot::Sender<()>, shutdown: CancellationToken) {
        let keyring: &Keyring = self.state.keyring();
        let (id, mut first, mut backoff) = (self.id, Some(first), Duration::from_secs(1));
        // Failures are logged as a warning when they start, and the recovery once.
        let mut failing = false;
        loop {
            let config = self.state.load().config.clone();
            let refresh = config.backends.get(id).keys.refresh;
            if config.backends.get(id).keys.jwks == JwksSource::Disabled {
                // Nothing to fetch; a reload may turn it on.
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(refresh) => continue,
                }
            }
            let wait = match fetch(&self.client, &config, id).await {
                Ok(set) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(backend = %id, keys = set.keys.len(), "the project's signing keys are fetched again");
                    }
                    if !set.skipped.is_empty() {
                        tracing::debug!(backend = %id, skipped = ?set.skipped, "signing keys not used");
                    }
                    self.metrics.jwks_fetched(id, "success", Some(set.keys.len()));
                    keyring.publish(id, &format!("{:?}", config.backends.get(id).keys.jwks), set.keys);
                    backoff = Duration::from_secs(1);
                    refresh
                }
                Err(why) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(backend = %id, error = %why, "cannot fetch the project's signing keys");
                    } else {
                        tracing::debug!(backend = %id, error = %why, "cannot fetch the project's signing keys");
                    }
                    self.metrics.jwks_fetched(id, "failure", None);
                    keyring.failed(id);
                    let wait = backoff.min(refresh);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                // Asked for by a token (at most once per MIN_REFETCH: `Keyring::ask`).
                _ = keyring.wanted(id) => {}
            }
        }
    }
}

/// What `switchyard check` says of each project's tokens: how they are verified (and
/// whether its key set could be fetched), and what re-signs tokens for it.
pub async fn report(config: &Config) -> Vec<String> {
    let client = client(config);
    let mut lines = Vec::new();
    for id in BackendId::ALL {
        let b = config.backends.get(id);
        let secret =
            if b.jwt_secret.is_some() { "HS256 with jwt_secret" } else { "HS256 not verified (no jwt_secret)" };
        let keys = match fetch(&client, config, id).await {
            Ok(set) if set.keys.is_empty() => format!("no signing keys published at {:?}", b.keys.jwks),
            Ok(set) => {
                let names: Vec<String> = set
                    .keys
                    .iter()
                    .map(|k| format!("{} {}", jwk::alg_name(k.alg), k.kid.as_deref().unwrap_or("(no kid)")))
                    .collect();
                format!(
                    "ES256/RS256 verified with {} key(s) from {:?}: {}",
                    set.keys.len(),
                    b.keys.jwks,
                    names.join(", ")
                )
            }
            Err(why) => format!(
                "key set NOT fetched ({why}): its ES256/RS256 tokens are forwarded unverified to {id}, and answered \
                 503 where they would need re-signing"
            ),
        };
        let signs = match (&b.keys.signing_key, &b.jwt_secret) {
            (Some(k), _) => format!("{} key {}", jwk::alg_name(k.alg), k.kid),
            (None, Some(_)) => "HS256 with jwt_secret".to_string(),
            (None, None) => "nothing (tokens of the other project go as they are)".to_string(),
        };
        lines.push(format!("{id}: tokens: {secret}; {keys}; re-signed for {id} with: {signs}"));
    }
    lines
}
