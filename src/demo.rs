//! `switchyard demo`: the proxy in front of two embedded upstreams labelled v1 and v2
//! that answer like PostgREST, so sticky routing can be seen with curl and no Supabase
//! project at hand.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::backend::BackendId;
use crate::config::Config;
use crate::routing::service::Service;

/// Answers like a tiny PostgREST/GoTrue that says which project it is.
fn answer(label: BackendId, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let body = match path.strip_prefix("/rest/v1/") {
        Some(table) => serde_json::json!([{ "id": 1, "table": table, "project": label.as_str() }]),
        // A project on the legacy HS256 secret publishes an empty key set.
        None if path == "/auth/v1/.well-known/jwks.json" => serde_json::json!({ "keys": [] }),
        None => serde_json::json!({ "project": label.as_str(), "path": path }),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json; charset=utf-8"));
    h.insert("content-profile", header::HeaderValue::from_static("public"));
    resp
}

/// Starts one embedded upstream on an ephemeral loopback port.
pub async fn spawn_upstream(label: BackendId) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req| async move { Ok::<_, Infallible>(answer(label, &req)) });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

/// A throwaway self-signed certificate for `localhost` and 127.0.0.1, written with
/// its key into `dir`: the two files.
pub fn self_signed(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let made = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem())?;
    std::fs::write(&key, made.signing_key.serialize_pem())?;
    Ok((cert, key))
}

/// Where the demo serves HTTPS, and its certificate and key.
pub struct DemoTls {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The demo's configuration, in the same TOML an operator would write.
pub fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    percentage: u8,
    v1: SocketAddr,
    v2: SocketAddr,
    tls: Option<&DemoTls>,
) -> Config {
    let tls = tls.map_or_else(String::new, |t| {
        format!(
            "[server.tls]\nlisten = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            t.listen,
            t.cert.display(),
            t.key.display()
        )
    });
    let text = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n{tls}[rollout]\npercentage = {percentage}\n\
         [backends.v1]\nurl = \"http://{v1}\"\n[backends.v2]\nurl = \"http://{v2}\"\n"
    );
    // Only the fleet's store comes from the environment: the compose stack runs two
    // demo replicas on one rollout state.
    let env = |name: &str| (name == "SWITCHYARD_CLUSTER_DATABASE_URL").then(|| std::env::var(name).ok()).flatten();
    Config::parse(&text, &env).expect("the demo config is valid")
}

/// Prints curl commands that show sticky routing for a few users (and, with `tls`,
/// the same over HTTPS and HTTP/2).
pub fn print_walkthrough(cfg: &Config, addr: SocketAddr, admin: Option<SocketAddr>, tls: Option<&DemoTls>) {
    let snap = crate::state::Snapshot::new(cfg.clone());
    println!("switchyard demo: proxy on http://{addr}, rollout {}% to v2", cfg.rollout.percentage);
    println!("Each user always lands on the same project (see x-switchyard-backend):\n");
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let d = crate::proxy::route_user(&snap, Service::Rest, user);
        let p = crate::routing::percentile::percentile(&cfg.rollout.hash_seed, user);
        println!(
            "  curl -si -H 'x-user-id: {user}' http://{addr}/rest/v1/profiles   # percentile {p:>2} -> {}",
            d.backend
        );
    }
    println!("\nAuth stays on v1 whatever the cohort:\n  curl -si -H 'x-user-id: alice' http://{addr}/auth/v1/user");
    if let Some(t) = tls {
        let (cert, port) = (t.cert.display(), t.listen.port());
        println!("\nOver HTTPS (a throwaway self-signed certificate), HTTP/2 or HTTP/1.1:");
        println!("  curl -si --cacert {cert} --http2 -H 'x-user-id: alice' https://localhost:{port}/rest/v1/profiles");
        println!("  curl -si --cacert {cert} --http1.1 -H 'x-user-id: bob' https://localhost:{port}/rest/v1/profiles");
    }
    if let Some(admin) = admin {
        println!("Metrics:\n  curl -s http://{admin}/metrics | grep switchyard_requests_total");
    }
    println!("\nCtrl-C to stop.");
}
