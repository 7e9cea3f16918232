//! The binary as operators run it: config validation and environment overrides, the
//! `route` command, constant memory under a 1 GiB upload, graceful shutdown.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::process::{Serving, run, write_config};
use support::*;

/// The minimal file of the core issue, accepted as it is.
const MINIMAL: &str = include_str!("data/minimal.toml");

fn route(path: &std::path::Path, user: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let out = run(&["route", "--config", path.to_str().unwrap(), user], env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_minimal_file_is_accepted_and_route_prints_json() {
    let path = write_config("minimal", MINIMAL);
    let out = run(&["check", "--config", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // user-1 is at percentile 19 in the Node vectors.
    let v = route(&path, "user-1", &[]);
    assert_eq!(v["user_id"], "user-1");
    assert_eq!(v["percentile"], 19);
    assert_eq!(v["backend"], "v2");
    let v = route(&path, "a", &[]);
    assert_eq!((v["percentile"].as_u64(), v["backend"].as_str()), (Some(77), Some("v1")));
}

#[test]
fn environment_overrides_as_the_guide_uses_them() {
    let path = write_config("env", MINIMAL);
    assert_eq!(route(&path, "user-1", &[("V2_ROLLOUT_PERCENTAGE", "10")])["backend"], "v1");
    assert_eq!(route(&path, "user-1", &[("V2_ROLLOUT_PERCENTAGE", "20")])["backend"], "v2");
    assert_eq!(route(&path, "user-1", &[("SUPABASE_ENV", "production")])["backend"], "v1");
    assert_eq!(route(&path, "a", &[("SUPABASE_ENV", "v2")])["backend"], "v2");
    let out = run(&["check", "--config", path.to_str().unwrap()], &[("SUPABASE_V2_URL", "https://new.supabase.co")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("https://new.supabase.co"));
}

#[test]
fn invalid_configs_exit_non_zero_naming_the_key() {
    type Case<'a> = (&'a str, String, &'a [(&'a str, &'a str)]);
    let cases: [Case; 6] = [
        ("rollout.percentage", MINIMAL.replace("= 37", "= 101"), &[]),
        ("backends.v2.url", MINIMAL.replace("http://127.0.0.1:18002", "127.0.0.1 18002"), &[]),
        ("backends.v2", MINIMAL.split("[backends.v2]").next().unwrap().to_string(), &[]),
        ("server.colour", MINIMAL.replace("[server]", "[server]\ncolour = \"blue\""), &[]),
        ("V2_ROLLOUT_PERCENTAGE", MINIMAL.to_string(), &[("V2_ROLLOUT_PERCENTAGE", "150")]),
        ("SUPABASE_ENV", MINIMAL.to_string(), &[("SUPABASE_ENV", "staging")]),
    ];
    for (i, (key, text, env)) in cases.iter().enumerate() {
        let path = write_config(&format!("bad{i}"), text);
        for cmd in ["check", "serve"] {
            let out = run(&[cmd, "--config", path.to_str().unwrap()], env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {key}: {stderr}");
            assert!(stderr.contains(key), "{cmd}: {stderr:?} does not name {key}");
        }
    }
    let out = run(&["check", "--config", "/nonexistent/switchyard.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

fn serve_config(name: &str, v1: &str, v2: &str, extra: &str) -> std::path::PathBuf {
    write_config(
        name,
        &config_text(v1, v2, 100, extra).replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_in_constant_memory() {
    const CHUNK: usize = 256 * 1024;
    const TOTAL: usize = 1 << 30;
    let sink = upstream(|req| async move {
        let mut body = req.into_body();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("body intact").into_data() {
                total += data.len();
            }
        }
        Response::new(full(total.to_string()))
    })
    .await;
    let v1 = echo("v1").await;
    let serving = Serving::start(&serve_config("upload", &v1.url(), &sink.url(), ""));
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let frames =
        futures_util::stream::iter((0..TOTAL / CHUNK).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone()))));
    let req = Request::post(format!("http://{}/functions/v1/upload-archive", serving.addr))
        .header("x-user-id", "uploader")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(300), client().request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    let head = String::from_utf8_lossy(&echoed[..echoed.len().min(80)]).into_owned();
    assert_eq!(head, TOTAL.to_string(), "the sink did not count the whole upload");
    let rss = serving.peak_rss();
    assert!(rss < 64 << 20, "peak RSS {} MiB", rss >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let slow = slow(Duration::from_millis(800), "finished").await;
    let v1 = echo("v1").await;
    let mut serving = Serving::start(&serve_config("drain", &v1.url(), &slow.url(), ""));
    let addr = serving.addr;
    let in_flight = tokio::spawn(async move { get_as(addr, "/rest/v1/slow", "u").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    serving.signal("TERM");
    let got = in_flight.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "finished");
    let code = tokio::task::spawn_blocking(move || {
        let code = serving.wait_exit(Duration::from_secs(10));
        (code, serving)
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "exit status after SIGTERM");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_websocket_tunnels_then_closes_them_at_the_deadline() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (ws_addr, _handshakes) = ws_echo().await;
    let v2 = echo("v2").await;
    let text = config_text(&format!("http://{ws_addr}"), &v2.url(), 0, "")
        .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"\"")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 1.5");
    let mut serving = Serving::start(&write_config("ws-drain", &text));
    let url = format!("ws://{}/realtime/v1/websocket?apikey=k&vsn=2.0.0", serving.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    let signalled = std::time::Instant::now();
    serving.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::text("draining")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(1), ws.next()).await.expect("the tunnel still works");
    assert_eq!(echoed.unwrap().unwrap(), Message::text("draining"));
    // At the deadline the tunnel is closed and the process exits.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the tunnel outlived the grace period");
    let waited = signalled.elapsed();
    assert!(waited >= Duration::from_millis(1200), "closed before the deadline: {waited:?}");
    let code = tokio::task::spawn_blocking(move || serving.wait_exit(Duration::from_secs(5))).await.unwrap();
    assert_eq!(code, Some(0));
}

/// A port free on loopback now (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_demo_with_tls_prints_curl_commands_that_work() {
    use std::io::{BufRead, BufReader};
    let (plain, admin, https) = (free_port(), free_port(), free_port());
    let mut child = std::process::Command::new(support::process::BIN)
        .args(["demo", "--tls", "--listen", &format!("127.0.0.1:{plain}"), "--admin-listen"])
        .arg(format!("127.0.0.1:{admin}"))
        .args(["--tls-listen", &format!("127.0.0.1:{https}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let command = lines
        .by_ref()
        .map_while(Result::ok)
        .take(40)
        .find(|l| l.contains("--cacert") && l.contains("--http2"))
        .expect("a curl command over HTTPS");
    // Run what it printed, as printed, by a shell (the demo is up once it answers).
    let command = command.split('#').next().unwrap().trim().to_string();
    let started = std::time::Instant::now();
    let out = loop {
        let out = std::process::Command::new("sh").args(["-c", &format!("{command} --max-time 5")]).output().unwrap();
        if out.status.success() || started.elapsed() > Duration::from_secs(15) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(said.starts_with("HTTP/2 200"), "{said}");
    assert!(said.contains("x-switchyard-backend"), "{said}");
}
