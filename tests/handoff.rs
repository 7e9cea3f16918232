//! Handoffs with real PostgreSQL: two databases shaped like the migration guide (v1's
//! tables in `public`, v2's in a domain schema), each behind a PostgREST-like
//! upstream, and switchyard moving bands of users between them with their writes.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::postgrest::postgrest;
use support::projects::{Projects, insert, projects};
use support::*;

const TOKEN: &str = "handoff-admin-token";

fn config(p: &Projects, percentage: u8, handoff: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[rollout]\npercentage = {percentage}\n\
         [guard]\nenabled = false\n\
         [handoff]\nenabled = true\n{handoff}\n[handoff.tables.note_tags]\nparent = \"notes\"\nkey = \"note_id\"\n\
         [translation.tables]\nnotes = \"content\"\nnote_tags = \"content\"\n\
         [backends.v1]\nurl = \"{}\"\ndatabase_url = \"{}\"\n[backends.v2]\nurl = \"{}\"\ndatabase_url = \"{}\"\n",
        p.v1.url(),
        p.url("v1"),
        p.v2.url(),
        p.url("v2")
    )
}

async fn put(admin: std::net::SocketAddr, percentage: u8) -> Got {
    put_rollout(admin, Some(TOKEN), &format!(r#"{{"percentage": {percentage}}}"#)).await
}

/// Waits (at most 30 s) until the last handoff ended and no other runs; its end.
async fn handoff_ended(admin: std::net::SocketAddr, since: Option<&Value>) -> Value {
    let started = Instant::now();
    loop {
        let s = rollout_status(admin).await;
        if s["handoff"].is_null() && !s["last_handoff"].is_null() && Some(&s["last_handoff"]) != since {
            return s;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no handoff ended: {s:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_move_with_their_writes_and_back() {
    let Some(p) = projects("handoff-move").await else { return };
    let sy = start_with(&config(&p, 0, "sync = \"postgres\""), &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)], None).await;
    let admin = sy.admin_addr.unwrap();
    let all = users(200);
    for u in &all {
        for n in ["first", "second"] {
            assert_eq!(insert(sy.addr, u, n).await.status, 201);
        }
        let first = p.notes("v1", u).await[0].0;
        let tag = json!({ "note_id": first, "tag": "t" }).to_string();
        let got = send(sy.addr, "POST", "/rest/v1/note_tags", &[("x-user-id", u)], &tag).await;
        assert_eq!(got.status, 201, "{:?}", got.body);
    }

    // Writers keep writing while the band moves: every acknowledged write must end on
    // the side that owns its user.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = all
        .iter()
        .filter(|u| percentile(u) < 50)
        .take(20)
        .cloned()
        .map(|u| {
            let (stop, addr) = (stop.clone(), sy.addr);
            tokio::spawn(async move {
                let mut acked = 0;
                for i in 0..500 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if insert(addr, &u, &format!("during-{i}")).await.status == 201 {
                        acked += 1;
                    }
                }
                (u, acked)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = put(admin, 50).await;
    assert!(got.status == 202 || got.status == 200, "{:?}", got.body);
    let s = handoff_ended(admin, None).await;
    assert_eq!(s["last_handoff"]["result"], "done", "{s:#}");
    assert_eq!(s["percentage"], 50);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked: HashMap<String, usize> = HashMap::new();
    for w in writers {
        let (u, n) = w.await.unwrap();
        acked.insert(u, n);
    }
    assert!(acked.values().sum::<usize>() > 0, "writes ran through the handoff");

    // Every user's owning side holds every write it acknowledged, once.
    for u in &all {
        let owner = if percentile(u) < 50 { "v2" } else { "v1" };
        let notes = p.notes(owner, u).await;
        assert_eq!(notes.len(), 2 + acked.get(u).copied().unwrap_or(0), "{u} on {owner}: {notes:?}");
        let seen = get_as(sy.addr, &format!("/rest/v1/notes?user_id=eq.{u}"), u).await;
        assert_eq!(seen.json().as_array().unwrap().len(), notes.len(), "{u} reads what it wrote");
    }
    let tags = p.client("v2").await.query_one("SELECT count(*) FROM content.note_tags", &[]).await.unwrap();
    let moved = all.iter().filter(|u| percentile(u) < 50).count() as i64;
    assert_eq!(tags.get::<_, i64>(0), moved, "child rows came with their parents");

    // Moved users edit and delete on v2; a rollback to 20 carries that back to v1.
    let back: Vec<&String> = all.iter().filter(|u| (20..50).contains(&percentile(u))).collect();
    for u in &back {
        let notes = p.notes("v2", u).await;
        let patch = send(
            sy.addr,
            "PATCH",
            &format!("/rest/v1/notes?id=eq.{}", notes[0].0),
            &[("x-user-id", u)],
            r#"{"body":"edited"}"#,
        )
        .await;
        assert_eq!(patch.status, 200);
        for (id, _) in &notes[1..] {
            assert_eq!(
                send(sy.addr, "DELETE", &format!("/rest/v1/notes?id=eq.{id}"), &[("x-user-id", u)], "").await.status,
                200
            );
        }
    }
    let before = s["last_handoff"].clone();
    assert!(matches!(put(admin, 20).await.status.as_u16(), 200 | 202));
    let s = handoff_ended(admin, Some(&before)).await;
    assert_eq!((s["last_handoff"]["result"].as_str(), s["percentage"].as_u64()), (Some("done"), Some(20)), "{s:#}");
    for u in &back {
        let notes = p.notes("v1", u).await;
        assert_eq!(
            notes.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
            ["edited"],
            "{u}: updates and deletes came back"
        );
    }
    let text = metrics_text(admin).await;
    assert_eq!(metric(&text, "switchyard_handoffs_total", "result=\"done\""), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_aborts_and_held_writes_go_to_the_old_side() {
    let Some(p) = projects("handoff-abort").await else { return };
    let sy = start_with(
        &config(&p, 0, "sync = \"command\"\ncommand = [\"sh\", \"-c\", \"sleep 0.5; exit 3\"]"),
        &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)],
        None,
    )
    .await;
    let admin = sy.admin_addr.unwrap();
    let mover = users(400).into_iter().find(|u| percentile(u) < 50).unwrap();
    let stayer = users(400).into_iter().find(|u| percentile(u) >= 50).unwrap();
    let change = tokio::spawn(async move { put(admin, 50).await });
    // Wait for the fence, then write from inside and outside the band.
    let started = Instant::now();
    while rollout_status(admin).await["handoff"].is_null() {
        assert!(started.elapsed() < Duration::from_secs(5), "no handoff started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outside = Instant::now();
    assert_eq!(insert(sy.addr, &stayer, "outside").await.status, 201);
    assert!(outside.elapsed() < Duration::from_millis(300), "a user outside the band is not held");
    let held = insert(sy.addr, &mover, "held").await;
    assert_eq!(held.status, 201, "released to the old side after the abort");
    assert!(matches!(change.await.unwrap().status.as_u16(), 202 | 409));
    let s = handoff_ended(admin, None).await;
    assert_eq!(s["last_handoff"]["result"], "aborted");
    assert!(s["last_handoff"]["error"].as_str().unwrap().contains("failed"), "{s:#}");
    assert_eq!(s["percentage"], 0, "the percentage stays");
    assert_eq!(p.notes("v1", &mover).await.len(), 1, "the held write went to v1, once");
    assert!(p.notes("v2", &mover).await.is_empty());
    assert_eq!(metric(&metrics_text(admin).await, "switchyard_handoffs_total", "result=\"aborted\""), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_too_long_is_refused_and_never_made() {
    let Some(p) = projects("handoff-hold").await else { return };
    let handoff = "sync = \"command\"\ncommand = [\"sleep\", \"3\"]\nmax_hold_seconds = 1\ntimeout_seconds = 20";
    let sy = start_with(&config(&p, 0, handoff), &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)], None).await;
    let admin = sy.admin_addr.unwrap();
    let mover = users(400).into_iter().find(|u| percentile(u) < 50).unwrap();
    tokio::spawn(async move { put(admin, 50).await });
    let started = Instant::now();
    while rollout_status(admin).await["handoff"].is_null() {
        assert!(started.elapsed() < Duration::from_secs(5), "no handoff started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    let refused = insert(sy.addr, &mover, "too late").await;
    assert_eq!(refused.status, 503);
    assert!(asked.elapsed() >= Duration::from_millis(900), "held first");
    assert!(refused.headers.contains_key("retry-after"));
    let body = refused.json();
    assert!(
        body["code"].is_string() && body["message"].is_string() && body.get("hint").is_some(),
        "PostgREST's shape: {body}"
    );
    // Reads go on to the old side meanwhile.
    assert_eq!(get_as(sy.addr, &format!("/rest/v1/notes?user_id=eq.{mover}"), &mover).await.status, 200);
    let s = handoff_ended(admin, None).await;
    assert_eq!((s["last_handoff"]["result"].as_str(), s["percentage"].as_u64()), (Some("done"), Some(50)));
    assert!(p.notes("v1", &mover).await.is_empty() && p.notes("v2", &mover).await.is_empty(), "never forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_which_tables_a_handoff_carries() {
    let Some(p) = projects("handoff-check").await else { return };
    p.client("v1").await.batch_execute("CREATE TABLE public.countries (code text)").await.unwrap();
    p.client("v2").await.batch_execute("CREATE TABLE content.countries (code text)").await.unwrap();
    let text = config(&p, 0, "sync = \"postgres\"")
        .replace("note_tags = \"content\"", "note_tags = \"content\"\ncountries = \"content\"");
    let path = support::process::write_config("handoff-check", &text);
    let out = support::process::run(&["check", "--config", path.to_str().unwrap()], &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("handoff: moves the rows of note_tags, notes with their users"), "{said}");
    assert!(said.contains("handoff: does NOT move countries"), "{said}");
    assert!(!said.contains(&p.url("v1")), "the URL is never printed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_side_that_is_down_aborts_before_anything_is_held() {
    let Some(p) = projects("handoff-down").await else { return };
    // v2's database takes connections and never answers: the pre-copy hangs until
    // the handoff's timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let text = config(&p, 0, "sync = \"postgres\"\ntimeout_seconds = 3")
        .replace(&p.url("v2"), &format!("postgresql://postgres@127.0.0.1:{port}/v2"));
    let sy = start_with(&text, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)], None).await;
    let admin = sy.admin_addr.unwrap();
    let mover = users(400).into_iter().find(|u| percentile(u) < 50).unwrap();
    let change = tokio::spawn(async move { put(admin, 50).await });
    let started = Instant::now();
    while rollout_status(admin).await["handoff"]["phase"] != "precopy" {
        assert!(started.elapsed() < Duration::from_secs(5), "no handoff started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    assert_eq!(insert(sy.addr, &mover, "during the pre-copy").await.status, 201);
    assert!(asked.elapsed() < Duration::from_secs(1), "not held before the fence");
    assert!(matches!(change.await.unwrap().status.as_u16(), 202 | 409));
    let s = handoff_ended(admin, None).await;
    assert_eq!((s["last_handoff"]["result"].as_str(), s["percentage"].as_u64()), (Some("aborted"), Some(0)), "{s:#}");
    assert!(s["last_handoff"]["error"].as_str().unwrap().contains("timeout"), "{s:#}");
    assert_eq!(p.notes("v1", &mover).await.len(), 1);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_held_leaves_nothing() {
    use tokio::io::AsyncWriteExt;
    let Some(p) = projects("handoff-leave").await else { return };
    let text = config(&p, 0, "sync = \"command\"\ncommand = [\"sh\", \"-c\", \"sleep 1; exit 1\"]");
    let sy = start_with(&text, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)], None).await;
    let admin = sy.admin_addr.unwrap();
    let movers: Vec<String> = users(400).into_iter().filter(|u| percentile(u) < 50).take(2).collect();
    let change = tokio::spawn(async move { put(admin, 50).await });
    let started = Instant::now();
    while rollout_status(admin).await["handoff"].is_null() {
        assert!(started.elapsed() < Duration::from_secs(5), "no handoff started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A client whose write is held, then who leaves.
    let mut s = tokio::net::TcpStream::connect(sy.addr).await.unwrap();
    let doc = json!({ "user_id": movers[0], "body": "left" }).to_string();
    let req = format!(
        "POST /rest/v1/notes HTTP/1.1\r\nhost: x\r\nx-user-id: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{doc}",
        movers[0],
        doc.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(s);
    let stayed = insert(sy.addr, &movers[1], "stayed").await;
    assert!(matches!(change.await.unwrap().status.as_u16(), 202 | 409));
    let s = handoff_ended(admin, None).await;
    assert_eq!((s["last_handoff"]["result"].as_str(), s["percentage"].as_u64()), (Some("aborted"), Some(0)), "{s:#}");
    // The write whose client stayed went to the old side once; the one whose client
    // left was never made.
    assert_eq!(stayed.status, 201);
    assert_eq!(p.notes("v1", &movers[1]).await.len(), 1);
    assert!(p.notes("v1", &movers[0]).await.is_empty() && p.notes("v2", &movers[0]).await.is_empty());
}

/// Reads as `readers` until the guard has tripped (at most 20 s).
async fn tripped(admin: std::net::SocketAddr, sy: std::net::SocketAddr, readers: &[&String]) {
    let started = Instant::now();
    while rollout_status(admin).await["guard_tripped"].is_null() {
        assert!(started.elapsed() < Duration::from_secs(20), "the guard never tripped");
        for r in readers {
            get_as(sy, "/rest/v1/notes", r).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_pins_move_with_their_data_and_pinned_users_stay_out_of_bands() {
    let Some(p) = projects("handoff-pins").await else { return };
    let all = users(400);
    let low: Vec<&String> = all.iter().filter(|u| percentile(u) < 50).collect();
    let (pinned, mover) = (low[0].clone(), all.iter().find(|u| percentile(u) >= 50).unwrap().clone());
    let text = |pins: &str| {
        config(&p, 0, "sync = \"postgres\"")
            .replace("[server]\n", "[server]\nwatch_config = false\n")
            .replace("[handoff]\n", &format!("[overrides]\n{pins}\n[handoff]\n"))
    };
    let pins = format!("v1 = [\"{pinned}\"]");
    let path = support::process::write_config("handoff-pins", &text(&pins));
    let sy = start_with(&text(&pins), &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)], Some(path.clone())).await;
    let admin = sy.admin_addr.unwrap();
    for u in [&pinned, &mover] {
        assert_eq!(insert(sy.addr, u, "before").await.status, 201);
    }

    // Pinning `mover` to v2 moves their rows with them.
    std::fs::write(&path, text(&format!("{pins}\nv2 = [\"{mover}\"]"))).unwrap();
    sy.control.reload("test").await.unwrap();
    let s = handoff_ended(admin, None).await;
    assert_eq!(s["last_handoff"]["result"], "done", "{s:#}");
    assert_eq!(s["last_handoff"]["band"]["users"], json!([mover]), "{s:#}");
    assert_eq!(p.notes("v2", &mover).await.len(), 1, "the pinned user's rows came along");
    assert_eq!(insert(sy.addr, &mover, "on v2").await.status, 201);
    assert_eq!(p.notes("v2", &mover).await.len(), 2, "and their writes go to v2");

    // A band never carries a user pinned where they are: at 50 and back to 0, the
    // user pinned to v1 keeps what they wrote on v1 meanwhile.
    // (Through Control: the reloads read the admin token from the real environment.)
    sy.control.set_percentage(50, switchyard::control::Commit::Once).await.unwrap();
    let s = handoff_ended(admin, Some(&s["last_handoff"])).await;
    assert_eq!(s["last_handoff"]["result"], "done", "{s:#}");
    assert!(p.notes("v2", &pinned).await.is_empty(), "not copied to v2");
    assert_eq!(insert(sy.addr, &pinned, "while others are on v2").await.status, 201);
    sy.control.set_percentage(0, switchyard::control::Commit::Once).await.unwrap();
    let s = handoff_ended(admin, Some(&s["last_handoff"])).await;
    assert_eq!(s["last_handoff"]["result"], "done", "{s:#}");
    assert_eq!(p.notes("v1", &pinned).await.len(), 2, "not overwritten from v2");

    // Unpinning moves the user back, with what they wrote on v2.
    std::fs::write(&path, text(&pins)).unwrap();
    sy.control.reload("test").await.unwrap();
    let s = handoff_ended(admin, Some(&s["last_handoff"])).await;
    assert_eq!((s["last_handoff"]["result"].as_str(), &s["last_handoff"]["band"]["to"]), (Some("done"), &json!("v1")));
    assert_eq!(p.notes("v1", &mover).await.len(), 2, "back with their v2 write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_rollback_names_the_users_it_left_behind() {
    let Some(p) = projects("handoff-forced").await else { return };
    let failing = Arc::new(AtomicBool::new(false));
    let v2 = postgrest(&p.url("v2"), failing.clone()).await;
    // The sync carries users to v2 and cannot carry them back.
    let sync = "sync = \"command\"\ncommand = [\"sh\", \"-c\", \"test \\\"$SWITCHYARD_TO\\\" = v2\"]";
    let text = config(&p, 0, sync)
        .replace(&p.v2.url(), &v2.url())
        .replace("[guard]\nenabled = false\n", "[guard]\nwindow_seconds = 10\nmin_requests = 20\n");
    let sy = start_with(&text, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)], None).await;
    let admin = sy.admin_addr.unwrap();
    assert!(matches!(put(admin, 50).await.status.as_u16(), 200 | 202));
    let s = handoff_ended(admin, None).await;
    assert_eq!(s["last_handoff"]["result"], "done", "{s:#}");
    let all = users(400);
    let (moved, stayed): (Vec<&String>, Vec<&String>) = all.iter().partition(|u| percentile(u) < 50);
    let wrote: Vec<String> = moved.iter().take(5).map(|u| u.to_string()).collect();
    for u in wrote.iter().map(String::as_str).chain([stayed[0].as_str()]) {
        assert_eq!(insert(sy.addr, u, "written on v2 or v1").await.status, 201);
    }
    failing.store(true, Ordering::Relaxed);
    let readers: Vec<&String> = moved[10..30].iter().chain(&stayed[..20]).copied().collect();
    tripped(admin, sy.addr, &readers).await;
    let s = handoff_ended(admin, Some(&s["last_handoff"])).await;
    let forced = &s["last_handoff"];
    assert_eq!(forced["result"], "forced", "{s:#}");
    let mut want = wrote.clone();
    want.sort();
    assert_eq!(forced["stranded"]["users"], json!(want), "exactly the users who wrote on v2: {s:#}");
    assert_eq!(forced["stranded"]["count"], 5);
    assert_eq!(s["stranded"]["users"], json!(want), "kept until the guard is cleared");
    let text = metrics_text(admin).await;
    assert_eq!(metric(&text, "switchyard_handoff_stranded_users_total", ""), 5.0);
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(send(admin, "POST", "/admin/guard/clear", &[("authorization", &auth)], "").await.status, 200);
    assert!(rollout_status(admin).await["stranded"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fenced_pass_carries_only_what_changed_since_the_precopy() {
    let Some(p) = projects("handoff-delta").await else { return };
    let text = config(&p, 0, "sync = \"postgres\"");
    let cfg = switchyard::config::Config::parse(&text, &|_| None).unwrap();
    let h = cfg.handoff.clone().unwrap();
    let band = switchyard::routing::band::Band::between(0, 100).unwrap();
    let v1 = p.client("v1").await;
    v1.batch_execute(
        "INSERT INTO notes (user_id, body) SELECT 'u' || (g % 50), 'n' || g FROM generate_series(1, 500) g;
         INSERT INTO note_tags (note_id, tag) SELECT id, 't' FROM notes WHERE id % 10 = 0;",
    )
    .await
    .unwrap();
    let pre = switchyard::handoff::sync::postgres(&cfg, &h, &band).await.unwrap();
    assert_eq!(pre.precopied, 550);
    let prepared = switchyard::handoff::delta::prepare(&cfg, &h, &band).await.unwrap();
    // The band writes on: an insert, an update, a delete, a new child, a deleted child.
    v1.batch_execute(
        "INSERT INTO notes (user_id, body) VALUES ('u1', 'late');
         UPDATE notes SET body = 'edited' WHERE id = 7;
         DELETE FROM note_tags WHERE note_id = 20; DELETE FROM notes WHERE id = 20;
         INSERT INTO note_tags (note_id, tag) VALUES (30, 'second');",
    )
    .await
    .unwrap();
    let fenced = switchyard::handoff::delta::carry(prepared).await.unwrap();
    assert_eq!((fenced.rows, fenced.deleted), (3, 3), "{fenced:?}");
    let dump = |c: tokio_postgres::Client, schema: &'static str| async move {
        let q = format!(
            "SELECT (SELECT string_agg(n::text, ',' ORDER BY id) FROM {schema}.notes n), \
             (SELECT string_agg(t::text, ',' ORDER BY id) FROM {schema}.note_tags t)"
        );
        let row = c.query_one(&q, &[]).await.unwrap();
        (row.get::<_, String>(0), row.get::<_, String>(1))
    };
    assert_eq!(dump(v1, "public").await, dump(p.client("v2").await, "content").await);
    let prepared = switchyard::handoff::delta::prepare(&cfg, &h, &band).await.unwrap();
    let again = switchyard::handoff::delta::carry(prepared).await.unwrap();
    assert_eq!((again.rows, again.deleted), (0, 0), "nothing left to carry");
}
