//! The upstream side of HTTP/1.1 through real sockets, against an upstream that writes
//! raw bytes: interim responses, chunked bodies with trailers, bodies delimited by
//! the connection closing, and kept-alive connections the upstream drops silently.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw upstream: answers every request head with the pieces of `reply` (a short
/// pause between pieces, so that they arrive as separate reads), and then closes the
/// connection when `close_after` says so (without saying so in the reply).
struct Raw {
    url: String,
    conns: Arc<AtomicUsize>,
}

async fn raw(reply: &'static [&'static [u8]], close_after: bool) -> Raw {
    listen(move |s| answer_each(s, reply, close_after)).await
}

/// Accepts connections on 127.0.0.1:0, counting them, each served by `serve`.
async fn listen<F, Fut>(serve: F) -> Raw
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    Raw { url, conns }
}

/// Reads request heads (and `content-length` bodies), answering each with `reply`.
async fn answer_each(mut s: TcpStream, reply: &'static [&'static [u8]], close_after: bool) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = head_end(&buf) else {
            if !read_more(&mut s, &mut buf).await {
                return;
            }
            continue;
        };
        let length = content_length(&buf[..end]);
        while buf.len() < end + length {
            if !read_more(&mut s, &mut buf).await {
                return;
            }
        }
        buf.drain(..end + length);
        for (i, piece) in reply.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if s.write_all(piece).await.is_err() {
                return;
            }
        }
        if close_after {
            return;
        }
    }
}

async fn proxy_to(up: &Raw) -> switchyard::server::Running {
    start(&config_text(&up.url, &up.url, 0, "")).await
}

/// GETs through `sy` `times` times in a row; each answer must be 200 with `body`.
async fn gets(sy: &switchyard::server::Running, times: usize, body: &[u8]) -> Vec<Got> {
    let mut all = Vec::with_capacity(times);
    for i in 0..times {
        let got = get_as(sy.addr, "/rest/v1/t", "u").await;
        assert_eq!((got.status.as_u16(), &got.body[..]), (200, body), "request {i}");
        all.push(got);
    }
    all
}

#[tokio::test]
async fn interim_answers_are_skipped_and_chunked_bodies_reuse_the_connection() {
    let up = raw(
        &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n\
          3;ext=1\r\n[1,\r\n2\r\n2]\r\n0\r\nx-trailer: t\r\n\r\n"],
        false,
    )
    .await;
    let sy = proxy_to(&up).await;
    for got in gets(&sy, 3, b"[1,2]").await {
        assert_eq!(got.headers["content-type"], "application/json");
        assert!(got.headers.get("transfer-encoding").is_none_or(|v| v == "chunked"), "framed once, by the proxy");
    }
    assert_eq!(up.conns.load(Ordering::SeqCst), 1, "one connection, reused after each terminator");
}

#[tokio::test]
async fn the_upstreams_hop_by_hop_headers_stay_on_its_connection() {
    let up = raw(
        &[b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Upstream-Hop\r\nX-Upstream-Hop: not for clients\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\ncontent-length: 2\r\n\r\nok"],
        false,
    )
    .await;
    let sy = proxy_to(&up).await;
    for got in gets(&sy, 2, b"ok").await {
        for hop in ["x-upstream-hop", "keep-alive", "proxy-connection"] {
            assert!(got.headers.get(hop).is_none(), "{hop} reached the client");
        }
        assert_eq!(got.headers["x-kept"], "yes");
    }
    assert_eq!(up.conns.load(Ordering::SeqCst), 1, "kept alive, as it said");
}

#[tokio::test]
async fn a_body_delimited_by_close_arrives_whole_and_its_connection_is_not_reused() {
    let up = raw(&[b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end"], true).await;
    let sy = proxy_to(&up).await;
    gets(&sy, 2, b"until the end").await;
    assert_eq!(up.conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_upstream_dropping_kept_alive_connections_costs_no_request() {
    // Each connection is closed right after its answer, which claims keep-alive.
    let up = raw(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], true).await;
    let sy = proxy_to(&up).await;
    // Back to back: a GET may go out on a connection whose close is still in flight;
    // it is sent again on a fresh one.
    gets(&sy, 20, b"ok").await;
    // After a pause the close has arrived: a POST is never sent on that connection.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = send(sy.addr, "POST", "/rest/v1/t", &[("x-user-id", "u")], r#"{"a":1}"#).await;
    assert_eq!((got.status.as_u16(), &got.body[..]), (200, &b"ok"[..]));
    let errors = sy.proxy.metrics.render();
    assert!(!errors.contains("switchyard_upstream_errors_total{"), "no upstream error counted:\n{errors}");
}

#[tokio::test]
async fn a_malformed_chunk_aborts_the_body_and_the_proxy_keeps_serving() {
    let broken = raw(&[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX\r\n"], false).await;
    let fine = raw(&[b"HTTP/1.1 204 No Content\r\n\r\n"], false).await;
    // v1 sends the broken body; users in the lower half go to v2, which answers well.
    let sy = start(&config_text(&broken.url, &fine.url, 50, "")).await;
    let user = |v2: bool| (0..).map(|i| format!("user-{i}")).find(|u| (percentile(u) < 50) == v2).unwrap();
    for _ in 0..2 {
        let req = http::Request::get(format!("http://{}/rest/v1/t", sy.addr))
            .header("x-user-id", user(false))
            .body(full(""))
            .unwrap();
        let resp = client().request(req).await.expect("the head arrives");
        let body = tokio::time::timeout(Duration::from_secs(5), http_body_util::BodyExt::collect(resp.into_body()));
        assert!(body.await.expect("no hang").is_err(), "a broken body is not delivered as complete");
        let got = get_as(sy.addr, "/rest/v1/t", &user(true)).await;
        assert_eq!((got.status.as_u16(), got.backend()), (204, "v2"), "the same proxy still serves");
    }
}

#[tokio::test]
async fn answers_arriving_in_pieces_are_put_together() {
    // The head split mid-line, then the body split across reads and chunks.
    let up = raw(
        &[
            b"HTTP/1.1 200 OK\r\ncontent-ty",
            b"pe: application/json\r\ntransfer-encoding: chunked\r\n",
            b"\r\n4\r\n[1,2",
            b"\r\n1\r\n]\r",
            b"\n0\r\n\r\n",
        ],
        false,
    )
    .await;
    let sy = proxy_to(&up).await;
    for got in gets(&sy, 2, b"[1,2]").await {
        assert_eq!(got.headers["content-type"], "application/json");
    }
    assert_eq!(up.conns.load(Ordering::SeqCst), 1);
}

/// An upstream that answers each request as soon as its head has arrived, without
/// reading the body, then either closes the connection (with the body unread) or
/// reads and counts whatever else comes.
async fn answers_early(reply: &'static [u8], close: bool) -> (Raw, Arc<AtomicUsize>) {
    let after_head = Arc::new(AtomicUsize::new(0));
    let read = after_head.clone();
    let up = listen(move |mut s| {
        let read = read.clone();
        async move {
            let mut buf = Vec::new();
            let end = loop {
                match head_end(&buf) {
                    Some(end) => break end,
                    None if read_more(&mut s, &mut buf).await => {}
                    None => return,
                }
            };
            read.fetch_add(buf.len() - end, Ordering::SeqCst);
            if s.write_all(reply).await.is_err() || close {
                return;
            }
            buf.clear();
            while read_more(&mut s, &mut buf).await {
                read.fetch_add(buf.len(), Ordering::SeqCst);
                buf.clear();
            }
        }
    })
    .await;
    (up, after_head)
}

#[tokio::test]
async fn an_upstream_refusing_a_large_upload_early_is_heard() {
    let (up, _) = answers_early(
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large",
        true,
    )
    .await;
    let sy = proxy_to(&up).await;
    // Far more than the socket buffers between proxy and upstream hold: the upload is
    // still going when the upstream has answered and closed.
    let upload = "x".repeat(16 << 20);
    let got = send(sy.addr, "POST", "/storage/v1/object/b/big.bin", &[("x-user-id", "u")], &upload).await;
    assert_eq!((got.status.as_u16(), &got.body[..]), (413, &b"too large"[..]), "the upstream's own answer");
    let metrics = sy.proxy.metrics.render();
    assert!(!metrics.contains("switchyard_upstream_errors_total{"), "not an upstream error:\n{metrics}");
}

#[tokio::test]
async fn an_answer_before_the_client_has_sent_its_body_is_delivered_at_once() {
    let (up, _) = answers_early(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 6\r\n\r\ndenied", false).await;
    let sy = proxy_to(&up).await;
    // The client sends a first piece of its body and then nothing: the upstream's
    // answer must not wait for the rest.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(bytes::Bytes::from_static(b"{\"first\":")).await.unwrap();
    let req = http::Request::post(format!("http://{}/rest/v1/t", sy.addr))
        .header("x-user-id", "u")
        .body(channel_body(rx))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req)).await.expect("no wait").unwrap();
    assert_eq!(resp.status(), 401);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    assert_eq!(&body[..], b"denied");
    drop(tx);
    // The connection carried half a request: it is never used again.
    let got = get_as(sy.addr, "/rest/v1/t", "u").await;
    assert_eq!(got.status, 401);
    assert_eq!(up.conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_early_success_still_gets_the_whole_body() {
    // A success before the body has arrived: the upstream is still reading it, so the
    // proxy keeps writing it to the end, with an answer to stream (the answer ends
    // after the upload) and without (the answer comes after it).
    let replies: [(&[u8], u16, &[u8]); 2] = [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200, b"ok"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
    ];
    for (reply, status, body) in replies {
        let (up, after_head) = answers_early(reply, false).await;
        let sy = proxy_to(&up).await;
        let upload = "y".repeat(4 << 20);
        let got = send(sy.addr, "PUT", "/storage/v1/object/b/f.bin", &[("x-user-id", "u")], &upload).await;
        assert_eq!((got.status.as_u16(), &got.body[..]), (status, body));
        // The answer ended once the body was written: the upstream has it all, or is
        // reading the last of it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while after_head.load(Ordering::SeqCst) < upload.len() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(after_head.load(Ordering::SeqCst), upload.len(), "{status}: every byte reached the upstream");
    }
}

/// Reads from `s` until its request head is in; what came after it, or `None` if the
/// connection closed first.
async fn after_head(s: &mut TcpStream) -> Option<(usize, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = head_end(&buf) {
            return Some((content_length(&buf[..end]), buf.split_off(end)));
        }
        if !read_more(s, &mut buf).await {
            return None;
        }
    }
}

#[tokio::test]
async fn an_upstream_answering_as_it_reads_the_upload_streams_both_ways() {
    // An Edge Function piping its request body into its response: it answers at once,
    // writes back what it reads, and reads no more while its writes are blocked.
    let up = listen(|mut s| async move {
        let Some((mut left, mut body)) = after_head(&mut s).await else { return };
        if s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await.is_err() {
            return;
        }
        loop {
            if !body.is_empty() {
                left -= body.len();
                let chunk = [format!("{:x}\r\n", body.len()).as_bytes(), &body, b"\r\n"].concat();
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
                body.clear();
            }
            if left == 0 {
                let _ = s.write_all(b"0\r\n\r\n").await;
                return;
            }
            if !read_more(&mut s, &mut body).await {
                return;
            }
        }
    })
    .await;
    let sy = start(&config_text(&up.url, &up.url, 0, "[upstream]\ntimeout_seconds = 5\n")).await;
    // Far more than the socket buffers both ways hold: held back until the upload is
    // written, the answer would block the upstream, and the upload with it.
    let upload = "z".repeat(32 << 20);
    let got = send(sy.addr, "POST", "/functions/v1/echo", &[("x-user-id", "u")], &upload).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body[..got.body.len().min(200)]));
    assert_eq!(got.body.len(), upload.len(), "every byte came back");
    assert!(got.body.iter().all(|&b| b == b'z'));
}

#[tokio::test]
async fn an_upstream_that_answered_and_stopped_reading_does_not_hold_its_answer() {
    let up = listen(|mut s| async move {
        if after_head(&mut s).await.is_some()
            && s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_ok()
        {
            // Neither reads the body nor closes.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    })
    .await;
    let sy = start(&config_text(&up.url, &up.url, 0, "[upstream]\ntimeout_seconds = 1\n")).await;
    let size = 32 << 20;
    let mut c = TcpStream::connect(sy.addr).await.unwrap();
    let head = format!("POST /rest/v1/t HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\ncontent-length: {size}\r\n\r\n");
    c.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    let writer = tokio::spawn(async move {
        let piece = vec![b'w'; 1 << 20];
        for _ in 0..size >> 20 {
            if wr.write_all(&piece).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let started = tokio::time::Instant::now();
    let mut more = [0u8; 4096];
    while !answer.ends_with(b"0\r\n\r\n") && started.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut more)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&more[..n]),
            _ => break,
        }
    }
    writer.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n2\r\nok\r\n0\r\n\r\n"), "the upstream's answer, whole: {answer}");
}
