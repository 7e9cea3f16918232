//! Bearer tokens already checked, so that a client's every request does not pay for
//! base64, JSON and HMAC again (a session token is sent unchanged for up to an hour;
//! the check is most of the cost of JWT routing). As Envoy's JWT cache does, but
//! without locks: one small set-associative table per worker thread.
//!
//! An entry is keyed by the whole token, tagged with the verifier that checked it (a
//! reload builds a new verifier, so old entries never answer), and carries the
//! token's validity window, checked again at every hit: an expired token misses and
//! is refused by the full check.

use std::cell::RefCell;
use std::hash::BuildHasher;

use super::jwt::Token;

/// Sets per thread, of `WAYS` entries each (2,048 tokens, about 2 MiB when full of
/// typical Supabase tokens); a miss only costs the full check. Several ways per set,
/// and two sets a token may go in (the one with room is taken), because the tokens
/// in use do not spread evenly: with one set each, the fullest sets would overflow
/// long before the table is full, and their tokens, used in turn, would keep evicting
/// each other and miss every time (measured: 1.4–5.3 % of a thousand users).
const SETS: usize = 256;
const WAYS: usize = 8;
/// Longer tokens are not kept (Supabase access tokens are about 1 KiB).
const MAX_TOKEN_LEN: usize = 2048;
/// Bytes of the token's end that pick its sets: the signature, which varies most.
const HASHED_TAIL: usize = 32;

/// When a checked token is valid, in Unix seconds, leeway included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Not before.
    pub from: u64,
    /// Not after.
    pub until: u64,
}

impl Window {
    /// Always valid (a token nobody here verifies: the backend judges its times).
    pub const ALWAYS: Window = Window { from: 0, until: u64::MAX };

    fn contains(self, now: u64) -> bool {
        self.from <= now && now <= self.until
    }
}

struct Entry {
    verifier: u64,
    token: Box<str>,
    checked: Token,
    window: Window,
}

#[derive(Default)]
struct Set {
    /// A hash of each way's token (0: empty), compared before any token is: a lookup
    /// reads this one cache line, and the one token that matches, instead of every
    /// way's (a working set of a thousand tokens does not stay in the CPU's caches).
    tags: [u64; WAYS],
    ways: [Option<Entry>; WAYS],
}

impl Set {
    fn find(&self, tag: u64, verifier: u64, token: &[u8]) -> Option<&Entry> {
        self.position(tag, |e| e.verifier == verifier && e.token.as_bytes() == token)
            .and_then(|i| self.ways[i].as_ref())
    }

    /// The first way with the right tag whose entry passes `f`.
    fn position(&self, tag: u64, f: impl Fn(&Entry) -> bool) -> Option<usize> {
        (0..WAYS).find(|&i| self.tags[i] == tag && self.ways[i].as_ref().is_some_and(&f))
    }

    /// A way that holds nothing of use to `verifier`: empty, or left by an older one.
    fn free(&self, verifier: u64) -> Option<usize> {
        self.ways.iter().position(|w| w.as_ref().is_none_or(|e| e.verifier != verifier))
    }

    fn put(&mut self, way: usize, tag: u64, entry: Entry) {
        self.tags[way] = tag;
        self.ways[way] = Some(entry);
    }
}

struct Table {
    /// Seeded at random per thread, so that nobody can aim tokens at one set. (Fast
    /// rather than cryptographic: a token is only ever found by comparing it whole.)
    hasher: foldhash::fast::RandomState,
    sets: Vec<Set>,
}

impl Table {
    /// The two sets `token` may be in, and its tag in either: one hash's low bits pick
    /// the sets, its high ones make the tag (never 0, which marks an empty way).
    fn sets(&self, token: &[u8]) -> ([usize; 2], u64) {
        let tail = &token[token.len().saturating_sub(HASHED_TAIL)..];
        let hash = self.hasher.hash_one(tail);
        // Truncation is fine: only the low bits pick the sets.
        ([hash as usize % SETS, (hash >> 16) as usize % SETS], (hash >> 32) | 1)
    }

    /// Keeps `entry`: in place of the same token if either set has it, else in a free
    /// way (first set first), else in place of a random way of a random one of the two
    /// (random, not in turn: tokens used in turn would then evict each other in turn).
    fn insert(&mut self, token: &str, entry: Entry) {
        let (sets, tag) = self.sets(token.as_bytes());
        let same = |s: usize| self.sets[s].position(tag, |e| *e.token == *token).map(|w| (s, w));
        let free = |s: usize| self.sets[s].free(entry.verifier).map(|w| (s, w));
        let (set, way) = same(sets[0])
            .or_else(|| same(sets[1]))
            .or_else(|| free(sets[0]))
            .or_else(|| free(sets[1]))
            .unwrap_or_else(|| (sets[fastrand::usize(..2)], fastrand::usize(..WAYS)));
        self.sets[set].put(way, tag, entry);
    }
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table {
        hasher: foldhash::fast::RandomState::default(),
        sets: std::iter::repeat_with(Set::default).take(SETS).collect(),
    });
}

/// What `verifier` found `token` to be, if it checked it on this thread and the token
/// is still valid at `now`.
pub fn get(verifier: u64, token: &[u8], now: u64) -> Option<Token> {
    TABLE.with_borrow(|t| {
        let ([first, second], tag) = t.sets(token);
        let e = t.sets[first].find(tag, verifier, token).or_else(|| t.sets[second].find(tag, verifier, token))?;
        e.window.contains(now).then(|| e.checked.clone())
    })
}

/// Remembers that `verifier` found `token` to be `checked`, valid within `window`.
pub fn put(verifier: u64, token: &str, checked: &Token, window: Window) {
    if token.len() > MAX_TOKEN_LEN {
        return;
    }
    TABLE.with_borrow_mut(|t| {
        t.insert(token, Entry { verifier, token: token.into(), checked: checked.clone(), window })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(sub: &str) -> Token {
        Token::Jwt { sub: Some(sub.into()), issuer: None, signature: super::super::jwt::Signature::Secret }
    }

    #[test]
    fn hits_only_for_the_same_token_verifier_and_window() {
        let w = Window { from: 100, until: 200 };
        put(7, "a.b.signature-one", &user("u1"), w);
        assert_eq!(get(7, b"a.b.signature-one", 150), Some(user("u1")));
        assert_eq!(get(7, b"a.b.signature-one", 100), Some(user("u1")), "bounds are inclusive");
        assert_eq!(get(7, b"a.b.signature-one", 200), Some(user("u1")));
        assert_eq!(get(7, b"a.b.signature-one", 201), None, "expired: the full check decides");
        assert_eq!(get(7, b"a.b.signature-one", 99), None, "not yet valid");
        assert_eq!(get(8, b"a.b.signature-one", 150), None, "another verifier (a reload) never hits");
        assert_eq!(get(7, b"x.b.signature-one", 150), None, "same signature, other token");
        assert_eq!(get(7, b"a.b.signature-two", 150), None);
    }

    #[test]
    fn a_newer_entry_replaces_the_same_token_and_the_table_stays_bounded() {
        put(1, "t.one", &user("old"), Window::ALWAYS);
        put(1, "t.one", &user("new"), Window::ALWAYS);
        assert_eq!(get(1, b"t.one", 5), Some(user("new")));
        // Far more tokens than entries: bounded, and whatever hits answers right.
        let n = 3 * SETS * WAYS;
        for i in 0..n {
            put(2, &format!("h.p.{i}"), &user(&i.to_string()), Window::ALWAYS);
        }
        let hits = (0..n).filter(|i| get(2, format!("h.p.{i}").as_bytes(), 5) == Some(user(&i.to_string()))).count();
        assert!(hits <= SETS * WAYS && hits > 0, "{hits}");
    }

    #[test]
    fn a_working_set_of_a_thousand_tokens_stays_cached() {
        // As the proxy uses the cache: a miss is checked and put, and the users'
        // tokens come in turn. A set that overflows would then miss at every turn.
        let tokens: Vec<String> = (0..1000).map(|i| format!("h.p.working-set-{i}")).collect();
        let mut hits = 0;
        for pass in 0..3 {
            for t in &tokens {
                match get(5, t.as_bytes(), 5) {
                    Some(found) => hits += usize::from(pass == 2 && found == user(t)),
                    None => put(5, t, &user(t), Window::ALWAYS),
                }
            }
        }
        // Half the table's room, in two places each: an overflowing pair of sets is
        // rare (a few tokens), while one set per token left about 40 out at any run.
        assert!(hits >= 995, "{hits} of 1000 hit on the third turn");
    }

    #[test]
    fn very_long_tokens_are_not_kept() {
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        put(3, &long, &user("u"), Window::ALWAYS);
        assert_eq!(get(3, long.as_bytes(), 5), None);
    }

    #[test]
    fn each_thread_has_its_own_table() {
        put(4, "t.thread", &user("u"), Window::ALWAYS);
        let other = std::thread::spawn(|| get(4, b"t.thread", 5)).join().unwrap();
        assert_eq!(other, None);
        assert_eq!(get(4, b"t.thread", 5), Some(user("u")));
    }
}
