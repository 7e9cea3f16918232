//! The upstream client against hyper's, on the same bytes: an upstream on loopback
//! answers a GET with the fuzzer's bytes (closing only once the client has taken all
//! it can without the close), and both clients must agree on the status, the body
//! and whether the connection may carry another request.
//!
//! Where switchyard is deliberately stricter than hyper, the case is listed in
//! `deliberate` and not compared:
//! - a head switchyard refuses that hyper takes: `Transfer-Encoding` in an HTTP/1.0
//!   response (a smuggling vector), header names or values hyper accepts and
//!   `http::HeaderName`/`HeaderValue` refuse;
//! - reuse after a response framed twice (`Transfer-Encoding` and `Content-Length`):
//!   switchyard never reuses such a connection;
//! - `101 Switching Protocols`: the connection becomes a tunnel, nothing to compare.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Either, Empty};
use libfuzzer_sys::fuzz_target;
use switchyard::upstream::wire::Forwarded;
use switchyard::upstream::{Outbound, Settings, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How long a client may sit on a partial answer before the upstream closes.
const IDLE: Duration = Duration::from_millis(20);

#[derive(Debug, PartialEq)]
struct Outcome {
    /// The status, or none when the head was refused or never came whole.
    status: Option<u16>,
    /// The body, or none when it failed (cut short, malformed).
    body: Option<Bytes>,
    /// Whether the connection may carry another request (only known when the body
    /// ended before the upstream closed).
    reusable: Option<bool>,
}

/// An upstream that answers one request with `bytes`, then closes when told to.
async fn upstream(bytes: Vec<u8>) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (close, closed) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        if s.write_all(&bytes).await.is_err() {
            return;
        }
        let _ = closed.await;
        let _ = s.shutdown().await;
        // Drained until the client closes, so that the close is never a reset.
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    (addr, close)
}

/// Waits for `fut`; if it sits idle, the upstream closes and it is waited for again.
async fn settle<T>(fut: impl Future<Output = T>, close: &mut Option<oneshot::Sender<()>>) -> T {
    let mut fut = std::pin::pin!(fut);
    if let Ok(done) = tokio::time::timeout(IDLE, fut.as_mut()).await {
        return done;
    }
    if let Some(close) = close.take() {
        let _ = close.send(());
    }
    tokio::time::timeout(Duration::from_secs(5), fut).await.expect("ends once the upstream has closed")
}

async fn switchyard(upstream: &Upstream, bytes: Vec<u8>) -> Outcome {
    let (addr, close) = self::upstream(bytes).await;
    let mut close = Some(close);
    let authority: http::uri::Authority = addr.to_string().parse().unwrap();
    let req = Request::get("/").body(Either::Right(Empty::<Bytes>::new())).unwrap();
    let forwarded = Forwarded {
        host: HeaderValue::from_static("x"),
        chain: HeaderValue::from_static("127.0.0.1"),
        replaces_chain: false,
        proto: None,
        original_host: None,
        replaces_claims: false,
    };
    let out = Outbound { req, forwarded };
    let now = tokio::time::Instant::now();
    let sent = upstream.send(&http::uri::Scheme::HTTP, &authority, out, Duration::from_secs(5), now, None);
    let Ok(resp) = settle(sent, &mut close).await else {
        return Outcome { status: None, body: None, reusable: None };
    };
    let status = Some(resp.status().as_u16());
    let body = settle(resp.into_body().collect(), &mut close).await.ok().map(|c| c.to_bytes());
    let idle = || upstream.usage().iter().map(|(_, _, idle)| idle).sum::<usize>();
    let reusable = (close.is_some() && body.is_some()).then(|| idle() == 1);
    // The next input's connection must not find this one parked.
    if let Some(close) = close.take() {
        let _ = close.send(());
    }
    Outcome { status, body, reusable }
}

async fn hyper(bytes: Vec<u8>) -> Outcome {
    let (addr, close) = upstream(bytes).await;
    let mut close = Some(close);
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut builder = hyper::client::conn::http1::Builder::new();
    // switchyard's own head parser's settings.
    builder.allow_spaces_after_header_name_in_responses(true).max_headers(128);
    let (mut sender, conn) = builder.handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/").header("host", "x").body(Empty::<Bytes>::new()).unwrap();
    let Ok(resp) = settle(sender.send_request(req), &mut close).await else {
        return Outcome { status: None, body: None, reusable: None };
    };
    let status = Some(resp.status().as_u16());
    let body = settle(resp.into_body().collect(), &mut close).await.ok().map(|c| c.to_bytes());
    let reusable = if close.is_some() && body.is_some() {
        Some(tokio::time::timeout(IDLE, sender.ready()).await.is_ok_and(|r| r.is_ok()))
    } else {
        None
    };
    Outcome { status, body, reusable }
}

/// Heads where switchyard is stricter on purpose (see the module doc).
fn deliberate(bytes: &[u8]) -> bool {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").map_or(bytes.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let te = head.contains("\ntransfer-encoding");
    (head.starts_with("http/1.0") && te)
        || (te && head.contains("\ncontent-length"))
        || head.get(9..12) == Some("101")
        || bytes[..head_end].iter().any(|b| *b >= 0x80 || (*b < 0x20 && !matches!(b, b'\r' | b'\n' | b'\t')))
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 16 * 1024 || deliberate(data) {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let settings = Settings {
            connect_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 4,
            max_connections: 4,
            max_connections_per_host: 4,
            extra_roots: Vec::new(),
        };
        let upstream = Upstream::new(&settings);
        let ours = switchyard(&upstream, data.to_vec()).await;
        let theirs = hyper(data.to_vec()).await;
        // A head one refuses and the other takes is a disagreement; so is a body.
        assert_eq!(ours.status, theirs.status, "status: {:?}", String::from_utf8_lossy(data));
        if ours.status.is_some() {
            assert_eq!(ours.body, theirs.body, "body: {:?}", String::from_utf8_lossy(data));
            if let (Some(a), Some(b)) = (ours.reusable, theirs.reusable) {
                assert_eq!(a, b, "reuse: {:?}", String::from_utf8_lossy(data));
            }
        }
    });
});
