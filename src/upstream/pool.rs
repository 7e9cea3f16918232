//! One upstream host's connections: at most `max_connections` at once (further
//! requests queue for a free one, as HAProxy's `maxconn` does, instead of opening a
//! connection per concurrent request), idle ones reused newest-first and never past
//! the idle timeout. A connection goes back to the pool when its response body has
//! ended, from the body itself ([`super::body`]): no task per request.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, Uri};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use super::OutBody;
use super::body::UpstreamBody;
use super::idle::IdleStack;
use crate::error::BoxError;

/// Why a request got no response from the upstream.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made (refused, DNS, connect time-out, TLS).
    Connect(BoxError),
    /// The connection failed while sending or before the response head.
    Http(hyper::Error),
}

/// Pool sizes and timeouts, fixed for the process.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connections (busy, connecting or idle) to one host.
    pub max_connections: usize,
    /// Idle connections kept per host.
    pub max_idle: usize,
    /// An idle connection older than this is closed, never reused.
    pub idle_timeout: Duration,
}

/// The pool of one scheme + authority.
pub struct Pool {
    /// `scheme://authority/`, what the connector dials.
    target: Uri,
    connector: HttpsConnector<HttpConnector>,
    http1: http1::Builder,
    /// One permit per connection that is not idle; idle ones hold none.
    permits: Arc<Semaphore>,
    /// Held for a push or a pop, never across an await.
    idle: Mutex<IdleStack<SendRequest<OutBody>>>,
}

/// A connection in use: returned to its pool when the response body ends.
pub struct Lease {
    sender: SendRequest<OutBody>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// Parks the connection for the next request.
    pub fn release(self) {
        self.pool.park(self.sender);
    }
}

impl Pool {
    /// A pool for `target` (scheme and authority only).
    pub fn new(target: Uri, connector: HttpsConnector<HttpConnector>, settings: Settings) -> Pool {
        let mut http1 = http1::Builder::new();
        // Upstream answers are the projects' own: be as lenient as browsers are.
        http1.allow_spaces_after_header_name_in_responses(true);
        Pool {
            target,
            connector,
            http1,
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            idle: Mutex::new(IdleStack::new(settings.max_idle.min(settings.max_connections), settings.idle_timeout)),
        }
    }

    /// Sends `req` (origin-form URI) on a pooled or new connection. A request that a
    /// reused connection never wrote (it was closing) is tried again on another one.
    #[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
    pub fn send(
        self: Arc<Self>,
        mut req: Request<OutBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Failure>> + Send + 'static + use<> {
        async move {
            let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            loop {
                let (mut sender, reused) = match self.unpark() {
                    Some(sender) => (sender, true),
                    // Boxed: every request's future would otherwise carry the rare connect's state.
                    None => (Box::pin(self.connect()).await?, false),
                };
                if let Err(e) = sender.ready().await {
                    if reused {
                        continue;
                    }
                    return Err(Failure::Http(e));
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        let lease = Lease { sender, pool: self.clone(), _permit: permit };
                        // After a 101 the connection belongs to the tunnel, never to the pool.
                        let reusable = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
                        return Ok(resp.map(|body| UpstreamBody::new(body, lease, reusable)));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if reused => req = unsent,
                        _ => return Err(Failure::Http(e.into_error())),
                    },
                }
            }
        }
    }

    /// Closes idle connections past the idle timeout.
    pub fn reap(&self) {
        self.stack().expire(Instant::now());
    }

    /// The idle stack; a push or a pop, never held across an await.
    fn stack(&self) -> MutexGuard<'_, IdleStack<SendRequest<OutBody>>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn unpark(&self) -> Option<SendRequest<OutBody>> {
        self.stack().pop(Instant::now(), |s| !s.is_closed())
    }

    fn park(&self, sender: SendRequest<OutBody>) {
        if sender.is_closed() {
            return;
        }
        // A full stack hands the sender back; dropping it closes that connection.
        drop(self.stack().push(sender, Instant::now()));
    }

    async fn connect(&self) -> Result<SendRequest<OutBody>, Failure> {
        let io = self.connector.clone().call(self.target.clone()).await.map_err(Failure::Connect)?;
        let (sender, conn) = self.http1.handshake(io).await.map_err(Failure::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}
