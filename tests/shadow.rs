//! Shadow reads through real sockets: mismatches detected and counted, writes never
//! mirrored, and the client's answer never waits for a hanging shadow upstream.

mod support;

use std::time::{Duration, Instant};

use http::Response;
use support::*;

const SHADOW: &str =
    "[shadow]\nfraction = 1.0\nmax_concurrent = 2\ntimeout_seconds = 30\nignore_fields = [\"updated_at\"]\n";

/// An upstream answering `body` for /rest/v1/same and `label` data elsewhere.
async fn rows(label: &'static str, same: &'static str) -> Upstream {
    upstream(move |req| async move {
        let body = if req.uri().path() == "/rest/v1/same" {
            same.to_string()
        } else {
            format!(r#"[{{"id":1,"from":"{label}"}}]"#)
        };
        Response::builder().header("content-type", "application/json").body(full(body)).unwrap()
    })
    .await
}

async fn wait_for_metric(sy: &switchyard::server::Running, line: &str) {
    let started = Instant::now();
    while !sy.proxy.metrics.render().lines().any(|l| l == line) {
        assert!(started.elapsed() < Duration::from_secs(5), "never saw {line}:\n{}", sy.proxy.metrics.render());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mismatches_are_detected_and_counted() {
    let v1 = rows("v1", r#"[{"id":1,"name":"a","updated_at":"2026-01-01"}]"#).await;
    let v2 = rows("v2", r#"[{"updated_at":"2026-11-24","name":"a","id":1}]"#).await;
    let sy = start(&config_text(&v1.url(), &v2.url(), 0, SHADOW)).await;
    let got = get_as(sy.addr, "/rest/v1/same?select=*", "u").await;
    assert_eq!((got.status.as_u16(), got.backend()), (200, "v1"));
    wait_for_metric(&sy, r#"switchyard_shadow_total{result="match",service="rest"} 1"#).await;
    let got = get_as(sy.addr, "/rest/v1/other", "u").await;
    assert_eq!(got.json()[0]["from"], "v1", "the client gets the primary's answer");
    wait_for_metric(&sy, r#"switchyard_shadow_total{result="mismatch",service="rest"} 1"#).await;
    assert_eq!(v2.hits(), 2);
}

#[tokio::test]
async fn writes_are_never_mirrored() {
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    let sy = start(&config_text(&v1.url(), &v2.url(), 0, SHADOW)).await;
    for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        assert_eq!(send(sy.addr, method, "/rest/v1/t", &[("x-user-id", "u")], "{}").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(v2.hits(), 0, "a write reached the shadow backend");
    send(sy.addr, "HEAD", "/rest/v1/t", &[("x-user-id", "u")], "").await;
    wait_for_metric(&sy, r#"switchyard_shadow_total{result="match",service="rest"} 1"#).await;
    assert_eq!(v2.hits(), 1);
}

#[tokio::test]
async fn a_hanging_shadow_upstream_never_delays_the_client() {
    let v1 = echo("v1").await;
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}", hang.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s); // accepted, never answered
        }
    });
    let sy = start(&config_text(&v1.url(), &hang_url, 0, SHADOW)).await;
    let started = Instant::now();
    for n in 0..5 {
        let got = get_as(sy.addr, "/rest/v1/t", &format!("u{n}")).await;
        assert_eq!((got.status.as_u16(), got.backend()), (200, "v1"));
    }
    // Five answers while the two shadow slots hang for 30 s each.
    assert!(started.elapsed() < Duration::from_secs(5), "the client waited for the shadow: {:?}", started.elapsed());
    wait_for_metric(&sy, r#"switchyard_shadow_total{result="dropped",service="rest"} 3"#).await;
}
