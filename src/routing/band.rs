//! Cohort bands: the users a change of the percentage moves, and the PostgreSQL
//! expression that selects them in a project's tables (`switchyard cohort sql`, the
//! handoff's sync). A change from `old` to `new` moves the percentiles between the
//! two: `[old, new)` from v1 to v2 when raising, `[new, old)` back when lowering.
//! Users pinned by `[overrides]` never move with a band; a change of the overrides
//! moves single users, named in a band of their own.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::percentile::{in_v2_cohort, percentile};
use crate::backend::BackendId;

/// The users a change moves, and which way: a range of percentiles (without the
/// pinned users), and single users named by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Band {
    /// First percentile that moves.
    pub low: u8,
    /// First percentile past the band (`low <= high <= 100`; equal: no percentile).
    pub high: u8,
    /// The side the band's users leave.
    pub from: BackendId,
    /// The side they go to.
    pub to: BackendId,
    /// Single users that move (a change of `[overrides]`).
    #[serde(default = "none", skip_serializing_if = "<[String]>::is_empty")]
    pub users: Arc<[String]>,
    /// Users pinned by `[overrides]`: in the range by percentile, but staying (they
    /// are not routed by it, so only the sync needs them).
    #[serde(skip, default = "none")]
    pub pinned: Arc<[String]>,
}

fn none() -> Arc<[String]> {
    Arc::new([])
}

impl Band {
    /// The band a change from `old` to `new` percent moves; `None` when it moves nobody.
    pub fn between(old: u8, new: u8) -> Option<Band> {
        let (old, new) = (old.min(100), new.min(100));
        match old.cmp(&new) {
            std::cmp::Ordering::Less => Some(Band::range(old, new, BackendId::V1, BackendId::V2)),
            std::cmp::Ordering::Greater => Some(Band::range(new, old, BackendId::V2, BackendId::V1)),
            std::cmp::Ordering::Equal => None,
        }
    }

    fn range(low: u8, high: u8, from: BackendId, to: BackendId) -> Band {
        Band { low, high, from, to, users: none(), pinned: none() }
    }

    /// The single users `users` moving from `from` to `to`; `None` when there are none.
    pub fn users(users: Vec<String>, from: BackendId, to: BackendId) -> Option<Band> {
        (!users.is_empty()).then(|| Band { users: users.into(), ..Band::range(0, 0, from, to) })
    }

    /// The band without the users pinned by `[overrides]`.
    pub fn without(self, pinned: impl IntoIterator<Item = String>) -> Band {
        let mut pinned: Vec<String> = pinned.into_iter().collect();
        pinned.sort();
        Band { pinned: pinned.into(), ..self }
    }

    /// Whether percentile `p` is in the band's range.
    pub fn contains(&self, p: u8) -> bool {
        (self.low..self.high).contains(&p)
    }

    /// The PostgreSQL predicate true for exactly the rows whose `column` holds a user
    /// in the band (rows with no user are never selected).
    pub fn predicate(&self, column: &str, seed: &[u8]) -> String {
        let id = format!("{}::text", identifier(column));
        let p = percentile_sql(column, seed);
        let range = match self.high.saturating_sub(self.low) {
            0 => None,
            1 => Some(format!("{p} = {}", self.low)),
            _ => Some(format!("{p} BETWEEN {} AND {}", self.low, self.high - 1)),
        };
        let range = match (range, self.pinned.is_empty()) {
            (Some(r), false) => Some(format!("({r} AND {id} NOT IN ({}))", list(&self.pinned))),
            (range, _) => range,
        };
        let users = (!self.users.is_empty()).then(|| format!("{id} IN ({})", list(&self.users)));
        match (range, users) {
            (Some(r), Some(u)) => format!("({r} OR {u})"),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => "false".into(),
        }
    }
}

/// The single users a change of the pins (`[overrides]`) from `old` to `new` moves at
/// `percentage`: at most one band each way, users in order.
pub fn repinned(
    old: &HashMap<String, BackendId>,
    new: &HashMap<String, BackendId>,
    seed: &[u8],
    percentage: u8,
) -> Vec<Band> {
    let by_cohort = |u: &str| if in_v2_cohort(percentile(seed, u), percentage) { BackendId::V2 } else { BackendId::V1 };
    let side = |pins: &HashMap<String, BackendId>, u: &str| pins.get(u).copied().unwrap_or_else(|| by_cohort(u));
    let mut to = [Vec::new(), Vec::new()];
    for u in old.keys().chain(new.keys().filter(|u| !old.contains_key(*u))) {
        let (before, after) = (side(old, u), side(new, u));
        if before != after {
            to[usize::from(after == BackendId::V2)].push(u.clone());
        }
    }
    let [mut to_v1, mut to_v2] = to;
    to_v1.sort();
    to_v2.sort();
    [Band::users(to_v1, BackendId::V2, BackendId::V1), Band::users(to_v2, BackendId::V1, BackendId::V2)]
        .into_iter()
        .flatten()
        .collect()
}

/// `ids` as a list of PostgreSQL string literals.
fn list(ids: &[String]) -> String {
    ids.iter().map(|i| literal(i)).collect::<Vec<_>>().join(", ")
}

/// The PostgreSQL expression of a user's percentile, the proxy's rule:
/// `parseInt(md5(seed || id).hex[0..8], 16) % 100`, for the user id in `column`.
pub fn percentile_sql(column: &str, seed: &[u8]) -> String {
    let id = format!("{}::text", identifier(column));
    let hashed = if seed.is_empty() { id } else { format!("{} || {id}", literal(&String::from_utf8_lossy(seed))) };
    format!("(('x' || substr(md5({hashed}), 1, 8))::bit(32)::bigint % 100)")
}

/// `name` as a quoted PostgreSQL identifier (a `schema.table`-style dot is not
/// special: one identifier).
pub fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a PostgreSQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_moves_users_to_v2_and_lowering_moves_them_back() {
        let up = Band::between(10, 25).unwrap();
        assert_eq!((up.low, up.high, up.from, up.to), (10, 25, BackendId::V1, BackendId::V2));
        assert!(up.contains(10) && up.contains(24) && !up.contains(25) && !up.contains(9));
        let down = Band::between(40, 0).unwrap();
        assert_eq!((down.low, down.high, down.from, down.to), (0, 40, BackendId::V2, BackendId::V1));
        assert!(Band::between(30, 30).is_none());
    }

    #[test]
    fn predicates_quote_what_they_are_given() {
        let band = Band::between(10, 25).unwrap();
        assert_eq!(
            band.predicate("user_id", b""),
            "(('x' || substr(md5(\"user_id\"::text), 1, 8))::bit(32)::bigint % 100) BETWEEN 10 AND 24"
        );
        assert!(Band::between(5, 6).unwrap().predicate("u", b"").ends_with("% 100) = 5"));
        let hostile = Band::between(0, 1).unwrap().predicate("a\"; drop table x; --", b"s'eed");
        assert!(hostile.contains("\"a\"\"; drop table x; --\"::text"), "{hostile}");
        assert!(hostile.contains("md5('s''eed' || "), "{hostile}");
    }

    #[test]
    fn a_change_of_pins_moves_the_users_whose_side_changes() {
        let pins = |list: &[(&str, BackendId)]| list.iter().map(|(u, b)| (u.to_string(), *b)).collect();
        let (v1, v2) = (BackendId::V1, BackendId::V2);
        // At 0 % everyone unpinned is on v1, at 100 % on v2.
        let old = pins(&[("a", v2), ("b", v1), ("c", v2)]);
        let new = pins(&[("b", v2), ("c", v2), ("d", v2), ("e", v1)]);
        let moved = repinned(&old, &new, b"", 0);
        assert_eq!(moved.len(), 2);
        assert_eq!((moved[0].from, &*moved[0].users), (v2, &["a".to_string()][..]));
        assert_eq!((moved[1].to, &*moved[1].users), (v2, &["b".to_string(), "d".to_string()][..]));
        let at_100 = repinned(&old, &new, b"", 100);
        assert_eq!(at_100.len(), 2, "{at_100:?}");
        assert_eq!((at_100[0].to, &*at_100[0].users), (v1, &["e".to_string()][..]));
        assert_eq!(&*at_100[1].users, &["b".to_string()][..]);
        assert!(repinned(&old, &old, b"", 30).is_empty());
    }

    #[test]
    fn pinned_users_stay_and_single_users_move() {
        let band = Band::between(0, 10).unwrap().without(["b'x".to_string(), "a".to_string()]);
        let p = band.predicate("user_id", b"");
        assert!(p.ends_with("BETWEEN 0 AND 9 AND \"user_id\"::text NOT IN ('a', 'b''x'))"), "{p}");
        let one = Band::users(vec!["u1".into()], BackendId::V2, BackendId::V1).unwrap();
        assert_eq!(one.predicate("user_id", b""), "\"user_id\"::text IN ('u1')");
        assert!(!one.contains(0));
        assert!(Band::users(vec![], BackendId::V1, BackendId::V2).is_none());
        let both = Band { users: one.users.clone(), ..Band::between(5, 6).unwrap() };
        assert!(both.predicate("c", b"").contains(") = 5 OR \"c\"::text IN ('u1'))"));
    }
}
