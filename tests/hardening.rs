//! What a hostile client (or a sloppy upstream) sends, through real sockets: paths
//! that would route one way and be served another, tunnel and server-wide requests,
//! `Expect` with an upstream that answers before the body, responses framed twice,
//! and `Connection` naming the proxy's own headers.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends `raw` on a fresh connection and reads until the proxy closes or goes quiet.
async fn exchange(addr: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    read_for(&mut s, Duration::from_millis(500)).await
}

/// What arrives on `s` until it closes or stays quiet for `quiet`.
async fn read_for(s: &mut TcpStream, quiet: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An upstream written byte by byte: each connection answers every request head it
/// reads with `answer(head)`, which also says whether to read the request's body (by
/// its content-length) first; a body it does not read is taken as the next request.
/// It takes 100 ms to refuse without reading.
async fn raw_upstream(answer: fn(&str) -> (String, bool)) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut skip = 0;
                loop {
                    let n = skip.min(buf.len());
                    buf.drain(..n);
                    skip -= n;
                    if skip == 0
                        && let Some(end) = head_end(&buf)
                    {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        let (response, read_body) = answer(&head);
                        if read_body {
                            skip = content_length(head.as_bytes());
                        } else {
                            // Refusing without reading takes it a moment: a body sent
                            // with the head is on the wire by then.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        if s.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// The path of a request head.
fn path(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// A request hidden in an upload's body. Left unfinished, so that an upstream that
/// takes it for a request says nothing until the next request on that connection
/// completes it (and so gets its answer).
const SMUGGLED: &str = "GET /rest/v1/smuggled HTTP/1.1\r\nx-ignore: ";

/// An upstream's answers: uploads refused at once (their body read first only when
/// `read_upload`), the smuggled request and anything else answered.
fn refuse_uploads(head: &str, read_upload: bool) -> (String, bool) {
    match path(head) {
        "/rest/v1/upload" => ("HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".into(), read_upload),
        "/rest/v1/smuggled" => (ok("SMUGGLED"), true),
        _ => (ok("NEXT"), true),
    }
}

/// A 200 with `body`.
fn ok(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len())
}

#[tokio::test]
async fn paths_that_would_be_served_elsewhere_are_refused_before_routing() {
    // Everybody on v2 for REST; auth is pinned to v1 by default.
    let (v1, v2, sy) = stack(100, "").await;
    for path in [
        "/rest/v1/../auth/v1/user",
        "/rest/v1/%2e%2e/auth/v1/user",
        "/rest/v1/%2E%2E%2fauth/v1/user",
        "/rest/v1/..%5cauth/v1/user",
        "/rest/v1/./items",
    ] {
        let answer = exchange(sy.addr, &format!("GET {path} HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("SWY400") && answer.contains("segments"), "{answer}");
    }
    assert_eq!((v1.hits(), v2.hits()), (0, 0), "a refused path reached a project");
    // An ordinary path with dots in a file name still goes through.
    let ok = get_as(sy.addr, "/storage/v1/object/public/b/photo.v2.png", "u1").await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn connect_and_server_wide_requests_are_refused_with_a_clear_error() {
    let (v1, v2, sy) = stack(50, "").await;
    let answer = exchange(sy.addr, "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("CONNECT is not supported"), "{answer}");
    let answer = exchange(sy.addr, "OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!((v1.hits(), v2.hits()), (0, 0));
}

#[tokio::test]
async fn expect_is_never_forwarded_so_no_body_is_left_on_an_upstream_connection() {
    // An upstream that honours Expect: told to expect, it refuses at once and does not
    // read the body, which (sent anyway) it then takes as the next request.
    fn answer(head: &str) -> (String, bool) {
        refuse_uploads(head, !head.to_ascii_lowercase().contains("\r\nexpect: 100-continue"))
    }
    let (up, _) = raw_upstream(answer).await;
    let url = format!("http://{up}");
    let sy = start(&config_text(&url, &url, 0, "")).await;
    let smuggled = SMUGGLED;
    for _ in 0..5 {
        // Head and body at once, as clients that do not wait for 100 Continue send them.
        let upload = format!(
            "POST /rest/v1/upload HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let answer = exchange(sy.addr, &upload).await;
        assert!(answer.contains("HTTP/1.1 401"), "{answer}");
        let next = send(sy.addr, "GET", "/rest/v1/next", &[], "").await;
        assert_eq!(next.body, "NEXT", "another client got the answer to a request hidden in a body");
    }
}

#[tokio::test]
async fn an_answer_before_the_body_is_sent_ends_the_upstream_connection() {
    // A sloppy upstream that never reads bodies: the proxy must not use the connection
    // again when it had not sent the whole body when the answer came.
    fn answer(head: &str) -> (String, bool) {
        refuse_uploads(head, false)
    }
    let (up, conns) = raw_upstream(answer).await;
    let url = format!("http://{up}");
    let sy = start(&config_text(&url, &url, 0, "")).await;
    let smuggled = SMUGGLED;
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    let head = format!("POST /rest/v1/upload HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", smuggled.len());
    s.write_all(head.as_bytes()).await.unwrap();
    let first = read_for(&mut s, Duration::from_millis(300)).await;
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    // The body, late: the upstream answered already without reading it.
    let _ = s.write_all(smuggled.as_bytes()).await;
    for _ in 0..3 {
        let next = send(sy.addr, "GET", "/rest/v1/next", &[], "").await;
        assert_eq!(next.body, "NEXT");
    }
    assert!(conns.load(Ordering::SeqCst) >= 2, "the connection the body was due on was used again");
}

#[tokio::test]
async fn the_upstream_never_sees_expect() {
    let (v1, _v2, sy) = stack(0, "").await;
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    let head = "POST /rest/v1/items HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let first = read_for(&mut s, Duration::from_millis(300)).await;
    assert!(first.starts_with("HTTP/1.1 100 Continue"), "the proxy answers Expect itself: {first}");
    s.write_all(b"{}").await.unwrap();
    let rest = read_for(&mut s, Duration::from_millis(300)).await;
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    let seen = &rest[rest.find("\r\n\r\n").unwrap() + 4..];
    let seen: serde_json::Value = serde_json::from_str(seen).unwrap();
    assert!(seen["headers"].get("expect").is_none(), "forwarded: {seen}");
    assert_eq!(seen["body"], "{}");
    assert_eq!(v1.hits(), 1);
}

#[tokio::test]
async fn a_response_framed_twice_is_framed_by_its_transfer_encoding() {
    fn answer(head: &str) -> (String, bool) {
        let response = match path(head) {
            "/rest/v1/both" => {
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n\
                                6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
            }
            "/rest/v1/list" => "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
            _ => "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        };
        (response.into(), true)
    }
    let (up, _) = raw_upstream(answer).await;
    let url = format!("http://{up}");
    let sy = start(&config_text(&url, &url, 0, "")).await;
    let both = send(sy.addr, "GET", "/rest/v1/both", &[], "").await;
    assert_eq!(both.body, "hello world", "truncated by the stale content-length");
    assert!(!both.headers.contains_key("content-length") || both.headers["content-length"] == "11");
    let list = exchange(sy.addr, "GET /rest/v1/list HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(list.to_ascii_lowercase().contains("content-length: 5\r\n"), "{list}");
    assert!(!list.contains("5, 5"), "a length list was forwarded: {list}");
    let old = send(sy.addr, "GET", "/rest/v1/http10", &[], "").await;
    assert_eq!(old.status, 502, "HTTP/1.0 with transfer-encoding accepted");
}

#[tokio::test]
async fn connection_cannot_remove_the_forwarding_headers() {
    let (_v1, _v2, sy) = stack(0, "").await;
    let seen = |answer: String| -> serde_json::Value {
        serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap()
    };
    let nominate = "connection: x-forwarded-proto, x-forwarded-for, x-forwarded-host\r\n";
    let answer = exchange(sy.addr, &format!("GET /rest/v1/items HTTP/1.1\r\nhost: x\r\n{nominate}\r\n")).await;
    let s = seen(answer);
    assert_eq!(s["headers"]["x-forwarded-proto"][0], "http", "{s}");
    assert_eq!(s["headers"]["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(s["headers"]["x-forwarded-host"][0], "x");
    // With the headers present too: still forwarded.
    let given = "x-forwarded-proto: http\r\nx-forwarded-host: x\r\n";
    let answer = exchange(sy.addr, &format!("GET /rest/v1/items HTTP/1.1\r\nhost: x\r\n{given}{nominate}\r\n")).await;
    let s = seen(answer);
    assert_eq!(s["headers"]["x-forwarded-proto"][0], "http", "{s}");
    assert_eq!(s["headers"]["x-forwarded-host"][0], "x", "{s}");
}
