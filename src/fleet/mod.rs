//! Fleet state: one rollout state for every replica, kept in PostgreSQL
//! (`[cluster]`, docs/fleet.md). Each replica keeps a session open, LISTENs for
//! committed changes and adopts them, re-reads on every heartbeat in case a
//! notification was missed, and reports which generation it has applied. Changes
//! themselves are made by [`crate::control`] through [`Store`]'s compare-and-set.
//! When the database is unreachable the replica keeps routing with what it applied
//! last, says so (degraded), and reconnects with backoff.

pub mod store;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use crate::config::cluster::ClusterConfig;
use crate::control::Control;
use crate::metrics::Metrics;
use crate::pg::{self, reason};
pub use store::{Read, Replica, Sql, Store};

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
        shutdown: CancellationToken,
    ) -> Arc<Fleet> {
        metrics.cluster_enabled.set(1);
        let store = Arc::new(Store { sql: Sql::new(&config.schema), client: Default::default() });
        control.attach(store.clone());
        let view = View { replica_id: config.replica_id.clone(), ..View::default() };
        let fleet = Arc::new(Fleet { store, config, control, metrics, view: Mutex::new(view) });
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
                _ = shutdown.cancelled() => return,
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
        if let Err(e) = self.sync(&client).await {
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
            if let Err(e) = self.sync(&client).await {
                return failed(e);
            }
        }
    }

    /// Reads and adopts the fleet's state, reports this replica, and reads the others.
    async fn sync(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let sql = &self.store.sql;
        let refused = match Store::read(client, sql).await? {
            Some(Read::State(rollout, generation)) => {
                (!self.control.adopt(rollout, generation)).then(|| ("out of range".to_string(), generation))
            }
            Some(Read::Invalid(why, generation)) => Some((why, generation)),
            None => None,
        };
        if let Some((why, generation)) = refused {
            self.invalid(generation, &why);
        }
        let applied = self.control.generation();
        self.metrics.cluster_generation.set(i64::try_from(applied).unwrap_or(i64::MAX));
        let id = &self.config.replica_id;
        client.execute(&sql.heartbeat, &[id, &i64::try_from(applied).unwrap_or(i64::MAX)]).await?;
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
