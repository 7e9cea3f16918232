//! The admin listener: liveness, readiness and Prometheus metrics. It runs on its own
//! port so that probes and scrapes never compete with, or get routed like, client
//! traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backend::BackendId;
use crate::proxy::Proxy;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    text(status, "application/json", value.to_string())
}

/// Whether each backend accepts a TCP connection within a second.
async fn reachable(proxy: &Proxy) -> Vec<(BackendId, bool)> {
    let snap = proxy.state.load();
    let checks = snap.config.backends.iter().map(|(id, b)| {
        let port = b
            .url
            .authority
            .port_u16()
            .unwrap_or(if b.url.scheme == http::uri::Scheme::HTTPS {
                443
            } else {
                80
            });
        let host = b
            .url
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        async move {
            let ok = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect((host, port)))
                .await
                .is_ok_and(|r| r.is_ok());
            (id, ok)
        }
    });
    futures_util::future::join_all(checks).await
}

async fn handle(proxy: &Proxy, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            let checks = reachable(proxy).await;
            let ready = checks.iter().all(|(_, ok)| *ok);
            let body: serde_json::Map<_, _> = checks
                .iter()
                .map(|(id, ok)| (id.as_str().to_string(), serde_json::Value::Bool(*ok)))
                .collect();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, serde_json::json!({ "ready": ready, "upstreams": body }))
        }
        (&Method::GET, "/metrics") => text(StatusCode::OK, "text/plain; version=0.0.4", proxy.metrics.render()),
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({ "error": "not found" })),
    }
}

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: CancellationToken) {
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
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(|req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(handle(&proxy, req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
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
