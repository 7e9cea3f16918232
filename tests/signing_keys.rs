//! Projects on asymmetric signing keys, end to end through real sockets: the strict
//! fake projects (tests/support/fake.rs) sign their users' tokens with ES256 keys made
//! here, publish them at `/auth/v1/.well-known/jwks.json`, and accept only tokens
//! their own published keys verify. switchyard fetches those key sets, verifies
//! with them, re-signs with the key imported into the target, and refuses forgeries.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fake::{self, Fake, Spec, TestKey};
use support::*;

struct Stack {
    sy: switchyard::server::Running,
    v1: Arc<Fake>,
    v2: Arc<Fake>,
    s1: Spec,
    s2: Spec,
    _ups: (Upstream, Upstream),
}

/// Two fakes, each on the given key (none: HS256), switchyard in front at
/// `percentage` with `extra` added to each backend's table. The fakes' key sets
/// come up as `v1_down` says.
async fn stack(k1: Option<&TestKey>, k2: Option<&TestKey>, percentage: u8, v2_lines: &str, v1_down: bool) -> Stack {
    let (mut s1, mut s2, _) = fake::migration_specs();
    s1.signing = k1.map(|k| k.key.clone());
    s2.signing = k2.map(|k| k.key.clone());
    let (u1, v1) = fake::spawn(s1.clone()).await;
    let (u2, v2) = fake::spawn(s2.clone()).await;
    v1.jwks_down.store(v1_down, Ordering::SeqCst);
    let text = fake::config(&u1, &u2, &s1, &s2, percentage, "")
        .replace("[backends.v2]\n", &format!("[backends.v2]\n{v2_lines}"));
    let sy = start(&text).await;
    Stack { sy, v1, v2, s1, s2, _ups: (u1, u2) }
}

/// A user id in the given cohort at 50 %.
fn user_in(backend: &str, n: usize) -> String {
    (0..).map(|k| format!("sk-{backend}-{n}-{k}")).find(|u| (percentile(u) < 50) == (backend == "v2")).unwrap()
}

fn claims(user: &str, iss: &str) -> Value {
    json!({"sub": user, "iss": iss, "aud": "authenticated", "role": "authenticated", "exp": now() + 600})
}

/// A token of `key` (a project's, or an attacker's) over `claims`, its header as given.
fn signed(header: Value, key: &TestKey, claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let message = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    format!("{message}.{}", key.key.sign(message.as_bytes()).unwrap())
}

async fn select(s: &Stack, apikey: &str, token: &str) -> Got {
    let auth = format!("Bearer {token}");
    send(s.sy.addr, "GET", "/rest/v1/profiles?select=id", &[("apikey", apikey), ("authorization", &auth)], "").await
}

fn seen(f: &Fake) -> usize {
    f.seen.lock().unwrap().len()
}

/// Waits (10 s at most) until `f`'s key set has been fetched more than `n` times.
async fn fetched_past(f: &Fake, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.jwks_fetches.load(Ordering::SeqCst) <= n {
        assert!(Instant::now() < deadline, "no fetch of the key set past {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_taken_on_first_sight_and_a_removed_one_refused() {
    let dir = process::test_dir("sk-rotation");
    let (a, b) = (TestKey::es256(&dir, "a"), TestKey::es256(&dir, "b"));
    let s = stack(None, Some(&a), 100, "jwks_refresh_seconds = 2\n", false).await;
    let (user, iss) = ("sk-rotating-user", "v2-issuer");
    let token_a = s.v2.issue(claims(user, iss));
    assert_eq!(select(&s, &s.s2.anon, &token_a).await.status, 200);
    // A new key, published and used at once (before any refresh): the token naming it
    // makes switchyard fetch the set again, and it is verified.
    s.v2.publish(vec![a.public(), b.public()]);
    let before = s.v2.jwks_fetches.load(Ordering::SeqCst);
    let token_b = signed(json!({"alg": "ES256", "kid": "b", "typ": "JWT"}), &b, &claims(user, iss));
    let got = select(&s, &s.s2.anon, &token_b).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert!(s.v2.jwks_fetches.load(Ordering::SeqCst) > before);
    // The old key leaves the set: once switchyard has fetched it, a token of the old
    // key is refused by switchyard itself (the project never sees it), though the
    // same token was accepted (and cached) a moment ago.
    s.v2.publish(vec![b.public()]);
    let after = s.v2.jwks_fetches.load(Ordering::SeqCst);
    fetched_past(&s.v2, after + 1).await;
    let seen_before = seen(&s.v2);
    let got = select(&s, &s.s2.anon, &token_a).await;
    assert_eq!(got.status, 401, "{:?}", got.body);
    assert_eq!(got.json()["code"], "PGRST301");
    assert_eq!(seen(&s.v2), seen_before, "refused before any project saw it");
    assert_eq!(select(&s, &s.s2.anon, &token_b).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_down_at_start_holds_only_what_needs_re_signing() {
    let dir = process::test_dir("sk-down");
    let k1 = TestKey::es256(&dir, "v1-key");
    // v1 on signing keys, its key set down; v2 on its HS256 secret.
    let s = stack(Some(&k1), None, 50, "", true).await;
    let (home, mover) = (user_in("v1", 0), user_in("v2", 0));
    let token = |u: &str| s.v1.issue(claims(u, "v1-issuer"));
    // Going to its own issuer, the token is forwarded as it is: v1 verifies it.
    let got = select(&s, &s.s1.anon, &token(&home)).await;
    assert_eq!((got.status, got.backend()), (http::StatusCode::OK, "v1"), "{:?}", got.body);
    // Going to v2 it would need re-signing, which is never done unverified.
    let v2_seen = seen(&s.v2);
    let got = select(&s, &s.s1.anon, &token(&mover)).await;
    assert_eq!(got.status, 503, "{:?}", got.body);
    assert_eq!(got.headers["retry-after"], "1");
    assert_eq!(got.json()["code"], "SWY503");
    assert_eq!(seen(&s.v2), v2_seen);
    assert!(
        metric(&s.sy.proxy.metrics.render(), "switchyard_jwks_fetches_total", r#"backend="v1",result="failure""#)
            >= 1.0
    );
    // The key set comes up: within the retry's backoff, the mover's token is verified
    // and re-signed for v2.
    s.v1.jwks_down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = select(&s, &s.s1.anon, &token(&mover)).await;
        if got.status == 200 {
            assert_eq!(got.backend(), "v2");
            break;
        }
        assert_eq!(got.status, 503);
        assert!(Instant::now() < deadline, "the key set was never fetched again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Down again later: the keys fetched stay in force.
    s.v1.jwks_down.store(true, Ordering::SeqCst);
    assert_eq!(select(&s, &s.s1.anon, &token(&mover)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_cannot_make_it_hammer_the_project() {
    let dir = process::test_dir("sk-flood");
    let (key, attacker) = (TestKey::es256(&dir, "v2-key"), TestKey::es256(&dir, "attacker"));
    let s = Arc::new(stack(None, Some(&key), 100, "", false).await);
    let before = s.v2.jwks_fetches.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (s, attacker) = (s.clone(), attacker.clone());
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for n in 0..25 {
                let header = json!({"alg": "ES256", "kid": format!("garbage-{worker}-{n}"), "typ": "JWT"});
                let got = select(&s, &s.s2.anon, &signed(header, &attacker, &claims("flooder", "v2-issuer"))).await;
                refused += usize::from(got.status == 401);
            }
            refused
        }));
    }
    // A real user is served meanwhile.
    let got = select(&s, &s.s2.anon, &s.v2.issue(claims("sk-real-user", "v2-issuer"))).await;
    assert_eq!(got.status, 200);
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    assert_eq!(refused, 400, "every garbage kid refused");
    let fetches = s.v2.jwks_fetches.load(Ordering::SeqCst) - before;
    let allowed = 1 + (started.elapsed().as_secs() / 5) as usize;
    assert!(fetches <= allowed, "{fetches} fetches for 400 unknown kids in {:?}", started.elapsed());
    assert_eq!(s.v2.seen.lock().unwrap().iter().filter(|r| r.path == "/rest/v1/profiles").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused_in_postgrests_shape_and_never_forwarded() {
    let dir = process::test_dir("sk-forged");
    let (k1, k2) = (TestKey::es256(&dir, "v1-key"), TestKey::es256(&dir, "v2-key"));
    let evil = TestKey::es256(&process::test_dir("sk-forged-attacker"), "v2-key");
    let s = stack(Some(&k1), Some(&k2), 100, "", false).await;
    let c = claims("sk-victim", "v2-issuer");
    use base64::Engine;
    let b64 = |v: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let hs256_with = |secret: &[u8]| {
        let message = format!("{}.{}", b64(json!({"alg": "HS256", "kid": "v2-key"}).to_string()), b64(c.to_string()));
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        format!(
            "{message}.{}",
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap()
        )
    };
    let forged = [
        ("alg none", format!("{}.{}.", b64(json!({"alg": "none"}).to_string()), b64(c.to_string()))),
        ("public key as HS256 secret", hs256_with(k2.public().to_string().as_bytes())),
        ("another key under v2's kid", signed(json!({"alg": "ES256", "kid": "v2-key"}), &evil, &c)),
        ("v1's key claiming v2", signed(json!({"alg": "ES256", "kid": "v1-key"}), &k1, &c)),
        ("RS256 under an ES256 key", signed(json!({"alg": "RS256", "kid": "v2-key"}), &k2, &c)),
    ];
    let seen_before = (seen(&s.v1), seen(&s.v2));
    for (what, token) in forged {
        let got = select(&s, &s.s2.anon, &token).await;
        assert_eq!(got.status, 401, "{what}: {:?}", got.body);
        let body = got.json();
        assert_eq!(body["code"], "PGRST301", "{what}");
        assert!(body["message"].as_str().unwrap().starts_with("JWT invalid"), "{what}: {body}");
        assert!(got.headers["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    }
    assert_eq!((seen(&s.v1), seen(&s.v2)), seen_before, "no forged token reached a project");
    // The genuine article passes.
    assert_eq!(select(&s, &s.s2.anon, &s.v2.issue(c.clone())).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_from_a_file_verifies_without_fetching() {
    let dir = process::test_dir("sk-file");
    let key = TestKey::es256(&dir, "v2-key");
    let jwks = dir.join("v2-jwks.json");
    std::fs::write(&jwks, json!({ "keys": [key.public()] }).to_string()).unwrap();
    let lines = format!("jwks_file = \"{}\"\n", jwks.display());
    let s = stack(None, Some(&key), 100, &lines, false).await;
    let c = claims("sk-file-user", "v2-issuer");
    assert_eq!(select(&s, &s.s2.anon, &s.v2.issue(c.clone())).await.status, 200);
    let other = TestKey::es256(&process::test_dir("sk-file-other"), "v2-key");
    let got = select(&s, &s.s2.anon, &signed(json!({"alg": "ES256", "kid": "v2-key"}), &other, &c)).await;
    assert_eq!(got.status, 401, "verified against the file's key");
    assert_eq!(s.v2.jwks_fetches.load(Ordering::SeqCst), 0, "the project's own key set never fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_place_a_reload_left_stop_verifying_at_once() {
    let dir = process::test_dir("sk-reload");
    let (a, b) = (TestKey::es256(&dir, "a"), TestKey::es256(&dir, "b"));
    let (file_a, file_b) = (dir.join("a.json"), dir.join("b.json"));
    std::fs::write(&file_a, json!({ "keys": [a.public()] }).to_string()).unwrap();
    std::fs::write(&file_b, json!({ "keys": [b.public()] }).to_string()).unwrap();
    let (s1, mut s2, _) = fake::migration_specs();
    s2.signing = Some(a.key.clone());
    let (u1, _v1) = fake::spawn(s1.clone()).await;
    let (u2, v2) = fake::spawn(s2.clone()).await;
    let text = |file: &std::path::Path| {
        fake::config(&u1, &u2, &s1, &s2, 100, "")
            .replace("[backends.v2]\n", &format!("[backends.v2]\njwks_file = \"{}\"\n", file.display()))
    };
    let path = process::write_config("sk-reload", &text(&file_a));
    let sy = start_with(&text(&file_a), &[], Some(path.clone())).await;
    let token = v2.issue(claims("sk-reloaded-user", "v2-issuer"));
    let auth = format!("Bearer {token}");
    let headers = [("apikey", s2.anon.as_str()), ("authorization", auth.as_str())];
    assert_eq!(send(sy.addr, "GET", "/rest/v1/profiles", &headers, "").await.status, 200);
    // The config now points at a set without key `a`: the token, accepted (and
    // cached) a moment ago, is refused by switchyard itself from the reload on.
    std::fs::write(&path, text(&file_b)).unwrap();
    sy.control.reload("test").await.unwrap();
    let seen_before = v2.seen.lock().unwrap().len();
    let got = send(sy.addr, "GET", "/rest/v1/profiles", &headers, "").await;
    assert_eq!(got.status, 401, "{:?}", got.body);
    assert_eq!(v2.seen.lock().unwrap().len(), seen_before);
}

#[test]
fn check_reports_each_projects_verification() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = process::test_dir("sk-check");
    let k2 = TestKey::es256(&dir, "v2-key");
    let (s1, mut s2, _) = fake::migration_specs();
    s2.signing = Some(k2.key.clone());
    let ((u1, v1), (u2, _v2)) = rt.block_on(async { (fake::spawn(s1.clone()).await, fake::spawn(s2.clone()).await) });
    v1.jwks_down.store(true, Ordering::SeqCst);
    let text = fake::config(&u1, &u2, &s1, &s2, 10, "")
        .replace("[backends.v2]\n", &format!("[backends.v2]\n{}", k2.config_lines()));
    let path = process::write_config("sk-check", &text);
    let out = process::run(&["check", "--config", path.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let line =
        |id: &str| stdout.lines().find(|l| l.starts_with(&format!("{id}: tokens:"))).unwrap_or_default().to_string();
    assert!(line("v1").contains("key set NOT fetched") && line("v1").contains("503"), "{stdout}");
    assert!(line("v1").contains("HS256 with jwt_secret"), "{stdout}");
    assert!(line("v2").contains("verified with 1 key(s)") && line("v2").contains("ES256 v2-key"), "{stdout}");
    assert!(line("v2").contains("re-signed for v2 with: ES256 key v2-key"), "{stdout}");
    assert!(!stdout.contains(&s2.jwt_secret) && !stdout.contains("\"d\""), "no secret printed");
}
