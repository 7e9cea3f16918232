//! The real client: a Node script using `@supabase/supabase-js` (tests/node, installed
//! from npm by scripts/test.sh) talks only to switchyard in front of the two strict
//! fake projects. Users of both cohorts run the same code; every call succeeds and each
//! row lands in the project of its user's cohort.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::fake;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_works_unchanged_for_both_cohorts() {
    run(Setup { name: "js-http", ..Setup::default() }).await;
}

/// The same over HTTPS (both listeners at once): Node trusts the test's CA through
/// NODE_EXTRA_CA_CERTS, as an operator's private CA would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_works_unchanged_over_https() {
    run(Setup { name: "js-https", https: true, ..Setup::default() }).await;
}

/// v2 is a new project on signing keys (ES256): v1's HS256 tokens are re-signed for
/// it with the key imported into it; the clients' API key is the publishable one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_with_v2_on_es256_signing_keys() {
    run(Setup { name: "js-v2-es256", v2: Some(Alg::Es256), ..Setup::default() }).await;
}

/// The reverse: v1 on ES256 (its tokens verified against its key set), v2 on HS256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_with_v1_on_es256_signing_keys() {
    run(Setup { name: "js-v1-es256", v1: Some(Alg::Es256), ..Setup::default() }).await;
}

/// Both on signing keys of their own, v1's RS256 and v2's ES256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_with_an_rs256_project_and_an_es256_one() {
    run(Setup { name: "js-rs-es", v1: Some(Alg::Rs256), v2: Some(Alg::Es256), ..Setup::default() }).await;
}

/// Both on ES256 keys of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_with_both_projects_on_es256_keys_of_their_own() {
    run(Setup { name: "js-es-es", v1: Some(Alg::Es256), v2: Some(Alg::Es256), ..Setup::default() }).await;
}

/// Both list the same ES256 key: nothing is re-signed, and no private key is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_with_both_projects_trusting_one_key() {
    run(Setup { name: "js-shared", v1: Some(Alg::Es256), shared: true, ..Setup::default() }).await;
}

#[derive(Clone, Copy)]
enum Alg {
    Es256,
    Rs256,
}

/// How the two projects are set up for one run.
#[derive(Default)]
struct Setup {
    name: &'static str,
    https: bool,
    /// The signing keys v1 and v2 are on (none: HS256 with their secret).
    v1: Option<Alg>,
    v2: Option<Alg>,
    /// v2 lists (and signs with) v1's key.
    shared: bool,
}

fn key(dir: &Path, alg: Alg, kid: &str) -> fake::TestKey {
    match alg {
        Alg::Es256 => fake::TestKey::es256(dir, kid),
        Alg::Rs256 => fake::TestKey::rs256(dir, kid),
    }
}

async fn run(setup: Setup) {
    let https = setup.https;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    if !dir.join("node_modules/@supabase/supabase-js").exists() {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_NODE").is_none(),
            "tests/node has no node_modules (scripts/test.sh runs npm ci there)"
        );
        eprintln!("skipping: run `npm ci` in tests/node (scripts/test.sh does)");
        return;
    }
    let tls_dir = support::process::test_dir(setup.name);
    let (mut s1, mut s2, _) = fake::migration_specs();
    let k1 = setup.v1.map(|alg| key(&tls_dir, alg, "v1-key"));
    let k2 = match (setup.shared, setup.v2) {
        (true, _) => None,
        (false, alg) => alg.map(|alg| key(&tls_dir, alg, "v2-key")),
    };
    s1.signing = k1.as_ref().map(|k| k.key.clone());
    s2.signing = if setup.shared { s1.signing.clone() } else { k2.as_ref().map(|k| k.key.clone()) };
    let (u1, v1) = fake::spawn(s1.clone()).await;
    let (u2, v2) = fake::spawn(s2.clone()).await;
    let ca = support::ca::Ca::new();
    let ca_file = tls_dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (cert, key) = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, false).write(&tls_dir, "server");
    let mut text = fake::config(&u1, &u2, &s1, &s2, 50, "");
    if let Some(k2) = &k2 {
        // The private key imported into v2, for tokens re-signed for it.
        text = text.replace("[backends.v2]\n", &format!("[backends.v2]\n{}", k2.config_lines()));
    }
    if https {
        let tls = format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n[rollout]",
            cert.display(),
            key.display()
        );
        text = text.replace("[rollout]", &tls);
    }
    let sy = start(&text).await;
    let users: Vec<String> = ["v1", "v2", "v1", "v2"]
        .iter()
        .enumerate()
        .map(|(n, cohort)| {
            (0..).map(|k| format!("js-{n}-{k}")).find(|u| (percentile(u) < 50) == (*cohort == "v2")).unwrap()
        })
        .collect();
    let url = match sy.tls_addr {
        Some(a) => format!("https://localhost:{}", a.port()),
        None => format!("http://{}", sy.addr),
    };
    // Projects on signing keys are new ones: their clients hold publishable keys.
    let signing = setup.v1.is_some() || setup.v2.is_some();
    let anon = if signing { s1.publishable.clone() } else { s1.anon.clone() };
    let list = serde_json::to_string(&users).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut node = Command::new("node");
        if https {
            node.env("NODE_EXTRA_CA_CERTS", &ca_file);
        }
        node.arg("e2e.mjs").arg(url).arg(anon).arg(list).current_dir(dir).output().expect("node runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "supabase-js failed: {stderr}");
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), users.len(), "{stderr}");
    for (user, line) in users.iter().zip(&lines) {
        let cohort = if percentile(user) < 50 { "v2" } else { "v1" };
        assert_eq!(line["id"], user.as_str());
        assert_eq!(
            (line["inserted"].as_u64(), line["updated"].as_str(), line["selected"].as_str()),
            (Some(1), Some("second"), Some("second")),
            "{line}"
        );
        assert_eq!(line["rpc"]["project"], cohort, "{line}");
        assert_eq!(line["rpc"]["sub"], user.as_str());
        assert_eq!(line["fn"]["project"], cohort);
        assert_eq!(line["fn"]["sub"], user.as_str());
        let (home, schema) = if cohort == "v2" { (&v2, "shared_services") } else { (&v1, "public") };
        let other = if cohort == "v2" { &v1 } else { &v2 };
        let rows = home.rows(schema, "profiles");
        let mine: Vec<&Value> = rows.iter().filter(|r| r["owner"] == user.as_str()).collect();
        assert_eq!(mine.len(), 1, "{user}: the kept row, the scratch row deleted");
        assert_eq!(mine[0]["name"], "second");
        let elsewhere = ["public", "shared_services"]
            .iter()
            .flat_map(|s| other.rows(s, "profiles"))
            .filter(|r| r["owner"] == user.as_str())
            .count();
        assert_eq!(elsewhere, 0, "{user} wrote to the other project");
    }
    if signing {
        // Each v2-cohort request reached v2 with a token v2 verifies itself: re-signed
        // with v2's key, or (one key for both) v1's own token untouched.
        let want_kid = if setup.shared || setup.v2.is_none() { None } else { Some("v2-key") };
        let seen = v2.seen.lock().unwrap().clone();
        let tokens: Vec<_> = seen
            .iter()
            .filter_map(|s| s.headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::to_string))
            .filter(|t| t.starts_with("ey") && t.matches('.').count() == 2)
            .collect();
        assert!(!tokens.is_empty());
        for t in &tokens {
            let header = jsonwebtoken::decode_header(t).unwrap();
            match (want_kid, setup.shared) {
                (Some(kid), _) => assert_eq!(header.kid.as_deref(), Some(kid)),
                (None, true) => assert_eq!(header.kid.as_deref(), Some("v1-key"), "v1's token, untouched"),
                (None, false) => assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256),
            }
        }
        assert!(v2.saw("sb_publishable_v2") && !v2.saw("sb_publishable_v1"), "publishable key translated");
    }
    // Sign-ins went to the auth home.
    assert_eq!(v1.seen.lock().unwrap().iter().filter(|s| s.path == "/auth/v1/token").count(), users.len());
    assert!(v2.seen.lock().unwrap().iter().all(|s| !s.path.starts_with("/auth/")));
}
