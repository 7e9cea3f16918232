//! The upstream connection pool, seen from a real upstream: connections are bounded
//! and reused, bodiless answers give theirs back too, idle ones expire, and an
//! upstream that closes after each answer costs a new connection, not an error.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Response, StatusCode};
use support::{config_text, full, get_as, percentile, start, upstream};

/// An upstream answering after `delay`, recording the most requests it had at once.
async fn slow(delay: Duration) -> (support::Upstream, Arc<AtomicUsize>) {
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    (slow_counting(delay, now, peak.clone()).await, peak)
}

/// An upstream answering after `delay`, counting the requests in progress in `now`
/// (which other upstreams may share) and their most at once in `peak`.
async fn slow_counting(delay: Duration, now: Arc<AtomicUsize>, peak: Arc<AtomicUsize>) -> support::Upstream {
    upstream(move |_req| {
        let (now, peak) = (now.clone(), peak.clone());
        async move {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Response::new(full("[]"))
        }
    })
    .await
}

#[tokio::test]
async fn connections_are_bounded_and_reused() {
    let (v1, peak) = slow(Duration::from_millis(40)).await;
    let sy = start(&config_text(&v1.url(), &v1.url(), 0, "[upstream]\nmax_connections_per_host = 4\n")).await;
    let requests = (0..40).map(|i| get_as(sy.addr, "/rest/v1/t", if i % 2 == 0 { "a" } else { "b" }));
    for got in futures_util::future::join_all(requests).await {
        assert_eq!(got.status, StatusCode::OK);
    }
    assert_eq!(peak.load(Ordering::SeqCst), 4, "40 concurrent requests share exactly 4 connections");
    assert_eq!(v1.connections(), 4);
    for _ in 0..10 {
        assert_eq!(get_as(sy.addr, "/rest/v1/t", "a").await.status, StatusCode::OK);
    }
    assert_eq!(v1.connections(), 4, "sequential requests reuse pooled connections");
    assert_eq!(v1.hits(), 50);
}

#[tokio::test]
async fn bodiless_answers_give_their_connection_back() {
    let v1 = upstream(|req| async move {
        let status = if req.method() == http::Method::HEAD { StatusCode::OK } else { StatusCode::NO_CONTENT };
        Response::builder().status(status).header("content-length", "0").body(full("")).unwrap()
    })
    .await;
    let sy = start(&config_text(&v1.url(), &v1.url(), 0, "")).await;
    for method in ["GET", "HEAD", "DELETE", "GET", "HEAD"] {
        let got = support::send(sy.addr, method, "/rest/v1/t?id=eq.1", &[], "").await;
        assert!(got.status.is_success(), "{method}: {}", got.status);
    }
    assert_eq!(v1.connections(), 1);
}

#[tokio::test]
async fn idle_connections_expire() {
    let v1 = support::echo("v1").await;
    let extra = "[upstream]\npool_idle_timeout_seconds = 0.3\n";
    let sy = start(&config_text(&v1.url(), &v1.url(), 0, extra)).await;
    get_as(sy.addr, "/rest/v1/t", "a").await;
    get_as(sy.addr, "/rest/v1/t", "a").await;
    assert_eq!(v1.connections(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get_as(sy.addr, "/rest/v1/t", "a").await.status, StatusCode::OK);
    assert_eq!(v1.connections(), 2, "a connection idle past the timeout is not reused");
}

#[tokio::test]
async fn upstream_closing_each_connection_is_not_an_error() {
    let v1 =
        upstream(|_req| async { Response::builder().header("connection", "close").body(full("[]")).unwrap() }).await;
    let sy = start(&config_text(&v1.url(), &v1.url(), 0, "")).await;
    for _ in 0..5 {
        assert_eq!(get_as(sy.addr, "/rest/v1/t", "a").await.status, StatusCode::OK);
    }
    assert_eq!(v1.connections(), 5);
}

#[tokio::test]
async fn waiting_for_a_connection_counts_against_the_timeout() {
    let (v1, _) = slow(Duration::from_millis(400)).await;
    let extra = "[upstream]\nmax_connections_per_host = 1\ntimeout_seconds = 0.6\n";
    let sy = start(&config_text(&v1.url(), &v1.url(), 0, extra)).await;
    let (first, second) = tokio::join!(get_as(sy.addr, "/rest/v1/t", "a"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get_as(sy.addr, "/rest/v1/t", "b").await
    });
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(second.status, StatusCode::GATEWAY_TIMEOUT, "queued 350 ms, then 400 ms upstream: over 600 ms");
    assert_eq!(second.json()["code"], "SWY504");
}

/// Users that the rollout at 50 % sends to v2 (`true`) or v1.
fn users(v2: bool) -> impl Iterator<Item = String> {
    (0..).map(|n| format!("u{n}")).filter(move |u| (percentile(u) < 50) == v2)
}

#[tokio::test]
async fn both_backends_share_one_budget() {
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let v1 = slow_counting(Duration::from_millis(40), now.clone(), peak.clone()).await;
    let v2 = slow_counting(Duration::from_millis(40), now, peak.clone()).await;
    let extra = "[upstream]\nmax_connections = 4\nmax_connections_per_host = 4\n";
    let sy = start(&config_text(&v1.url(), &v2.url(), 50, extra)).await;
    let who: Vec<String> = users(true).take(20).chain(users(false).take(20)).collect();
    for got in futures_util::future::join_all(who.iter().map(|u| get_as(sy.addr, "/rest/v1/t", u))).await {
        assert_eq!(got.status, StatusCode::OK);
    }
    assert_eq!((v1.hits(), v2.hits()), (20, 20));
    assert_eq!(peak.load(Ordering::SeqCst), 4, "4 connections at once to both backends together");
}

#[tokio::test]
async fn a_hung_backend_leaves_the_rest_of_the_budget_to_the_other() {
    let hung = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(full("[]"))
    })
    .await;
    let v1 = support::echo("v1").await;
    let extra = "[upstream]\nmax_connections = 4\nmax_connections_per_host = 3\ntimeout_seconds = 3\n";
    let sy = start(&config_text(&v1.url(), &hung.url(), 50, extra)).await;
    // Six requests stuck on v2: three on connections, three waiting for v2's ceiling.
    let addr = sy.addr;
    let stuck: Vec<_> =
        users(true).take(6).map(|u| tokio::spawn(async move { get_as(addr, "/rest/v1/t", &u).await })).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hung.hits(), 3, "v2 is at its ceiling");
    let started = std::time::Instant::now();
    for user in users(false).take(3) {
        let got = get_as(sy.addr, "/rest/v1/t", &user).await;
        assert_eq!((got.status, got.backend()), (StatusCode::OK, "v1"));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "v1 did not wait for v2's time-outs: {:?}", started.elapsed());
    for s in stuck {
        s.abort();
    }
}

#[tokio::test]
async fn the_connection_gauges_show_busy_and_idle_connections_per_host() {
    let (v1, _) = slow(Duration::from_millis(300)).await;
    let sy = start(&config_text(&v1.url(), &v1.url(), 0, "[upstream]\nmax_connections = 4\n")).await;
    let admin = sy.admin_addr.unwrap();
    let host = v1.url().trim_start_matches("http://").to_string();
    let gauge = |text: &str, state: &str| {
        let series = format!("switchyard_upstream_connections{{host=\"{host}\",state=\"{state}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&series)).map(|v| v.parse::<u64>().unwrap())
    };
    let requests = futures_util::future::join_all(
        (0..10).map(|i| get_as(sy.addr, "/rest/v1/t", if i % 2 == 0 { "a" } else { "b" })),
    );
    let scrape = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        support::metrics_text(admin).await
    };
    let (answers, during) = tokio::join!(requests, scrape);
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(gauge(&during, "busy"), Some(4), "all of the budget in use:\n{during}");
    let after = support::metrics_text(admin).await;
    assert_eq!((gauge(&after, "busy"), gauge(&after, "idle")), (Some(0), Some(4)), "{after}");
}
