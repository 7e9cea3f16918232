//! Load while the rollout changes: keeps requests flowing from several workers while a
//! changer applies percentages, records when each change may have been in force, and
//! checks every response against the percentages in force while it was handled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// One applied change: it may be in force from `start` on (and the previous one until
/// `end`, when the change is known to be in force).
pub struct Change {
    pub start: Instant,
    pub end: Instant,
    pub percentage: u8,
}

/// One request: when it was sent and answered, for whom, and where it went.
pub struct Observation {
    pub start: Instant,
    pub end: Instant,
    pub user: String,
    pub status: u16,
    pub backend: String,
}

const WORKERS: usize = 8;
/// Requests completed between two changes; 50 changes × 45 > 2,000.
const PER_CHANGE: usize = 45;

/// Runs load against `addr` while `apply` sets each of `percentages` (it returns once
/// the change is in force), then checks every response. Returns the number of requests.
pub async fn verify_under_load<F, Fut>(addr: SocketAddr, initial: u8, percentages: &[u8], mut apply: F) -> usize
where
    F: FnMut(u8) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::<Observation>::new()));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (stop, done, seen) = (stop.clone(), done.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            let client = super::client();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let user = format!("load-{w}-{n}");
                n += 1;
                let req = http::Request::get(format!("http://{addr}/rest/v1/items"))
                    .header("x-user-id", &user)
                    .body(super::full(""))
                    .unwrap();
                let start = Instant::now();
                let (status, backend) = match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let backend =
                            resp.headers().get("x-switchyard-backend").map(|v| v.to_str().unwrap().to_string());
                        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                        (if body.is_ok() { status } else { 0 }, backend.unwrap_or_default())
                    }
                    Err(_) => (0, String::new()),
                };
                seen.lock().await.push(Observation { start, end: Instant::now(), user, status, backend });
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let wait_for = |target: usize| {
        let done = done.clone();
        async move {
            while done.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "load stalled at {} requests", done.load(Ordering::SeqCst));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let far_past = Instant::now() - Duration::from_secs(3600);
    let mut changes = vec![Change { start: far_past, end: far_past, percentage: initial }];
    for (i, &p) in percentages.iter().enumerate() {
        wait_for((i + 1) * PER_CHANGE).await;
        let start = Instant::now();
        apply(p).await;
        changes.push(Change { start, end: Instant::now(), percentage: p });
    }
    wait_for((percentages.len() + 1) * PER_CHANGE).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let seen = seen.lock().await;
    check(&changes, &seen);
    seen.len()
}

/// Every request succeeded, and went where one of the percentages that may have been
/// in force during it sends its user.
fn check(changes: &[Change], seen: &[Observation]) {
    let failed = seen.iter().filter(|o| o.status != 200).count();
    assert_eq!(failed, 0, "{failed} of {} requests failed", seen.len());
    for o in seen {
        // Change i may be in force from its start until change i+1 is known applied.
        let candidates: Vec<u8> = changes
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                let until = changes.get(i + 1).map(|n| n.end);
                c.start <= o.end && until.is_none_or(|u| u >= o.start)
            })
            .map(|(_, c)| c.percentage)
            .collect();
        let p = super::percentile(&o.user);
        let ok = candidates.iter().any(|&pct| (p < pct) == (o.backend == "v2"));
        assert!(ok, "{} (percentile {p}) went to {} while {:?} were in force", o.user, o.backend, candidates);
    }
}

/// 50 percentages, each different from the one before, moving across the range.
pub fn percentages(seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out: Vec<u8> = Vec::new();
    while out.len() < 50 {
        let p = rng.u8(0..=100);
        if out.last() != Some(&p) {
            out.push(p);
        }
    }
    out
}
