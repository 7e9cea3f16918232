//! How many upstream connections may be busy at once: one budget shared by every
//! host, with a ceiling per host below it.
//!
//! Why shared: with a budget per host, the backend that takes the larger share of the
//! traffic (v1 at 10 %, v2 at 90 %) has as many connections as the other one and its
//! requests queue longer, so the rollout itself makes it look slower. One queue in
//! arrival order gives every request the same wait, whichever backend it goes to.
//! Why a ceiling: a hung host would otherwise end up holding the whole budget; the
//! ceiling keeps the rest for the others.

use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};

/// What leads to a host's budget: the budget itself, or what holds it (the host's
/// pool, which a busy connection holds anyway).
pub trait Owner {
    /// The host's budget.
    fn budget(&self) -> &Budget;
}

impl Owner for Budget {
    fn budget(&self) -> &Budget {
        self
    }
}

impl<T: Owner> Owner for Arc<T> {
    fn budget(&self) -> &Budget {
        T::budget(self)
    }
}

impl<T: Owner> Owner for &T {
    fn budget(&self) -> &Budget {
        T::budget(self)
    }
}

/// A place in the shared budget and one under a host's ceiling, both given back
/// when dropped. It holds its `owner` rather than a permit of each semaphore: two
/// reference counts fewer to take and drop per request.
#[derive(Debug)]
pub struct Slot<O: Owner> {
    owner: O,
}

impl<O: Owner> Slot<O> {
    /// What the slot was taken through.
    pub fn owner(&self) -> &O {
        &self.owner
    }
}

impl<O: Owner> Drop for Slot<O> {
    fn drop(&mut self) {
        let budget = self.owner.budget();
        budget.host.add_permits(1);
        budget.shared.add_permits(1);
    }
}

/// One host's way into the budget.
#[derive(Debug, Clone)]
pub struct Budget {
    shared: Arc<Semaphore>,
    host: Arc<Semaphore>,
    ceiling: usize,
}

impl Budget {
    /// A host's share of `shared`, at most `ceiling` at once.
    pub fn new(shared: Arc<Semaphore>, ceiling: usize) -> Budget {
        Budget { shared, host: Arc::new(Semaphore::new(ceiling)), ceiling }
    }

    /// Places under this host's ceiling taken now: its busy connections, and the few
    /// requests that passed the ceiling and wait for the shared budget.
    pub fn busy(&self) -> usize {
        self.ceiling - self.host.available_permits()
    }

    /// A slot of `owner`'s budget if one is free now; `None` when either the budget or
    /// the host's ceiling is used up (or others are already waiting).
    pub fn try_take<O: Owner>(owner: O) -> Option<Slot<O>> {
        let budget = owner.budget();
        let shared = budget.shared.try_acquire().ok()?;
        let host = budget.host.try_acquire().ok()?;
        keep(shared, host);
        Some(Slot { owner })
    }

    /// Waits for a slot of `owner`'s budget. The shared queue comes first, so that
    /// while no host is at its ceiling requests are served in arrival order whatever
    /// their host. A request whose host is at its ceiling leaves that queue (its place
    /// goes to the next one, for another host), waits for its host, and then queues
    /// again.
    pub async fn take<O: Owner>(owner: O) -> Slot<O> {
        let budget = owner.budget();
        let shared = acquire(&budget.shared).await;
        match budget.host.try_acquire() {
            Ok(host) => keep(shared, host),
            Err(_) => {
                drop(shared);
                let host = acquire(&budget.host).await;
                keep(acquire(&budget.shared).await, host);
            }
        }
        Slot { owner }
    }
}

/// The two permits, kept until a slot gives them back.
fn keep(shared: SemaphorePermit<'_>, host: SemaphorePermit<'_>) {
    shared.forget();
    host.forget();
}

async fn acquire(semaphore: &Semaphore) -> SemaphorePermit<'_> {
    semaphore.acquire().await.expect("the budget's semaphores are never closed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn two_hosts(shared: usize, ceiling: usize) -> (Budget, Budget) {
        let shared = Arc::new(Semaphore::new(shared));
        (Budget::new(shared.clone(), ceiling), Budget::new(shared, ceiling))
    }

    async fn soon(b: &Budget) -> Option<Slot<&Budget>> {
        tokio::time::timeout(Duration::from_millis(50), Budget::take(b)).await.ok()
    }

    #[tokio::test]
    async fn the_budget_is_shared_and_each_host_stops_at_its_ceiling() {
        let (a, b) = two_hosts(4, 3);
        let held: Vec<Slot<&Budget>> = (0..3).map(|_| Budget::try_take(&a).expect("under the ceiling")).collect();
        assert!(Budget::try_take(&a).is_none(), "a is at its ceiling");
        assert!(soon(&a).await.is_none(), "and waits there");
        let last = Budget::try_take(&b).expect("the ceiling left one for b");
        assert!(Budget::try_take(&b).is_none(), "the budget is used up");
        assert_eq!((a.busy(), b.busy()), (3, 1));
        drop(last);
        assert!(Budget::try_take(&b).is_some());
        drop(held);
        assert!(Budget::try_take(&a).is_some());
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order_whatever_their_host() {
        let (a, b) = two_hosts(1, 1);
        let first = Budget::try_take(&a).unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let waiter = |budget: Budget, name: &'static str| {
            let order = order.clone();
            tokio::spawn(async move {
                let slot = Budget::take(&budget).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            })
        };
        let mut tasks = Vec::new();
        for name in ["a1", "b1", "b2", "a2"] {
            let budget = if name.starts_with('a') { a.clone() } else { b.clone() };
            tasks.push(waiter(budget, name));
            tokio::task::yield_now().await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        // With a queue per host, b1 would not have waited for a1.
        assert_eq!(*order.lock().unwrap(), ["a1", "b1", "b2", "a2"]);
    }

    #[tokio::test]
    async fn a_host_at_its_ceiling_leaves_its_place_to_others() {
        let (a, b) = two_hosts(3, 2);
        let stuck: Vec<Slot<&Budget>> = (0..2).map(|_| Budget::try_take(&a).unwrap()).collect();
        let spare = Budget::try_take(&b).unwrap();
        // a's next request waits for a; it must not sit on the place b gets back.
        let a_waits = tokio::spawn({
            let a = a.clone();
            async move { Budget::take(a).await }
        });
        tokio::task::yield_now().await;
        drop(spare);
        assert!(soon(&b).await.is_some(), "b is not stalled behind a's ceiling");
        drop(stuck);
        a_waits.await.unwrap();
    }
}
