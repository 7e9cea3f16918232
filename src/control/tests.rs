use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::guard::TripReason;
use crate::handoff::coordinate::{Call, Coordinator, Pending};
use crate::routing::service::Service;

const BASE: &str = "[rollout]\npercentage = 10\n[backends.v1]\nurl = \"http://127.0.0.1:1\"\n[backends.v2]\nurl = \"http://127.0.0.1:2\"\n";

fn setup(name: &str, text: &str) -> (PathBuf, Control) {
    let dir = std::env::temp_dir().join(format!("switchyard-control-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    let state = Arc::new(State::new(Config::load(&path).unwrap()));
    (path.clone(), Control::new(state, Arc::new(Metrics::new()), Some(path)))
}

fn trip() -> Trip {
    Trip { reason: TripReason::ErrorRatio, service: Service::Rest, detail: "test".into() }
}

#[tokio::test]
async fn the_most_recent_change_wins() {
    let (path, control) = setup("recent", BASE);
    assert_eq!(control.set_percentage(40, Commit::Once).await.unwrap().percentage, 40);
    // Same file percentage: the API change stays.
    control.reload("test").await.unwrap();
    assert_eq!((control.status().percentage, control.status().source), (40, PercentageSource::Api));
    assert_eq!(control.state.load().config.rollout.percentage, 40, "the snapshot routes by it");
    // The file changes the percentage: it wins.
    std::fs::write(&path, BASE.replace("= 10", "= 50")).unwrap();
    control.reload("test").await.unwrap();
    assert_eq!((control.status().percentage, control.status().source), (50, PercentageSource::File));
    assert_eq!(control.state.load().config.rollout.percentage, 50);
}

#[tokio::test]
async fn an_invalid_file_is_refused_whole() {
    let (path, control) = setup("invalid", BASE);
    std::fs::write(&path, BASE.replace("= 10", "= 20").replace("http://127.0.0.1:2", "nope")).unwrap();
    let err = control.reload("test").await.unwrap_err();
    assert_eq!(err.key, "backends.v2.url");
    let status = control.status();
    assert_eq!(status.percentage, 10);
    assert!(status.last_reload_error.unwrap().contains("backends.v2.url"));
    let text = control.metrics.render();
    assert!(text.contains("switchyard_config_reloads_total{result=\"failure\"} 1"));
    assert!(text.contains("switchyard_config_last_reload_success 0"));
}

#[tokio::test]
async fn a_trip_is_counted_and_holds_until_cleared() {
    let (_, control) = setup("guard", BASE);
    control.set_percentage(50, Commit::Once).await.unwrap();
    control.trip(trip(), RollbackTo::Zero).await;
    control.trip(trip(), RollbackTo::Zero).await;
    assert_eq!(control.state.load().config.rollout.percentage, 0);
    assert!(matches!(control.set_percentage(10, Commit::Once).await, Err(ChangeError::Refused(_))));
    assert!(control.clear_guard(Commit::Once).await.unwrap());
    assert!(!control.clear_guard(Commit::Once).await.unwrap());
    let text = control.metrics.render();
    assert!(text.contains("switchyard_guard_rollbacks_total{reason=\"error_ratio\"} 1"), "one trip counted");
    assert!(text.contains("switchyard_guard_tripped 0"));
}

/// A store in memory: one state, one generation, and a switch to make it unreachable.
#[derive(Default)]
struct Memory {
    row: Mutex<Option<(Rollout, u64)>>,
    down: AtomicBool,
}

impl Store for Memory {
    fn cas<'a>(&'a self, generation: u64, next: &'a Rollout) -> StoreFuture<'a> {
        Box::pin(async move {
            if self.down.load(Ordering::Relaxed) {
                return Err(Cas::Unavailable("down".into()));
            }
            let mut row = self.row.lock().unwrap();
            let (current, at) = row.clone().unwrap();
            if at != generation {
                return Err(Cas::Conflict(current, at));
            }
            *row = Some((next.clone(), at + 1));
            Ok(at + 1)
        })
    }

    fn finish<'a>(&'a self, generation: u64, next: &'a Rollout, _: &'a str) -> StoreFuture<'a> {
        self.cas(generation, next)
    }

    fn coordinator(&self) -> &dyn Coordinator {
        self
    }
}

/// Every replica of the in-memory fleet acknowledges at once.
impl Coordinator for Memory {
    fn begin<'a>(&'a self, _: &'a Pending) -> Call<'a, bool> {
        Box::pin(async { Ok(true) })
    }
    fn waiting<'a>(&'a self, _: &'a str) -> Call<'a, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn renew<'a>(&'a self, _: &'a str) -> Call<'a, bool> {
        Box::pin(async { Ok(true) })
    }
    fn abort<'a>(&'a self, _: &'a str) -> Call<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(3)
    }
}

/// Two replicas on one in-memory store, each having adopted its state.
fn fleet(name: &str) -> (Arc<Memory>, Control, Control) {
    let store = Arc::new(Memory::default());
    let (_, a) = setup(&format!("{name}-a"), BASE);
    let (_, b) = setup(&format!("{name}-b"), BASE);
    *store.row.lock().unwrap() = Some((a.rollout(), 1));
    for c in [&a, &b] {
        c.attach(store.clone());
        assert!(c.adopt(a.rollout(), 1));
    }
    (store, a, b)
}

fn sync(store: &Memory, c: &Control) {
    let (r, g) = store.row.lock().unwrap().clone().unwrap();
    c.adopt(r, g);
}

#[tokio::test]
async fn an_operator_change_on_a_stale_generation_is_refused_and_the_winner_applied() {
    let (store, a, b) = fleet("conflict");
    a.set_percentage(30, Commit::Once).await.unwrap();
    // b has not heard of it yet: its write is on generation 1.
    let lost = b.set_percentage(70, Commit::Once).await.unwrap_err();
    assert!(matches!(lost, ChangeError::Conflict(2)), "{lost}");
    assert_eq!(b.status().percentage, 30, "the winner is in force on the loser too");
    assert_eq!(b.status().generation, 2);
    assert_eq!(store.row.lock().unwrap().as_ref().unwrap().0.percentage, 30);
}

#[tokio::test]
async fn a_trip_wins_over_a_concurrent_raise() {
    let (store, a, b) = fleet("trip");
    a.set_percentage(80, Commit::Once).await.unwrap();
    // b trips on generation 1; the store is at 2: recomputed on the raise, then in.
    b.trip(trip(), RollbackTo::Zero).await;
    let (row, generation) = store.row.lock().unwrap().clone().unwrap();
    assert_eq!((row.percentage, generation), (0, 3));
    assert_eq!(row.tripped.unwrap().from_percentage, 80);
    sync(&store, &a);
    assert_eq!(a.state.load().config.rollout.percentage, 0);
}

#[tokio::test]
async fn with_the_store_down_writes_are_refused_unless_local_and_the_guard_still_trips() {
    let (store, a, b) = fleet("down");
    store.down.store(true, Ordering::Relaxed);
    assert!(matches!(a.set_percentage(60, Commit::Once).await, Err(ChangeError::Unavailable(_))));
    assert_eq!(a.status().percentage, 10, "nothing changed");
    // Local-only: in force here, shown as such, not in the store.
    assert_eq!(a.set_percentage(5, Commit::Local).await.unwrap().percentage, 5);
    assert!(a.status().local_only);
    assert_eq!(store.row.lock().unwrap().as_ref().unwrap().0.percentage, 10);
    // The guard rolls back here at once, and publishes when the store is back.
    b.trip(trip(), RollbackTo::Zero).await;
    assert_eq!(b.state.load().config.rollout.percentage, 0);
    assert!(b.status().local_only);
    store.down.store(false, Ordering::Relaxed);
    sync(&store, &b);
    assert_eq!(b.status().percentage, 0, "an unpublished trip stays in force");
    b.publish_pending().await;
    assert!(!b.status().local_only);
    let (row, generation) = store.row.lock().unwrap().clone().unwrap();
    assert!(row.tripped.is_some());
    // a's local change lasts until the fleet moves past it.
    sync(&store, &a);
    assert_eq!((a.status().percentage, a.status().generation), (0, generation));
    assert!(!a.status().local_only);
}

#[tokio::test]
async fn a_file_edit_is_published_once_per_content() {
    let (store, a, b) = fleet("file");
    let (pa, pb) = (a.path.clone().unwrap(), b.path.clone().unwrap());
    let edited = BASE.replace("= 10", "= 40");
    std::fs::write(&pa, &edited).unwrap();
    a.reload("test").await.unwrap();
    assert_eq!(store.row.lock().unwrap().as_ref().unwrap().0.percentage, 40);
    // An operator rolls back; b's copy of the file changes late to the same content.
    a.set_percentage(0, Commit::Once).await.unwrap();
    sync(&store, &b);
    std::fs::write(&pb, &edited).unwrap();
    b.reload("test").await.unwrap();
    assert_eq!(store.row.lock().unwrap().as_ref().unwrap().0.percentage, 0, "the late edit did not undo it");
    assert_eq!(b.status().percentage, 0);
}

#[tokio::test]
async fn an_invalid_fleet_state_is_refused() {
    let (_, a, _) = fleet("invalid");
    let mut bad = a.rollout();
    bad.percentage = 101;
    assert!(!a.adopt(bad, 9));
    assert_eq!((a.status().percentage, a.status().generation), (10, 1));
}

#[tokio::test]
async fn a_trip_waiting_for_its_turn_goes_before_an_operators_raise() {
    let (_, control) = setup("urgent", BASE);
    let control = Arc::new(control);
    // A handoff holds the turn; a raise queues, then the guard's trip.
    let turn = control.serial.lock().await;
    let raise = tokio::spawn({
        let c = control.clone();
        async move { c.set_percentage(60, Commit::Once).await }
    });
    tokio::task::yield_now().await;
    let tripped = tokio::spawn({
        let c = control.clone();
        async move { c.trip(trip(), RollbackTo::Zero).await }
    });
    while control.urgent.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    drop(turn);
    tripped.await.unwrap();
    let raised = raise.await.unwrap();
    assert!(matches!(raised, Err(ChangeError::Refused(Refused::GuardTripped(0)))), "{raised:?}");
    assert_eq!(control.status().percentage, 0);
}
