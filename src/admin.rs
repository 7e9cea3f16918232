//! The admin listener: liveness, readiness, Prometheus metrics and the rollout API.
//! It runs on its own port so that probes, scrapes and operators never compete with,
//! or get routed like, client traffic. Writes need `SWITCHYARD_ADMIN_TOKEN` as a
//! bearer token (compared in constant time); with no token configured they are refused.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backend::BackendId;
use crate::control::{ChangeError, Commit, Control, RolloutStatus};
use crate::fleet::Fleet;
use crate::proxy::Proxy;

/// What the admin endpoints act on.
pub struct Admin {
    /// The proxy (state and metrics).
    pub proxy: Arc<Proxy>,
    /// Live changes.
    pub control: Arc<Control>,
    /// The fleet, in fleet mode (`[cluster]`).
    pub fleet: Option<Arc<Fleet>>,
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    text(status, "application/json", value.to_string())
}

/// Whether each backend accepts a TCP connection within a second.
async fn reachable(proxy: &Proxy) -> Vec<(BackendId, bool)> {
    let snap = proxy.state.load();
    let checks = snap.config.backends.iter().map(|(id, b)| {
        let port =
            b.url.authority.port_u16().unwrap_or(if b.url.scheme == http::uri::Scheme::HTTPS { 443 } else { 80 });
        let host = b.url.authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        async move {
            let ok = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect((host, port)))
                .await
                .is_ok_and(|r| r.is_ok());
            (id, ok)
        }
    });
    futures_util::future::join_all(checks).await
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": message }))
}

/// Why a write is refused, if it is.
fn refuse_write(admin: &Admin, headers: &http::HeaderMap) -> Option<Response<Full<Bytes>>> {
    let snap = admin.proxy.state.load();
    let Some(expected) = &snap.config.server.admin_token else {
        return Some(error(StatusCode::FORBIDDEN, "admin writes are disabled: set SWITCHYARD_ADMIN_TOKEN"));
    };
    let given = crate::identity::bearer(headers).unwrap_or("");
    let same: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.expose().as_bytes()).into();
    if same {
        None
    } else {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        Some(r)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRollout {
    percentage: i64,
}

/// How a write is committed: `?local=true` asks for this replica alone.
fn commit(req: &Request<Incoming>) -> Commit {
    let local = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "local=true"));
    if local { Commit::Local } else { Commit::Once }
}

async fn put_rollout(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(refused) = refuse_write(admin, req.headers()) {
        return refused;
    }
    let commit = commit(&req);
    let body = match http_body_util::Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 4 KiB"),
    };
    let wanted = match serde_json::from_slice::<SetRollout>(&body) {
        Ok(w) => w.percentage,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, &format!("expected {{\"percentage\": 0-100}}: {e}"));
        }
    };
    let Some(p) = u8::try_from(wanted).ok().filter(|p| *p <= 100) else {
        return error(StatusCode::BAD_REQUEST, &format!("percentage must be 0 to 100, got {wanted}"));
    };
    // A change that starts a handoff goes on in the background: 202 with its progress.
    let control = admin.control.clone();
    let mut change = tokio::spawn(async move { control.set_percentage(p, commit).await });
    loop {
        tokio::select! {
            done = &mut change => {
                let result = done.unwrap_or_else(|e| Err(ChangeError::Handoff(e.to_string())));
                return outcome(admin, result);
            }
            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                if admin.control.handoff().is_some() {
                    return json(StatusCode::ACCEPTED, rollout(admin, admin.control.status()));
                }
            }
        }
    }
}

/// The rollout as `GET /admin/rollout` shows it: with the fleet in fleet mode.
fn rollout(admin: &Admin, status: RolloutStatus) -> serde_json::Value {
    let mut value = serde_json::json!(status);
    if let Some(fleet) = &admin.fleet {
        value["fleet"] = serde_json::json!(fleet.view());
    }
    value
}

/// A change's answer: the new status; 409 saying what holds it back or which change
/// came first (with the rollout now in force); 503 when the fleet's store is away.
fn outcome(admin: &Admin, result: Result<RolloutStatus, ChangeError>) -> Response<Full<Bytes>> {
    match result {
        Ok(status) => json(StatusCode::OK, rollout(admin, status)),
        Err(e @ ChangeError::Refused(_)) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e @ (ChangeError::Conflict(_) | ChangeError::Handoff(_))) => json(
            StatusCode::CONFLICT,
            serde_json::json!({ "error": e.to_string(), "rollout": rollout(admin, admin.control.status()) }),
        ),
        Err(e @ ChangeError::Unavailable(_)) => {
            tracing::warn!(error = %e, "admin write refused: the fleet's store is unreachable");
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            r
        }
    }
}

/// Refuses an unauthorised write, else runs it.
async fn command<F: Future<Output = Response<Full<Bytes>>>>(
    admin: &Admin,
    req: &Request<Incoming>,
    run: impl FnOnce(Commit) -> F,
) -> Response<Full<Bytes>> {
    match refuse_write(admin, req.headers()) {
        Some(refused) => refused,
        None => run(commit(req)).await,
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let proxy = &admin.proxy;
    let control = &admin.control;
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            let checks = reachable(proxy).await;
            let ready = checks.iter().all(|(_, ok)| *ok);
            let body: serde_json::Map<_, _> =
                checks.iter().map(|(id, ok)| (id.as_str().to_string(), serde_json::Value::Bool(*ok))).collect();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            let mut value = serde_json::json!({ "ready": ready, "upstreams": body });
            // A replica away from the fleet's store still serves (on the last state it
            // applied): it says so, and stays ready.
            if let Some(fleet) = &admin.fleet {
                let view = fleet.view();
                value["cluster"] = serde_json::json!({ "connected": view.connected, "degraded": view.degraded });
            }
            json(status, value)
        }
        (&Method::GET, "/metrics") => text(StatusCode::OK, "text/plain; version=0.0.4", proxy.metrics_text()),
        (&Method::GET, "/admin/rollout") => json(StatusCode::OK, rollout(admin, control.status())),
        (&Method::PUT, "/admin/rollout") => put_rollout(admin, req).await,
        (&Method::POST, "/admin/rollout/pause") => {
            command(admin, &req, async |c| outcome(admin, control.pause_schedule(true, c).await)).await
        }
        (&Method::POST, "/admin/rollout/resume") => {
            command(admin, &req, async |c| outcome(admin, control.pause_schedule(false, c).await)).await
        }
        (&Method::POST, "/admin/guard/clear") => {
            command(admin, &req, async |c| match control.clear_guard(c).await {
                Ok(cleared) => json(
                    StatusCode::OK,
                    serde_json::json!({ "cleared": cleared, "rollout": rollout(admin, control.status()) }),
                ),
                Err(e) => outcome(admin, Err(e)),
            })
            .await
        }
        (_, "/admin/rollout") => error(StatusCode::METHOD_NOT_ALLOWED, "use GET or PUT"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(|req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
