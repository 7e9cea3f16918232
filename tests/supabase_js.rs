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
    run(false).await;
}

/// The same over HTTPS (both listeners at once): Node trusts the test's CA through
/// NODE_EXTRA_CA_CERTS, as an operator's private CA would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_js_works_unchanged_over_https() {
    run(true).await;
}

async fn run(https: bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    if !dir.join("node_modules/@supabase/supabase-js").exists() {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_NODE").is_none(),
            "tests/node has no node_modules (scripts/test.sh runs npm ci there)"
        );
        eprintln!("skipping: run `npm ci` in tests/node (scripts/test.sh does)");
        return;
    }
    let (s1, s2, _) = fake::migration_specs();
    let (u1, v1) = fake::spawn(s1.clone()).await;
    let (u2, v2) = fake::spawn(s2.clone()).await;
    let tls_dir = support::process::test_dir(if https { "js-https" } else { "js-http" });
    let ca = support::ca::Ca::new();
    let ca_file = tls_dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (cert, key) = ca.server(&rcgen::PKCS_ECDSA_P256_SHA256, false).write(&tls_dir, "server");
    let mut text = fake::config(&u1, &u2, &s1, &s2, 50, "");
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
    let anon = s1.anon.clone();
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
    // Sign-ins went to the auth home.
    assert_eq!(v1.seen.lock().unwrap().iter().filter(|s| s.path == "/auth/v1/token").count(), users.len());
    assert!(v2.seen.lock().unwrap().iter().all(|s| !s.path.starts_with("/auth/")));
}
