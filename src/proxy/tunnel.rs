//! WebSocket tunnels (Supabase Realtime). Once both sides have switched protocols the
//! bytes are copied both ways. Graceful shutdown does not see upgraded connections, so
//! the tunnels are tracked here and drained (then closed) by the server.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::upstream::Conn;

/// The set of open tunnels.
pub struct Tunnels {
    tracker: TaskTracker,
    close: CancellationToken,
    open: IntGauge,
}

struct OpenGuard(IntGauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Tunnels {
    /// An empty set; `open` counts live tunnels.
    pub fn new(open: IntGauge) -> Tunnels {
        Tunnels { tracker: TaskTracker::new(), close: CancellationToken::new(), open }
    }

    /// Joins the client's upgraded connection, once ready, to the upstream's.
    pub fn spawn(&self, client: OnUpgrade, mut upstream: Box<Conn>) {
        let close = self.close.clone();
        let open = self.open.clone();
        self.tracker.spawn(async move {
            let client = match client.await {
                Ok(client) => client,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade did not complete");
                    return;
                }
            };
            open.inc();
            let _guard = OpenGuard(open);
            let mut client = TokioIo::new(client);
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "websocket tunnel ended with an error");
                    }
                }
                _ = close.cancelled() => tracing::debug!("websocket tunnel closed by shutdown"),
            }
        });
    }

    /// Number of tunnels still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no tunnel is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Lets tunnels end on their own for up to `grace`, then closes the rest.
    pub async fn drain(&self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            tracing::info!(open = self.tracker.len(), "closing websocket tunnels still open at the deadline");
            self.close.cancel();
            self.tracker.wait().await;
        }
    }
}
