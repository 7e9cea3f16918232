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

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A place in the shared budget and one under a host's ceiling, both given back
/// when dropped.
#[derive(Debug)]
pub struct Slot {
    _host: OwnedSemaphorePermit,
    _shared: OwnedSemaphorePermit,
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

    /// A slot if one is free now; `None` when either the budget or the host's
    /// ceiling is used up (or others are already waiting).
    pub fn try_take(&self) -> Option<Slot> {
        let shared = self.shared.clone().try_acquire_owned().ok()?;
        let host = self.host.clone().try_acquire_owned().ok()?;
        Some(Slot { _host: host, _shared: shared })
    }

    /// Waits for a slot. The shared queue comes first, so that while no host is at
    /// its ceiling requests are served in arrival order whatever their host. A
    /// request whose host is at its ceiling leaves that queue (its place goes to the
    /// next one, for another host), waits for its host, and then queues again.
    pub async fn take(&self) -> Slot {
        let shared = acquire(&self.shared).await;
        if let Ok(host) = self.host.clone().try_acquire_owned() {
            return Slot { _host: host, _shared: shared };
        }
        drop(shared);
        let host = acquire(&self.host).await;
        Slot { _shared: acquire(&self.shared).await, _host: host }
    }
}

async fn acquire(semaphore: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    semaphore.clone().acquire_owned().await.expect("the budget's semaphores are never closed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn two_hosts(shared: usize, ceiling: usize) -> (Budget, Budget) {
        let shared = Arc::new(Semaphore::new(shared));
        (Budget::new(shared.clone(), ceiling), Budget::new(shared, ceiling))
    }

    async fn soon(b: &Budget) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(50), b.take()).await.ok()
    }

    #[tokio::test]
    async fn the_budget_is_shared_and_each_host_stops_at_its_ceiling() {
        let (a, b) = two_hosts(4, 3);
        let held: Vec<Slot> = (0..3).map(|_| a.try_take().expect("under the ceiling")).collect();
        assert!(a.try_take().is_none(), "a is at its ceiling");
        assert!(soon(&a).await.is_none(), "and waits there");
        let last = b.try_take().expect("the ceiling left one for b");
        assert!(b.try_take().is_none(), "the budget is used up");
        assert_eq!((a.busy(), b.busy()), (3, 1));
        drop(last);
        assert!(b.try_take().is_some());
        drop(held);
        assert!(a.try_take().is_some());
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order_whatever_their_host() {
        let (a, b) = two_hosts(1, 1);
        let first = a.try_take().unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let waiter = |budget: Budget, name: &'static str| {
            let order = order.clone();
            tokio::spawn(async move {
                let slot = budget.take().await;
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
        let stuck: Vec<Slot> = (0..2).map(|_| a.try_take().unwrap()).collect();
        let spare = b.try_take().unwrap();
        // a's next request waits for a; it must not sit on the place b gets back.
        let a_waits = tokio::spawn({
            let a = a.clone();
            async move { a.take().await }
        });
        tokio::task::yield_now().await;
        drop(spare);
        assert!(soon(&b).await.is_some(), "b is not stalled behind a's ceiling");
        drop(stuck);
        a_waits.await.unwrap();
    }
}
