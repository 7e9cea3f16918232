//! Listeners and lifecycle: accepts client connections (HTTP/1.1 and h2c prior
//! knowledge on one port), serves each with hyper's HTTP/1 server or the HTTP/2
//! server in [`http2`], hands each request to
//! [`Proxy::handle`], and shuts down gracefully: stop accepting, let in-flight requests
//! and tunnels finish within the grace period, then close what is left.

mod http2;
mod signal;
mod sniff;
pub mod stall;
pub mod tls;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::limits::LimitsConfig;
use crate::config::{Config, ServerConfig};
use crate::control::Control;
use crate::fleet::{self, Fleet};
use crate::handoff::Handoffs;
use crate::metrics::Metrics;
use crate::proxy::{Body, Client, ClientAddr, Proxy};
use crate::spool;
use crate::state::State;
use crate::upstream::Upstream;
use crate::watch;
use signal::Shutdown;
use sniff::Opening;
use stall::SendTimeout;

/// A running proxy.
pub struct Running {
    /// Where the proxy listens: the plain listener, or the HTTPS one when there is no
    /// plain one.
    pub addr: SocketAddr,
    /// Where the HTTPS listener listens, if enabled.
    pub tls_addr: Option<SocketAddr>,
    /// Where the admin listener listens, if enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The proxy itself (state, metrics).
    pub proxy: Arc<Proxy>,
    /// Live changes (reloads, admin writes).
    pub control: Arc<Control>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts a graceful shutdown; [`Running::wait`] returns when it is complete.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the proxy has stopped.
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds the listeners and starts serving `config`, read from `path` if given (which
/// reloads then re-read, and which is watched when `server.watch_config` is on).
pub async fn start(config: Config, path: Option<PathBuf>) -> io::Result<Running> {
    let listener = config.server.listen.map(|a| bind(a, config.server.listen_backlog)).transpose()?;
    let tls_listener = config.server.tls.as_ref().map(|t| bind(t.listen, config.server.listen_backlog)).transpose()?;
    let admin_listener = match config.server.admin_listen {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let tls_addr = tls_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let addr = match &listener {
        Some(l) => l.local_addr()?,
        None => tls_addr.expect("a plain or an HTTPS listener"),
    };
    let admin_addr = admin_listener.as_ref().map(TcpListener::local_addr).transpose()?;

    let metrics = Arc::new(Metrics::new());
    let upstream = Upstream::new(&config.upstream.client());
    let server = config.server.clone();
    let state = Arc::new(State::new(config));
    let control = Arc::new(Control::new(state.clone(), metrics.clone(), path.clone()));
    let shutdown = CancellationToken::new();
    let proxy = Arc::new(Proxy::new(state.clone(), upstream, metrics.clone()));
    // The projects' signing keys, fetched before the first request where they come soon.
    let first_wait = crate::identity::keyring::FIRST_WAIT;
    crate::identity::fetch::start(state.clone(), metrics.clone(), first_wait, shutdown.clone()).await;
    // In fleet mode the fleet's state is read before the first request is served.
    let fleet = match state.load().config.cluster.clone() {
        Some(cluster) => {
            let upstream_timeout = state.load().config.upstream.timeout;
            let local = fleet::Local { writes: proxy.writes.clone(), lease: proxy.lease.clone(), upstream_timeout };
            Some(Fleet::join(cluster, control.clone(), metrics, local, shutdown.clone()).await)
        }
        None => None,
    };
    let handoffs =
        Handoffs::new(proxy.state.clone(), proxy.writes.clone(), proxy.wrote_v2.clone(), proxy.metrics.clone());
    control.attach_handoffs(Arc::new(handoffs));
    tokio::spawn(gather_writers(proxy.clone(), shutdown.clone()));
    tokio::spawn(guard_loop(proxy.clone(), control.clone(), shutdown.clone()));
    if control.start_schedule().await {
        tokio::spawn(schedule_loop(control.clone(), shutdown.clone()));
    }
    if let (Some(path), true) = (&path, server.watch_config) {
        watch::watch_file(path, control.clone(), shutdown.clone()).map_err(io::Error::other)?;
    }

    let limits = proxy.state.load().config.limits.clone();
    let mut tasks = Vec::new();
    if let Some(l) = listener {
        let serving = serve(l, None, proxy.clone(), shutdown.clone(), server.clone(), limits.clone());
        tasks.push(tokio::spawn(serving));
    }
    if let (Some(l), Some(cfg)) = (tls_listener, &server.tls) {
        let tls =
            tls::Tls::new(cfg, proxy.metrics.clone()).map_err(|e| io::Error::other(format!("server.tls: {e}")))?;
        tls.watch(shutdown.clone())?;
        tasks.push(tokio::spawn(serve(l, Some(tls), proxy.clone(), shutdown.clone(), server, limits)));
    }
    if let Some(l) = admin_listener {
        let admin = admin::Admin { proxy: proxy.clone(), control: control.clone(), fleet };
        tasks.push(tokio::spawn(admin::serve(l, Arc::new(admin), shutdown.clone())));
    }
    Ok(Running { addr, tls_addr, admin_addr, proxy, control, shutdown, tasks })
}

/// Gathers who wrote on v2 every second, so its bounded record does not fill.
async fn gather_writers(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
        proxy.wrote_v2.gather();
    }
}

/// Starts `config` and serves until SIGTERM or SIGINT, then drains. SIGHUP reloads.
pub async fn run(config: Config, path: Option<PathBuf>) -> io::Result<()> {
    let running = start(config, path).await?;
    watch::on_sighup(running.control.clone(), running.shutdown.clone())?;
    let admin = running.admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    let https = running.tls_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(listen = %running.addr, https = %https, admin = %admin, "switchyard serving");
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown();
    running.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves one client connection until it closes (or shutdown closes it): over TLS
/// when `tls` (the protocol then as ALPN chose), else plain (HTTP/1, or h2c prior
/// knowledge). `_slot` is its place under `limits.max_connections`.
#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<tls::Tls>>,
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    watcher: Watcher,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let mut shutdown = std::pin::pin!(Shutdown::new(&shutdown));
    let trusted = proxy.state.load().config.server.trusted_proxies.iter().any(|c| c.contains(peer.ip()));
    let client = Arc::new(Client { addr: ClientAddr::connection(peer.ip(), tls.is_some(), trusted) });
    let Some(tls) = tls else {
        // A client that connects and sends nothing is closed after the header read
        // timeout (hyper's own timer starts only once it reads a request).
        let opening = tokio::select! {
            _ = shutdown.as_mut() => return,
            opening = tokio::time::timeout(builders.header_read, sniff::opening(&stream)) => opening,
        };
        let opening = match opening {
            Ok(Ok(Some(opening))) => opening,
            // Closed, failed, or silent for the whole header read timeout.
            _ => return,
        };
        let h2 = opening == Opening::Http2;
        return speak(stream, h2, peer, client, proxy, &builders, watcher, shutdown).await;
    };
    let accepted = tokio::select! {
        _ = shutdown.as_mut() => return,
        accepted = tls.accept(stream) => accepted,
    };
    match accepted {
        Ok(a) => speak(a.stream, a.h2, peer, client, proxy, &builders, watcher, shutdown).await,
        Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
    }
}

/// Serves HTTP/2 or HTTP/1 on a connection's `io` until it ends.
#[allow(clippy::too_many_arguments)]
async fn speak<T>(
    io: T,
    h2: bool,
    peer: SocketAddr,
    client: Arc<Client>,
    proxy: Arc<Proxy>,
    builders: &Builders,
    watcher: Watcher,
    mut shutdown: std::pin::Pin<&mut Shutdown>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = SendTimeout::new(io, builders.send_timeout);
    let metrics = proxy.metrics.clone();
    // hyper-util's graceful watch has no hook for these connection types: shutdown is
    // driven from the token, and holding the watcher keeps the drain waiting.
    let _watcher = watcher;
    let ended = if h2 {
        // Boxed: every connection's task would otherwise be its size.
        Box::pin(http2::serve(io, &builders.http2, proxy, client, shutdown)).await
    } else {
        let (io, service) = (TokioIo::new(io), service(proxy, client));
        let mut conn = std::pin::pin!(builders.http1.serve_connection(io, service).with_upgrades());
        tokio::select! {
            biased;
            ended = conn.as_mut() => ended.map_err(Into::into),
            _ = shutdown.as_mut() => {
                conn.as_mut().graceful_shutdown();
                conn.await.map_err(Into::into)
            }
        }
    };
    if let Err(e) = ended {
        let e: Box<dyn std::error::Error + Send + Sync> = e;
        // The socket took nothing for the send timeout, or (first by a hair) the
        // read-ahead gave the answer up for the same reason.
        if stall::is_send_timeout(e.as_ref()) || spool::is_given_up(e.as_ref()) {
            metrics.client_error("slow_reader");
        }
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// hyper's server's service: each request handed to [`Proxy::handle`].
fn service(
    proxy: Arc<Proxy>,
    client: Arc<Client>,
) -> impl hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone
{
    service_fn(move |req: Request<Incoming>| proxy.clone().handle(req.map(Either::Left), &client))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Evaluates the canary guard every second and rolls back when it trips.
async fn guard_loop(proxy: Arc<Proxy>, control: Arc<Control>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut was_tripped = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let snap = proxy.state.load();
        let cfg = &snap.config.guard;
        let tripped = control.is_tripped();
        if std::mem::replace(&mut was_tripped, tripped) != tripped {
            // Tripped or cleared: what it judged is acted on, judge afresh.
            proxy.guard.forget();
        }
        if !cfg.enabled || snap.config.rollout.force.is_some() || tripped {
            continue;
        }
        if let Some(trip) = proxy.guard.evaluate(cfg) {
            control.trip(trip, cfg.rollback_to).await;
        }
    }
}

/// Drives `[rollout.schedule]` until its last step (or shutdown).
async fn schedule_loop(control: Arc<Control>, shutdown: CancellationToken) {
    while let Some(wait) = control.advance_schedule().await {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Re-checked at least every second, so pause, resume and trips apply promptly.
            _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
        }
    }
}

/// The connection builders: hyper's HTTP/1 server, and the HTTP/2 server's settings.
struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: http2::Settings,
    /// The header read timeout: how long a client may take to send its first bytes,
    /// and then each request head, and how long a keep-alive connection may idle.
    header_read: Duration,
    /// How long a client may take no byte of its answer.
    send_timeout: Duration,
}

impl Builders {
    fn new(server: &ServerConfig, limits: &LimitsConfig) -> Builders {
        // Without a timer the header read timeout does nothing (docs/architecture.md).
        // It also bounds how long an idle keep-alive connection waits for its next
        // request. Responses are written from one buffer, not vectored: one plain write
        // of head and body costs the kernel less than a writev of both.
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .writev(false)
            .timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout)
            .max_headers(limits.max_header_count)
            .max_buf_size(limits.max_header_bytes);
        let http2 = http2::Settings::new(limits.max_header_bytes, server.header_read_timeout, limits.send_timeout);
        Builders { http1, http2, header_read: server.header_read_timeout, send_timeout: limits.send_timeout }
    }
}

/// Binds `addr` with the configured accept backlog (the standard library's is 128:
/// a reconnect storm overflows it and clients wait for SYN retries).
fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tls::Tls>>,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    server: ServerConfig,
    limits: LimitsConfig,
) {
    let builders = Arc::new(Builders::new(&server, &limits));
    let graceful = GracefulShutdown::new();
    // At the limit, new connections wait in the kernel's backlog instead of being served.
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            tls.clone(),
            proxy.clone(),
            builders.clone(),
            graceful.watcher(),
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    let grace = server.shutdown_grace;
    let drained = async {
        tokio::join!(graceful.shutdown(), proxy.tunnels.drain(grace));
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(grace_seconds = grace.as_secs_f64(), "grace period over: closing remaining connections");
    }
}
