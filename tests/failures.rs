//! Upstream failures through real sockets: refused, silent, reset mid-body, not HTTP.
//! Each gets the right status in PostgREST's shape (or an aborted body), is counted,
//! and leaves the proxy serving.

mod support;

use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An address nothing listens on.
async fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// A raw TCP upstream that reads the request head and then writes `reply` (if any)
/// and closes, or holds the connection open forever when `reply` is `None`.
async fn raw_upstream(reply: Option<&'static [u8]>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                match reply {
                    Some(bytes) => {
                        let _ = s.write_all(bytes).await;
                        let _ = s.shutdown().await;
                    }
                    None => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn metric(sy: &switchyard::server::Running, needle: &str) -> bool {
    sy.proxy.metrics.render().lines().any(|l| l.starts_with(needle))
}

#[tokio::test]
async fn refused_connection_is_a_fast_502() {
    let v1 = echo("v1").await;
    let sy = start(&config_text(&v1.url(), &closed_port().await, 100, "")).await;
    let started = Instant::now();
    let got = get_as(sy.addr, "/rest/v1/t", "u").await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(got.status, 502);
    assert_eq!(got.backend(), "v2");
    let body = got.json();
    assert_eq!(body["code"], "SWY502");
    assert_eq!(body["message"], "upstream v2 unreachable");
    assert!(body.get("hint").is_some());
    assert!(metric(&sy, r#"switchyard_upstream_errors_total{backend="v2",kind="connect"} 1"#));
    assert!(metric(&sy, r#"switchyard_requests_total{backend="v2",method="GET",service="rest",status_class="5xx"} 1"#));
}

#[tokio::test]
async fn silent_upstream_is_a_504_after_the_timeout() {
    let v1 = echo("v1").await;
    let silent = raw_upstream(None).await;
    let extra = "[upstream]\ntimeout_seconds = 0.3\n";
    let sy = start(&config_text(&v1.url(), &silent, 100, extra)).await;
    let got = get_as(sy.addr, "/rest/v1/t", "u").await;
    assert_eq!(got.status, 504);
    assert_eq!(got.json()["code"], "SWY504");
    assert!(metric(&sy, r#"switchyard_upstream_errors_total{backend="v2",kind="timeout"} 1"#));
    // The other backend is unaffected.
    assert_eq!(send(sy.addr, "GET", "/auth/v1/health", &[], "").await.status, 200);
}

async fn assert_aborted(addr: std::net::SocketAddr) {
    let req = Request::get(format!("http://{addr}/rest/v1/big")).body(full("")).unwrap();
    let resp = client().request(req).await.expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await.expect("no hang");
    assert!(body.is_err(), "a truncated body was delivered as complete");
}

#[tokio::test]
async fn reset_mid_body_aborts_the_client_response() {
    let v1 = echo("v1").await;
    let sized = raw_upstream(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial")).await;
    let sy = start(&config_text(&v1.url(), &sized, 100, "")).await;
    assert_aborted(sy.addr).await;
    let chunked = raw_upstream(Some(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\npartial\r\n")).await;
    let sy = start(&config_text(&v1.url(), &chunked, 100, "")).await;
    assert_aborted(sy.addr).await;
    // Still serving.
    assert_eq!(send(sy.addr, "GET", "/auth/v1/health", &[], "").await.status, 200);
}

#[tokio::test]
async fn malformed_and_closed_responses_are_502() {
    let v1 = echo("v1").await;
    let garbage = raw_upstream(Some(b"this is not http\r\n\r\n")).await;
    let sy = start(&config_text(&v1.url(), &garbage, 100, "")).await;
    let got = get_as(sy.addr, "/rest/v1/t", "u").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.json()["code"], "SWY502");
    assert!(metric(&sy, r#"switchyard_upstream_errors_total{backend="v2",kind="protocol"} 1"#));

    let hangup = raw_upstream(Some(b"")).await;
    let sy = start(&config_text(&v1.url(), &hangup, 100, "")).await;
    let got = get_as(sy.addr, "/rest/v1/t", "u").await;
    assert_eq!(got.status, 502);
    assert!(metric(&sy, r#"switchyard_upstream_errors_total{backend="v2",kind="reset"} 1"#));
}

#[tokio::test]
async fn auth_errors_keep_gotrue_shape() {
    let sy = start(&config_text(&closed_port().await, &closed_port().await, 0, "")).await;
    let got =
        send(sy.addr, "POST", "/auth/v1/token?grant_type=password", &[("x-supabase-api-version", "2024-01-01")], "{}")
            .await;
    assert_eq!(got.status, 502);
    assert_eq!(got.headers["x-sb-error-code"], "upstream_unreachable");
    let body = got.json();
    assert_eq!(body["code"], "upstream_unreachable");
    assert!(body["message"].as_str().unwrap().contains("v1"));
}
