//! Client-side limits through real sockets: header count and size (431), body size
//! (413), in-flight requests (503 + Retry-After), connections, slow headers and idle
//! keep-alive connections.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn stack_with(extra: &str) -> (Upstream, Upstream, switchyard::server::Running) {
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    let sy = start(&config_text(&v1.url(), &v2.url(), 0, extra)).await;
    (v1, v2, sy)
}

/// Whether the proxy closes `s` within `limit` (what it sends before is read and
/// dropped).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 512];
    let closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(limit, closed).await.is_ok()
}

/// Writes `raw` on a fresh connection and reads the status line (or "" when closed).
async fn raw_status(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("an answer").unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let (v1, _v2, sy) = stack_with("[limits]\nmax_header_count = 20\nmax_header_bytes = 8192\n").await;
    let many: String = (0..40).map(|i| format!("x-h{i}: v\r\n")).collect();
    let req = format!("GET /rest/v1/t HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    assert!(raw_status(sy.addr, req.as_bytes()).await.contains("431"), "too many headers");
    let big = format!("GET /rest/v1/t HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw_status(sy.addr, big.as_bytes()).await.contains("431"), "too large a head");
    assert_eq!(v1.hits(), 0);
    assert_eq!(get_as(sy.addr, "/rest/v1/t", "u").await.status, 200, "normal requests still pass");
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let (v1, _v2, sy) = stack_with("[limits]\nmax_body_bytes = 1000\n").await;
    let got = send(sy.addr, "POST", "/rest/v1/t", &[], &"x".repeat(2000)).await;
    assert_eq!(got.status, 413);
    assert_eq!(got.json()["code"], "SWY413");
    assert_eq!(v1.hits(), 0, "refused before forwarding");
    assert_eq!(send(sy.addr, "POST", "/rest/v1/t", &[], &"x".repeat(1000)).await.status, 200);
    // Chunked, no declared length: cut off at the limit.
    let chunks =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'y'; 600])))));
    let req =
        Request::post(format!("http://{}/rest/v1/t", sy.addr)).body(BodyExt::boxed(StreamBody::new(chunks))).unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_requests_are_shed_with_retry_after() {
    let slow = slow(Duration::from_millis(400), "[]").await;
    let v2 = echo("v2").await;
    let sy = start(&config_text(&slow.url(), &v2.url(), 0, "[limits]\nmax_in_flight = 2\n")).await;
    let addr = sy.addr;
    let calls = (0..6).map(|i| async move { get_as(addr, "/rest/v1/t", &format!("u{i}")).await });
    let answers = futures_util::future::join_all(calls).await;
    let shed: Vec<&Got> = answers.iter().filter(|g| g.status == 503).collect();
    assert!(!shed.is_empty() && shed.len() <= 4, "{} shed", shed.len());
    assert_eq!(answers.iter().filter(|g| g.status == 200).count() + shed.len(), 6);
    assert_eq!(shed[0].headers["retry-after"], "1");
    assert_eq!(shed[0].json()["code"], "SWY503");
}

#[tokio::test]
async fn connections_over_the_limit_wait() {
    let (_v1, _v2, sy) = stack_with("[limits]\nmax_connections = 1\n").await;
    // One idle keep-alive connection holds the only slot.
    let mut held = TcpStream::connect(sy.addr).await.unwrap();
    held.write_all(b"GET /rest/v1/t HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let _ = held.read(&mut buf).await.unwrap();
    let waiting = tokio::spawn({
        let addr = sy.addr;
        async move { get_as(addr, "/rest/v1/t", "second").await.status }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served past max_connections");
    drop(held);
    let status =
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("served once a slot freed").unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let v1 = echo("v1").await;
    let text = with_header_read_timeout(&config_text(&v1.url(), &v1.url(), 0, ""), 0.3);
    let sy = start(&text).await;
    let addr = sy.addr;
    // Slowloris: half a request head, then silence.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /rest/v1/t HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = vec![0u8; 512];
    let n =
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.expect("closed by the proxy").unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.contains("408"), "{answer}");
    // A client that connects and never says anything.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let silent = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(matches!(silent, Ok(Ok(0)) | Ok(Err(_))), "silent connection kept open: {silent:?}");
    // Idle keep-alive: answered, then closed after the timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /rest/v1/t HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut s, Duration::from_secs(3)).await, "idle connection kept open");
}

/// One keep-alive connection, kept under one deadline at a time: a slow answer and a
/// slow download both outlast the header read timeout, a hung upstream still times out,
/// and the connection serves on after each, then closes once idle.
#[tokio::test]
async fn one_connection_keeps_each_requests_deadline_in_turn() {
    let v1 = upstream(|req| async move {
        match req.uri().path() {
            "/rest/v1/slow" => {
                tokio::time::sleep(Duration::from_millis(800)).await;
                Response::new(full("slow"))
            }
            "/rest/v1/stream" => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    for _ in 0..4 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = tx.send(Bytes::from_static(b"chunk")).await;
                    }
                });
                Response::new(channel_body(rx))
            }
            "/rest/v1/hang" => std::future::pending().await,
            _ => Response::new(full("ok")),
        }
    })
    .await;
    let text =
        with_header_read_timeout(&config_text(&v1.url(), &v1.url(), 0, "[upstream]\ntimeout_seconds = 1.5\n"), 0.3);
    let sy = start(&text).await;
    let stream = TcpStream::connect(sy.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    let closed = tokio::spawn(conn);
    let mut get = async |path: &str| {
        let req = Request::get(path).header("host", "x").body(http_body_util::Empty::<Bytes>::new()).unwrap();
        let resp = tx.send_request(req).await.expect("answered on the same connection");
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.expect("whole body").to_bytes())
    };
    assert_eq!(get("/rest/v1/slow").await, (200, Bytes::from_static(b"slow")));
    assert_eq!(get("/rest/v1/stream").await, (200, Bytes::from_static(b"chunkchunkchunkchunk")));
    let started = std::time::Instant::now();
    assert_eq!(get("/rest/v1/hang").await.0, 504);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4), "timed out after {waited:?}");
    assert_eq!(get("/rest/v1/t").await, (200, Bytes::from_static(b"ok")));
    // Then idle: closed by the proxy after the header read timeout.
    let idle = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3), closed).await.expect("idle connection closed").unwrap().unwrap();
    assert!(idle.elapsed() >= Duration::from_millis(250), "closed after {:?}", idle.elapsed());
}

#[tokio::test]
async fn a_request_starting_like_the_http2_preface_is_still_http1() {
    let (_v1, _v2, sy) = support::stack(0, "").await;
    // "P" is where the HTTP/2 preface and PATCH/POST/PUT part ways: the connection takes
    // the full protocol detection, which must still serve HTTP/1.
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    s.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"OST /rest/v1/t HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.expect("answered").unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// HTTP/2: a preface that comes in pieces is still HTTP/2; a connection that sends
/// the preface and then nothing, or serves its streams and then idles, is closed.
#[tokio::test]
async fn http2_split_prefaces_and_idle_connections() {
    let v1 = echo("v1").await;
    let sy = start(&with_header_read_timeout(&config_text(&v1.url(), &v1.url(), 0, ""), 0.3)).await;
    // The preface in two writes, then a full HTTP/2 exchange.
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    let first = b"PRI * HTTP/2.0\r\n";
    s.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (h2, conn) = h2::client::handshake(Rest { io: s, skip: first.len() }).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let (resp, _) = h2.send_request(Request::get("http://x/rest/v1/t").body(()).unwrap(), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    // Idle now: closed (GOAWAY, then the end) after the idle bound.
    let idle = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await.expect("idle HTTP/2 connection kept open");
    assert!(ended.unwrap().is_ok(), "closed gracefully");
    assert!(idle.elapsed() >= Duration::from_millis(250), "closed after {:?}", idle.elapsed());
    // The preface and nothing else (no SETTINGS): closed.
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "a silent HTTP/2 connection kept open");
}

/// A socket whose first `skip` bytes the caller has written already: h2's client
/// writes the whole preface, so that many of its first bytes are dropped here.
struct Rest {
    io: TcpStream,
    skip: usize,
}

impl tokio::io::AsyncRead for Rest {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rest {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.skip > 0 {
            let skipped = this.skip.min(data.len());
            this.skip -= skipped;
            return std::task::Poll::Ready(Ok(skipped));
        }
        std::pin::Pin::new(&mut this.io).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The listen socket's accept backlog as the kernel reports it (`ss`'s Send-Q).
fn listen_backlog(port: u16) -> u32 {
    let out = std::process::Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]).output().expect("ss runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_else(|| panic!("no listener on {port}: {text}"));
    line.split_whitespace().nth(2).and_then(|q| q.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

/// A storm of reconnecting clients waits in the kernel's accept queue: the backlog is
/// `server.listen_backlog` (4096 by default, within the kernel's `somaxconn`), not the
/// standard library's 128.
#[tokio::test]
async fn the_listen_backlog_is_the_configured_one() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    let (_v1, _v2, sy) = stack(0, "").await;
    assert_eq!(listen_backlog(sy.addr.port()), 4096.min(somaxconn));
    let text = config_text("http://127.0.0.1:9", "http://127.0.0.1:9", 0, "")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\nlisten_backlog = 1000");
    let sy = start(&text).await;
    assert_eq!(listen_backlog(sy.addr.port()), 1000.min(somaxconn));
}
