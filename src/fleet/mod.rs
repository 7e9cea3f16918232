//! Fleet state: one rollout state for every replica, kept in PostgreSQL
//! (`[cluster]`, docs/fleet.md). Each replica keeps a session open, LISTENs for
//! committed changes and adopts them, re-reads on every heartbeat in case a
//! notification was missed, and reports which generation it has applied. Changes
//! themselves are made by [`crate::control`] through [`Store`]'s compare-and-set.
//! When the database is unreachable the replica keeps routing with what it applied
//! last, says so (degraded), and reconnects with backoff.
//!
//! With `[handoff]`, each read also brings the fleet's handoff in progress: the
//! replica fences its band and, once its own writes from the band have drained,
//! acknowledges in its heartbeat. Each heartbeat renews the replica's lease
//! ([`crate::handoff::lease`]).

pub mod store;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use crate::config::cluster::ClusterConfig;
use crate::control::Control;
use crate::handoff::coordinate::Pending;
use crate::handoff::fence::{Fence, Writes};
use crate::handoff::lease::Lease;
use crate::metrics::Metrics;
use crate::pg::{self, reason};
pub use store::{Read, Replica, Sql, Store};

/// The handoff in progress as the store keeps it, if it reads as one.
fn pending(text: Option<String>) -> Option<Pending> {
    let text = text?;
    serde_json::from_str(&text)
        .map_err(|e| tracing::error!(error = %e, "the fleet's handoff row is not a handoff: ignored"))
        .ok()
}

/// What `GET /admin/rollout` shows of the fleet.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct View {
    pub replica_id: String,
    /// Whether this replica has a session with the store now.
    pub connected: bool,
    /// Serving without the fleet's store: `!connected`, said outright for readers.
    pub degraded: bool,
    pub last_error: Option<String>,
    pub replicas: Vec<Replica>,
}

/// A replica's part in the fleet.
pub struct Fleet {
    pub store: Arc<Store>,
    config: ClusterConfig,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    view: Mutex<View>,
    /// What a handoff needs of this replica: its writes in flight, its lease.
    local: Local,
    /// The handoff whose drain is being watched here.
    watching: Mutex<Option<String>>,
}

/// This replica's writes in flight and its lease.
pub struct Local {
    pub writes: Arc<Writes>,
    pub lease: Arc<Lease>,
    /// How long a write may take upstream (a gone replica's last one ends by then).
    pub upstream_timeout: Duration,
}

impl Fleet {
    /// Joins the fleet: attaches the store to `control` and keeps in sync with it until
    /// `shutdown`. Returns once the fleet's state is applied, or after
    /// `startup_wait_seconds` without the store (then serving from the file, degraded,
    /// and adopting the fleet's state when it connects).
    pub async fn join(
        config: ClusterConfig,
        control: Arc<Control>,
        metrics: Arc<Metrics>,
        local: Local,
        shutdown: CancellationToken,
    ) -> Arc<Fleet> {
        metrics.cluster_enabled.set(1);
        let sql = Sql::new(&config.schema);
        let (lease, gone_after) = (config.lease, config.lease + local.upstream_timeout + Duration::from_secs(1));
        let store = Arc::new(Store { sql, client: Default::default(), lease, gone_after });
        control.attach(store.clone());
        let view = Mutex::new(View { replica_id: config.replica_id.clone(), ..View::default() });
        let fleet = Arc::new(Fleet { store, config, control, metrics, view, local, watching: Mutex::default() });
        let (synced, mut first) = watch::channel(false);
        tokio::spawn(fleet.clone().run(synced, shutdown));
        let wait = fleet.config.startup_wait;
        if tokio::time::timeout(wait, first.wait_for(|s| *s)).await.is_err() {
            tracing::error!(
                wait_seconds = wait.as_secs_f64(),
                "the fleet's store is unreachable: serving from the file (degraded) until it connects"
            );
        }
        fleet
    }

    /// The fleet as this replica sees it.
    pub fn view(&self) -> View {
        let view = self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        View { degraded: !view.connected, ..view }
    }

    fn update(&self, f: impl FnOnce(&mut View)) {
        let mut view = self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut view);
        self.metrics.cluster_connected.set(view.connected.into());
        let fresh = view.replicas.iter().filter(|r| r.seen_seconds_ago < 3.0 * self.config.heartbeat.as_secs_f64());
        self.metrics.cluster_replicas.set(fresh.count() as i64);
    }

    /// Sessions with the store, one after another, until shutdown.
    async fn run(self: Arc<Self>, synced: watch::Sender<bool>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let ended = tokio::select! {
                _ = shutdown.cancelled() => return self.leave().await,
                ended = self.session(&synced, &mut backoff) => ended,
            };
            self.store.client.store(None);
            self.update(|v| {
                v.connected = false;
                v.last_error = Some(ended.clone());
            });
            tracing::warn!(
                key = "cluster.database_url", error = %ended, retry_in_ms = backoff.as_millis() as u64,
                "fleet store unreachable; routing on the last applied state"
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Leaves the fleet at shutdown: no handoff waits for this replica's heartbeat.
    async fn leave(&self) {
        if let Some(client) = self.store.client.load_full() {
            let id = &self.config.replica_id;
            let _ = tokio::time::timeout(Duration::from_secs(1), client.execute(&self.store.sql.leave, &[id])).await;
        }
    }

    /// One session: connect, make sure the schema is there, LISTEN, then apply every
    /// committed change until the connection fails (the reason is returned).
    async fn session(&self, synced: &watch::Sender<bool>, backoff: &mut Duration) -> String {
        let failed = |e: tokio_postgres::Error| reason(&e);
        let config = match pg::config(&self.config.database_url, "switchyard") {
            Ok(c) => c,
            Err(why) => return why,
        };
        let (client, mut connection) = match config.connect(pg::tls(&self.config.extra_roots)).await {
            Ok(c) => c,
            Err(e) => return failed(e),
        };
        let (notified, mut notifications) = mpsc::unbounded_channel();
        let poke = notified.clone();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        let _ = notified.send(());
                    }
                    Ok(_) => {}
                    Err(e) => return reason(&e),
                }
            }
            "connection closed".to_string()
        });
        let _stop_driver = AbortOnDrop(driver.abort_handle());
        let sql = &self.store.sql;
        if let Err(e) = client.batch_execute(&sql.ensure).await {
            return failed(e);
        }
        if let Err(e) = client.batch_execute(&sql.listen).await {
            return failed(e);
        }
        // An empty store takes this replica's state (the file's) as the fleet's first.
        let seed = serde_json::to_string(&self.control.rollout()).expect("a rollout state serialises");
        if let Err(e) = client.execute(&sql.seed, &[&seed]).await {
            return failed(e);
        }
        let client = Arc::new(client);
        self.store.client.store(Some(client.clone()));
        if let Err(e) = self.sync(&client, &poke).await {
            return failed(e);
        }
        self.control.publish_pending().await;
        *backoff = Duration::from_millis(100);
        synced.send_replace(true);
        self.update(|v| {
            v.connected = true;
            v.last_error = None;
        });
        tracing::info!(replica = %self.config.replica_id, generation = self.control.generation(), "fleet store connected");
        let mut tick = tokio::time::interval(self.config.heartbeat);
        let mut driver = driver;
        loop {
            tokio::select! {
                ended = &mut driver => return ended.unwrap_or_else(|_| "connection task ended".into()),
                got = notifications.recv() => {
                    if got.is_none() {
                        return "connection closed".into();
                    }
                    // Several changes at once: one read applies the last.
                    while notifications.try_recv().is_ok() {}
                }
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sync(&client, &poke).await {
                return failed(e);
            }
        }
    }

    /// Reads and adopts the fleet's state and handoff, reports this replica (with its
    /// acknowledgement of the handoff, once drained), and reads the others. `poke`
    /// asks for another round (when the band has drained).
    async fn sync(&self, client: &Client, poke: &mpsc::UnboundedSender<()>) -> Result<(), tokio_postgres::Error> {
        let sql = &self.store.sql;
        let sent = tokio::time::Instant::now();
        let (refused, pending) = match Store::read_all(client, sql, self.store.lease).await? {
            Some((Read::State(rollout, generation), pending)) => {
                let refused = !self.control.adopt(rollout, generation);
                (refused.then(|| ("out of range".to_string(), generation)), self::pending(pending))
            }
            Some((Read::Invalid(why, generation), _)) => (Some((why, generation)), None),
            None => (None, None),
        };
        if let Some((why, generation)) = refused {
            self.invalid(generation, &why);
        }
        let fence = self.control.follow(pending.as_ref());
        let acked = fence.and_then(|f| self.drained(f, poke));
        let applied = self.control.generation();
        self.metrics.cluster_generation.set(i64::try_from(applied).unwrap_or(i64::MAX));
        let id = &self.config.replica_id;
        client.execute(&sql.heartbeat, &[id, &i64::try_from(applied).unwrap_or(i64::MAX), &acked]).await?;
        self.local.lease.renew(sent, self.config.lease);
        let replicas = client.query(&sql.replicas, &[]).await?;
        let replicas = replicas
            .iter()
            .map(|row| Replica {
                id: row.get(0),
                applied_generation: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                seen_seconds_ago: row.get::<_, f64>(2).max(0.0),
            })
            .collect();
        self.update(|v| v.replicas = replicas);
        Ok(())
    }

    /// The handoff `fence` stands for, once this replica's writes from its band have
    /// drained; until then a watcher asks for another round when they have.
    fn drained(&self, fence: Arc<Fence>, poke: &mpsc::UnboundedSender<()>) -> Option<String> {
        let id = fence.id.clone()?;
        if self.local.writes.in_band(&fence.band) == 0 {
            return Some(id);
        }
        let mut watching = self.watching.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if watching.as_deref() != Some(id.as_str()) {
            *watching = Some(id);
            let (writes, poke) = (self.local.writes.clone(), poke.clone());
            tokio::spawn(async move {
                // Bounded by the fence: a write in flight ends by the upstream timeout.
                while writes.in_band(&fence.band) > 0 && !poke.is_closed() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let _ = poke.send(());
            });
        }
        None
    }

    fn invalid(&self, generation: u64, why: &str) {
        tracing::error!(generation, error = %why, "the fleet's stored rollout state is invalid: not applied");
        self.metrics.cluster_invalid_state.inc();
        self.update(|v| v.last_error = Some(format!("stored state at generation {generation} refused: {why}")));
    }
}

/// Stops the connection's task when the session ends.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects to the store once and reads the state (`switchyard check`): a line that
/// says what is there, or why it cannot be read (never the URL).
pub async fn check(config: &ClusterConfig) -> Result<String, String> {
    let client = pg::connect(&config.database_url, "switchyard check", &config.extra_roots).await?;
    let read = Store::read(&client, &Sql::new(&config.schema)).await;
    match read {
        Ok(Some(Read::State(r, generation))) => {
            Ok(format!("fleet store: generation {generation}, {}% from {:?}", r.percentage, r.source))
        }
        Ok(Some(Read::Invalid(why, generation))) => {
            Err(format!("the stored state (generation {generation}) is invalid: {why}"))
        }
        Ok(None) => Ok("fleet store: reachable, no state yet (the first replica seeds it)".into()),
        // No schema yet: the first replica creates it.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(format!(
            "fleet store: reachable, schema {:?} not created yet (the first replica creates it)",
            config.schema
        )),
        Err(e) => Err(reason(&e)),
    }
}
