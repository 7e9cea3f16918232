//! Clients that stop reading, against the binary with its default settings: 300 of
//! them each ask for an 8 MiB answer and never read it. The answers are read ahead
//! (memory, then temporary files), the upstream connections go back to the pool, a
//! normal user of the same project is answered at once, and the stalled clients are
//! closed by the send timeout, within the caps.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use support::process::{Serving, write_config};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STALLED: usize = 300;
const ANSWER: usize = 8 << 20;

/// A normal user's request: its status and how long it took.
async fn normal_request(addr: std::net::SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let got = send(addr, "GET", "/rest/v1/small", &[("x-user-id", "normal-user")], "").await;
    (got.status.as_u16(), started.elapsed())
}

/// A project answering `/rest/v1/big` with an 8 MiB body, anything else with a small one.
async fn project() -> Upstream {
    let big = Bytes::from(vec![b'x'; ANSWER]);
    upstream(move |req| {
        let big = big.clone();
        async move {
            match req.uri().path() {
                "/rest/v1/big" => Response::new(full(big)),
                _ => Response::new(full("{\"ok\":true}")),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_starve_nobody_and_are_closed_by_the_send_timeout() {
    let v1 = project().await;
    // Everything to v1, every other setting its default.
    let path = write_config("stalled", &config_text(&v1.url(), &v1.url(), 0, ""));
    let sy = Serving::start(&path);
    let admin = sy.admin.expect("admin listener");

    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED {
        let mut s = TcpStream::connect(sy.addr).await.unwrap();
        let req = format!("GET /rest/v1/big HTTP/1.1\r\nhost: x\r\nx-user-id: staller-{i}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    let opened = Instant::now();

    // Every answer taken from the upstream, though no stalled client reads.
    let absorbed = loop {
        let text = metrics_text(admin).await;
        let busy = metric(&text, "switchyard_upstream_connections", "state=\"busy\"");
        let done = metric(&text, "switchyard_requests_total", "status_class=\"2xx\"");
        if busy == 0.0 && done >= STALLED as f64 {
            break text;
        }
        assert!(opened.elapsed() < Duration::from_secs(50), "answers never absorbed: busy {busy}, done {done}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let memory = metric(&absorbed, "switchyard_response_buffer_bytes", "where=\"memory\"");
    let file = metric(&absorbed, "switchyard_response_buffer_bytes", "where=\"file\"");
    assert!(memory <= (64u64 << 20) as f64, "memory read-ahead {memory} over its cap");
    assert!(file <= (4u64 << 30) as f64, "file read-ahead {file} over its cap");
    assert!(file > 0.0, "the stalled answers went to files");
    assert!(metric(&absorbed, "switchyard_response_buffer_files", "") > 0.0);

    // A normal user of the same project: answered at once, without waiting for a
    // connection (some of the burst itself did, past the per-host cap), now and 20 s later.
    let queued = metric(&absorbed, "switchyard_upstream_queue_seconds_count", "");
    for wait in [0, 20] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let (status, took) = normal_request(sy.addr).await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(2), "answered after {took:?}");
        let text = metrics_text(admin).await;
        assert_eq!(metric(&text, "switchyard_upstream_queue_seconds_count", ""), queued, "it waited for a connection");
        assert_eq!(metric(&text, "switchyard_requests_total", "status_class=\"5xx\""), 0.0);
    }

    // The send timeout (60 s by default) closes every stalled client and frees its spool.
    let closed = loop {
        let text = metrics_text(admin).await;
        if metric(&text, "switchyard_client_errors_total", "kind=\"slow_reader\"") >= STALLED as f64 {
            break text;
        }
        assert!(opened.elapsed() < Duration::from_secs(120), "stalled clients not closed by the send timeout");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(opened.elapsed() >= Duration::from_secs(55), "closed before the send timeout");
    assert_eq!(metric(&closed, "switchyard_response_buffer_bytes", ""), 0.0);
    assert_eq!(metric(&closed, "switchyard_response_buffer_files", ""), 0.0);
    assert_eq!(metric(&closed, "switchyard_upstream_errors_total", ""), 0.0, "slow clients counted against v1");
    // One of them, read now: what the kernel held, then the end.
    let mut s = stalled.pop().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a stalled connection still open");
    assert!(read < ANSWER + 1024, "read {read}");
    let rss = sy.peak_rss();
    assert!(rss < 256 << 20, "peak RSS {} MiB", rss >> 20);
    eprintln!("peak RSS {} MiB, files at the peak {file} bytes", rss >> 20);
}

/// An HTTP/2 stream whose client grants it no window: its answer is taken from the
/// upstream all the same, given up after the send timeout (its spool freed), and the
/// connection's other streams are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_that_gets_no_window_is_reset_after_the_send_timeout() {
    let v1 = project().await;
    let extra = "[limits]\nsend_timeout_seconds = 2\n";
    let sy = start(&config_text(&v1.url(), &v1.url(), 0, extra)).await;
    let admin = sy.admin_addr.unwrap();
    let tcp = TcpStream::connect(sy.addr).await.unwrap();
    // h2 itself as the client: it opens no window but where told to, and this client
    // never tells it to for the big answer.
    let (h2, conn) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| http::Request::get(format!("http://x{path}")).body(()).unwrap();
    let mut h2 = h2.ready().await.unwrap();
    let (stalled, _) = h2.send_request(get("/rest/v1/big"), true).unwrap();
    let stalled = stalled.await.unwrap();
    assert_eq!(stalled.status(), 200);
    let mut stalled = stalled.into_body();
    // The upstream is done with it at once: its connection is idle again.
    let started = Instant::now();
    loop {
        let text = metrics_text(admin).await;
        if metric(&text, "switchyard_upstream_connections", "state=\"busy\"") == 0.0 {
            assert!(metric(&text, "switchyard_response_buffer_bytes", "") > 0.0, "the answer is held for the client");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the upstream connection stayed busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another stream on the same connection is answered meanwhile.
    let mut h2 = h2.ready().await.unwrap();
    let (other, _) = h2.send_request(get("/rest/v1/small"), true).unwrap();
    assert_eq!(other.await.unwrap().status(), 200);
    // What the window let through comes, then the stream is reset: the proxy cancels
    // it after the send timeout.
    let mut got = 0;
    let reset = loop {
        match tokio::time::timeout(Duration::from_secs(15), stalled.data()).await {
            Ok(Some(Ok(data))) => got += data.len(),
            Ok(Some(Err(e))) => break e,
            Ok(None) => panic!("the stalled answer ended cleanly after {got} bytes"),
            Err(_) => panic!("the stalled stream was never reset"),
        }
    };
    assert_eq!(reset.reason(), Some(h2::Reason::CANCEL), "{reset}");
    assert!(got <= 16 * 1024, "only the window's worth was sent: {got}");
    assert!(started.elapsed() >= Duration::from_millis(1900), "reset before the send timeout");
    let text = metrics_text(admin).await;
    assert_eq!(metric(&text, "switchyard_client_errors_total", "kind=\"slow_reader\""), 1.0);
    assert_eq!(metric(&text, "switchyard_response_buffer_bytes", ""), 0.0);
    assert_eq!(metric(&text, "switchyard_response_buffer_files", ""), 0.0);
    // The connection itself stays up for the client's other streams.
    let mut h2 = h2.ready().await.unwrap();
    let (after, _) = h2.send_request(get("/rest/v1/small"), true).unwrap();
    assert_eq!(after.await.unwrap().status(), 200);
}
