//! Carrying a band's rows to the side its users move to. Built in for PostgreSQL, in
//! two passes. The pre-copy, before the fence: in one transaction on the new side,
//! with triggers off as logical replication runs them (`session_replication_role =
//! replica`), every mapped table's band rows are deleted and copied afresh from the
//! old side (`COPY`). Then the fenced pass ([`super::delta`]) carries what the band
//! wrote meanwhile. Ids are copied as they are: the projects must hand out ids that
//! never collide (UUIDs, or sequence ranges of their own; a sequence is never moved,
//! which would push one project into the other's range). Or an operator's command,
//! given the band in its environment.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

use crate::config::Config;
use crate::config::handoff::{HandoffConfig, Owner};
use crate::pg;
use crate::routing::band::{Band, identifier};

/// What a sync did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Synced {
    /// Rows copied to the new side before the fence (the pre-copy).
    pub precopied: u64,
    /// Rows copied to the new side inside the fence.
    pub rows: u64,
    /// Rows deleted on the new side inside the fence (changed or gone on the old).
    pub deleted: u64,
    /// Tables synced.
    pub tables: usize,
    /// Mapped tables whose rows are not carried (no user column, no parent), by name.
    pub not_covered: Vec<String>,
}

/// A mapped table on both sides.
pub(super) struct Pair {
    pub name: String,
    pub from: String,
    pub to: String,
}

fn pairs(config: &Config, band: &Band) -> Vec<Pair> {
    let from = crate::cohort::tables(config, band.from);
    let to = crate::cohort::tables(config, band.to);
    from.into_iter()
        .zip(to)
        .map(|(f, t)| Pair {
            name: f.name,
            from: format!("{}.{}", identifier(&f.schema), identifier(&f.table)),
            to: format!("{}.{}", identifier(&t.schema), identifier(&t.table)),
        })
        .collect()
}

/// Columns of `table` (`schema.table` quoted) that a copy can write, in order.
async fn columns(db: &Client, table: &str) -> Result<Vec<String>, String> {
    let rows = db
        .query(
            "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
             AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
            &[&table],
        )
        .await
        .map_err(|e| pg::reason(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The predicate selecting `pair`'s band rows, as `side` names tables (`None`: no way
/// to tell whose rows they are).
fn predicate(
    h: &HandoffConfig,
    config: &Config,
    band: &Band,
    name: &str,
    cols: &[String],
    parent_table: Option<&str>,
) -> Option<String> {
    let seed = &config.rollout.hash_seed;
    match h.owner(name) {
        Owner::Column(c) => cols.contains(&c).then(|| band.predicate(&c, seed)),
        Owner::Parent { parent, key, parent_key } => {
            let parent_table = parent_table?;
            let Owner::Column(user) = h.owner(&parent) else { return None };
            cols.contains(&key).then(|| {
                format!(
                    "{} IN (SELECT {} FROM {parent_table} WHERE {})",
                    identifier(&key),
                    identifier(&parent_key),
                    band.predicate(&user, seed)
                )
            })
        }
    }
}

/// One table's part in a sync.
pub(super) struct Planned {
    pub pair: Pair,
    /// Columns both sides have, in the new side's order.
    pub columns: Vec<String>,
    /// Its band rows, on the old side and on the new.
    pub on_from: String,
    pub on_to: String,
}

impl Planned {
    /// The copied columns, quoted, as a list.
    pub fn list(&self) -> String {
        self.columns.iter().map(|c| identifier(c)).collect::<Vec<_>>().join(", ")
    }
}

/// Which mapped tables a sync of `band` carries, and how; the names of those it
/// cannot (missing on a side, no user column, no parent).
pub(super) async fn plan(
    config: &Config,
    h: &HandoffConfig,
    band: &Band,
    source: &Client,
    target: &Client,
) -> (Vec<Planned>, Vec<String>) {
    let pairs = pairs(config, band);
    let parent_of = |name: &str, old_side: bool| match h.owner(name) {
        Owner::Parent { parent, .. } => {
            pairs.iter().find(|p| p.name == parent).map(|p| if old_side { p.from.clone() } else { p.to.clone() })
        }
        Owner::Column(_) => None,
    };
    let (mut planned, mut not_covered) = (Vec::new(), Vec::new());
    for p in &pairs {
        // Several v1 tables merged into one v2 table: whose band rows are whose is
        // not known, so none are carried.
        if pairs.iter().filter(|q| q.to == p.to || q.from == p.from).count() > 1 {
            not_covered.push(p.name.clone());
            continue;
        }
        let (Ok(from_cols), Ok(to_cols)) = (columns(source, &p.from).await, columns(target, &p.to).await) else {
            not_covered.push(p.name.clone());
            continue;
        };
        let on_from = predicate(h, config, band, &p.name, &from_cols, parent_of(&p.name, true).as_deref());
        let on_to = predicate(h, config, band, &p.name, &to_cols, parent_of(&p.name, false).as_deref());
        match (on_from, on_to) {
            (Some(on_from), Some(on_to)) => {
                let columns = to_cols.into_iter().filter(|c| from_cols.contains(c)).collect();
                let pair = Pair { name: p.name.clone(), from: p.from.clone(), to: p.to.clone() };
                planned.push(Planned { pair, columns, on_from, on_to });
            }
            _ => not_covered.push(p.name.clone()),
        }
    }
    (planned, not_covered)
}

/// What a handoff carries (`switchyard check`): the mapped tables synced, and those
/// not, reading both projects' databases.
pub async fn coverage(config: &Config, h: &HandoffConfig) -> Result<(Vec<String>, Vec<String>), String> {
    let url = |side| config.backends.get(side).database_url.as_ref().ok_or("no database_url");
    let roots = &config.upstream.extra_roots;
    let v1 = pg::connect(url(crate::backend::BackendId::V1)?, "switchyard check", roots).await?;
    let v2 = pg::connect(url(crate::backend::BackendId::V2)?, "switchyard check", roots).await?;
    let band = Band::between(0, 100).expect("a band");
    let (planned, not_covered) = plan(config, h, &band, &v1, &v2).await;
    Ok((planned.into_iter().map(|t| t.pair.name).collect(), not_covered))
}

/// Connects to the side `band` leaves and the side it goes to.
pub(super) async fn connect(config: &Config, band: &Band) -> Result<(Client, Client), String> {
    let url = |side| config.backends.get(side).database_url.as_ref().ok_or("no database_url");
    let roots = &config.upstream.extra_roots;
    let source = pg::connect(url(band.from)?, "switchyard handoff", roots).await?;
    let target = pg::connect(url(band.to)?, "switchyard handoff", roots).await?;
    Ok((source, target))
}

/// A transaction on the new side with triggers off, as logical replication runs.
pub(super) async fn replica_tx(target: &mut Client) -> Result<tokio_postgres::Transaction<'_>, String> {
    let tx = target.transaction().await.map_err(|e| pg::reason(&e))?;
    tx.batch_execute("SET LOCAL session_replication_role = replica").await.map_err(|e| pg::reason(&e))?;
    Ok(tx)
}

/// Copies the rows `select` (a query on the old side) gives into `table` on the new.
pub(super) async fn copy(
    source: &Client,
    tx: &tokio_postgres::Transaction<'_>,
    select: &str,
    table: &str,
    list: &str,
) -> Result<u64, String> {
    let out = source.copy_out(&format!("COPY ({select}) TO STDOUT")).await.map_err(|e| pg::reason(&e))?;
    let sink = tx.copy_in(&format!("COPY {table} ({list}) FROM STDIN")).await.map_err(|e| pg::reason(&e))?;
    let mut out = std::pin::pin!(out);
    let mut sink = std::pin::pin!(sink);
    while let Some(chunk) = out.next().await {
        let chunk: Bytes = chunk.map_err(|e| pg::reason(&e))?;
        sink.send(chunk).await.map_err(|e| pg::reason(&e))?;
    }
    sink.as_mut().finish().await.map_err(|e| pg::reason(&e))
}

/// The pre-copy: makes the band's rows on the new side equal to the old side's, all
/// of them. Outside the fence the band may write on meanwhile; the fenced pass
/// ([`super::delta::carry`]) carries that.
pub async fn postgres(config: &Config, h: &HandoffConfig, band: &Band) -> Result<Synced, String> {
    let (source, mut target) = connect(config, band).await?;
    let (plan, not_covered) = plan(config, h, band, &source, &target).await;
    let mut synced = Synced { not_covered, ..Synced::default() };
    let tx = replica_tx(&mut target).await?;
    // Children (rows found through a parent) go first, while their parents are there.
    let mut ordered: Vec<&Planned> = plan.iter().collect();
    ordered.sort_by_key(|t| matches!(h.owner(&t.pair.name), Owner::Column(_)));
    for t in &ordered {
        tx.execute(&format!("DELETE FROM {} WHERE {}", t.pair.to, t.on_to), &[]).await.map_err(|e| pg::reason(&e))?;
    }
    // Parents first for the copy.
    for t in ordered.iter().rev() {
        let list = t.list();
        let select = format!("SELECT {list} FROM {} WHERE {}", t.pair.from, t.on_from);
        synced.precopied += copy(&source, &tx, &select, &t.pair.to, &list).await?;
        synced.tables += 1;
    }
    tx.commit().await.map_err(|e| pg::reason(&e))?;
    Ok(synced)
}

/// Runs the operator's command for `band` (exit 0: done), killed at `timeout`.
pub async fn command(
    program: &[String],
    config: &Config,
    h: &HandoffConfig,
    band: &Band,
    timeout: Duration,
) -> Result<Synced, String> {
    let (first, args) = program.split_first().ok_or("no command")?;
    let mut cmd = tokio::process::Command::new(first);
    cmd.args(args)
        .kill_on_drop(true)
        .env("SWITCHYARD_BAND_LOW", band.low.to_string())
        .env("SWITCHYARD_BAND_HIGH", band.high.to_string())
        .env("SWITCHYARD_FROM", band.from.as_str())
        .env("SWITCHYARD_TO", band.to.as_str())
        .env("SWITCHYARD_USER_COLUMN", &h.user_column)
        .env("SWITCHYARD_USERS", band.users.join("\n"))
        .env("SWITCHYARD_PREDICATE", band.predicate(&h.user_column, &config.rollout.hash_seed));
    let status = tokio::time::timeout(timeout, cmd.status())
        .await
        .map_err(|_| "the sync command did not finish in time".to_string())?
        .map_err(|e| format!("the sync command could not run: {e}"))?;
    if status.success() { Ok(Synced::default()) } else { Err(format!("the sync command failed ({status})")) }
}
