//! One upstream host's connections: busy ones within the [`Budget`] (further requests
//! queue for a free one, as HAProxy's `maxconn` does, instead of opening a connection
//! per concurrent request), idle ones reused newest-first and never past
//! the idle timeout. A connection goes back to the pool when its response body has
//! ended, from the body itself ([`super::body`]): no task per request or connection.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use http::{Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use super::body::UpstreamBody;
use super::budget::{Budget, Owner, Slot};
use super::conn::Conn;
use super::exchange::{Attempt, Failure, Outgoing, exchange};
use super::idle::IdleStack;
use super::{Outbound, Queued};

/// Pool sizes and timeouts, fixed for the process.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Busy (or connecting) connections to one host, within the shared budget.
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
    /// One slot per connection that is not idle; idle ones hold none.
    budget: Budget,
    /// Held for a push or a pop, never across an await.
    idle: Mutex<IdleStack<Box<Conn>>>,
}

/// A connection in use: returned to its pool when the response body ends.
pub struct Lease {
    /// Boxed: a TLS connection's state is over a kilobyte, and the lease moves with
    /// every response.
    conn: Box<Conn>,
    /// Its place in the budget, taken through its pool.
    slot: Slot<Arc<Pool>>,
    /// When the request was sent: the connection's idle time is counted from then
    /// (reading the clock again at release costs every request; a connection busy
    /// for longer than the idle timeout is then closed when released, not reused).
    since: Instant,
}

impl Lease {
    /// The connection, to read the response from.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Parks the connection for the next request.
    pub fn release(self) {
        let Lease { conn, slot, since } = self;
        slot.owner().park(conn, since);
    }

    /// The connection leaves the pool for good (an upgrade); its place is freed.
    pub fn into_conn(self) -> Box<Conn> {
        self.conn
    }
}

impl Owner for Pool {
    fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl Pool {
    /// A pool for `target` (scheme and authority only), its busy connections within
    /// `budget`.
    pub fn new(target: Uri, connector: HttpsConnector<HttpConnector>, settings: PoolSettings, budget: Budget) -> Pool {
        Pool {
            target,
            connector,
            budget,
            idle: Mutex::new(IdleStack::new(settings.max_idle.min(settings.max_connections), settings.idle_timeout)),
        }
    }

    /// Sends `req` (origin-form URI) on a pooled or new connection, at `now`. A request
    /// that a reused connection lost before the upstream could act on it (the upstream
    /// was closing that connection) is tried again on another one. An upload that
    /// outlives its response may stall for `timeout`.
    pub fn send(
        self: Arc<Self>,
        out: Outbound,
        now: Instant,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Failure>> + Send + 'static + use<> {
        // Framed and encoded before the future is made, and a request that cannot be
        // framed never becomes one: the future then holds the request once.
        match Outgoing::new(out, timeout) {
            Ok(out) => Either::Left(self.send_framed(out, now)),
            Err(failure) => Either::Right(std::future::ready(Err(failure))),
        }
    }

    #[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
    fn send_framed(
        self: Arc<Self>,
        mut out: Outgoing,
        mut now: Instant,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, Failure>> + Send + 'static + use<> {
        // `out` and `now` are used where they were captured, never bound again: a new
        // binding would be a second copy in the future.
        async move {
            let (slot, queued) = match Budget::try_take(self.clone()) {
                Some(slot) => (slot, None),
                None => {
                    let slot = Budget::take(self.clone()).await;
                    let waited_since = std::mem::replace(&mut now, Instant::now());
                    (slot, Some(Queued(now.saturating_duration_since(waited_since))))
                }
            };
            loop {
                let (mut conn, reused) = match self.unpark(now) {
                    Some(conn) => (conn, true),
                    // Boxed: every request's future would otherwise carry the rare connect's state.
                    None => (Box::pin(self.connect()).await?, false),
                };
                match exchange(&mut conn, &mut out).await {
                    Ok((head, upload)) => {
                        let duplex = upload.is_some();
                        let lease = Lease { conn, slot, since: now };
                        let mut resp = Response::new(UpstreamBody::new(lease, head.framing, head.reusable, upload));
                        *resp.status_mut() = head.status;
                        *resp.headers_mut() = head.headers;
                        if duplex {
                            // Its end waits for the upload's: a length would let the
                            // client's side end the body at its last byte.
                            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
                        }
                        if let Some(queued) = queued {
                            resp.extensions_mut().insert(queued);
                        }
                        return Ok(resp);
                    }
                    Err(Attempt { retry: true, .. }) if reused => continue,
                    Err(Attempt { failure, .. }) => return Err(failure),
                }
            }
        }
    }

    /// Connections in use (or connecting) and idle ones, now.
    pub fn usage(&self) -> (usize, usize) {
        (self.budget.busy(), self.stack().len())
    }

    /// Closes idle connections past the idle timeout (outside the lock).
    pub fn reap(&self) {
        let expired = self.stack().expire(Instant::now());
        drop(expired);
    }

    /// The idle stack; a push or a pop, never held across an await.
    fn stack(&self) -> MutexGuard<'_, IdleStack<Box<Conn>>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The newest idle connection that is still alive. Each is taken out of the stack
    /// before it is probed, and the dead ones are closed, outside the lock.
    fn unpark(&self, now: Instant) -> Option<Box<Conn>> {
        loop {
            let mut conn = self.stack().pop(now)?;
            if !conn.is_stale() {
                return Some(conn);
            }
        }
    }

    fn park(&self, mut conn: Box<Conn>, since: Instant) {
        conn.idle();
        let (expired, refused) = {
            let mut stack = self.stack();
            (stack.expire(since), stack.push(conn, since))
        };
        // Closed here, after the lock: a full stack hands the connection back.
        drop((expired, refused));
    }

    async fn connect(&self) -> Result<Box<Conn>, Failure> {
        let stream = self.connector.clone().call(self.target.clone()).await.map_err(Failure::Connect)?;
        Ok(Box::new(Conn::new(stream)))
    }
}
