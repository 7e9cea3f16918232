//! The shutdown signal each client connection waits on beside its requests.
//!
//! A connection's task is polled several times per request, and `select!` polls every
//! branch each time. Polling a `CancellationToken` future takes two mutex locks, so
//! this wrapper polls it only when it has woken the task itself; every other poll is
//! a waker comparison and an atomic load.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Resolves once shutdown has started.
pub struct Shutdown {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    woken: Arc<Woken>,
    /// The task waker last handed to `woken`, to skip registering the same one again.
    registered: Option<Waker>,
}

/// The waker given to the token's future: notes the wake-up, then wakes the task.
#[derive(Default)]
struct Woken {
    flag: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Shutdown {
    /// Waits for `token`.
    pub fn new(token: &CancellationToken) -> Shutdown {
        Shutdown { cancelled: Box::pin(token.clone().cancelled_owned()), woken: Arc::default(), registered: None }
    }
}

impl Future for Shutdown {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let first = this.registered.is_none();
        if !this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.woken.task.register(cx.waker());
            this.registered = Some(cx.waker().clone());
        }
        let fired = || this.woken.flag.load(Ordering::Acquire) && this.woken.flag.swap(false, Ordering::AcqRel);
        if !first && !fired() {
            return Poll::Pending;
        }
        let waker = Waker::from(this.woken.clone());
        this.cancelled.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn resolves_when_cancelled_after_idle_polls() {
        let token = CancellationToken::new();
        let mut signal = std::pin::pin!(Shutdown::new(&token));
        for _ in 0..3 {
            assert!(futures_util::poll!(signal.as_mut()).is_pending());
        }
        let cancel = token.clone();
        let cancelled = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cancel.cancel();
        });
        cancelled.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), signal).await.expect("woken by the cancellation");
    }

    #[tokio::test]
    async fn resolves_at_once_when_already_cancelled() {
        let token = CancellationToken::new();
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), Shutdown::new(&token)).await.expect("ready at the first poll");
    }
}
