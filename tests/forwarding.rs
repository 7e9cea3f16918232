//! Forwarding through real sockets: headers and query strings as supabase-js sends
//! them, every method, h2c clients, streaming in both directions, WebSocket tunnels.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;

const SUPABASE_JS_HEADERS: [(&str, &str); 9] = [
    ("apikey", "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.c2lnbmF0dXJl"),
    ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.c2lnbmF0dXJl"),
    ("accept-profile", "public"),
    ("content-profile", "public"),
    ("prefer", "return=representation,count=exact"),
    ("range", "0-9"),
    ("x-client-info", "supabase-js/2.109.0; runtime=node; runtime-version=v20.20.2"),
    ("x-retry-count", "1"),
    ("x-supabase-api-version", "2024-01-01"),
];

#[tokio::test]
async fn supabase_js_headers_and_query_arrive_unchanged() {
    let (v1, _v2, sy) = stack(0, "").await;
    let query = "select=id,name,orders(*)&id=eq.1&or=(a.eq.%20x,b.is.null)&name=ilike.*%C3%A9*&order=id.desc.nullslast";
    let mut headers = SUPABASE_JS_HEADERS.to_vec();
    headers.extend([
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "must not pass"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("host", "api.example.com"),
    ]);
    let got = send(sy.addr, "POST", &format!("/rest/v1/orders?{query}"), &headers, r#"{"a":1}"#).await;
    assert_eq!(got.status, 200);
    let seen = got.json();
    assert_eq!(seen["query"], query, "query string changed");
    assert_eq!(seen["body"], r#"{"a":1}"#);
    let h = &seen["headers"];
    for (name, value) in SUPABASE_JS_HEADERS {
        assert_eq!(h[name], serde_json::json!([value]), "{name} changed");
    }
    assert_eq!(h["host"][0], v1.addr.to_string());
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "api.example.com");
    for hop in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(h.get(hop).is_none(), "{hop} was forwarded");
    }
}

#[tokio::test]
async fn only_a_trusted_proxy_says_what_the_original_scheme_and_host_were() {
    let claims = [("host", "api.example.com"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "evil.example")];
    // From anyone: replaced by what the connection is.
    let (_v1, _v2, sy) = stack(0, "").await;
    let h = send(sy.addr, "GET", "/rest/v1/items", &claims, "").await.json()["headers"].clone();
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]), "{h}");
    assert_eq!(h["x-forwarded-host"], serde_json::json!(["api.example.com"]), "{h}");
    // From a proxy in server.trusted_proxies: kept, once.
    let trusted = "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1/32\"]\n";
    let v1 = echo("v1").await;
    let sy = start(&config_text(&v1.url(), &v1.url(), 0, "").replace("[server]\n", trusted)).await;
    let h = send(sy.addr, "GET", "/rest/v1/items", &claims, "").await.json()["headers"].clone();
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]), "{h}");
    assert_eq!(h["x-forwarded-host"], serde_json::json!(["evil.example"]), "{h}");
}

#[tokio::test]
async fn every_method_is_forwarded() {
    let (_v1, _v2, sy) = stack(0, "").await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"] {
        let got = send(sy.addr, method, "/rest/v1/t?id=eq.1", &[], "payload").await;
        assert_eq!(got.status, 200, "{method}");
        assert_eq!(got.json()["method"], method);
        assert_eq!(got.json()["body"], "payload", "{method} body");
    }
    let head = send(sy.addr, "HEAD", "/rest/v1/t", &[], "").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn a_backend_mounted_under_a_path_gets_translated_paths_under_it() {
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    let extra = "[translation.tables]\nprofiles = \"shared_services\"\n\
                 [translation.edge_functions.v2]\nmemory-create = \"memory/create\"\n";
    let text = config_text(&format!("{}/base/", v1.url()), &format!("{}/mounted", v2.url()), 100, extra);
    let sy = start(&text).await;
    // Translation sees the client's path, then the prefix goes in front.
    let got = send(sy.addr, "GET", "/rest/v1/profiles?select=id&id=eq.%C3%A9", &[], "").await;
    assert_eq!(got.status, 200);
    assert_eq!(
        (got.json()["path"].as_str(), got.json()["query"].as_str()),
        (Some("/mounted/rest/v1/profiles"), Some("select=id&id=eq.%C3%A9"))
    );
    assert_eq!(got.json()["headers"]["accept-profile"][0], "shared_services");
    let got = send(sy.addr, "POST", "/functions/v1/memory-create", &[], "{}").await;
    assert_eq!(got.json()["path"], "/mounted/functions/v1/memory/create");
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_reach_http1_upstreams() {
    let (v1, _v2, sy) = stack(0, "").await;
    let tcp = tokio::net::TcpStream::connect(sy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{}/rest/v1/t?n={i}", sy.addr))
            .header("x-user-id", "h2-user")
            .body(full("over h2"))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers()["x-switchyard-backend"], "v1");
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["version"], "HTTP/1.1");
        assert_eq!(body["headers"]["host"][0], v1.addr.to_string());
        assert_eq!(body["query"], format!("n={i}"));
        assert_eq!(body["body"], "over h2");
    }
}

#[tokio::test]
async fn response_bodies_stream_without_buffering() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let v1 = upstream(move |_req| {
        let gate = gate.clone();
        async move {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"first")).await.unwrap();
                gate.notified().await;
                tx.send(Bytes::from_static(b"second")).await.unwrap();
            });
            Response::new(channel_body(rx))
        }
    })
    .await;
    let v2 = echo("v2").await;
    let sy = start(&config_text(&v1.url(), &v2.url(), 0, "")).await;
    let req = Request::get(format!("http://{}/rest/v1/big", sy.addr)).body(full("")).unwrap();
    let resp = client().request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk reached the client before the upstream finished")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn request_bodies_stream_without_buffering() {
    let (seen_tx, mut seen_rx) = mpsc::channel::<Bytes>(4);
    let v1 = upstream(move |req| {
        let seen_tx = seen_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    total += data.len();
                    let _ = seen_tx.send(data).await;
                }
            }
            Response::new(full(total.to_string()))
        }
    })
    .await;
    let v2 = echo("v2").await;
    let sy = start(&config_text(&v1.url(), &v2.url(), 0, "")).await;
    let (tx, rx) = mpsc::channel(1);
    let req = Request::post(format!("http://{}/functions/v1/upload", sy.addr)).body(channel_body(rx)).unwrap();
    let pending = tokio::spawn(async move { client().request(req).await });
    tx.send(Bytes::from_static(b"part-one")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
        .await
        .expect("the upstream got the first part while the client still held the rest")
        .unwrap();
    assert_eq!(first, "part-one");
    tx.send(Bytes::from_static(b"part-two")).await.unwrap();
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "16");
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let (ws_addr, mut req_rx) = ws_echo().await;
    let v2 = echo("v2").await;
    let sy = start(&config_text(&format!("http://{ws_addr}"), &v2.url(), 100, "")).await;
    let url = format!("ws://{}/realtime/v1/websocket?apikey=anon-key&vsn=2.0.0", sy.addr);
    let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.expect("upgrade through the proxy");
    assert_eq!(resp.headers()["x-switchyard-backend"], "v1", "realtime is pinned to v1");
    let (uri, host) = req_rx.recv().await.unwrap();
    assert_eq!(uri, "/realtime/v1/websocket?apikey=anon-key&vsn=2.0.0");
    assert_eq!(host, ws_addr.to_string());
    for i in 0..5 {
        let text = format!(r#"{{"topic":"realtime:public","event":"phx_join","ref":"{i}"}}"#);
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    let gauge = &sy.proxy.metrics.tunnels;
    tokio::time::timeout(Duration::from_secs(5), async {
        while gauge.get() != 0 || !sy.proxy.tunnels.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the tunnel ended after the close");
}
