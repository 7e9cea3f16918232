//! Shared helpers for the integration tests: in-process upstreams on 127.0.0.1:0, a
//! switchyard started in-process or as a child process, and a real HTTP client.
#![allow(dead_code)]

pub mod ca;
pub mod fake;
pub mod load;
pub mod postgres;
pub mod postgrest;
pub mod process;
pub mod projects;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// A streamed body fed by a channel: each message is one data frame.
pub fn channel_body(mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|b| Ok::<_, BoxError>(hyper::body::Frame::data(b)));
    BodyExt::boxed(http_body_util::StreamBody::new(frames))
}

/// A body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A test upstream: counts requests and accepted connections, answers with `handler`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub conns: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

/// Starts an HTTP/1.1 upstream on 127.0.0.1:0 answering with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let counter = hits.clone();
    let conns = Arc::new(AtomicUsize::new(0));
    let accepted = conns.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, hits, conns }
}

/// What an echo upstream saw, as JSON: label, method, path, raw query, headers, body.
pub async fn echo_body(label: &str, req: Request<Incoming>) -> Value {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let headers: BTreeMap<String, Vec<String>> = parts
        .headers
        .keys()
        .map(|k| {
            let vals =
                parts.headers.get_all(k).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
            (k.as_str().to_string(), vals)
        })
        .collect();
    json!({
        "backend": label,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&bytes),
    })
}

/// An upstream that answers every request with `body`, `after` it came.
pub async fn slow(after: std::time::Duration, body: &'static str) -> Upstream {
    upstream(move |_req| async move {
        tokio::time::sleep(after).await;
        Response::new(full(body))
    })
    .await
}

/// An upstream that echoes every request as JSON, labelled `label`.
pub async fn echo(label: &'static str) -> Upstream {
    upstream(move |req| async move {
        let v = echo_body(label, req).await;
        Response::builder().header("content-type", "application/json").body(full(v.to_string())).unwrap()
    })
    .await
}

/// A WebSocket echo server on 127.0.0.1:0; each handshake's (uri, host) is sent on
/// the returned channel.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
pub async fn ws_echo() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let callback = |req: &WsRequest, resp: WsResponse| {
                    let host = req.headers()["host"].to_str().unwrap().to_string();
                    let _ = tx.send((req.uri().to_string(), host));
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() || ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The test upstreams here are not Supabase projects: no key set is fetched from them
/// (the strict fakes of `fake.rs` publish one, and are fetched from).
pub const JWKS_OFF: &str = "jwks_enabled = false\n";

/// Config text for two backends plus `extra` TOML (appended, so it may add tables).
/// The canary guard is off unless `extra` configures it: a rollback in the middle of
/// a test about something else would only make it flaky.
pub fn config_text(v1: &str, v2: &str, percentage: u8, extra: &str) -> String {
    let guard = if extra.contains("[guard]") { "" } else { "[guard]\nenabled = false\n" };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace_seconds = 5\n\
         [rollout]\npercentage = {percentage}\n[backends.v1]\nurl = \"{v1}\"\n{JWKS_OFF}[backends.v2]\nurl = \"{v2}\"\n{JWKS_OFF}{guard}{extra}"
    )
}

/// `text` (from [`config_text`]) with `server.header_read_timeout_seconds` set.
pub fn with_header_read_timeout(text: &str, seconds: f64) -> String {
    let anchor = "shutdown_grace_seconds = 5";
    assert!(text.contains(anchor), "not a config_text: the timeout would not be set");
    text.replace(anchor, &format!("{anchor}\nheader_read_timeout_seconds = {seconds}"))
}

/// Starts switchyard in-process with `text` (no environment overrides).
pub async fn start(text: &str) -> switchyard::server::Running {
    start_with(text, &[], None).await
}

/// Starts switchyard in-process with `text`, environment `env`, reloading from `path`.
pub async fn start_with(
    text: &str,
    env: &[(&str, &str)],
    path: Option<std::path::PathBuf>,
) -> switchyard::server::Running {
    let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    let cfg = switchyard::config::Config::parse(text, &lookup).expect("test config is valid");
    switchyard::server::start(cfg, path).await.expect("switchyard starts")
}

/// The Prometheus text of the admin listener at `admin`.
pub async fn metrics_text(admin: SocketAddr) -> String {
    String::from_utf8_lossy(&send(admin, "GET", "/metrics", &[], "").await.body).into_owned()
}

/// A metric's value (summed over its series matching `labels`), 0 when absent.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A private CA made for the test and a certificate it signed for `localhost`: the
/// CA's PEM, the certificate and its key.
pub fn localhost_certificate() -> (String, rcgen::Certificate, rcgen::KeyPair) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    (pem, cert, key)
}

/// GET /admin/rollout on `admin`.
pub async fn rollout_status(admin: SocketAddr) -> Value {
    send(admin, "GET", "/admin/rollout", &[], "").await.json()
}

/// PUT /admin/rollout with `token`.
pub async fn put_rollout(admin: SocketAddr, token: Option<&str>, body: &str) -> Got {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send(admin, "PUT", "/admin/rollout", &headers, body).await
}

/// Two echo upstreams and a switchyard in front at `percentage`, with `extra` config.
pub async fn stack(percentage: u8, extra: &str) -> (Upstream, Upstream, switchyard::server::Running) {
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    let sy = start(&config_text(&v1.url(), &v2.url(), percentage, extra)).await;
    (v1, v2, sy)
}

/// A real HTTP/1.1 client with a keep-alive pool.
pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn backend(&self) -> &str {
        self.headers.get("x-switchyard-backend").map(|v| v.to_str().unwrap()).unwrap_or("")
    }
}

/// Sends `method path` with `headers` and `body` to `addr`, reads the whole answer.
pub async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Got {
    let mut b = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    // Every test request is bounded in time: a hang fails the test instead of CI.
    let limit = std::time::Duration::from_secs(30);
    let resp = tokio::time::timeout(limit, client().request(b.body(full(body.to_string())).unwrap()))
        .await
        .expect("an answer within 30 s")
        .expect("request sent");
    let (parts, body) = resp.into_parts();
    let body =
        tokio::time::timeout(limit, body.collect()).await.expect("a body within 30 s").expect("whole body").to_bytes();
    Got { status: parts.status, headers: parts.headers, body }
}

/// GET with `x-user-id: user`.
pub async fn get_as(addr: SocketAddr, path: &str, user: &str) -> Got {
    send(addr, "GET", path, &[("x-user-id", user)], "").await
}

/// The percentile the TypeScript would give `user` (computed independently of the
/// crate: md5 → first 4 bytes big-endian → % 100).
pub fn percentile(user: &str) -> u8 {
    use md5::{Digest, Md5};
    let d = Md5::digest(user.as_bytes());
    (u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 100) as u8
}

/// HS256 token with `claims`, signed with `secret`.
pub fn jwt(secret: &str, claims: Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Where the head in `buf` ends (after its blank line), once it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

/// The `content-length` of a head (0 without one).
pub fn content_length(head: &[u8]) -> usize {
    let head = String::from_utf8_lossy(head).to_lowercase();
    head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap())
}

/// Appends what the socket has to `buf`; false once it is closed.
pub async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut more = [0u8; 4096];
    match s.read(&mut more).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&more[..n]);
            true
        }
    }
}
