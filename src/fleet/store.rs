//! The fleet's store: the SQL that keeps the rollout state and the heartbeats in
//! PostgreSQL, and the compare-and-set that commits a change and notifies every
//! replica in one transaction (the notification goes out only if it commits).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio_postgres::Client;

use crate::control::{Cas, Rollout, Store as ControlStore, StoreFuture};
use crate::pg::reason;

/// One replica's last heartbeat.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replica {
    pub id: String,
    pub applied_generation: u64,
    /// Seconds since it last reported.
    pub seen_seconds_ago: f64,
}

/// The statements, for one schema (a validated identifier, so it is written into
/// the SQL as it is).
pub struct Sql {
    pub ensure: String,
    pub seed: String,
    pub read: String,
    pub cas: String,
    pub heartbeat: String,
    pub replicas: String,
    pub listen: String,
}

impl Sql {
    pub fn new(schema: &str) -> Sql {
        let s = format!("\"{schema}\"");
        let channel = channel(schema);
        Sql {
            // Several replicas may start at once: one creates, the others wait for it.
            ensure: format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(hashtext('switchyard schema {schema}'));
                 CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.rollout (
                     id boolean PRIMARY KEY DEFAULT true CHECK (id),
                     generation bigint NOT NULL,
                     state jsonb NOT NULL,
                     changed_at timestamptz NOT NULL DEFAULT now()
                 );
                 CREATE TABLE IF NOT EXISTS {s}.replicas (
                     id text PRIMARY KEY,
                     applied_generation bigint NOT NULL,
                     last_seen timestamptz NOT NULL DEFAULT now()
                 );
                 COMMIT;"
            ),
            seed: format!(
                "INSERT INTO {s}.rollout (id, generation, state) VALUES (true, 1, $1::text::jsonb)
                 ON CONFLICT (id) DO NOTHING"
            ),
            read: format!("SELECT generation, state::text FROM {s}.rollout WHERE id"),
            cas: format!(
                "WITH updated AS (
                     UPDATE {s}.rollout SET generation = generation + 1, state = $2::text::jsonb, changed_at = now()
                     WHERE id AND generation = $1 RETURNING generation
                 )
                 SELECT generation, pg_notify('{channel}', generation::text)::text FROM updated"
            ),
            heartbeat: format!(
                "INSERT INTO {s}.replicas (id, applied_generation, last_seen) VALUES ($1, $2, now())
                 ON CONFLICT (id) DO UPDATE SET applied_generation = EXCLUDED.applied_generation, last_seen = now()"
            ),
            replicas: format!(
                "SELECT id, applied_generation, extract(epoch FROM now() - last_seen)::float8 FROM {s}.replicas
                 WHERE last_seen > now() - interval '1 hour' ORDER BY id"
            ),
            listen: format!("LISTEN \"{channel}\""),
        }
    }
}

/// The notification channel of `schema`'s state.
fn channel(schema: &str) -> String {
    format!("{schema}_rollout")
}

/// What a read found.
pub enum Read {
    /// The state at its generation.
    State(Rollout, u64),
    /// A row that is not a rollout state (written by hand): the reason.
    Invalid(String, u64),
}

/// The store as the rest of the proxy uses it: the live connection, when there is one.
pub struct Store {
    pub sql: Sql,
    pub client: ArcSwapOption<Client>,
}

impl Store {
    fn client(&self) -> Result<Arc<Client>, Cas> {
        self.client.load_full().ok_or_else(|| Cas::Unavailable("not connected".into()))
    }

    /// The state and its generation.
    pub async fn read(client: &Client, sql: &Sql) -> Result<Option<Read>, tokio_postgres::Error> {
        let Some(row) = client.query_opt(&sql.read, &[]).await? else { return Ok(None) };
        let generation = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let text: String = row.get(1);
        Ok(Some(match serde_json::from_str::<Rollout>(&text) {
            Ok(r) => Read::State(r, generation),
            Err(e) => Read::Invalid(e.to_string(), generation),
        }))
    }
}

impl ControlStore for Store {
    fn cas<'a>(&'a self, generation: u64, next: &'a Rollout) -> StoreFuture<'a> {
        Box::pin(async move {
            let client = self.client()?;
            let unavailable = |e: tokio_postgres::Error| Cas::Unavailable(reason(&e));
            let state = serde_json::to_string(next).expect("a rollout state serialises");
            let expected = i64::try_from(generation).unwrap_or(i64::MAX);
            let committed = client.query_opt(&self.sql.cas, &[&expected, &state]).await.map_err(unavailable)?;
            if let Some(row) = committed {
                return Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0));
            }
            match Store::read(&client, &self.sql).await.map_err(unavailable)? {
                Some(Read::State(winner, at)) => Err(Cas::Conflict(winner, at)),
                Some(Read::Invalid(why, _)) => Err(Cas::Unavailable(format!("the stored state is invalid: {why}"))),
                None => Err(Cas::Unavailable("the state row is missing".into())),
            }
        })
    }
}
