//! Live operations through real sockets: the rollout changed 50 times under load from
//! each source (admin API, file watcher, SIGHUP) with no failed request and every
//! response routed by a percentage in force; invalid reloads; admin authentication.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::load::{percentages, verify_under_load};
use support::process::{Serving, write_config};
use support::*;

const TOKEN: &str = "admin-token-for-tests";

/// Replaces the file the way editors and ConfigMaps do: write aside, rename over.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls the admin API until the percentage is `want` (at most 2 s: the promise).
async fn wait_in_force(admin: std::net::SocketAddr, want: u8) {
    let started = Instant::now();
    loop {
        if rollout_status(admin).await["percentage"] == want {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{want}% not in force within 2 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn file_config(v1: &Upstream, v2: &Upstream, pct: u8, extra: &str) -> String {
    config_text(&v1.url(), &v2.url(), pct, extra)
}

/// Two echo upstreams and a switchyard reading (and watching) a config file at `pct`.
struct Watched {
    ups: (Upstream, Upstream),
    text: String,
    path: PathBuf,
    sy: switchyard::server::Running,
    admin: std::net::SocketAddr,
}

async fn watched(name: &str, pct: u8, env: &[(&str, &str)]) -> Watched {
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    let text = file_config(&v1, &v2, pct, "");
    let path = write_config(name, &text);
    let sy = start_with(&text, env, Some(path.clone())).await;
    let admin = sy.admin_addr.unwrap();
    Watched { ups: (v1, v2), text, path, sy, admin }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_api_changes_under_load() {
    let (_v1, _v2, sy) = {
        let v1 = echo("v1").await;
        let v2 = echo("v2").await;
        let sy = start_with(&file_config(&v1, &v2, 0, ""), &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)], None).await;
        (v1, v2, sy)
    };
    let admin = sy.admin_addr.unwrap();
    let n = verify_under_load(sy.addr, 0, &percentages(1), |p| async move {
        let got = put_rollout(admin, Some(TOKEN), &format!(r#"{{"percentage": {p}}}"#)).await;
        assert_eq!(got.status, 200, "{:?}", got.body);
        assert_eq!(got.json()["percentage"], p);
    })
    .await;
    assert!(n >= 2000, "only {n} requests");
    let status = rollout_status(admin).await;
    assert_eq!(status["source"], "api");
    assert_eq!(status["generation"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_file_edits_under_load() {
    let w = watched("watch", 0, &[]).await;
    let (sy, admin, path) = (&w.sy, w.admin, &w.path);
    let (a, b) = (w.ups.0.url(), w.ups.1.url());
    let n = verify_under_load(sy.addr, 0, &percentages(2), |p| {
        replace_file(path, &config_text(&a, &b, p, ""));
        wait_in_force(admin, p)
    })
    .await;
    assert!(n >= 2000, "only {n} requests");
    assert_eq!(rollout_status(admin).await["source"], "file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sighup_reloads_under_load() {
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    // No watcher: SIGHUP is the only trigger.
    let no_watch = "[server]\nwatch_config = false\n";
    let text = |p| file_config(&v1, &v2, p, "").replace("[server]\n", no_watch);
    let path: PathBuf = write_config("sighup", &text(0));
    let serving = Serving::start(&path);
    let admin = serving.admin.expect("admin listener");
    let n = verify_under_load(serving.addr, 0, &percentages(3), |p| {
        std::fs::write(&path, text(p)).unwrap();
        serving.signal("HUP");
        wait_in_force(admin, p)
    })
    .await;
    assert!(n >= 2000, "only {n} requests");
    let body = metrics_text(admin).await;
    assert!(body.contains("switchyard_config_reloads_total{result=\"success\"} 50"), "{body}");
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_old_config() {
    let Watched { text: good, path, sy, admin, .. } = watched("invalid", 30, &[]).await;
    replace_file(&path, &good.replace("percentage = 30", "percentage = 101"));
    let started = Instant::now();
    let metrics = loop {
        let m = metrics_text(admin).await;
        if m.contains("switchyard_config_last_reload_success 0") {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "the failed reload was not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(metrics.contains("switchyard_config_reloads_total{result=\"failure\"} 1"));
    let status = rollout_status(admin).await;
    assert_eq!(status["percentage"], 30);
    assert!(status["last_reload_error"].as_str().unwrap().contains("rollout.percentage"));
    // Traffic still routed by the old config.
    let someone = (0..).map(|n| format!("x{n}")).find(|u| percentile(u) < 30).unwrap();
    assert_eq!(get_as(sy.addr, "/rest/v1/t", &someone).await.backend(), "v2");
    // A fixed file is picked up again.
    replace_file(&path, &good.replace("percentage = 30", "percentage = 60"));
    wait_in_force(admin, 60).await;
    assert_eq!(sy.proxy.metrics.config_last_reload_success.get(), 1);
}

#[tokio::test]
async fn admin_writes_need_the_token() {
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    let text = file_config(&v1, &v2, 10, "");

    let open = start_with(&text, &[], None).await;
    let admin = open.admin_addr.unwrap();
    assert_eq!(put_rollout(admin, Some(TOKEN), r#"{"percentage": 50}"#).await.status, 403);
    assert_eq!(rollout_status(admin).await["percentage"], 10);
    assert_eq!(send(admin, "GET", "/metrics", &[], "").await.status, 200);
    assert_eq!(send(admin, "GET", "/healthz", &[], "").await.status, 200);
    assert_eq!(send(admin, "GET", "/readyz", &[], "").await.status, 200);

    let guarded = start_with(&text, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)], None).await;
    let admin = guarded.admin_addr.unwrap();
    assert_eq!(put_rollout(admin, None, r#"{"percentage": 50}"#).await.status, 401);
    assert_eq!(put_rollout(admin, Some("wrong"), r#"{"percentage": 50}"#).await.status, 401);
    assert_eq!(put_rollout(admin, Some(&format!("{TOKEN}x")), r#"{"percentage": 50}"#).await.status, 401);
    assert_eq!(rollout_status(admin).await["percentage"], 10);
    assert_eq!(put_rollout(admin, Some(TOKEN), r#"{"percentage": 101}"#).await.status, 400);
    assert_eq!(put_rollout(admin, Some(TOKEN), r#"{"percent": 5}"#).await.status, 400);
    assert_eq!(put_rollout(admin, Some(TOKEN), "not json").await.status, 400);
    let ok = put_rollout(admin, Some(TOKEN), r#"{"percentage": 50}"#).await;
    assert_eq!(ok.status, 200);
    let status = rollout_status(admin).await;
    assert_eq!((status["percentage"].as_u64(), status["source"].as_str()), (Some(50), Some("api")));
    let gauge = metrics_text(admin).await;
    assert!(gauge.contains("switchyard_rollout_percentage 50"));
}

#[tokio::test]
async fn an_unchanged_file_does_not_undo_an_api_change() {
    let Watched { text, path, admin, .. } = watched("precedence", 10, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]).await;
    assert_eq!(put_rollout(admin, Some(TOKEN), r#"{"percentage": 0}"#).await.status, 200);
    // Touch the file with another change that keeps the percentage.
    replace_file(&path, &text.replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 6"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = rollout_status(admin).await;
    assert!(status["generation"].as_u64().unwrap() >= 2, "the file change was not reloaded: {status}");
    assert_eq!((status["percentage"].as_u64(), status["source"].as_str()), (Some(0), Some("api")));
    replace_file(&path, &text.replace("percentage = 10", "percentage = 70"));
    wait_in_force(admin, 70).await;
    assert_eq!(rollout_status(admin).await["source"], "file");
}

#[tokio::test]
async fn other_files_in_the_directory_are_not_reloads() {
    let Watched { text, path, admin, .. } = watched("neighbours", 10, &[]).await;
    let generation = || async { rollout_status(admin).await["generation"].as_u64().unwrap() };
    let before = generation().await;
    // A log file beside the config, written to again and again.
    let log = path.with_file_name("switchyard.log");
    for i in 0..20 {
        std::fs::write(&log, format!("line {i}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(generation().await, before, "a log beside the config reloaded it");
    // The config itself still is watched.
    replace_file(&path, &text.replace("percentage = 10", "percentage = 30"));
    wait_in_force(admin, 30).await;
    assert!(generation().await > before);
}
