//! How a change is committed: locally, or through the fleet's store with a
//! compare-and-set, and why it may not be.

use std::pin::Pin;

use super::{Refused, Rollout};
use crate::handoff::coordinate::Coordinator;

/// Why a change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The rollout's own rules refuse it.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Another change was committed first: the winner is now in force.
    #[error("another change was committed first (generation {0}): review the rollout and retry")]
    Conflict(u64),
    /// The fleet's store cannot be reached.
    #[error("the fleet's store is unreachable ({0}); retry, or pass ?local=true to change this replica alone")]
    Unavailable(String),
    /// The handoff of the moving band failed: the percentage stays.
    #[error("the handoff was aborted, the percentage stays: {0}")]
    Handoff(String),
}

/// What a compare-and-set on the store answers when it does not commit.
#[derive(Debug)]
pub enum Cas {
    /// The store is at another generation, holding this state.
    Conflict(Rollout, u64),
    /// The store cannot be reached (the reason, without secrets).
    Unavailable(String),
}

/// The future a [`Store`] call returns.
pub type StoreFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, Cas>> + Send + 'a>>;

/// Where the fleet's rollout state is kept (`crate::fleet`).
pub trait Store: Send + Sync {
    /// Writes `next` if the store is still at `generation`: the new generation.
    fn cas<'a>(&'a self, generation: u64, next: &'a Rollout) -> StoreFuture<'a>;
    /// As [`Store::cas`], and only while handoff `id` is in the store, which it ends
    /// in the same statement.
    fn finish<'a>(&'a self, generation: u64, next: &'a Rollout, id: &'a str) -> StoreFuture<'a>;
    /// What a handoff's leader needs of the store.
    fn coordinator(&self) -> &dyn Coordinator;
}

/// How a change meets a concurrent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// An operator's change: refused (409) when another came first.
    Once,
    /// The schedule's, a file's: recomputed on the winner and retried.
    Retry,
    /// The guard's trip: as `Retry`, and first in line among changes waiting for a
    /// handoff to end.
    Urgent,
    /// On this replica alone, not published (`?local=true`).
    Local,
}
