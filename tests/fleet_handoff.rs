//! Handoffs across a fleet (`[handoff]` with `[cluster]`), with real PostgreSQL and
//! real switchyard processes: every replica fences before the sync and all flip at
//! one generation; a replica that does not acknowledge aborts the handoff, one that
//! is gone past its lease does not block it, one that dies while fenced loses no
//! write; a replica that loses the store holds writes itself, and one that starts
//! without it starts that way.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::postgres::Postgres;
use support::process::{Serving, write_config};
use support::projects::{Projects, insert, projects};
use support::*;

const TOKEN: &str = "fleet-handoff-token";

/// A replica of the projects `p`, its fleet's store on `store`, with `extra` settings
/// (`[handoff]` keys first).
fn replica(p: &Projects, store: &Postgres, test: &str, id: &str, handoff: &str) -> std::path::PathBuf {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace_seconds = 2\n\
         [rollout]\npercentage = 10\n[guard]\nenabled = false\n[upstream]\ntimeout_seconds = 2\n\
         [cluster]\ndatabase_url = \"{}\"\nreplica_id = \"{id}\"\nheartbeat_seconds = 0.2\nlease_seconds = 1\n\
         startup_wait_seconds = 3\n\
         [handoff]\nenabled = true\n{handoff}\n[handoff.tables.note_tags]\nparent = \"notes\"\nkey = \"note_id\"\n\
         [translation.tables]\nnotes = \"content\"\nnote_tags = \"content\"\n\
         [backends.v1]\nurl = \"{}\"\ndatabase_url = \"{}\"\n[backends.v2]\nurl = \"{}\"\ndatabase_url = \"{}\"\n",
        store.url(),
        p.v1.url(),
        p.url("v1"),
        p.v2.url(),
        p.url("v2")
    );
    write_config(&format!("{test}-{id}"), &text)
}

fn start(path: &std::path::Path) -> Serving {
    Serving::start_with(path, &[("SWITCHYARD_ADMIN_TOKEN", TOKEN)])
}

fn admin(s: &Serving) -> SocketAddr {
    s.admin.expect("an admin listener")
}

async fn put(s: &Serving, percentage: u8) -> Got {
    put_rollout(admin(s), Some(TOKEN), &format!(r#"{{"percentage": {percentage}}}"#)).await
}

/// Waits (at most 15 s) until `ok` holds for every replica's rollout status.
async fn all(replicas: &[&Serving], what: &str, ok: impl Fn(&Value) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let mut states = Vec::new();
        for s in replicas {
            states.push(rollout_status(admin(s)).await);
        }
        if states.iter().all(&ok) {
            return states;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{what}: {states:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `s` reports a last handoff other than `since`; its status.
async fn ended(s: &Serving, since: &Value) -> Value {
    all(&[s], "a handoff ended", |v| {
        v["handoff"].is_null() && !v["last_handoff"].is_null() && v["last_handoff"] != *since
    })
    .await
    .remove(0)
}

fn mover() -> String {
    (0..).map(|i| format!("user-{i}")).find(|u| (10..50).contains(&percentile(u))).unwrap()
}

fn stayer() -> String {
    (0..).map(|i| format!("user-{i}")).find(|u| percentile(u) >= 50).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_fences_before_the_sync_and_all_flip_at_one_generation() {
    let Some(p) = projects("fleet-handoff").await else { return };
    let Some(store) = Postgres::start("fleet-handoff-store") else { return };
    let sync = "sync = \"command\"\ncommand = [\"sleep\", \"1.5\"]";
    let (a, b, c) = (
        start(&replica(&p, &store, "fh", "a", sync)),
        start(&replica(&p, &store, "fh", "b", sync)),
        start(&replica(&p, &store, "fh", "c", sync)),
    );
    let fleet = [&a, &b, &c];
    all(&fleet, "joined", |s| s["fleet"]["replicas"].as_array().is_some_and(|r| r.len() == 3)).await;

    assert_eq!(put(&a, 50).await.status, 202);
    // b fences for a's handoff: a band user's write through b is held, then goes to v2.
    all(&[&b], "b fenced", |s| s["handoff"]["phase"] == "fenced").await;
    let (user, other) = (mover(), stayer());
    let asked = Instant::now();
    let outside = insert(c.addr, &other, "outside the band").await;
    assert!(outside.status == 201 && asked.elapsed() < Duration::from_millis(500), "not held: {outside:?}");
    let held = insert(b.addr, &user, "through b").await;
    assert_eq!(held.status, 201, "{held:?}");
    assert!(asked.elapsed() >= Duration::from_millis(300), "held at b's fence");
    assert_eq!(p.notes("v2", &user).await.len(), 1, "released to the new side");
    assert!(p.notes("v1", &user).await.is_empty());

    let s = ended(&a, &Value::Null).await;
    assert_eq!(s["last_handoff"]["result"], "done", "{s:#}");
    let states = all(&fleet, "flipped", |s| s["percentage"] == 50 && s["handoff"].is_null()).await;
    let g = &states[0]["generation"];
    assert!(states.iter().all(|s| s["generation"] == *g), "one generation: {states:#?}");
    // One more flip: the states the fleet saw are exactly the start and the flip.
    assert_eq!(g.as_u64(), Some(2), "{states:#?}");
    // A change on one replica alone would leave the others unfenced.
    let auth = format!("Bearer {TOKEN}");
    let local =
        send(admin(&b), "PUT", "/admin/rollout?local=true", &[("authorization", &auth)], r#"{"percentage": 70}"#).await;
    assert_eq!(local.status, 409, "{local:?}");
    assert!(String::from_utf8_lossy(&local.body).contains("handoff"), "{local:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_do_not_acknowledge_abort_and_the_gone_do_not_block() {
    let Some(p) = projects("fleet-ack").await else { return };
    let Some(store) = Postgres::start("fleet-ack-store") else { return };
    // Gone after lease (1 s) + upstream timeout (2 s) + 1 s; a handoff waits 2.5 s.
    let sync = "sync = \"command\"\ncommand = [\"sleep\", \"0.2\"]\ntimeout_seconds = 2.5";
    let (a, b) = (start(&replica(&p, &store, "fa", "a", sync)), start(&replica(&p, &store, "fa", "b", sync)));
    let mut c = start(&replica(&p, &store, "fa", "c", sync));
    all(&[&a, &b, &c], "joined", |s| s["fleet"]["replicas"].as_array().is_some_and(|r| r.len() == 3)).await;

    // c stops answering (killed, no goodbye): within its lease it must acknowledge.
    c.child.kill().unwrap();
    let _ = c.child.wait();
    put(&a, 50).await;
    let s = ended(&a, &Value::Null).await;
    assert_eq!(s["last_handoff"]["result"], "aborted", "{s:#}");
    let error = s["last_handoff"]["error"].as_str().unwrap();
    assert!(error.contains("not acknowledged by c"), "{error}");
    let states = all(&[&a, &b], "released", |s| s["handoff"].is_null()).await;
    assert!(states.iter().all(|s| s["percentage"] == 10), "the percentage stays: {states:#?}");

    // Once c is past its lease and its last write's time, it no longer blocks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    put(&a, 50).await;
    let s = ended(&a, &s["last_handoff"]).await;
    assert_eq!(s["last_handoff"]["result"], "done", "{s:#}");
    all(&[&a, &b], "flipped", |s| s["percentage"] == 50).await;

    // b dies while fenced with a write held: the write is never made anywhere.
    let slow = "sync = \"command\"\ncommand = [\"sleep\", \"2\"]\ntimeout_seconds = 10";
    let mut b2 = start(&replica(&p, &store, "fa2", "b2", slow));
    let a2 = start(&replica(&p, &store, "fa2", "a2", slow));
    all(&[&a2, &b2], "joined", |s| s["fleet"]["replicas"].as_array().is_some_and(|r| r.len() >= 2)).await;
    let user = (0..).map(|i| format!("user-{i}")).find(|u| (50..60).contains(&percentile(u))).unwrap();
    let change = tokio::spawn({
        let addr = admin(&a2);
        async move { put_rollout(addr, Some(TOKEN), r#"{"percentage": 60}"#).await }
    });
    all(&[&b2], "b2 fenced", |s| s["handoff"]["phase"] == "fenced").await;
    let write = tokio::spawn({
        let (addr, user) = (b2.addr, user.clone());
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let doc = serde_json::json!({ "user_id": user, "body": "held then lost" }).to_string();
            let req = format!(
                "POST /rest/v1/notes HTTP/1.1\r\nhost: x\r\nx-user-id: {user}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{doc}",
                doc.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    b2.child.kill().unwrap();
    let _ = b2.child.wait();
    let answer = write.await.unwrap();
    assert!(answer.is_empty(), "the connection ends without an answer: {answer}");
    assert_eq!(change.await.unwrap().status, 202);
    let s = ended(&a2, &Value::Null).await;
    assert_eq!(s["last_handoff"]["result"], "done", "b2 had acknowledged: {s:#}");
    assert!(p.notes("v1", &user).await.is_empty() && p.notes("v2", &user).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_store_holds_writes_itself() {
    let Some(p) = projects("fleet-self").await else { return };
    let Some(store) = Postgres::start("fleet-self-store") else { return };
    let sync = "sync = \"command\"\ncommand = [\"true\"]\nmax_hold_seconds = 1";
    let a = start(&replica(&p, &store, "fs", "a", sync));
    all(&[&a], "joined", |s| s["fleet"]["connected"] == true).await;
    let user = stayer();
    assert_eq!(insert(a.addr, &user, "with the store").await.status, 201);

    store.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = Instant::now();
    let held = insert(a.addr, &user, "without the store").await;
    assert_eq!(held.status, 503, "{held:?}");
    assert!(held.headers.contains_key("retry-after"));
    assert!(asked.elapsed() >= Duration::from_millis(900), "held for max_hold first");
    assert_eq!(get_as(a.addr, &format!("/rest/v1/notes?user_id=eq.{user}"), &user).await.status, 200, "reads go on");
    // A replica that starts without the store starts holding writes.
    let b = start(&replica(&p, &store, "fs", "b", sync));
    assert_eq!(insert(b.addr, &user, "from a new replica").await.status, 503);
    assert_eq!(p.notes("v1", &user).await.len(), 1, "no write made without the store");

    store.resume();
    for s in [&a, &b] {
        let started = Instant::now();
        loop {
            if insert(s.addr, &user, "back").await.status == 201 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "writes flow again once the store is back");
        }
    }
    assert_eq!(p.notes("v1", &user).await.len(), 3);
}
