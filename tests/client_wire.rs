//! The client side of HTTP/1.1 through real sockets: the proxy's own server path for
//! plain requests, and the hand-over of a connection to hyper's server at the first
//! request that path leaves to it (chunked uploads, `HEAD`, `Expect`, HTTP/1.0).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Response;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read from `s` (`buf` keeps what follows it): its head, lowercased,
/// and its body (`content-length` or chunked).
async fn response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let read = async {
        let end = loop {
            if let Some(end) = head_end(buf) {
                break end;
            }
            assert!(read_more(s, buf).await, "closed before a response head: {:?}", String::from_utf8_lossy(buf));
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        buf.drain(..end);
        if !head.contains("transfer-encoding: chunked") {
            let n = content_length(head.as_bytes());
            while buf.len() < n {
                assert!(read_more(s, buf).await, "closed mid-body");
            }
            return (head, buf.drain(..n).collect());
        }
        let mut body = Vec::new();
        loop {
            let line = loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                assert!(read_more(s, buf).await, "closed mid-chunk");
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line]).unwrap(), 16).unwrap();
            while buf.len() < line + 2 + size + 2 {
                assert!(read_more(s, buf).await, "closed mid-chunk");
            }
            body.extend_from_slice(&buf[line + 2..line + 2 + size]);
            buf.drain(..line + 2 + size + 2);
            if size == 0 {
                return (head, body);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("a response within 5 s")
}

/// What the echo upstream saw, from a response body.
fn seen(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(body)))
}

/// Whether the proxy closes `s` within 5 s (after anything still buffered).
async fn closes(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.is_ok_and(|r| r.is_ok())
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_the_hand_over() {
    let (_v1, _v2, sy) = stack(0, "").await;
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    // Plain, plain with a body, then a chunked upload (hyper's), then plain again: in
    // one write, so the hand-over carries the bytes already read.
    s.write_all(
        b"GET /rest/v1/a?x=1 HTTP/1.1\r\nhost: h\r\nx-user-id: u1\r\n\r\n\
          POST /rest/v1/b HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nhello\
          POST /rest/v1/c HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /rest/v1/d HTTP/1.1\r\nhost: h\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    for (path, method, body) in
        [("/rest/v1/a", "GET", ""), ("/rest/v1/b", "POST", "hello"), ("/rest/v1/c", "POST", "abc")]
    {
        let (head, echoed) = response(&mut s, &mut buf).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("date: "), "{head}");
        let saw = seen(&echoed);
        assert_eq!(
            (saw["path"].as_str(), saw["method"].as_str(), saw["body"].as_str()),
            (Some(path), Some(method), Some(body))
        );
    }
    let (_, echoed) = response(&mut s, &mut buf).await;
    assert_eq!(seen(&echoed)["path"], "/rest/v1/d", "served after the hand-over, on the same connection");
    assert_eq!(seen(&echoed)["query"], Value::Null);
}

#[tokio::test]
async fn a_body_that_follows_its_head_is_waited_for_and_a_large_one_goes_through_on_the_same_connection() {
    let (_v1, _v2, sy) = stack(0, "").await;
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"PUT /rest/v1/t HTTP/1.1\r\nhost: h\r\ncontent-length: 11\r\n\r\nhello").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b" world").await.unwrap();
    let (_, echoed) = response(&mut s, &mut buf).await;
    assert_eq!(seen(&echoed)["body"], "hello world");
    // Over the size read whole: hyper's server streams it, on this connection.
    let big = "b".repeat(200_000);
    s.write_all(
        format!("POST /rest/v1/t HTTP/1.1\r\nhost: h\r\ncontent-length: {}\r\n\r\n{big}", big.len()).as_bytes(),
    )
    .await
    .unwrap();
    let (_, echoed) = response(&mut s, &mut buf).await;
    assert_eq!(seen(&echoed)["body"].as_str().map(str::len), Some(big.len()));
}

#[tokio::test]
async fn connection_close_is_honoured_and_said() {
    let (_v1, _v2, sy) = stack(0, "").await;
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    s.write_all(b"GET /rest/v1/t HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n").await.unwrap();
    let (head, _) = response(&mut s, &mut Vec::new()).await;
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(closes(&mut s).await, "the connection stayed open");
}

#[tokio::test]
async fn the_proxys_own_answers_are_framed_and_dated() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let sy = start(&config_text(&format!("http://{closed}"), &format!("http://{closed}"), 0, "")).await;
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /rest/v1/t HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
        let (head, body) = response(&mut s, &mut buf).await;
        assert!(head.starts_with("http/1.1 502 bad gateway\r\n"), "{head}");
        let date = head.lines().find_map(|l| l.strip_prefix("date: ")).expect("a date");
        assert!(date.len() == 29 && date.ends_with(" gmt"), "an IMF-fixdate: {date}");
        assert!(seen(&body)["message"].is_string(), "PostgREST's shape: {:?}", String::from_utf8_lossy(&body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_answer_is_awaited_cancels_the_request() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let slow = upstream(move |_req| {
        let guard = DropCount(d.clone());
        async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(guard);
            Response::new(full("late"))
        }
    })
    .await;
    let sy = start(&config_text(&slow.url(), &slow.url(), 0, "")).await;
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    s.write_all(b"GET /rest/v1/slow HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
    let started = tokio::time::Instant::now();
    while slow.hits() == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sy.proxy.in_flight(), 1);
    drop(s);
    while dropped.load(Ordering::SeqCst) == 0 || sy.proxy.in_flight() != 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the upstream request outlived its client");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Counts its drops: the upstream handler's future was dropped (its connection closed).
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_answer_in_flight_then_closes() {
    let slow = slow(Duration::from_millis(300), "finished").await;
    let sy = start(&config_text(&slow.url(), &slow.url(), 0, "")).await;
    let mut busy = TcpStream::connect(sy.addr).await.unwrap();
    let mut idle = TcpStream::connect(sy.addr).await.unwrap();
    let mut buf = Vec::new();
    idle.write_all(b"GET /rest/v1/t HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
    response(&mut idle, &mut buf).await;
    busy.write_all(b"GET /rest/v1/t HTTP/1.1\r\nhost: h\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sy.shutdown();
    assert!(closes(&mut idle).await, "an idle connection stayed open");
    let (head, body) = response(&mut busy, &mut Vec::new()).await;
    assert_eq!(body, b"finished");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(closes(&mut busy).await, "closed after its answer");
}

#[tokio::test]
async fn what_the_plain_path_leaves_to_hyper_is_still_answered() {
    let (_v1, _v2, sy) = stack(0, "").await;
    let exchange = |raw: &'static [u8]| async move {
        let mut s = TcpStream::connect(sy.addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut buf = Vec::new();
        while head_end(&buf).is_none() {
            assert!(
                read_more(&mut s, &mut buf).await,
                "closed without an answer to {:?}",
                String::from_utf8_lossy(raw)
            );
        }
        String::from_utf8_lossy(&buf).to_lowercase()
    };
    let head = exchange(b"HEAD /rest/v1/t HTTP/1.1\r\nhost: h\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200 ok\r\n") && head.contains("content-length: "), "{head}");
    let head = exchange(b"GET /rest/v1/t HTTP/1.0\r\nhost: h\r\n\r\n").await;
    assert!(head.starts_with("http/1.0 200 ok\r\n") || head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    let head =
        exchange(b"POST /rest/v1/t HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 100 continue\r\n"), "{head}");
    let head = exchange(b"GET /rest/v1/t HTTP/1.1\r\nhost: h\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 400 "), "{head}");
    // Parsed, but a target `http` refuses.
    let head = exchange(b"GET /rest/v1/a<b HTTP/1.1\r\nhost: h\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 400 "), "{head}");
}

#[tokio::test]
async fn a_body_may_take_the_upstream_timeout_to_follow_its_head() {
    let v1 = echo("v1").await;
    let text =
        with_header_read_timeout(&config_text(&v1.url(), &v1.url(), 0, "[upstream]\ntimeout_seconds = 1.5\n"), 0.3);
    let sy = start(&text).await;
    let mut s = TcpStream::connect(sy.addr).await.unwrap();
    // Longer than the header read timeout, within the upstream timeout.
    s.write_all(b"POST /rest/v1/t HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\n\r\nab").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(b"cd").await.unwrap();
    let (_, echoed) = response(&mut s, &mut Vec::new()).await;
    assert_eq!(seen(&echoed)["body"], "abcd");
    // A body that stops coming is given up at the upstream timeout.
    s.write_all(b"POST /rest/v1/t HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\n\r\nab").await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(closes(&mut s).await, "a stalled upload kept its connection");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(4), "closed after {took:?}");
}
