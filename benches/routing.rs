//! Micro-benchmarks of the per-request decisions: percentile, identity extraction (JWT
//! decode and HS256 verify), the whole routing decision, header rewriting.
//! `cargo bench --bench routing`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use switchyard::config::Config;
use switchyard::forward::headers;
use switchyard::proxy;
use switchyard::routing;
use switchyard::routing::percentile::percentile;
use switchyard::routing::service::Service;
use switchyard::state::Snapshot;

fn snapshot(secret: bool) -> Snapshot {
    let secret_line = if secret { "jwt_secret = \"bench-secret\"\n" } else { "" };
    let text = format!(
        "[rollout]\npercentage = 37\n[backends.v1]\nurl = \"http://127.0.0.1:18001\"\n{secret_line}\
         issuer = \"https://ref.supabase.co/auth/v1\"\n[backends.v2]\nurl = \"http://127.0.0.1:18002\"\n"
    );
    Snapshot::new(Config::parse(&text, &|_| None).unwrap())
}

fn token(n: u32) -> String {
    let claims = serde_json::json!({
        "sub": format!("8c1f9d2e-5b7a-4e3c-9a1d-{n:012}"), "iss": "https://ref.supabase.co/auth/v1",
        "aud": "authenticated", "role": "authenticated", "exp": 4_000_000_000u64,
        "email": "someone@example.com", "session_id": "0b7e1f5c-3a2d-4c8e-9f1a-6d5b4c3a2e10",
    });
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"bench-secret")).unwrap()
}

fn decide(snap: &Snapshot, headers: &HeaderMap, uri: &http::Uri) -> routing::Decision {
    let route = proxy::route(snap, Service::from_path(uri.path()), headers, uri);
    assert!(route.refused.is_none());
    route.decision
}

fn benches(c: &mut Criterion) {
    c.bench_function("percentile", |b| b.iter(|| percentile(b"", black_box("8c1f9d2e-5b7a-4e3c-9a1d-2f6b8e4c7a90"))));

    let plain = snapshot(false);
    let uri: http::Uri = "/rest/v1/profiles?select=*".parse().unwrap();
    let mut by_header = HeaderMap::new();
    by_header.insert(HeaderName::from_static("x-user-id"), HeaderValue::from_static("user-42"));
    c.bench_function("route/header identity", |b| b.iter(|| decide(&plain, black_box(&by_header), &uri)));

    // A token seen before on this thread is answered from the token cache; eight
    // times more distinct tokens than the cache holds measure the full check.
    let by_jwt = |n: u32| {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {}", token(n))).unwrap());
        h
    };
    let (seen, fresh): (HeaderMap, Vec<HeaderMap>) = (by_jwt(0), (1..=8192).map(by_jwt).collect());
    let verifying = snapshot(true);
    for (name, snap) in [("decoded, no secret", &plain), ("HS256 verified", &verifying)] {
        c.bench_function(&format!("route/jwt {name}, seen before"), |b| {
            b.iter(|| decide(snap, black_box(&seen), &uri))
        });
        let mut next = fresh.iter().cycle();
        c.bench_function(&format!("route/jwt {name}, first sight"), |b| {
            b.iter(|| decide(snap, black_box(next.next().expect("cycles")), &uri))
        });
    }

    let upstream = &plain.config.backends.v2.url;
    let template = Request::post("http://proxy.example/rest/v1/orders?select=*&id=eq.1")
        .header("host", "proxy.example")
        .header("apikey", "anon-key")
        .header("content-profile", "public")
        .header("x-client-info", "supabase-js/2.109.0")
        .header("connection", "keep-alive")
        .body(())
        .unwrap();
    let peer = headers::ClientAddr::new("127.0.0.1".parse().unwrap());
    c.bench_function("headers/prepare_request", |b| {
        b.iter_batched(
            || template.clone().into_parts().0,
            |mut parts| {
                let survey = headers::Survey::of(&parts.headers);
                headers::prepare_request(&mut parts, upstream, &peer, survey).unwrap()
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(routing_benches, benches);
criterion_main!(routing_benches);
