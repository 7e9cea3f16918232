//! The fenced pass of the built-in sync: after the pre-copy, with the band's writes
//! held and drained, carries what the band changed on the old side meanwhile —
//! inserts, updates and deletes — so the fence lasts as long as reading the band's
//! rows, not copying them.
//!
//! Changes are found by content, needing neither triggers nor a primary key: each
//! band row on both sides is reduced to the MD5 of its copied columns as text. Rows
//! whose digest is on both sides as often are equal; for every other digest the new
//! side's rows are deleted (by `ctid`, inside the transaction) and the old side's are
//! copied. An update is thus a delete and a copy of one row. How the digests compare
//! is [`differences`], a plain function.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::sync::{self, Planned, Synced};
use crate::config::Config;
use crate::config::handoff::HandoffConfig;
use crate::pg;
use crate::routing::band::Band;

/// What must change on the new side for one table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Differences {
    /// New-side rows (their `ctid`s) to delete.
    pub delete: Vec<String>,
    /// Digests of old-side rows to copy (every row with that digest).
    pub copy: Vec<String>,
}

/// Compares the old side's row digests with the new side's (`ctid`, digest) pairs.
pub fn differences(old: Vec<String>, new: Vec<(String, String)>) -> Differences {
    let mut count: HashMap<String, (usize, Vec<String>)> = HashMap::new();
    for d in old {
        count.entry(d).or_default().0 += 1;
    }
    for (ctid, d) in new {
        count.entry(d).or_default().1.push(ctid);
    }
    let mut diff = Differences::default();
    for (digest, (on_old, on_new)) in count {
        if on_old != on_new.len() {
            diff.delete.extend(on_new);
            if on_old > 0 {
                diff.copy.push(digest);
            }
        }
    }
    diff.delete.sort();
    diff.copy.sort();
    diff
}

/// The digest of a row of `t`, in SQL (the same columns, in the same order, on both
/// sides).
fn digest(t: &Planned) -> String {
    format!("md5(ROW({})::text)", t.list())
}

async fn digests(db: &Client, query: &str) -> Result<Vec<tokio_postgres::Row>, String> {
    db.query(query, &[]).await.map_err(|e| pg::reason(&e))
}

/// The fenced pass: the band's rows on the new side made equal to the old side's,
/// carrying only what differs, in one transaction.
pub async fn carry(config: &Config, h: &HandoffConfig, band: &Band) -> Result<Synced, String> {
    let (source, mut target) = sync::connect(config, band).await?;
    let (plan, not_covered) = sync::plan(config, h, band, &source, &target).await;
    let mut synced = Synced { not_covered, ..Synced::default() };
    let tx = sync::replica_tx(&mut target).await?;
    // Every table read before any is changed: a child's rows are found through its
    // parent's.
    let mut found = Vec::with_capacity(plan.len());
    for t in &plan {
        let d = digest(t);
        let old = format!("SELECT {d} FROM {} WHERE {}", t.pair.from, t.on_from);
        let new = format!("SELECT ctid::text, {d} FROM {} WHERE {}", t.pair.to, t.on_to);
        let (old, new) =
            tokio::try_join!(digests(&source, &old), async { tx.query(&new, &[]).await.map_err(|e| pg::reason(&e)) })?;
        let old = old.iter().map(|r| r.get(0)).collect();
        let new = new.iter().map(|r| (r.get(0), r.get(1))).collect();
        found.push(differences(old, new));
    }
    for (t, diff) in plan.iter().zip(&found) {
        if !diff.delete.is_empty() {
            let delete = format!("DELETE FROM {} WHERE ctid = ANY($1::text[]::tid[])", t.pair.to);
            synced.deleted += tx.execute(&delete, &[&diff.delete]).await.map_err(|e| pg::reason(&e))?;
        }
    }
    for (t, diff) in plan.iter().zip(&found) {
        synced.tables += 1;
        if diff.copy.is_empty() {
            continue;
        }
        // Digests are hex, made here: safe to write into the query.
        let wanted = diff.copy.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ");
        let list = t.list();
        let select = format!("SELECT {list} FROM {} WHERE {} AND {} IN ({wanted})", t.pair.from, t.on_from, digest(t));
        synced.rows += sync::copy(&source, &tx, &select, &t.pair.to, &list).await?;
    }
    tx.commit().await.map_err(|e| pg::reason(&e))?;
    Ok(synced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn equal_rows_stay_and_the_rest_is_replaced() {
        let new = vec![
            ("(0,1)".into(), "same".into()),
            ("(0,2)".into(), "edited-before".into()),
            ("(0,3)".into(), "deleted".into()),
        ];
        let d = differences(s(&["same", "edited-after", "inserted"]), new);
        assert_eq!(d, Differences { delete: s(&["(0,2)", "(0,3)"]), copy: s(&["edited-after", "inserted"]) });
        assert_eq!(differences(s(&["a"]), vec![("(0,1)".into(), "a".into())]), Differences::default());
    }

    #[test]
    fn duplicate_rows_are_counted() {
        // Two equal rows on the old side, one on the new: both copied after a delete.
        let d = differences(s(&["dup", "dup"]), vec![("(0,1)".into(), "dup".into())]);
        assert_eq!(d, Differences { delete: s(&["(0,1)"]), copy: s(&["dup"]) });
        let d = differences(s(&["dup"]), vec![("(0,1)".into(), "dup".into()), ("(0,2)".into(), "dup".into())]);
        assert_eq!(d, Differences { delete: s(&["(0,1)", "(0,2)"]), copy: s(&["dup"]) });
    }
}
