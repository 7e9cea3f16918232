//! The public keys each project signs user tokens with, as last fetched from its JWKS
//! (`identity::fetch` keeps them fresh; docs/identity.md). Shared by every snapshot
//! of a process and read on the request path without locks. A change of a project's
//! keys moves the epoch, so the token cache forgets every answer given under the old
//! keys: a key that leaves the set stops verifying at once.
//!
//! A token that names a `kid` nobody publishes may ask for a fetch out of turn; such
//! fetches are at most one per project per [`MIN_REFETCH`], whatever clients send.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, watch};

use crate::backend::{BackendId, PerBackend};
use crate::jwk::PublicKey;

/// The least time between two fetches of one project's keys asked for by tokens.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);
/// How long a request whose token names an unknown `kid` waits for that fetch.
pub const REFETCH_WAIT: Duration = Duration::from_secs(3);
/// How long start, and a reload that moves a project's keys, wait for the first fetch.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);

/// A project's keys as last fetched.
#[derive(Debug)]
pub struct Published {
    /// The usable keys (ES256 and RS256).
    pub keys: Vec<PublicKey>,
}

impl Published {
    /// The keys that may have signed a token with this header: those of its `kid`,
    /// or without one, every key.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a PublicKey> + 'a {
        self.keys.iter().filter(move |k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
    }

    /// Whether a key of this `kid` is listed.
    pub fn lists(&self, kid: &str) -> bool {
        self.candidates(Some(kid)).next().is_some()
    }
}

struct Project {
    /// Where the configuration says its keys are: keys fetched from anywhere else
    /// are not taken.
    source: ArcSwapOption<String>,
    keys: ArcSwapOption<Published>,
    /// Milliseconds from `Keyring::started` of the last fetch a token asked for, plus
    /// one (0: none).
    last_asked: AtomicU64,
    wanted: Notify,
    done: watch::Sender<u64>,
}

impl Project {
    fn new() -> Project {
        Project {
            source: ArcSwapOption::empty(),
            keys: ArcSwapOption::empty(),
            last_asked: AtomicU64::new(0),
            wanted: Notify::new(),
            done: watch::Sender::new(0),
        }
    }
}

/// Both projects' published keys.
pub struct Keyring {
    projects: PerBackend<Project>,
    epoch: AtomicU64,
    started: Instant,
}

impl Default for Keyring {
    fn default() -> Self {
        Keyring {
            projects: PerBackend { v1: Project::new(), v2: Project::new() },
            epoch: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Keyring {
    /// No keys known yet.
    pub fn new() -> Arc<Keyring> {
        Arc::new(Keyring::default())
    }

    /// `id`'s keys, if a fetch ever succeeded.
    pub fn keys(&self, id: BackendId) -> Option<Arc<Published>> {
        self.projects.get(id).keys.load_full()
    }

    /// Whether `id` publishes asymmetric keys (is on signing keys).
    pub fn signs_with_keys(&self, id: BackendId) -> bool {
        self.keys(id).is_some_and(|p| !p.keys.is_empty())
    }

    /// Moves whenever any project's keys change.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Where `id`'s keys are now (a reload may move them): when that changes, the
    /// keys fetched from the old place stop being accepted at once and a fetch from
    /// the new one is asked for.
    pub fn configure(&self, id: BackendId, source: &str) {
        let project = self.projects.get(id);
        let old = project.source.swap(Some(Arc::new(source.to_string())));
        if old.is_some_and(|old| *old != source) {
            project.keys.store(None);
            self.epoch.fetch_add(1, Ordering::AcqRel);
            project.wanted.notify_one();
        }
    }

    /// Puts `keys`, fetched from `source`, in force for `id` (unless the configuration
    /// has moved its keys elsewhere meanwhile); the token cache forgets if they differ
    /// from the keys before.
    pub fn publish(&self, id: BackendId, source: &str, keys: Vec<PublicKey>) {
        let project = self.projects.get(id);
        if project.source.load().as_ref().is_some_and(|s| **s != source) {
            return;
        }
        let fingerprint = |ks: &[PublicKey]| {
            let mut v: Vec<(Option<String>, String)> = ks.iter().map(|k| (k.kid.clone(), k.material.clone())).collect();
            v.sort();
            v
        };
        let changed = project.keys.load().as_ref().is_none_or(|old| fingerprint(&old.keys) != fingerprint(&keys));
        project.keys.store(Some(Arc::new(Published { keys })));
        if changed {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        project.done.send_modify(|n| *n += 1);
    }

    /// Waits, up to `limit`, until `id` has keys or the next fetch of them ends: after
    /// a reload moved them, so that it returns with the new keys in force.
    pub async fn settled(&self, id: BackendId, limit: Duration) {
        let mut done = self.projects.get(id).done.subscribe();
        if self.keys(id).is_none() {
            let _ = tokio::time::timeout(limit, done.changed()).await;
        }
    }

    /// Records a failed fetch (ending the waits for it); the keys in force stay.
    pub fn failed(&self, id: BackendId) {
        self.projects.get(id).done.send_modify(|n| *n += 1);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// How long until a token may ask for a fetch of `id`'s keys again.
    pub fn until_refetch(&self, id: BackendId) -> Duration {
        let last = self.projects.get(id).last_asked.load(Ordering::Acquire);
        let since = Duration::from_millis(self.now_ms().saturating_sub(last));
        if last == 0 { Duration::ZERO } else { MIN_REFETCH.saturating_sub(since) }
    }

    /// Whether a token naming an unknown key may still ask for a fetch of `id`'s keys
    /// (the regular refreshes do not count: a key published since the last one is
    /// found on first sight).
    pub fn may_refetch(&self, id: BackendId) -> bool {
        self.until_refetch(id).is_zero()
    }

    /// Takes this window's one fetch asked for by a token, if it is still free.
    pub fn ask(&self, id: BackendId) -> bool {
        let last = &self.projects.get(id).last_asked;
        let seen = last.load(Ordering::Acquire);
        self.may_refetch(id) && last.compare_exchange(seen, self.now_ms(), Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Asks for a fetch of `id`'s keys out of turn (unless another request just did)
    /// and waits, up to [`REFETCH_WAIT`], until a fetch ends.
    pub async fn refetch(&self, id: BackendId) {
        let project = self.projects.get(id);
        let mut done = project.done.subscribe();
        done.mark_unchanged();
        if self.ask(id) {
            project.wanted.notify_one();
        }
        let _ = tokio::time::timeout(REFETCH_WAIT, done.changed()).await;
    }

    /// Resolves when a token asked for a fetch of `id`'s keys.
    pub async fn wanted(&self, id: BackendId) {
        self.projects.get(id).wanted.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwk;

    fn keys(seeds: &[u8]) -> Vec<PublicKey> {
        let set = seeds.iter().map(|s| {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            let p = p256::SecretKey::from_slice(&[*s; 32]).unwrap().public_key().to_encoded_point(false);
            let b = |v: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v);
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": format!("k{s}"), "x": b(p.x().unwrap()), "y": b(p.y().unwrap())})
        });
        jwk::key_set(serde_json::json!({ "keys": set.collect::<Vec<_>>() }).to_string().as_bytes()).unwrap().keys
    }

    #[test]
    fn the_epoch_moves_only_when_keys_change() {
        let ring = Keyring::new();
        assert!(ring.keys(BackendId::V2).is_none());
        ring.publish(BackendId::V2, "s", keys(&[1, 2]));
        let first = ring.epoch();
        ring.publish(BackendId::V2, "s", keys(&[2, 1]));
        assert_eq!(ring.epoch(), first, "same keys, another order");
        ring.failed(BackendId::V2);
        assert_eq!(ring.epoch(), first);
        assert!(ring.keys(BackendId::V2).unwrap().lists("k1"), "kept through a failed fetch");
        ring.publish(BackendId::V2, "s", keys(&[2]));
        assert_ne!(ring.epoch(), first, "a key left");
        assert!(!ring.keys(BackendId::V2).unwrap().lists("k1"));
        assert!(ring.signs_with_keys(BackendId::V2) && !ring.signs_with_keys(BackendId::V1));
    }

    #[test]
    fn keys_from_a_place_the_config_left_are_dropped() {
        let ring = Keyring::new();
        ring.configure(BackendId::V1, "https://old/jwks.json");
        ring.publish(BackendId::V1, "https://old/jwks.json", keys(&[1]));
        let epoch = ring.epoch();
        ring.configure(BackendId::V1, "https://old/jwks.json");
        assert!(ring.keys(BackendId::V1).is_some() && ring.epoch() == epoch, "same place: kept");
        ring.configure(BackendId::V1, "https://new/jwks.json");
        assert!(ring.keys(BackendId::V1).is_none() && ring.epoch() != epoch, "moved: dropped at once");
        ring.publish(BackendId::V1, "https://old/jwks.json", keys(&[1]));
        assert!(ring.keys(BackendId::V1).is_none(), "a late fetch from the old place is not taken");
        ring.publish(BackendId::V1, "https://new/jwks.json", keys(&[2]));
        assert!(ring.keys(BackendId::V1).unwrap().lists("k2"));
    }

    #[tokio::test(start_paused = true)]
    async fn refetches_asked_by_tokens_are_spaced() {
        let ring = Keyring::new();
        assert!(ring.may_refetch(BackendId::V1));
        // A wait for a fetch that never comes ends.
        ring.refetch(BackendId::V1).await;
        assert!(!ring.may_refetch(BackendId::V1) && !ring.ask(BackendId::V1), "right after one was asked for");
        assert!(ring.may_refetch(BackendId::V2), "per project");
        assert!(ring.ask(BackendId::V2) && !ring.ask(BackendId::V2), "one asker per window");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_moved_keys_ends_with_the_next_fetch_or_the_limit() {
        let ring = Keyring::new();
        ring.configure(BackendId::V1, "old");
        ring.publish(BackendId::V1, "old", keys(&[1]));
        let started = tokio::time::Instant::now();
        ring.settled(BackendId::V1, FIRST_WAIT).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "keys in force: no wait");
        ring.configure(BackendId::V1, "new");
        let fetch = {
            let ring = ring.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                ring.publish(BackendId::V1, "new", keys(&[2]));
            })
        };
        ring.settled(BackendId::V1, FIRST_WAIT).await;
        assert_eq!(started.elapsed(), Duration::from_millis(200), "ended by the fetch");
        assert!(ring.keys(BackendId::V1).unwrap().lists("k2"));
        fetch.await.unwrap();
        ring.configure(BackendId::V1, "gone");
        ring.settled(BackendId::V1, FIRST_WAIT).await;
        assert_eq!(started.elapsed(), Duration::from_millis(200) + FIRST_WAIT, "no fetch: the limit");
    }
}
