//! The fenced pass of the built-in sync: after the pre-copy, with the band's writes
//! held and drained, carries what the band changed on the old side meanwhile —
//! inserts, updates and deletes — so the fence lasts as long as reading the band's
//! rows, not copying them.
//!
//! Changes are found by content, needing neither triggers nor a primary key: each
//! band row on both sides is reduced to the MD5 of its copied columns as text. Rows
//! whose digest is on both sides as often are equal; for every other digest the new
//! side's rows are deleted (by `ctid`, checked against the digest, inside the
//! transaction) and the old side's are copied. An update is thus a delete and a copy
//! of one row. How the digests compare is [`differences`], a plain function.
//!
//! Only the handoff writes the band's rows on the new side, so their digests are read
//! before the fence ([`prepare`], right after the pre-copy); inside it only the old
//! side is read.

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
    /// New-side rows to delete: their `ctid`s, and digests as read.
    pub delete: Vec<(String, Digest)>,
    /// Digests of old-side rows to copy (every row with that digest).
    pub copy: Vec<String>,
}

/// A row's digest.
pub type Digest = [u8; 16];

/// Compares the old side's row digests with the new side's (`ctid`, digest) pairs.
pub fn differences(old: &[Digest], new: &[(String, Digest)]) -> Differences {
    let mut count: HashMap<Digest, (usize, Vec<&String>)> = HashMap::with_capacity(old.len());
    for d in old {
        count.entry(*d).or_default().0 += 1;
    }
    for (ctid, d) in new {
        count.entry(*d).or_default().1.push(ctid);
    }
    let mut diff = Differences::default();
    for (digest, (on_old, on_new)) in count {
        if on_old != on_new.len() {
            diff.delete.extend(on_new.into_iter().map(|ctid| (ctid.clone(), digest)));
            if on_old > 0 {
                diff.copy.push(digest.iter().map(|b| format!("{b:02x}")).collect());
            }
        }
    }
    diff.delete.sort();
    diff.copy.sort();
    diff
}

/// The digest of a row of `t`, in SQL (the same columns, in the same order, on both
/// sides), as text.
fn digest(t: &Planned) -> String {
    format!("md5(ROW({})::text)", t.list())
}

fn digest_of(row: &tokio_postgres::Row, i: usize) -> Digest {
    let bytes: &[u8] = row.get(i);
    bytes.try_into().unwrap_or_default()
}

/// What the fenced pass needs, read before the fence: both sides' sessions, the
/// plan, and the new side's band rows (`ctid`, digest) per table.
pub struct Prepared {
    source: Client,
    target: Client,
    plan: Vec<Planned>,
    not_covered: Vec<String>,
    new: Vec<Vec<(String, Digest)>>,
}

/// Reads the new side's band rows, right after the pre-copy.
pub async fn prepare(config: &Config, h: &HandoffConfig, band: &Band) -> Result<Prepared, String> {
    let (source, target) = sync::connect(config, band).await?;
    let (plan, not_covered) = sync::plan(config, h, band, &source, &target).await;
    let mut new = Vec::with_capacity(plan.len());
    for t in &plan {
        let q = format!("SELECT ctid::text, decode({}, 'hex') FROM {} WHERE {}", digest(t), t.pair.to, t.on_to);
        let rows = target.query(&q, &[]).await.map_err(|e| pg::reason(&e))?;
        new.push(rows.iter().map(|r| (r.get(0), digest_of(r, 1))).collect());
    }
    Ok(Prepared { source, target, plan, not_covered, new })
}

/// The fenced pass: the band's rows on the new side made equal to the old side's,
/// carrying only what differs, in one transaction.
pub async fn carry(prepared: Prepared) -> Result<Synced, String> {
    let Prepared { source, mut target, plan, not_covered, new } = prepared;
    let mut synced = Synced { not_covered, ..Synced::default() };
    let mut found = Vec::with_capacity(plan.len());
    for (t, new) in plan.iter().zip(&new) {
        let q = format!("SELECT decode({}, 'hex') FROM {} WHERE {}", digest(t), t.pair.from, t.on_from);
        let old: Vec<Digest> =
            source.query(&q, &[]).await.map_err(|e| pg::reason(&e))?.iter().map(|r| digest_of(r, 0)).collect();
        found.push(differences(&old, new));
    }
    let tx = sync::replica_tx(&mut target).await?;
    for (t, diff) in plan.iter().zip(&found) {
        if !diff.delete.is_empty() {
            // Each row's digest is checked again: a row that is not what was read
            // (changed by someone else since) is kept.
            let delete = format!(
                "DELETE FROM {} USING unnest($1::text[], $2::bytea[]) AS switchyard_rows (ctid_, digest_) \
                 WHERE ctid = ctid_::tid AND decode({}, 'hex') = digest_",
                t.pair.to,
                digest(t)
            );
            let (ctids, digests): (Vec<&str>, Vec<&[u8]>) =
                diff.delete.iter().map(|(c, d)| (c.as_str(), d.as_slice())).unzip();
            synced.deleted += tx.execute(&delete, &[&ctids, &digests]).await.map_err(|e| pg::reason(&e))?;
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

    fn d(tag: u8) -> Digest {
        [tag; 16]
    }

    fn hex(tag: u8) -> String {
        format!("{tag:02x}").repeat(16)
    }

    #[test]
    fn equal_rows_stay_and_the_rest_is_replaced() {
        // 1 the same; 2 edited into 4; 3 deleted; 5 inserted.
        let new = vec![("(0,1)".to_string(), d(1)), ("(0,2)".to_string(), d(2)), ("(0,3)".to_string(), d(3))];
        let diff = differences(&[d(1), d(4), d(5)], &new);
        let delete = vec![("(0,2)".to_string(), d(2)), ("(0,3)".to_string(), d(3))];
        assert_eq!(diff, Differences { delete, copy: vec![hex(4), hex(5)] });
        assert_eq!(differences(&[d(1)], &[("(0,1)".into(), d(1))]), Differences::default());
    }

    #[test]
    fn duplicate_rows_are_counted() {
        // Two equal rows on the old side, one on the new: both copied after a delete.
        let diff = differences(&[d(7), d(7)], &[("(0,1)".into(), d(7))]);
        assert_eq!(diff, Differences { delete: vec![("(0,1)".into(), d(7))], copy: vec![hex(7)] });
        let diff = differences(&[d(7)], &[("(0,1)".into(), d(7)), ("(0,2)".into(), d(7))]);
        assert_eq!(diff.delete.len(), 2);
        assert_eq!(diff.copy, [hex(7)]);
    }
}
