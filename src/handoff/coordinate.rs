//! A handoff across a fleet (`[handoff]` with `[cluster]`, docs/handoff.md): the
//! handoff in progress is kept in the fleet's store beside the rollout state. Every
//! replica that reads it fences the band and, once drained, acknowledges; the leader
//! waits for every replica within its lease, syncs, and commits the new percentage
//! in the same statement that ends the handoff, so every replica flips at one
//! generation. [`Coordinator`] is what the leader needs of the store.

use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::routing::band::Band;

/// The handoff in progress, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Names this handoff (random).
    pub id: String,
    pub band: Band,
    /// The leader's `handoff.max_hold_seconds`, in milliseconds.
    pub max_hold_ms: u64,
    /// The replica leading it.
    pub leader: String,
}

/// A store call's future.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// What a handoff's leader needs of the fleet's store.
pub trait Coordinator: Send + Sync {
    /// Publishes `pending` (every replica fences): `false` while another handoff runs.
    fn begin<'a>(&'a self, pending: &'a Pending) -> Call<'a, bool>;
    /// The replicas within their lease that have not acknowledged handoff `id` yet.
    fn waiting<'a>(&'a self, id: &'a str) -> Call<'a, Vec<String>>;
    /// Keeps handoff `id` alive (`false`: it is gone, taken as abandoned).
    fn renew<'a>(&'a self, id: &'a str) -> Call<'a, bool>;
    /// Ends handoff `id` without a change: every replica releases to the old side.
    fn abort<'a>(&'a self, id: &'a str) -> Call<'a, ()>;
    /// How long a replica's heartbeat holds its lease.
    fn lease(&self) -> Duration;
}

/// A fresh handoff id.
pub fn new_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}
