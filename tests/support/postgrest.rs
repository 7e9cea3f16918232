//! The PostgREST subset the handoff tests need, over a real PostgreSQL database:
//! insert (`POST`, one JSON object, `Prefer: return=representation` implied), select
//! (`GET` with `col=eq.value` filters), update (`PATCH`) and delete (`DELETE`) with
//! the same filters. The schema is the `Content-Profile`/`Accept-Profile` header's
//! (default `public`), as PostgREST's. No PostgREST binary installs here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_postgres::Client;

use super::{Body, Upstream, full, upstream};

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `col=eq.value` filters as SQL over `$n` parameters (numbered from `first`), on
/// columns of `table`.
fn filters(table: &str, query: &str, first: usize) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((col, v)) = pair.split_once('=') else { continue };
        let Some(v) = v.strip_prefix("eq.") else { continue };
        values.push(super::fake::decode(v));
        clauses.push(format!("{table}.{}::text = ${}", ident(col), first + values.len() - 1));
    }
    let sql = if clauses.is_empty() { "true".to_string() } else { clauses.join(" AND ") };
    (sql, values)
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    Response::builder().status(status).header("content-type", "application/json").body(full(body)).unwrap()
}

async fn answer(db: &Client, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body: Bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let Some(table) = parts.uri.path().strip_prefix("/rest/v1/") else {
        return json_response(StatusCode::NOT_FOUND, "{}".into());
    };
    let profile = if parts.method == Method::GET { "accept-profile" } else { "content-profile" };
    let schema = parts.headers.get(profile).and_then(|v| v.to_str().ok()).unwrap_or("public");
    let t = format!("{}.{}", ident(schema), ident(table));
    let query = parts.uri.query().unwrap_or("");
    let text = String::from_utf8_lossy(&body).into_owned();
    let result = match parts.method {
        Method::GET => {
            let (w, vals) = filters("x", query, 1);
            let sql = format!("SELECT coalesce(json_agg(x ORDER BY x.id), '[]')::text FROM {t} x WHERE {w}");
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vals.iter().map(|v| v as _).collect();
            db.query_one(&sql, &params).await.map(|r| (StatusCode::OK, r.get::<_, String>(0)))
        }
        Method::POST => {
            let cols: Vec<String> = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
                .map(|m| m.keys().map(|k| ident(k)).collect())
                .unwrap_or_default();
            let list = cols.join(", ");
            let sql = format!(
                "WITH ins AS (INSERT INTO {t} ({list}) SELECT {list} FROM json_populate_record(NULL::{t}, $1::text::json) RETURNING *) \
                 SELECT json_agg(ins)::text FROM ins"
            );
            db.query_one(&sql, &[&text]).await.map(|r| (StatusCode::CREATED, r.get::<_, String>(0)))
        }
        Method::PATCH => {
            let (w, vals) = filters(&t, query, 2);
            let cols: Vec<String> = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
                .map(|m| m.keys().map(|k| format!("{0} = r.{0}", ident(k))).collect())
                .unwrap_or_default();
            let sql = format!(
                "WITH up AS (UPDATE {t} SET {} FROM json_populate_record(NULL::{t}, $1::text::json) r WHERE {w} RETURNING {t}.*) \
                 SELECT coalesce(json_agg(up), '[]')::text FROM up",
                cols.join(", ")
            );
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&text];
            params.extend(vals.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)));
            db.query_one(&sql, &params).await.map(|r| (StatusCode::OK, r.get::<_, String>(0)))
        }
        Method::DELETE => {
            let (w, vals) = filters(&t, query, 1);
            let sql = format!(
                "WITH d AS (DELETE FROM {t} WHERE {w} RETURNING *) SELECT coalesce(json_agg(d), '[]')::text FROM d"
            );
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vals.iter().map(|v| v as _).collect();
            db.query_one(&sql, &params).await.map(|r| (StatusCode::OK, r.get::<_, String>(0)))
        }
        _ => return json_response(StatusCode::METHOD_NOT_ALLOWED, "{}".into()),
    };
    match result {
        Ok((status, body)) => json_response(status, body),
        Err(e) => {
            let msg = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
            json_response(StatusCode::BAD_REQUEST, serde_json::json!({ "code": "XX000", "message": msg }).to_string())
        }
    }
}

/// A PostgREST-like upstream over the database at `url`; `failing` makes it answer 500
/// to everything (errors injected at its HTTP layer).
pub async fn postgrest(url: &str, failing: Arc<AtomicBool>) -> Upstream {
    let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let db = Arc::new(db);
    upstream(move |req| {
        let (db, failing) = (db.clone(), failing.clone());
        async move {
            if failing.load(Ordering::Relaxed) {
                return json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"code":"XX000","message":"injected"}"#.into(),
                );
            }
            answer(&db, req).await
        }
    })
    .await
}
