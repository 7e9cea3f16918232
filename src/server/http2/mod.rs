//! The HTTP/2 server (h2c prior knowledge): h2's connection, driven here, and each
//! stream answered by its own task ([`stream::answer`]). Served with h2 directly
//! rather than through hyper's server so that each stream's answer can be bounded
//! by the send timeout (hyper's waits for window with no deadline and gives no
//! handle to reset the stream).

mod recv;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::proxy::{Client, Proxy};
use crate::upstream::BoxError;

/// How the HTTP/2 server is set up: h2's settings and the timeouts.
pub struct Settings {
    builder: h2::server::Builder,
    /// How long the client may take for its preface and settings, and how long a
    /// connection may have no stream open before it is closed.
    idle: Duration,
    send_timeout: Duration,
}

impl Settings {
    /// Settings with the header list bound `max_header_bytes`.
    pub fn new(max_header_bytes: usize, idle: Duration, send_timeout: Duration) -> Settings {
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .max_send_buffer_size(SEND_BUFFER)
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        Settings { builder, idle, send_timeout }
    }
}

/// Streams one connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// The flow-control window granted to each stream and to the connection.
const WINDOW: u32 = 1 << 20;
/// How much of one stream's answer h2 may hold unsent.
const SEND_BUFFER: usize = 400 * 1024;
/// Streams a client may reset before their answer, in all, before its resets are
/// judged (CVE-2023-44487, "rapid reset": each costs the proxy a request upstream).
const RESETS_ALLOWED: u32 = 100;

/// Whether a client's resets make the connection an attack: over the allowance, and
/// most of its streams.
fn rapid_reset(resets: u32, streams: u32) -> bool {
    resets > RESETS_ALLOWED && resets.saturating_mul(2) > streams
}

/// Serves one HTTP/2 connection until it closes, or until `shutdown` resolves (then
/// with a GOAWAY: open streams finish, no new one is taken).
pub async fn serve<T>(
    io: T,
    settings: &Settings,
    proxy: Arc<Proxy>,
    client: Arc<Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = settings.builder.handshake::<T, Bytes>(io);
    let mut conn = tokio::time::timeout(settings.idle, handshake).await.map_err(|_| "no HTTP/2 settings in time")??;
    let mut shutdown = std::pin::pin!(shutdown);
    // Each stream's task holds a clone: one left means no stream is open.
    let open = Arc::new(());
    // Streams the client reset before their answer, and streams in all.
    let resets = Arc::new(AtomicU32::new(0));
    let mut streams = 0u32;
    let mut idle_since = Instant::now();
    // When the GOAWAY went: a client that does not answer its PING is let go.
    let mut closing: Option<Instant> = None;
    let mut tick = tokio::time::interval(settings.idle / 4);
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    streams = streams.saturating_add(1);
                    if closing.is_none() && rapid_reset(resets.load(Ordering::Relaxed), streams) {
                        proxy.metrics.client_error("rapid_reset");
                        closing = Some(Instant::now());
                        conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                        continue;
                    }
                    let (proxy, client, open, resets) = (proxy.clone(), client.clone(), open.clone(), resets.clone());
                    let send_timeout = settings.send_timeout;
                    tokio::spawn(async move {
                        if stream::answer(proxy, client, req, respond, send_timeout).await == stream::Ended::Reset {
                            resets.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(open);
                    });
                }
                Some(Err(e)) => {
                    // h2 itself sends the GOAWAY when resets outpace accepting.
                    if e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) && !e.is_remote() {
                        proxy.metrics.client_error("rapid_reset");
                    }
                    return Err(e.into());
                }
                None => return Ok(()),
            },
            _ = shutdown.as_mut(), if closing.is_none() => {
                closing = Some(Instant::now());
                conn.graceful_shutdown();
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if Arc::strong_count(&open) > 1 {
                    idle_since = now;
                    continue;
                }
                match closing {
                    None if now - idle_since >= settings.idle => {
                        closing = Some(now);
                        conn.graceful_shutdown();
                    }
                    // No stream left, and the client has not finished the goodbye.
                    Some(since) if now - since.max(idle_since) >= settings.idle => return Ok(()),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn many_resets_of_most_streams_are_an_attack_and_a_few_are_not() {
        assert!(!super::rapid_reset(100, 100), "within the allowance");
        assert!(super::rapid_reset(101, 150));
        assert!(!super::rapid_reset(150, 1000), "a busy client cancelling some");
    }
}
