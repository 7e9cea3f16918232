//! The fleet's store: the SQL that keeps the rollout state and the heartbeats in
//! PostgreSQL, and the compare-and-set that commits a change and notifies every
//! replica in one transaction (the notification goes out only if it commits).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio_postgres::Client;

use crate::control::{Cas, Rollout, Store as ControlStore, StoreFuture};
use crate::handoff::coordinate::{Call, Coordinator, Pending};
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
    /// The state with the handoff in progress (one whose leader renewed it within
    /// the lease, `$1` seconds).
    pub read_all: String,
    pub cas: String,
    pub heartbeat: String,
    pub leave: String,
    pub replicas: String,
    pub listen: String,
    handoff: HandoffSql,
}

/// The statements of a fleet's handoff.
struct HandoffSql {
    clear_stale: String,
    begin: String,
    waiting: String,
    renew: String,
    abort: String,
    finish: String,
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
                 ALTER TABLE {s}.replicas ADD COLUMN IF NOT EXISTS acked text;
                 CREATE TABLE IF NOT EXISTS {s}.handoff (
                     id boolean PRIMARY KEY DEFAULT true CHECK (id),
                     hid text NOT NULL,
                     pending jsonb NOT NULL,
                     leader text NOT NULL,
                     renewed_at timestamptz NOT NULL DEFAULT now()
                 );
                 COMMIT;"
            ),
            seed: format!(
                "INSERT INTO {s}.rollout (id, generation, state) VALUES (true, 1, $1::text::jsonb)
                 ON CONFLICT (id) DO NOTHING"
            ),
            read: format!("SELECT generation, state::text FROM {s}.rollout WHERE id"),
            read_all: format!(
                "SELECT r.generation, r.state::text, (SELECT h.pending::text FROM {s}.handoff h
                     WHERE h.renewed_at > now() - make_interval(secs => $1)) FROM {s}.rollout r WHERE r.id"
            ),
            cas: format!(
                "WITH updated AS (
                     UPDATE {s}.rollout SET generation = generation + 1, state = $2::text::jsonb, changed_at = now()
                     WHERE id AND generation = $1 RETURNING generation
                 )
                 SELECT generation, pg_notify('{channel}', generation::text)::text FROM updated"
            ),
            heartbeat: format!(
                "INSERT INTO {s}.replicas (id, applied_generation, last_seen, acked) VALUES ($1, $2, now(), $3)
                 ON CONFLICT (id) DO UPDATE SET applied_generation = EXCLUDED.applied_generation, last_seen = now(),
                 acked = EXCLUDED.acked"
            ),
            leave: format!("DELETE FROM {s}.replicas WHERE id = $1"),
            replicas: format!(
                "SELECT id, applied_generation, extract(epoch FROM now() - last_seen)::float8 FROM {s}.replicas
                 WHERE last_seen > now() - interval '1 hour' ORDER BY id"
            ),
            listen: format!("LISTEN \"{channel}\""),
            handoff: HandoffSql {
                clear_stale: format!("DELETE FROM {s}.handoff WHERE renewed_at <= now() - make_interval(secs => $1)"),
                begin: format!(
                    "INSERT INTO {s}.handoff (id, hid, pending, leader) VALUES (true, $1, $2::text::jsonb, $3)
                     ON CONFLICT (id) DO NOTHING RETURNING pg_notify('{channel}', 'handoff')::text"
                ),
                waiting: format!(
                    "SELECT id FROM {s}.replicas WHERE acked IS DISTINCT FROM $1
                     AND last_seen > now() - make_interval(secs => $2) ORDER BY id"
                ),
                renew: format!("UPDATE {s}.handoff SET renewed_at = now() WHERE hid = $1"),
                abort: format!(
                    "WITH ended AS (DELETE FROM {s}.handoff WHERE hid = $1 RETURNING 1)
                     SELECT pg_notify('{channel}', 'handoff')::text FROM ended"
                ),
                // The flip commits only while the handoff stands (not abandoned), and
                // ends it in the same statement.
                finish: format!(
                    "WITH updated AS (
                         UPDATE {s}.rollout SET generation = generation + 1, state = $2::text::jsonb, changed_at = now()
                         WHERE id AND generation = $1 AND EXISTS (SELECT 1 FROM {s}.handoff
                             WHERE hid = $3 AND renewed_at > now() - make_interval(secs => $4))
                         RETURNING generation
                     ), ended AS (
                         DELETE FROM {s}.handoff WHERE hid = $3 AND EXISTS (SELECT 1 FROM updated) RETURNING 1
                     )
                     SELECT generation, pg_notify('{channel}', generation::text)::text FROM updated"
                ),
            },
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
    /// How long a replica's heartbeat holds its lease.
    pub lease: Duration,
    /// After how long without a heartbeat a replica is gone: its lease has run out
    /// and any write it had in flight has ended (the upstream timeout).
    pub gone_after: Duration,
}

impl Store {
    /// The state, its generation, and the handoff in progress (its text), if any.
    pub async fn read_all(
        client: &Client,
        sql: &Sql,
        lease: Duration,
    ) -> Result<Option<(Read, Option<String>)>, tokio_postgres::Error> {
        let Some(row) = client.query_opt(&sql.read_all, &[&lease.as_secs_f64()]).await? else { return Ok(None) };
        let generation = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let read = match serde_json::from_str::<Rollout>(row.get(1)) {
            Ok(r) => Read::State(r, generation),
            Err(e) => Read::Invalid(e.to_string(), generation),
        };
        Ok(Some((read, row.get(2))))
    }

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

impl Store {
    /// The compare-and-set `sql` (with `extra` parameters after the generation and
    /// state): the new generation, or why not.
    async fn commit(
        &self,
        sql: &str,
        generation: u64,
        next: &Rollout,
        extra: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, Cas> {
        let client = self.client()?;
        let unavailable = |e: tokio_postgres::Error| Cas::Unavailable(reason(&e));
        let state = serde_json::to_string(next).expect("a rollout state serialises");
        let expected = i64::try_from(generation).unwrap_or(i64::MAX);
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&expected, &state];
        params.extend_from_slice(extra);
        let committed = client.query_opt(sql, &params).await.map_err(unavailable)?;
        if let Some(row) = committed {
            return Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0));
        }
        match Store::read(&client, &self.sql).await.map_err(unavailable)? {
            Some(Read::State(winner, at)) => Err(Cas::Conflict(winner, at)),
            Some(Read::Invalid(why, _)) => Err(Cas::Unavailable(format!("the stored state is invalid: {why}"))),
            None => Err(Cas::Unavailable("the state row is missing".into())),
        }
    }

    fn connected(&self) -> Result<Arc<Client>, String> {
        self.client.load_full().ok_or_else(|| "the fleet's store is not connected".to_string())
    }
}

impl ControlStore for Store {
    fn cas<'a>(&'a self, generation: u64, next: &'a Rollout) -> StoreFuture<'a> {
        Box::pin(self.commit(&self.sql.cas, generation, next, &[]))
    }

    fn finish<'a>(&'a self, generation: u64, next: &'a Rollout, id: &'a str) -> StoreFuture<'a> {
        Box::pin(async move {
            let lease = self.lease.as_secs_f64();
            self.commit(&self.sql.handoff.finish, generation, next, &[&id, &lease]).await
        })
    }

    fn coordinator(&self) -> &dyn Coordinator {
        self
    }
}

impl Coordinator for Store {
    fn begin<'a>(&'a self, pending: &'a Pending) -> Call<'a, bool> {
        Box::pin(async move {
            let client = self.connected()?;
            let text = serde_json::to_string(pending).expect("a handoff serialises");
            let lease = self.lease.as_secs_f64();
            client.execute(&self.sql.handoff.clear_stale, &[&lease]).await.map_err(|e| reason(&e))?;
            let sql = &self.sql.handoff.begin;
            let begun = client.query_opt(sql, &[&pending.id, &text, &pending.leader]).await.map_err(|e| reason(&e))?;
            Ok(begun.is_some())
        })
    }

    fn waiting<'a>(&'a self, id: &'a str) -> Call<'a, Vec<String>> {
        Box::pin(async move {
            let client = self.connected()?;
            let gone = self.gone_after.as_secs_f64();
            let rows = client.query(&self.sql.handoff.waiting, &[&id, &gone]).await.map_err(|e| reason(&e))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn renew<'a>(&'a self, id: &'a str) -> Call<'a, bool> {
        Box::pin(async move {
            let client = self.connected()?;
            Ok(client.execute(&self.sql.handoff.renew, &[&id]).await.map_err(|e| reason(&e))? == 1)
        })
    }

    fn abort<'a>(&'a self, id: &'a str) -> Call<'a, ()> {
        Box::pin(async move {
            let client = self.connected()?;
            client.query(&self.sql.handoff.abort, &[&id]).await.map_err(|e| reason(&e))?;
            Ok(())
        })
    }

    fn lease(&self) -> Duration {
        self.lease
    }
}
