//! Fleet mode (`[cluster]`) with a real PostgreSQL and real switchyard processes: one
//! rollout state for every replica, changes committed as compare-and-sets and
//! applied everywhere through LISTEN/NOTIFY, the guard's trips fleet-wide, the
//! schedule stepping once for the fleet, and a store that goes away and comes back.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::postgres::Postgres;
use support::process::{Serving, write_config};
use support::*;

const TOKEN: &str = "fleet-admin-token";

/// A replica's config: `extra` appended (it may add tables).
fn replica(pg: &Postgres, v1: &Upstream, v2: &Upstream, id: &str, extra: &str) -> String {
    let cluster = format!(
        "[cluster]\ndatabase_url = \"{}\"\nreplica_id = \"{id}\"\nheartbeat_seconds = 0.5\nstartup_wait_seconds = 5\n",
        pg.url()
    );
    config_text(&v1.url(), &v2.url(), 10, &format!("{cluster}{extra}"))
}

/// `n` replicas as processes, named a, b, c….
fn replicas(pg: &Postgres, v1: &Upstream, v2: &Upstream, test: &str, n: usize, extra: &str) -> Vec<Serving> {
    (0..n)
        .map(|i| {
            let id = ["a", "b", "c"][i];
            let path = write_config(&format!("{test}-{id}"), &replica(pg, v1, v2, id, extra));
            Serving::start_with(&path, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)])
        })
        .collect()
}

fn admin(s: &Serving) -> SocketAddr {
    s.admin.expect("an admin listener")
}

async fn write(s: &Serving, method: &str, path: &str, body: &str) -> Got {
    let auth = format!("Bearer {TOKEN}");
    send(admin(s), method, path, &[("authorization", &auth)], body).await
}

/// Waits (at most 10 s) until every replica's rollout satisfies `ok`; their states.
async fn converged(all: &[Serving], what: &str, ok: impl Fn(&Value) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let mut states = Vec::new();
        for s in all {
            states.push(rollout_status(admin(s)).await);
        }
        if states.iter().all(&ok) {
            return states;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: not converged: {states:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn same_generation(states: &[Value]) -> u64 {
    let g = states[0]["generation"].as_u64().unwrap();
    assert!(states.iter().all(|s| s["generation"] == states[0]["generation"]), "{states:#?}");
    g
}

/// A user whose percentile is `p`.
fn user_at(p: u8) -> String {
    (0..).map(|i| format!("user-{i}")).find(|u| percentile(u) == p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_is_in_force_on_every_replica() {
    let Some(pg) = Postgres::start("change") else { return };
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let all = replicas(&pg, &v1, &v2, "change", 3, "");
    let states = converged(&all, "start", |s| s["fleet"]["replicas"].as_array().is_some_and(|r| r.len() == 3)).await;
    assert!(states.iter().all(|s| s["percentage"] == 10 && s["fleet"]["connected"] == true));
    let start = same_generation(&states);

    // A PUT on a: in force on b and c, and routed by there.
    assert_eq!(write(&all[0], "PUT", "/admin/rollout", r#"{"percentage": 40}"#).await.status, 200);
    let states = converged(&all, "PUT", |s| s["percentage"] == 40).await;
    assert_eq!(same_generation(&states), start + 1);
    let (moved, stays) = (user_at(35), user_at(45));
    assert_eq!(get_as(all[2].addr, "/rest/v1/t", &moved).await.backend(), "v2");
    assert_eq!(get_as(all[2].addr, "/rest/v1/t", &stays).await.backend(), "v1");
    // Each replica reports what it applied; the metrics say the same.
    let states = converged(&all, "heartbeats", |s| {
        s["fleet"]["replicas"].as_array().unwrap().iter().all(|r| r["applied_generation"] == start + 1)
    })
    .await;
    assert_eq!(states[1]["source"], "api");
    for s in &all {
        let text = metrics_text(admin(s)).await;
        assert_eq!(metric(&text, "switchyard_cluster_generation", ""), (start + 1) as f64);
        assert_eq!(metric(&text, "switchyard_cluster_connected", ""), 1.0);
        assert_eq!(metric(&text, "switchyard_cluster_replicas", ""), 3.0);
    }

    // Two operators at once, on b and c: both end on one winner; a loser is told so
    // with the winning state.
    let (b, c) = tokio::join!(
        write(&all[1], "PUT", "/admin/rollout", r#"{"percentage": 70}"#),
        write(&all[2], "PUT", "/admin/rollout", r#"{"percentage": 20}"#)
    );
    for got in [&b, &c] {
        assert!(got.status == 200 || got.status == 409, "{:?}", got.status);
        if got.status == 409 {
            let winner = &got.json()["rollout"]["percentage"];
            assert!(winner == 70 || winner == 20, "{winner}");
        }
    }
    let states = converged(&all, "concurrent PUTs", |s| s["percentage"] == 70 || s["percentage"] == 20).await;
    let g = same_generation(&states);
    assert!(states.iter().all(|s| s["percentage"] == states[0]["percentage"]), "{states:#?}");
    let committed = [&b, &c].iter().filter(|g| g.status == 200).count() as u64;
    assert_eq!(g, start + 1 + committed, "every committed change is one generation, none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_trip_on_one_replica_rolls_the_whole_fleet_back() {
    let Some(pg) = Postgres::start("trip") else { return };
    let v1 = echo("v1").await;
    let v2 = upstream(|_req| async { http::Response::builder().status(500).body(full("{}")).unwrap() }).await;
    let all = replicas(&pg, &v1, &v2, "trip", 3, "[guard]\nwindow_seconds = 30\nmin_requests = 20\n");
    converged(&all, "start", |s| s["fleet"]["replicas"].as_array().is_some_and(|r| r.len() == 3)).await;
    assert_eq!(write(&all[0], "PUT", "/admin/rollout", r#"{"percentage": 50}"#).await.status, 200);
    converged(&all, "PUT", |s| s["percentage"] == 50).await;
    // Only b sees v2 fail (only b gets traffic).
    let calls = (0..120).map(|i| {
        let addr = all[1].addr;
        async move { get_as(addr, "/rest/v1/items", &format!("t-{i}")).await.status }
    });
    futures_util::future::join_all(calls).await;
    let states = converged(&all, "trip", |s| s["percentage"] == 0 && !s["guard_tripped"].is_null()).await;
    assert!(states.iter().all(|s| s["source"] == "guard"));
    assert_eq!(states[0]["guard_tripped"]["from_percentage"], 50);
    // Held fleet-wide until cleared: a raise on a is refused.
    assert_eq!(write(&all[0], "PUT", "/admin/rollout", r#"{"percentage": 60}"#).await.status, 409);
    assert_eq!(write(&all[2], "POST", "/admin/guard/clear", "").await.status, 200);
    converged(&all, "clear", |s| s["guard_tripped"].is_null()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_steps_once_for_the_fleet() {
    let Some(pg) = Postgres::start("schedule") else { return };
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let all = replicas(&pg, &v1, &v2, "schedule", 3, "[rollout.schedule]\nsteps = [10, 20, 30]\nhold_seconds = 1\n");
    let states = converged(&all, "schedule", |s| s["percentage"] == 30).await;
    // The seed, the start and two steps: one generation each, whatever the replicas.
    assert_eq!(same_generation(&states), 4, "{states:#?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let states = converged(&all, "after", |s| s["percentage"] == 30).await;
    assert_eq!(same_generation(&states), 4, "nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_replicas_route_on_and_catch_up_when_it_returns() {
    let Some(pg) = Postgres::start("down") else { return };
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let all = replicas(&pg, &v1, &v2, "down", 2, "");
    assert_eq!(write(&all[0], "PUT", "/admin/rollout", r#"{"percentage": 40}"#).await.status, 200);
    converged(&all, "PUT", |s| s["percentage"] == 40).await;

    pg.stop();
    converged(&all, "disconnected", |s| s["fleet"]["connected"] == false).await;
    let moved = user_at(35);
    for s in &all {
        assert_eq!(get_as(s.addr, "/rest/v1/t", &moved).await.backend(), "v2", "routing on the last state");
        let ready = send(admin(s), "GET", "/readyz", &[], "").await;
        assert_eq!(ready.status, 200, "still ready");
        assert_eq!(ready.json()["cluster"]["degraded"], true);
        assert_eq!(metric(&metrics_text(admin(s)).await, "switchyard_cluster_connected", ""), 0.0);
    }
    let refused = write(&all[0], "PUT", "/admin/rollout", r#"{"percentage": 60}"#).await;
    assert_eq!(refused.status, 503);
    assert!(refused.json()["error"].as_str().unwrap().contains("local=true"));
    assert!(refused.headers.contains_key("retry-after"));
    // Asked for explicitly: this replica alone, shown as such.
    let local = write(&all[0], "PUT", "/admin/rollout?local=true", r#"{"percentage": 5}"#).await;
    assert_eq!(local.status, 200);
    assert_eq!(local.json()["local_only"], true);
    assert_eq!(rollout_status(admin(&all[1])).await["percentage"], 40, "the other replica is untouched");

    pg.resume();
    converged(&all, "reconnected", |s| s["fleet"]["connected"] == true).await;
    assert_eq!(write(&all[1], "PUT", "/admin/rollout", r#"{"percentage": 50}"#).await.status, 200);
    let states = converged(&all, "caught up", |s| s["percentage"] == 50).await;
    same_generation(&states);
    assert!(states.iter().all(|s| s["local_only"].is_null()), "the fleet's change replaced the local one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_state_row_is_refused_and_reported() {
    let Some(pg) = Postgres::start("corrupt") else { return };
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let all = replicas(&pg, &v1, &v2, "corrupt", 1, "");
    assert_eq!(write(&all[0], "PUT", "/admin/rollout", r#"{"percentage": 30}"#).await.status, 200);
    let counted =
        || async { metric(&metrics_text(admin(&all[0])).await, "switchyard_cluster_invalid_state_total", "") };
    for bad in ["250", "\"many\""] {
        let before = counted().await;
        pg.execute(&format!(
            "UPDATE switchyard.rollout SET state = jsonb_set(state, '{{percentage}}', '{bad}'), \
             generation = generation + 1; NOTIFY switchyard_rollout;"
        ))
        .await;
        // Counted first (the error text stays from the first bad row, so it cannot
        // tell the second one has been read).
        let started = Instant::now();
        while counted().await <= before {
            assert!(started.elapsed() < Duration::from_secs(10), "bad row {bad} not counted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let states =
            converged(&all, "reported", |s| s["fleet"]["last_error"].as_str().is_some_and(|e| e.contains("refused")))
                .await;
        assert_eq!(states[0]["percentage"], 30, "never applied");
        pg.execute("UPDATE switchyard.rollout SET state = jsonb_set(state, '{percentage}', '30')").await;
    }
}

#[test]
fn check_reports_a_bad_store_by_its_key_and_never_prints_the_url() {
    let Some(pg) = Postgres::start("check") else { return };
    let base = |url: &str| {
        format!(
            "[backends.v1]\nurl = \"http://127.0.0.1:1\"\n[backends.v2]\nurl = \"http://127.0.0.1:2\"\n\
             [cluster]\ndatabase_url = \"{url}\"\n"
        )
    };
    let good = write_config("check-good", &base(&pg.url()));
    let out = support::process::run(&["check", "--config", good.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fleet store"));
    let missing_db = format!("postgresql://postgres:s3cret-pw@127.0.0.1:{}/no_such_db", pg.port);
    for (name, url) in
        [("check-db", missing_db.as_str()), ("check-syntax", "postgresql://postgres:s3cret-pw@127.0.0.1:x/db")]
    {
        let bad = write_config(name, &base(url));
        let out = support::process::run(&["check", "--config", bad.to_str().unwrap()], &[]);
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{all}");
        assert!(all.contains("cluster.database_url"), "{all}");
        assert!(!all.contains("s3cret-pw"), "the URL was printed: {all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_without_the_store_adopt_the_fleet_when_it_comes_and_restarts_resume_it() {
    let Some(pg) = Postgres::start("restart") else { return };
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let mut all = replicas(&pg, &v1, &v2, "restart", 2, "");
    assert_eq!(write(&all[0], "PUT", "/admin/rollout", r#"{"percentage": 40}"#).await.status, 200);
    converged(&all, "PUT", |s| s["percentage"] == 40).await;
    // b restarts mid-rollout: it comes back at the fleet's 40, not its file's 10.
    drop(all.pop());
    let path = write_config("restart-b", &replica(&pg, &v1, &v2, "b", ""));
    all.push(Serving::start_with(&path, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]));
    let b = rollout_status(admin(&all[1])).await;
    assert_eq!(b["percentage"], 40, "read before serving: {b:#}");

    // With the store down, a new replica waits startup_wait_seconds, then serves from
    // its file, degraded; it adopts the fleet's state once the store is back.
    pg.stop();
    let text = replica(&pg, &v1, &v2, "c", "").replace("startup_wait_seconds = 5", "startup_wait_seconds = 1");
    let path = write_config("restart-c", &text);
    let started = Instant::now();
    let c = Serving::start_with(&path, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]);
    assert!(started.elapsed() >= Duration::from_millis(900), "waited for the store first");
    let s = rollout_status(admin(&c)).await;
    assert_eq!((s["percentage"].as_u64(), s["fleet"]["degraded"].as_bool()), (Some(10), Some(true)), "{s:#}");
    pg.resume();
    converged(std::slice::from_ref(&c), "adopted", |s| s["percentage"] == 40 && s["fleet"]["degraded"] == false).await;
}

/// Load through every replica while 50 changes come from files and from the API on
/// each replica: no client request fails, and every replica ends on the last change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mixed_changes_under_load_lose_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let Some(pg) = Postgres::start("load") else { return };
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let all = replicas(&pg, &v1, &v2, "load", 3, "");
    let a_file = support::process::test_dir("load-a").join("switchyard.toml");
    let a_text = std::fs::read_to_string(&a_file).unwrap();
    converged(&all, "start", |s| s["fleet"]["replicas"].as_array().is_some_and(|r| r.len() == 3)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let addrs: Vec<SocketAddr> = all.iter().map(|s| s.addr).collect();
    let load: Vec<_> = (0..4)
        .map(|w| {
            let (stop, sent, failed, addrs) = (stop.clone(), sent.clone(), failed.clone(), addrs.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                // Bounded in count and time.
                for i in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(90) {
                        break;
                    }
                    let got = get_as(addrs[i % addrs.len()], "/rest/v1/t", &format!("w{w}-{i}")).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if got.status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let mut refused = 0;
    for i in 0..50u8 {
        match i % 3 {
            // The file of replica a, edited (each edit a new percentage).
            0 => {
                std::fs::write(&a_file, a_text.replace("percentage = 10", &format!("percentage = {}", 50 + i))).unwrap()
            }
            n => {
                let body = format!(r#"{{"percentage": {i}}}"#);
                let got = write(&all[n as usize], "PUT", "/admin/rollout", &body).await;
                assert!(got.status == 200 || got.status == 409, "{:?}", got.status);
                refused += usize::from(got.status == 409);
            }
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // The last word, once the file's last edit is in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(write(&all[1], "PUT", "/admin/rollout", r#"{"percentage": 77}"#).await.status, 200);
    let states = converged(&all, "final", |s| s["percentage"] == 77).await;
    same_generation(&states);
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 100, "load ran: {sent}");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    eprintln!("{sent} requests, {refused} changes refused as concurrent");
}

/// A database that speaks TLS, as Supabase's does: trusted through `cluster.ca_file`
/// with `sslmode=require`; without that CA the connection is refused, by the key.
#[test]
fn the_store_is_reached_over_tls_with_the_configured_ca() {
    let (ca_pem, cert, key) = localhost_certificate();
    let Some(pg) = Postgres::start_with("tls", Some((&cert.pem(), &key.serialize_pem()))) else { return };
    let dir = support::process::test_dir("tls-ca");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let url = format!("postgresql://postgres@localhost:{}/postgres?sslmode=require&hostaddr=127.0.0.1", pg.port);
    let text = |ca: &str| {
        format!(
            "[backends.v1]\nurl = \"http://127.0.0.1:1\"\n[backends.v2]\nurl = \"http://127.0.0.1:2\"\n\
             [cluster]\ndatabase_url = \"{url}\"\n{ca}"
        )
    };
    let trusted = write_config("tls-trusted", &text(&format!("ca_file = \"{}\"\n", ca_path.display())));
    let out = support::process::run(&["check", "--config", trusted.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let untrusted = write_config("tls-untrusted", &text(""));
    let out = support::process::run(&["check", "--config", untrusted.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster.database_url"));
}

/// `switchyard rollout`, as an operator runs it against any replica.
#[test]
fn the_rollout_command_reads_and_changes_the_fleet_through_any_replica() {
    use support::process::run;
    let Some(pg) = Postgres::start("cli") else { return };
    let text = |id: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [backends.v1]\nurl = \"http://127.0.0.1:1\"\n[backends.v2]\nurl = \"http://127.0.0.1:2\"\n\
             [cluster]\ndatabase_url = \"{}\"\nreplica_id = \"{id}\"\nheartbeat_seconds = 0.5\n",
            pg.url()
        )
    };
    let a = Serving::start_with(&write_config("cli-a", &text("a")), &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]);
    let b = Serving::start_with(&write_config("cli-b", &text("b")), &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]);
    let url = |s: &Serving| format!("http://{}", admin(s));
    let out = run(&["rollout", "set", "30", "--admin", &url(&a)], &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rollout: 30% to v2 (from api)"));
    let started = Instant::now();
    loop {
        let out = run(&["rollout", "status", "--json", "--admin", &url(&b)], &[]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["percentage"] == 30 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "b never applied it: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run(&["rollout", "status", "--admin", &url(&b)], &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("fleet: connected, this replica b"), "{shown}");
    // Without the token: refused, saying what is missing.
    let out = run(&["rollout", "pause", "--admin", &url(&b)], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SWITCHYARD_ADMIN_TOKEN"));
    // No schedule to pause: the API's reason.
    let out = run(&["rollout", "pause", "--admin", &url(&b)], &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [rollout.schedule]"));
}
