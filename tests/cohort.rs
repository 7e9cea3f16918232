//! `switchyard cohort` against a real PostgreSQL: the predicate selects exactly the
//! users the proxy's rule moves (the 2,000 reference vectors, with and without a
//! seed), and `cohort count` counts each mapped table's moving rows.

mod support;

use support::postgres::Postgres;
use support::process::{run, write_config};
use switchyard::routing::band::percentile_sql;
use switchyard::routing::percentile::percentile;

/// The reference vectors' user ids (those PostgreSQL text can hold) and percentiles.
fn vectors() -> Vec<(String, u8)> {
    include_str!("data/percentile-vectors.tsv")
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split('\t');
            let id: String = serde_json::from_str(f.next()?).ok()?;
            let p = f.nth(1)?.parse().ok()?;
            (!id.contains('\0')).then_some((id, p))
        })
        .collect()
}

async fn client(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn load_users(db: &tokio_postgres::Client, ids: &[String]) {
    db.batch_execute("CREATE TABLE users (user_id text)").await.unwrap();
    for chunk in ids.chunks(500) {
        db.execute("INSERT INTO users SELECT unnest($1::text[])", &[&chunk]).await.unwrap();
    }
}

#[tokio::test]
async fn the_predicate_is_the_proxys_rule_on_every_reference_vector() {
    let Some(pg) = Postgres::start("cohort-vectors") else { return };
    let db = client(&pg).await;
    let vectors = vectors();
    assert!(vectors.len() > 1900);
    let ids: Vec<String> = vectors.iter().map(|(id, _)| id.clone()).collect();
    load_users(&db, &ids).await;
    let q = format!("SELECT user_id, {}::int FROM users", percentile_sql("user_id", b""));
    let rows = db.query(&q, &[]).await.unwrap();
    let got: std::collections::HashMap<String, i32> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (id, p) in &vectors {
        assert_eq!(got[id], i32::from(*p), "percentile of {id:?}");
    }

    // The CLI's predicate, with and without a seed, selects exactly the band.
    for (seed, name) in [("", "cohort-plain"), ("s'alt", "cohort-seeded")] {
        let text = format!(
            "[rollout]\nhash_seed = \"{seed}\"\n[backends.v1]\nurl = \"http://127.0.0.1:1\"\n[backends.v2]\nurl = \"http://127.0.0.1:2\"\n"
        );
        let path = write_config(name, &text);
        for (from, to) in [(10, 25), (40, 0), (99, 100)] {
            let out = run(
                &[
                    "cohort",
                    "sql",
                    "--from",
                    &from.to_string(),
                    "--to",
                    &to.to_string(),
                    "--config",
                    path.to_str().unwrap(),
                ],
                &[],
            );
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let predicate = String::from_utf8(out.stdout).unwrap();
            let rows = db.query(&format!("SELECT user_id FROM users WHERE {predicate}"), &[]).await.unwrap();
            let mut selected: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let (low, high) = (from.min(to), from.max(to));
            let mut expected: Vec<String> =
                ids.iter().filter(|id| (low..high).contains(&percentile(seed.as_bytes(), id))).cloned().collect();
            selected.sort();
            expected.sort();
            assert!(!expected.is_empty());
            assert_eq!(selected, expected, "seed {seed:?}, {from} -> {to}");
        }
    }
}

#[tokio::test]
async fn count_reports_each_mapped_tables_moving_rows() {
    let Some(pg) = Postgres::start("cohort-count") else { return };
    let db = client(&pg).await;
    db.batch_execute(
        "CREATE TABLE orders (id serial, user_id text);
         CREATE TABLE profiles (id serial, user_id uuid);
         CREATE TABLE countries (code text);",
    )
    .await
    .unwrap();
    let users: Vec<String> = (0..600).map(|i| format!("00000000-0000-4000-8000-{i:012}")).collect();
    for (i, u) in users.iter().enumerate() {
        db.execute("INSERT INTO orders (user_id) VALUES ($1), ($1)", &[u]).await.unwrap();
        if i % 3 == 0 {
            db.execute("INSERT INTO profiles (user_id) VALUES ($1::text::uuid)", &[u]).await.unwrap();
        }
    }
    db.execute("INSERT INTO orders (user_id) VALUES (NULL)", &[]).await.unwrap();
    let text = format!(
        "[backends.v1]\nurl = \"http://127.0.0.1:1\"\ndatabase_url = \"{}\"\n[backends.v2]\nurl = \"http://127.0.0.1:2\"\n\
         [translation.tables]\norders = \"commerce\"\nprofiles = \"identity\"\ncountries = \"reference\"\n",
        pg.url()
    );
    let path = write_config("cohort-count", &text);
    let out = run(&["cohort", "count", "--from", "10", "--to", "35", "--config", path.to_str().unwrap()], &[]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let moving = |every: usize| {
        users.iter().enumerate().filter(|(i, u)| i % every == 0 && (10..35).contains(&percentile(b"", u))).count()
    };
    let line = |table: &str| {
        said.lines().find(|l| l.trim_start().starts_with(table)).unwrap_or_else(|| panic!("{said}")).to_string()
    };
    assert!(line("public.orders").ends_with(&format!(" {}", 2 * moving(1))), "{said}");
    assert!(line("public.profiles").ends_with(&format!(" {}", moving(3))), "{said}");
    assert!(line("public.countries").contains("no user_id column"), "{said}");
    assert!(!said.contains(&pg.url()), "the URL is never printed");
}
