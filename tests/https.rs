//! HTTPS for clients (`[server.tls]`), through real TLS sockets with a private CA
//! made in the test: curl over HTTP/2 and HTTP/1.1 with each key type, many users'
//! streams on one HTTP/2 connection, a WebSocket, certificates changed on disk (and a
//! bad pair refused), an expired certificate, client certificates, a silent client,
//! and a rapid-reset flood.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::ca::{Ca, Issued};
use support::process::test_dir;
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// Config text: two echo backends at `pct`, HTTPS only, from `cert` and `key`.
fn https_config(v1: &Upstream, v2: &Upstream, pct: u8, cert: &Path, key: &Path, extra: &str) -> String {
    https_config_to(&v1.url(), &v2.url(), pct, cert, key, extra)
}

fn https_config_to(v1: &str, v2: &str, pct: u8, cert: &Path, key: &Path, extra: &str) -> String {
    let tls = format!(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
        cert.display(),
        key.display()
    );
    config_text(v1, v2, pct, "")
        .replace("listen = \"127.0.0.1:0\"\nadmin_listen", "admin_listen")
        .replace("[rollout]", &format!("{tls}[rollout]"))
}

/// A TLS client trusting `ca` (and presenting `client`, if given), offering `alpn`.
fn connector(ca: &str, client: Option<&Issued>, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => {
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(c.cert.as_bytes()).map(Result::unwrap);
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain.collect(), key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls(addr: SocketAddr, connector: &tokio_rustls::TlsConnector) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// The certificate the server presented.
fn served(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// curl over HTTPS: (status line's HTTP version, body).
fn curl(addr: SocketAddr, ca: &Path, version: &str, user: &str) -> (String, String) {
    let url = format!("https://localhost:{}/rest/v1/items", addr.port());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args([version, "-H", &format!("x-user-id: {user}"), "-w", "\n%{http_version}", &url])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {version}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap();
    (version.to_string(), body.to_string())
}

/// A new CA, a test directory `name`, and a P-256 certificate for `localhost` the CA
/// signed, written there.
fn served_by_new_ca(name: &str) -> (Ca, PathBuf, PathBuf, PathBuf) {
    let ca = Ca::new();
    let dir = test_dir(name);
    let (cert, key) = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, false).write(&dir, "server");
    (ca, dir, cert, key)
}

/// A user on each side of `pct`.
fn users_around(pct: u8) -> (String, String) {
    let find = |v2: bool| (0..).map(|i| format!("user-{i}")).find(|u| (percentile(u) < pct) == v2).unwrap();
    (find(false), find(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_and_http1_over_tls_with_each_key_type() {
    let ca = Ca::new();
    let dir = test_dir("https-curl");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let (on_v1, on_v2) = users_around(50);
    for (name, alg) in [("p256", &rcgen::PKCS_ECDSA_P256_SHA256), ("ed25519", &rcgen::PKCS_ED25519)] {
        let (cert, key) = ca.server(alg, false).write(&dir, name);
        let sy = start(&https_config(&v1, &v2, 50, &cert, &key, "")).await;
        assert_eq!(sy.tls_addr, Some(sy.addr), "HTTPS only: no plain listener");
        for (version, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
            for (user, backend) in [(&on_v1, "v1"), (&on_v2, "v2")] {
                let (got, body) = curl(sy.addr, &ca_file, version, user);
                assert_eq!(got, want, "{name} {version}");
                let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(seen["backend"], backend, "{name} {version} {user}");
                assert_eq!(seen["headers"]["x-forwarded-proto"], serde_json::json!(["https"]), "{seen}");
            }
        }
        sy.shutdown();
        sy.wait().await;
    }
    // RSA: the key from openssl (the test's key generator makes none), signed by the CA.
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let rsa = rcgen::KeyPair::from_pem_and_sign_algo(&String::from_utf8(made.stdout).unwrap(), &rcgen::PKCS_RSA_SHA256)
        .unwrap();
    let (cert, key) = ca.server_for(rsa, false).write(&dir, "rsa");
    let sy = start(&https_config(&v1, &v2, 50, &cert, &key, "")).await;
    let (got, _) = curl(sy.addr, &ca_file, "--http2", &on_v1);
    assert_eq!(got, "2", "an RSA key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_many_users_on_one_http2_connection_each_go_to_their_cohort() {
    let (ca, _, cert, key) = served_by_new_ca("https-streams");
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let sy = start(&https_config(&v1, &v2, 40, &cert, &key, "")).await;
    let stream = tls(sy.addr, &connector(&ca.pem, None, &[b"h2"])).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let requests = (0..100).map(|i| {
        let mut sender = sender.clone();
        async move {
            let user = format!("stream-user-{i}");
            let req = http::Request::get(format!("https://localhost/rest/v1/items?n={i}"))
                .header("x-user-id", &user)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (user, seen["backend"].as_str().unwrap().to_string())
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut sides = std::collections::HashSet::new();
    for (user, backend) in answers {
        let want = if percentile(&user) < 40 { "v2" } else { "v1" };
        assert_eq!(backend, want, "{user}");
        sides.insert(backend);
    }
    assert_eq!(sides.len(), 2, "one connection carried both cohorts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_goes_through_tls() {
    use futures_util::{SinkExt, StreamExt};
    let (ca, _, cert, key) = served_by_new_ca("https-ws");
    let (ws, _) = ws_echo().await;
    let ws_url = format!("http://{ws}");
    let sy = start(&https_config_to(&ws_url, &ws_url, 0, &cert, &key, "")).await;
    let stream = tls(sy.addr, &connector(&ca.pem, None, &[b"http/1.1"])).await.unwrap();
    let url = format!("wss://localhost:{}/realtime/v1/websocket?vsn=1.0.0", sy.addr.port());
    let (mut socket, resp) = tokio_tungstenite::client_async(url, stream).await.expect("upgraded through TLS");
    assert_eq!(resp.status(), 101);
    socket.send("hello".into()).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap(), "hello", "through {ws_url}");
}

/// Waits (at most 10 s) until a new connection is served the certificate `der`.
async fn served_within(addr: SocketAddr, connector: &tokio_rustls::TlsConnector, der: &[u8]) {
    let started = Instant::now();
    loop {
        if served(&tls(addr, connector).await.unwrap()) == der {
            return;
        }
        // Within a second of the change (debounced), sessions of the old pair not resumed.
        assert!(started.elapsed() < Duration::from_secs(2), "the new certificate was not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_changed_on_disk_are_served_to_new_connections_and_a_bad_pair_is_refused() {
    let ca = Ca::new();
    let dir = test_dir("https-reload");
    let first = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, false);
    let (cert, key) = first.write(&dir, "server");
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let sy = start(&https_config(&v1, &v2, 0, &cert, &key, "")).await;
    let admin = sy.admin_addr.unwrap();
    let client = connector(&ca.pem, None, &[b"http/1.1"]);
    let old = tls(sy.addr, &client).await.unwrap();
    assert_eq!(served(&old), first.der);
    let (mut old_sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old)).await.unwrap();
    tokio::spawn(conn);

    // Requests on fresh connections all through the swap: none fails.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (stop, client, addr) = (stop.clone(), client.clone(), sy.addr);
        async move {
            let mut done = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && done < 2_000 {
                let stream = tls(addr, &client).await.expect("every handshake succeeds");
                let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                let req = http::Request::get("/rest/v1/items").header("host", "localhost");
                let resp = s.send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap()).await.unwrap();
                assert_eq!(resp.status(), 200);
                done += 1;
            }
            done
        }
    });
    let second = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, false);
    second.write(&dir, "server");
    served_within(sy.addr, &client, &second.der).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);
    // The connection opened before keeps its certificate, and works.
    let req = http::Request::get("/rest/v1/items").header("host", "localhost");
    let resp = old_sender.send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);

    // Half a renewal: a new key beside the old certificate. Refused, counted; the
    // pair in force stays until the other file follows.
    let third = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, false);
    std::fs::write(dir.join("server.key.tmp"), &third.key).unwrap();
    std::fs::rename(dir.join("server.key.tmp"), &key).unwrap();
    let started = Instant::now();
    while metric(&metrics_text(admin).await, "switchyard_tls_reloads_total", "result=\"failure\"") < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the bad pair was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served(&tls(sy.addr, &client).await.unwrap()), second.der, "the last good pair stays");
    third.write(&dir, "server");
    served_within(sy.addr, &client, &third.der).await;
    let text = metrics_text(admin).await;
    assert!(metric(&text, "switchyard_tls_reloads_total", "result=\"success\"") >= 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_served_and_reported() {
    let ca = Ca::new();
    let dir = test_dir("https-expired");
    let (cert, key) = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, true).write(&dir, "server");
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let sy = start(&https_config(&v1, &v2, 0, &cert, &key, "expiry_warning_days = 30\n")).await;
    let text = metrics_text(sy.admin_addr.unwrap()).await;
    let not_after = metric(&text, "switchyard_tls_certificate_not_after_seconds", "");
    assert!(not_after > 1.5e9 && not_after < now() as f64, "expired: {not_after}");
    assert_eq!(metric(&text, "switchyard_tls_certificate_warning_seconds", ""), 30.0 * 86_400.0);
    // Served: a client that verifies refuses it, one that does not gets through.
    assert!(tls(sy.addr, &connector(&ca.pem, None, &[])).await.is_err(), "a verifying client refuses it");
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", &format!("https://localhost:{}/rest/v1/items", sy.addr.port())])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"backend\":\"v1\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_configured_and_silent_clients_are_let_go() {
    let (server_ca, client_ca) = (Ca::new(), Ca::new());
    let dir = test_dir("https-mtls");
    let (cert, key) = server_ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, false).write(&dir, "server");
    std::fs::write(dir.join("clients.pem"), &client_ca.pem).unwrap();
    let extra =
        format!("client_ca_file = \"{}\"\nhandshake_timeout_seconds = 0.5\n", dir.join("clients.pem").display());
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let sy = start(&https_config(&v1, &v2, 0, &cert, &key, &extra)).await;

    let anonymous = tls(sy.addr, &connector(&server_ca.pem, None, &[b"http/1.1"])).await;
    // TLS 1.3: the refusal may come with the first read rather than the handshake.
    if let Ok(mut s) = anonymous {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut buf = [0u8; 64];
        assert!(!matches!(s.read(&mut buf).await, Ok(n) if n > 0), "answered without a client certificate");
    }
    let foreign = Ca::new().client();
    let refused = tls(sy.addr, &connector(&server_ca.pem, Some(&foreign), &[b"http/1.1"])).await;
    if let Ok(mut s) = refused {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut buf = [0u8; 64];
        assert!(!matches!(s.read(&mut buf).await, Ok(n) if n > 0), "answered a certificate of another CA");
    }
    let ours = client_ca.client();
    let stream = tls(sy.addr, &connector(&server_ca.pem, Some(&ours), &[b"http/1.1"])).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/rest/v1/items").header("host", "localhost");
    assert_eq!(s.send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap()).await.unwrap().status(), 200);

    // A client that opens a connection and never says hello is closed.
    use tokio::io::AsyncReadExt;
    let mut silent = TcpStream::connect(sy.addr).await.unwrap();
    let asked = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed, not left open: {read:?}");
    assert!(asked.elapsed() < Duration::from_secs(3));
    let text = metrics_text(sy.admin_addr.unwrap()).await;
    assert!(metric(&text, "switchyard_tls_handshake_failures_total", "reason=\"timeout\"") >= 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_cut_off_and_others_are_served() {
    let (ca, dir, cert, key) = served_by_new_ca("https-reset");
    let v1 = slow(Duration::from_millis(200), "{}").await;
    let sy = start(&https_config(&v1, &v1, 0, &cert, &key, "")).await;
    let client = connector(&ca.pem, None, &[b"h2"]);
    let stream = tls(sy.addr, &client).await.unwrap();
    let (mut flood, conn) = h2::client::handshake(stream).await.unwrap();
    let driven = tokio::spawn(conn);
    assert!(!flood.is_extended_connect_protocol_enabled(), "extended CONNECT (RFC 8441) is not offered");
    // Open streams and cancel each at once (bounded: 5,000 or 10 s).
    let started = Instant::now();
    let mut sent = 0;
    while sent < 5_000 && started.elapsed() < Duration::from_secs(10) {
        if futures_util::future::poll_fn(|cx| flood.poll_ready(cx)).await.is_err() {
            break;
        }
        let req = http::Request::get("https://localhost/rest/v1/items").body(()).unwrap();
        match flood.send_request(req, true) {
            Ok((resp, _)) => drop(resp),
            Err(_) => break,
        }
        sent += 1;
        tokio::task::yield_now().await;
    }
    // The flooding connection is closed by the proxy...
    let ended = tokio::time::timeout(Duration::from_secs(10), driven).await;
    assert!(ended.is_ok(), "the flooding connection was never closed ({sent} streams)");
    assert!(sent < 5_000, "cut off before the flood ended: {sent}");
    let text = metrics_text(sy.admin_addr.unwrap()).await;
    assert_eq!(metric(&text, "switchyard_client_errors_total", "kind=\"rapid_reset\""), 1.0, "{text}");
    // ... and everyone else is served.
    let (got, _) = curl(sy.addr, &dir_ca(&dir, &ca), "--http2", "someone");
    assert_eq!(got, "2");
}

fn dir_ca(dir: &Path, ca: &Ca) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &ca.pem).unwrap();
    path
}

/// An HTTP/2 frame: length, type, flags, stream, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A TLS connection speaking raw HTTP/2: the preface and empty SETTINGS sent.
async fn raw_h2(addr: SocketAddr, ca: &Ca) -> TlsStream<TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut s = tls(addr, &connector(&ca.pem, None, &[b"h2"])).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    s
}

/// Whether the server ends the connection (GOAWAY, or closes it) while `flood` keeps
/// writing, within 10 s.
async fn cut_off(stream: TlsStream<TcpStream>, flood: Vec<u8>, times: usize) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        for _ in 0..times {
            if wr.write_all(&flood).await.is_err() {
                break;
            }
        }
    });
    let read = async {
        let mut buf = vec![0u8; 65_536];
        let mut seen = Vec::new();
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            // A GOAWAY frame (type 7) among what came back.
            let mut at = 0;
            while at + 9 <= seen.len() {
                let len = (usize::from(seen[at]) << 16) | (usize::from(seen[at + 1]) << 8) | usize::from(seen[at + 2]);
                if seen[at + 3] == 0x7 {
                    return true;
                }
                at += 9 + len;
            }
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(10), read).await.unwrap_or(false);
    writer.abort();
    ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_and_settings_floods_are_bounded_and_others_are_served() {
    let (ca, dir, cert, key) = served_by_new_ca("https-floods");
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let sy = start(&https_config(&v1, &v2, 0, &cert, &key, "")).await;
    let ca_file = dir_ca(&dir, &ca);

    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION
    // frames of small literal fields, up to 160 MB.
    let mut s = raw_h2(sy.addr, &ca).await;
    {
        use tokio::io::AsyncWriteExt;
        s.write_all(&frame(0x1, 0, 1, &[0x82, 0x87, 0x84])).await.unwrap();
    }
    let fields: Vec<u8> = std::iter::repeat_n([0x00u8, 0x01, b'a', 0x01, b'b'], 3_200).flatten().collect();
    assert!(cut_off(s, frame(0x9, 0, 1, &fields), 10_000).await, "an endless header block was not cut off");
    assert_eq!(curl(sy.addr, &ca_file, "--http2", "someone").0, "2");

    // SETTINGS frames without end: bounded (the connection ends, or is throttled by
    // its own unread acknowledgements) while others are served.
    let s = raw_h2(sy.addr, &ca).await;
    let settings: Vec<u8> =
        std::iter::repeat_n(frame(0x4, 0, 0, &[0x00, 0x03, 0, 0, 0, 100]), 1_000).flatten().collect();
    let flood = tokio::spawn(cut_off(s, settings, 1_000));
    let asked = Instant::now();
    assert_eq!(curl(sy.addr, &ca_file, "--http2", "someone").0, "2");
    assert!(asked.elapsed() < Duration::from_secs(5), "others were kept waiting");
    let _ = flood.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_certificate() {
    // The configured paths are links into a directory the watcher does not see, so
    // only the signal can bring the change in.
    let (ca, dir, _, _) = served_by_new_ca("https-hup");
    let elsewhere = test_dir("https-hup-real");
    let first = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, false);
    let (real_cert, real_key) = first.write(&elsewhere, "server");
    let (cert, key) = (dir.join("linked.pem"), dir.join("linked.key"));
    std::os::unix::fs::symlink(&real_cert, &cert).unwrap();
    std::os::unix::fs::symlink(&real_key, &key).unwrap();
    let v1 = echo("v1").await;
    let path = support::process::write_config("https-hup", &https_config(&v1, &v1, 0, &cert, &key, ""));
    let sy = support::process::Serving::start(&path);
    let client = connector(&ca.pem, None, &[b"http/1.1"]);
    assert_eq!(served(&tls(sy.addr, &client).await.unwrap()), first.der);
    let second = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, false);
    second.write(&elsewhere, "server");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served(&tls(sy.addr, &client).await.unwrap()), first.der, "not seen without the signal");
    sy.signal("HUP");
    served_within(sy.addr, &client, &second.der).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_log_beside_the_certificate_does_not_put_its_renewal_off() {
    let (ca, dir, cert, key) = served_by_new_ca("https-busy-dir");
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let sy = start(&https_config(&v1, &v2, 0, &cert, &key, "")).await;
    let client = connector(&ca.pem, None, &[b"http/1.1"]);
    // A log in the certificate's directory, written every 10 ms (well inside the
    // watcher's quiet time) for the whole test.
    let log = tokio::spawn({
        let log = dir.join("access.log");
        async move {
            for i in 0..1_000 {
                std::fs::write(&log, format!("line {i}\n")).unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, false);
    second.write(&dir, "server");
    served_within(sy.addr, &client, &second.der).await;
    log.abort();
    let text = metrics_text(sy.admin_addr.unwrap()).await;
    assert_eq!(metric(&text, "switchyard_tls_reloads_total", "result=\"success\""), 1.0, "{text}");
    assert_eq!(metric(&text, "switchyard_tls_reloads_total", "result=\"failure\""), 0.0, "{text}");
}
