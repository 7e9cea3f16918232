//! Cohort bands: the users a change of the percentage moves, and the PostgreSQL
//! expression that selects them in a project's tables (`switchyard cohort sql`, the
//! handoff's sync). A change from `old` to `new` moves the percentiles between the
//! two: `[old, new)` from v1 to v2 when raising, `[new, old)` back when lowering.

use serde::Serialize;

use crate::backend::BackendId;

/// The percentiles a change moves, and which way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Band {
    /// First percentile that moves.
    pub low: u8,
    /// First percentile past the band (`low < high <= 100`).
    pub high: u8,
    /// The side the band's users leave.
    pub from: BackendId,
    /// The side they go to.
    pub to: BackendId,
}

impl Band {
    /// The band a change from `old` to `new` percent moves; `None` when it moves nobody.
    pub fn between(old: u8, new: u8) -> Option<Band> {
        let (old, new) = (old.min(100), new.min(100));
        match old.cmp(&new) {
            std::cmp::Ordering::Less => Some(Band { low: old, high: new, from: BackendId::V1, to: BackendId::V2 }),
            std::cmp::Ordering::Greater => Some(Band { low: new, high: old, from: BackendId::V2, to: BackendId::V1 }),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// Whether percentile `p` is in the band.
    pub fn contains(&self, p: u8) -> bool {
        (self.low..self.high).contains(&p)
    }

    /// The PostgreSQL predicate true for exactly the rows whose `column` holds a user
    /// in the band (rows with no user are never selected).
    pub fn predicate(&self, column: &str, seed: &[u8]) -> String {
        let p = percentile_sql(column, seed);
        if self.high - self.low == 1 {
            format!("{p} = {}", self.low)
        } else {
            format!("{p} BETWEEN {} AND {}", self.low, self.high - 1)
        }
    }
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
}
