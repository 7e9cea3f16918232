//! Faults through real sockets: clients that vanish mid-upload or mid-download, an
//! upstream that reads slowly or restarts. Each case: the right outcome, no panic, and
//! in-flight requests, tasks and file descriptors back to their baseline.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn baseline() -> (usize, usize) {
    (tokio::runtime::Handle::current().metrics().num_alive_tasks(), open_fds())
}

/// Waits until in-flight requests, tasks and descriptors are back near `base`.
async fn settles(sy: &switchyard::server::Running, base: (usize, usize)) {
    let started = Instant::now();
    loop {
        let (tasks, fds) = baseline();
        let in_flight = sy.proxy.in_flight();
        if in_flight == 0 && tasks <= base.0 + 2 && fds <= base.1 + 2 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "leak: in flight {in_flight}, tasks {tasks} (base {}), fds {fds} (base {})",
            base.0,
            base.1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(5), "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_upload_and_mid_download() {
    let aborted = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicUsize::new(0));
    let (a, s) = (aborted.clone(), stopped.clone());
    let up = upstream(move |req| {
        let (aborted, stopped) = (a.clone(), s.clone());
        async move {
            if req.uri().path().ends_with("/upload") {
                let mut body = req.into_body();
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        aborted.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                return Response::new(full("done"));
            }
            // An endless download, a chunk every 20 ms, for as long as someone reads.
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                while tx.send(Bytes::from(vec![b'z'; 16 * 1024])).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                stopped.fetch_add(1, Ordering::SeqCst);
            });
            Response::new(channel_body(rx))
        }
    })
    .await;
    let sy = start(&config_text(&up.url(), &up.url(), 0, "")).await;
    let base = baseline();

    let mut c = TcpStream::connect(sy.addr).await.unwrap();
    c.write_all(b"POST /functions/v1/upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(c);
    eventually("the upstream seeing the upload aborted", || aborted.load(Ordering::SeqCst) == 1).await;

    let mut c = TcpStream::connect(sy.addr).await.unwrap();
    c.write_all(b"GET /rest/v1/download HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 40_000 {
        let n =
            tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("download flowing").unwrap();
        assert!(n > 0, "download closed after {got} bytes: {:?}", String::from_utf8_lossy(&buf[..got.min(300)]));
        got += n;
    }
    drop(c);
    eventually("the upstream download stopping", || stopped.load(Ordering::SeqCst) == 1).await;
    settles(&sy, base).await;
    let after = send(sy.addr, "POST", "/functions/v1/upload", &[], "x").await;
    assert_eq!((after.status.as_u16(), &after.body[..]), (200, &b"done"[..]), "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_reading_upstream_gets_the_whole_upload() {
    let up = upstream(|req| async move {
        let mut body = req.into_body();
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Response::new(full(total.to_string()))
    })
    .await;
    let sy = start(&config_text(&up.url(), &up.url(), 0, "")).await;
    let chunks =
        futures_util::stream::iter((0..256).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![7u8; 32 * 1024])))));
    let req = Request::post(format!("http://{}/storage/v1/object/b/k", sy.addr))
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), (256 * 32 * 1024).to_string());
}

/// An echo upstream on `addr` whose connections all close when the task is aborted.
fn serve_echo_on(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            conns.spawn(async move {
                let svc = hyper::service::service_fn(|req| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(full(echo_body("v1", req).await.to_string())))
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_recovers_after_an_upstream_restart() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first = serve_echo_on(listener);
    let sy = start(&config_text(&format!("http://{addr}"), &format!("http://{addr}"), 0, "")).await;
    for _ in 0..3 {
        assert_eq!(get_as(sy.addr, "/rest/v1/t", "u").await.status, 200);
    }
    first.abort();
    let _ = first.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Down: a clean 502, fast.
    let down = get_as(sy.addr, "/rest/v1/t", "u").await;
    assert_eq!(down.status, 502);
    let second = serve_echo_on(TcpListener::bind(addr).await.unwrap());
    for _ in 0..3 {
        assert_eq!(get_as(sy.addr, "/rest/v1/t", "u").await.status, 200, "the pool reconnects");
    }
    second.abort();
}
