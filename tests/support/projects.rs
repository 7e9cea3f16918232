//! Two projects shaped like the migration guide on one PostgreSQL: v1's `notes` and
//! `note_tags` in `public`, v2's in `content` (with ids of its own range), each
//! behind a PostgREST-like upstream.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::json;

use super::postgres::Postgres;
use super::postgrest::postgrest;
use super::{Got, Upstream, echo, send};

pub struct Projects {
    pub pg: Postgres,
    pub v1: Upstream,
    pub v2: Upstream,
}

impl Projects {
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.pg.port)
    }

    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    }

    /// `user`'s notes in `db` (the schema that side keeps them in).
    pub async fn notes(&self, db: &str, user: &str) -> Vec<(i64, String)> {
        let schema = if db == "v1" { "public" } else { "content" };
        let c = self.client(db).await;
        let q = format!("SELECT id, body FROM {schema}.notes WHERE user_id = $1 ORDER BY id");
        c.query(&q, &[&user]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

pub async fn projects(name: &str) -> Option<Projects> {
    let pg = Postgres::start(name)?;
    pg.execute("CREATE DATABASE v1").await;
    pg.execute("CREATE DATABASE v2").await;
    let tables = |schema: &str| {
        format!(
            "CREATE TABLE {schema}.notes (id bigserial PRIMARY KEY, user_id text NOT NULL, body text);
             CREATE TABLE {schema}.note_tags (id bigserial PRIMARY KEY, note_id bigint REFERENCES {schema}.notes (id), tag text);"
        )
    };
    let p = Projects { v1: echo("unused").await, v2: echo("unused").await, pg };
    p.client("v1").await.batch_execute(&tables("public")).await.unwrap();
    // v2 hands out ids of its own range: the two projects never make the same id.
    let v2 = format!(
        "CREATE SCHEMA content; {} ALTER SEQUENCE content.notes_id_seq RESTART 1000000; \
         ALTER SEQUENCE content.note_tags_id_seq RESTART 1000000;",
        tables("content")
    );
    p.client("v2").await.batch_execute(&v2).await.unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let v1 = postgrest(&p.url("v1"), failing.clone()).await;
    let v2 = postgrest(&p.url("v2"), failing).await;
    Some(Projects { v1, v2, ..p })
}

/// `user` adds a note through switchyard at `sy`.
pub async fn insert(sy: std::net::SocketAddr, user: &str, body: &str) -> Got {
    let doc = json!({ "user_id": user, "body": body }).to_string();
    send(sy, "POST", "/rest/v1/notes", &[("x-user-id", user), ("content-type", "application/json")], &doc).await
}

/// The migration guide's schema map, as the repository ships it.
pub fn schema_map() -> String {
    format!("{}/config/schema-map.toml", env!("CARGO_MANIFEST_DIR"))
}

/// Two projects with every table of the schema map: on v1 in `public`, on v2 where
/// the map says (merged tables once), each `(id, user_id, body)`, except
/// `memory_chunks`, a child of `memory_entries` without the user column.
/// `tables` is the map's list as switchyard reads it, per side.
pub async fn mapped_projects(name: &str, tables: [Vec<switchyard::cohort::Table>; 2]) -> Option<Projects> {
    let pg = Postgres::start(name)?;
    pg.execute("CREATE DATABASE v1").await;
    pg.execute("CREATE DATABASE v2").await;
    let p = Projects { v1: echo("unused").await, v2: echo("unused").await, pg };
    for (db, tables) in ["v1", "v2"].into_iter().zip(tables) {
        let mut sql = String::new();
        for t in tables {
            let columns = if t.name == "memory_chunks" { "entry_id bigint" } else { "user_id text" };
            let table = format!("\"{}\".\"{}\"", t.schema, t.table);
            sql += &format!(
                "CREATE SCHEMA IF NOT EXISTS \"{}\"; CREATE TABLE IF NOT EXISTS {table} \
                 (id bigserial PRIMARY KEY, {columns}, body text);",
                t.schema
            );
            if db == "v2" {
                sql += &format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1000000000);");
            }
        }
        p.client(db).await.batch_execute(&sql).await.unwrap();
    }
    let failing = Arc::new(AtomicBool::new(false));
    let v1 = postgrest(&p.url("v1"), failing.clone()).await;
    let v2 = postgrest(&p.url("v2"), failing).await;
    Some(Projects { v1, v2, ..p })
}
