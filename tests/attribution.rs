//! Failures attributed to their cause, through real sockets: what a client does to
//! its own requests (malformed, aborted and stalled uploads) is counted as the
//! client's, never against the project it was routed to, and one user's slow or
//! failing requests weigh as one user. None of it moves the rollout; errors that many
//! users see still do.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Response;
use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUARD: &str = "[guard]\nwindow_seconds = 30\nmin_requests = 20\n[upstream]\ntimeout_seconds = 1\n";

/// A project that reads every body, and fails or slows down on request.
async fn project() -> Upstream {
    upstream(|req| async move {
        let path = req.uri().path().to_string();
        let _ = req.into_body().collect().await;
        match path.as_str() {
            "/rest/v1/fail" => Response::builder().status(500).body(full(r#"{"code":"XX000"}"#)).unwrap(),
            "/rest/v1/slow" => {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Response::new(full("[]"))
            }
            _ => Response::new(full("[]")),
        }
    })
    .await
}

/// `n` user ids whose cohort is below (`v2`) or at/above 50.
fn users(n: usize, v2: bool, tag: &str) -> Vec<String> {
    (0..).map(|i| format!("{tag}-{i}")).filter(|u| (percentile(u) < 50) == v2).take(n).collect()
}

/// Healthy requests from many users on both sides, so that the guard has enough to judge.
async fn healthy(addr: SocketAddr, tag: &str) {
    let all = [users(40, true, tag), users(40, false, tag)].concat();
    let calls = all.iter().map(|u| async move { get_as(addr, "/rest/v1/items", u).await.status.as_u16() });
    assert!(futures_util::future::join_all(calls).await.iter().all(|s| *s == 200));
}

/// Sends `raw` on a fresh connection and returns the status line's code, or `None`
/// when the proxy closed without answering.
async fn raw(addr: SocketAddr, raw: String, then_close: bool) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    if then_close {
        return None;
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("answered").unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn counter(text: &str, series: &str) -> u64 {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

async fn not_tripped_for(admin: SocketAddr, wait: Duration) {
    let started = Instant::now();
    while started.elapsed() < wait {
        let s = rollout_status(admin).await;
        assert!(s["guard_tripped"].is_null(), "the guard tripped: {s}");
        assert_eq!(s["percentage"], 50);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_failures_and_one_users_trouble_do_not_move_the_rollout() {
    let (v1, v2) = (project().await, project().await);
    let sy = start(&config_text(&v1.url(), &v2.url(), 50, GUARD)).await;
    let admin = sy.admin_addr.unwrap();
    healthy(sy.addr, "a").await;
    let attackers = users(20, true, "attacker");

    // Malformed chunked bodies, uploads cut short, uploads that stall: from v2 users.
    let mut malformed = Vec::new();
    for (i, u) in attackers.iter().cycle().take(150).enumerate() {
        let head = format!("POST /rest/v1/items HTTP/1.1\r\nhost: x\r\nx-user-id: {u}\r\n");
        match i % 3 {
            0 => malformed.push(raw(
                sy.addr,
                format!("{head}transfer-encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n"),
                false,
            )),
            _ => malformed.push(raw(sy.addr, format!("{head}content-length: 1000\r\n\r\n{{\"partial\":"), true)),
        }
    }
    let answered = futures_util::future::join_all(malformed).await;
    assert!(answered.iter().flatten().all(|s| *s == 400), "{answered:?}");
    let stalled = attackers.iter().take(10).map(|u| {
        let head =
            format!("POST /rest/v1/items HTTP/1.1\r\nhost: x\r\nx-user-id: {u}\r\ncontent-length: 100\r\n\r\n{{");
        async move {
            let mut s = TcpStream::connect(sy.addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("answered").unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    });
    for answer in futures_util::future::join_all(stalled).await {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    // One v2 user's slow queries and the errors the project returns to that user alone.
    let heavy = &attackers[0];
    let calls = (0..60).map(|i| {
        let path = if i % 2 == 0 { "/rest/v1/slow" } else { "/rest/v1/fail" };
        get_as(sy.addr, path, heavy)
    });
    futures_util::future::join_all(calls).await;
    healthy(sy.addr, "b").await;

    let m = metrics_text(admin).await;
    assert!(counter(&m, "switchyard_client_errors_total{kind=\"malformed_body\"}") >= 50, "{m}");
    assert!(counter(&m, "switchyard_client_errors_total{kind=\"slow_upload\"}") >= 10, "{m}");
    assert!(!m.contains("switchyard_upstream_errors_total{"), "client failures counted against a project:\n{m}");
    // The guard evaluates every second: give it several looks.
    not_tripped_for(admin, Duration::from_secs(4)).await;

    // The control: the same guard does trip when many v2 users see errors.
    let calls = users(40, true, "many").into_iter().map(|u| async move { get_as(sy.addr, "/rest/v1/fail", &u).await });
    futures_util::future::join_all(calls).await;
    let started = Instant::now();
    loop {
        let s = rollout_status(admin).await;
        if !s["guard_tripped"].is_null() {
            assert_eq!(s["guard_tripped"]["reason"], "error_ratio");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the guard never tripped on real errors: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
