//! Identity extraction and JWT checks on arbitrary bytes: bearer tokens, user-id
//! headers, admin paths and cookies must never panic, with and without secrets.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use switchyard::config::Config;
use switchyard::identity;
use switchyard::state::Snapshot;

fn snapshot(secret: bool) -> Snapshot {
    let s = if secret { "jwt_secret = \"fuzz-secret\"\n" } else { "" };
    let text = format!(
        "[backends.v1]\nurl = \"http://127.0.0.1:1\"\nanon_key = \"anon\"\n{s}[backends.v2]\nurl = \"http://127.0.0.1:2\"\n{s}"
    );
    Snapshot::new(Config::parse(&text, &|_| None).unwrap())
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static SNAPS: [Snapshot; 2] = [snapshot(false), snapshot(true)];
    }
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let token = parts.next().unwrap_or("");
    let header = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    SNAPS.with(|snaps| {
        for snap in snaps {
            let _ = snap.verifier.check(token);
            let _ = snap.verifier.signed_by(token);
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(http::header::AUTHORIZATION, v);
            }
            if let Ok(v) = HeaderValue::from_bytes(header.as_bytes()) {
                headers.insert(HeaderName::from_static("x-user-id"), v.clone());
                headers.insert(http::header::COOKIE, v);
            }
            let id = &snap.config.identity;
            let _ = identity::extract(&headers, path, &id.sources, &id.header, &snap.verifier);
            let _ = identity::cookie_percentile(&headers, &id.cookie_name);
            let _ = identity::admin_path_user(path);
            if let Ok(uri) = format!("http://h{}", if path.starts_with('/') { path } else { "/" }).parse::<http::Uri>() {
                let service = switchyard::routing::service::Service::from_path(uri.path());
                let _ = switchyard::proxy::route(snap, service, &headers, &uri);
            }
        }
    });
});
