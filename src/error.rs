//! The proxy's one error type, and the one place errors become responses. Responses
//! look native to the client: PostgREST's `{"code","message","details","hint"}` for
//! data services, GoTrue's `{"code","message"}` for auth (docs/operations.md).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::backend::BackendId;
use crate::identity::AuthReason;
use crate::routing::service::Service;

/// Boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The bearer token was refused.
    Unauthorized(AuthReason),
    /// The upstream could not be reached (refused, DNS, connect time-out).
    Connect,
    /// The upstream did not start answering in time.
    Timeout,
    /// The upstream closed or reset the connection before answering.
    Reset,
    /// The TLS handshake with the upstream failed.
    Tls,
    /// The upstream answered something that is not HTTP.
    Protocol,
    /// The request could not be turned into an upstream request.
    BadRequest,
    /// A `select=` embed that the target project cannot resolve (schemas differ).
    CrossSchemaEmbed,
    /// Too many requests in flight: shed with 503 and `Retry-After`.
    Overloaded,
    /// A write held at a handoff's fence past `handoff.max_hold_seconds`: 503 with
    /// `Retry-After`, never forwarded.
    HeldTooLong,
    /// The bearer token must be re-signed for the target project, but its issuer's
    /// signing keys could not be fetched to verify it: 503 with `Retry-After`.
    KeysUnavailable,
    /// The request body is over `limits.max_body_bytes`.
    PayloadTooLarge,
    /// The client's own failure, never the backend's (not judged by the guard).
    Client(ClientFault),
}

/// How a request failed through its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The request body is not valid HTTP (bad chunk framing, wrong length).
    MalformedBody,
    /// The client closed or reset its connection before its body was all sent.
    AbortedBody,
    /// The request body did not come within the upstream timeout.
    SlowUpload,
}

impl ClientFault {
    /// The `kind` label of `switchyard_client_errors_total`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClientFault::MalformedBody => "malformed_body",
            ClientFault::AbortedBody => "aborted_body",
            ClientFault::SlowUpload => "slow_upload",
        }
    }

    /// What the client's body error says: cut short, or malformed.
    fn of(err: &(dyn std::error::Error + 'static)) -> ClientFault {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        let mut chain = std::iter::successors(Some(err), |e| e.source());
        let aborted = chain.any(|e| {
            e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_incomplete_message)
                || e.downcast_ref::<h2::Error>().is_some_and(|h2| {
                    // Reset or cut off by the client; h2's own PROTOCOL_ERROR (a body
                    // longer or shorter than declared, say) is a malformed body.
                    h2.is_io() || h2.is_go_away() || (h2.is_remote() && h2.reason() != Some(h2::Reason::PROTOCOL_ERROR))
                })
                || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    matches!(io.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe)
                })
        });
        if aborted { ClientFault::AbortedBody } else { ClientFault::MalformedBody }
    }
}

/// An error on the request path.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    backend: BackendId,
    detail: String,
}

impl Error {
    fn new(kind: Kind, backend: BackendId, detail: impl Into<String>) -> Error {
        Error { kind, backend, detail: detail.into() }
    }

    /// A refused bearer token, for a request meant for `backend`.
    pub fn unauthorized(backend: BackendId, reason: AuthReason) -> Error {
        Error::new(Kind::Unauthorized(reason), backend, "")
    }

    /// No response headers within `after`.
    pub fn timeout(backend: BackendId, after: Duration) -> Error {
        Error::new(Kind::Timeout, backend, format!("no answer within {:.1}s", after.as_secs_f64()))
    }

    /// A request that cannot be forwarded.
    pub fn bad_request(backend: BackendId, detail: impl Into<String>) -> Error {
        Error::new(Kind::BadRequest, backend, detail)
    }

    /// An embed across schemas on the target project.
    pub fn cross_schema_embed(backend: BackendId, e: &crate::translate::schema::CrossSchemaEmbed) -> Error {
        let detail = format!(
            "'{}' is in schema '{}' and '{}' in schema '{}' on {backend}",
            e.parent.0, e.parent.1, e.child.0, e.child.1
        );
        Error::new(Kind::CrossSchemaEmbed, backend, detail)
    }

    /// The proxy sheds this request.
    pub fn overloaded(backend: BackendId) -> Error {
        Error::new(Kind::Overloaded, backend, "")
    }

    /// A write held at a handoff's fence too long.
    pub fn held_too_long(backend: BackendId) -> Error {
        Error::new(Kind::HeldTooLong, backend, "")
    }

    /// A token of `issuer` that cannot be verified (its keys not fetched) going to
    /// `backend`, which would need it re-signed.
    pub fn keys_unavailable(backend: BackendId, issuer: BackendId) -> Error {
        Error::new(Kind::KeysUnavailable, backend, format!("the signing keys of {issuer} cannot be fetched"))
    }

    /// A body over the limit.
    pub fn too_large(backend: BackendId, limit: u64) -> Error {
        Error::new(Kind::PayloadTooLarge, backend, format!("limit {limit} bytes"))
    }

    /// A request that failed through its client.
    pub fn client(backend: BackendId, fault: ClientFault) -> Error {
        Error::new(Kind::Client(fault), backend, "")
    }

    /// Classifies why the upstream gave no response within `timeout`: the client's
    /// body failing or not arriving is the client's doing, everything else the
    /// upstream's.
    pub fn upstream(backend: BackendId, failure: crate::upstream::Failure, timeout: Duration) -> Error {
        use crate::upstream::Failure;
        let err: &(dyn std::error::Error + 'static) = match &failure {
            Failure::TimedOut { upload_incomplete: true } => return Error::client(backend, ClientFault::SlowUpload),
            Failure::TimedOut { upload_incomplete: false } => return Error::timeout(backend, timeout),
            Failure::Connect(e) | Failure::Body(e) => e.as_ref(),
            Failure::Io(e) => e,
            Failure::Malformed(e) => e,
        };
        if let Some(limit) = find::<crate::upstream::TooLarge>(err) {
            return Error::too_large(backend, limit.0);
        }
        let kind = match failure {
            Failure::Body(_) => return Error::client(backend, ClientFault::of(err)),
            _ if is_tls(err) => Kind::Tls,
            Failure::Connect(_) => Kind::Connect,
            Failure::Malformed(_) => Kind::Protocol,
            _ => Kind::Reset,
        };
        let detail = std::iter::successors(Some(err), |e| e.source()).last().map(|e| e.to_string()).unwrap_or_default();
        Error::new(kind, backend, detail)
    }

    /// What went wrong.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The backend the request was meant for.
    pub fn backend(&self) -> BackendId {
        self.backend
    }

    /// The upstream did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// The upstream could not be reached.
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// The client's credentials were refused.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self.kind, Kind::Unauthorized(_))
    }

    /// The client's own failure (its body, its pace), which says nothing of a backend.
    pub fn is_client(&self) -> bool {
        matches!(self.kind, Kind::Client(_) | Kind::PayloadTooLarge)
    }

    /// The `kind` label of `switchyard_client_errors_total`, for a client's failure.
    pub fn client_label(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Client(fault) => Some(fault.as_str()),
            Kind::PayloadTooLarge => Some("body_too_large"),
            _ => None,
        }
    }

    /// The upstream failed (as opposed to the client's request).
    pub fn is_upstream(&self) -> bool {
        matches!(self.kind, Kind::Connect | Kind::Timeout | Kind::Reset | Kind::Tls | Kind::Protocol)
    }

    /// The `kind` label of `switchyard_upstream_errors_total`.
    pub fn upstream_label(&self) -> &'static str {
        match self.kind {
            Kind::Connect => "connect",
            Kind::Timeout => "timeout",
            Kind::Reset => "reset",
            Kind::Tls => "tls",
            Kind::Protocol => "protocol",
            Kind::Unauthorized(_)
            | Kind::BadRequest
            | Kind::CrossSchemaEmbed
            | Kind::Overloaded
            | Kind::HeldTooLong
            | Kind::KeysUnavailable
            | Kind::PayloadTooLarge
            | Kind::Client(_) => "none",
        }
    }

    /// An upstream failure whose detail is an OS or TLS error's text.
    fn is_upstream_io(&self) -> bool {
        matches!(self.kind, Kind::Connect | Kind::Reset | Kind::Tls | Kind::Protocol)
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::BadRequest | Kind::CrossSchemaEmbed => StatusCode::BAD_REQUEST,
            Kind::Client(ClientFault::MalformedBody | ClientFault::AbortedBody) => StatusCode::BAD_REQUEST,
            Kind::Client(ClientFault::SlowUpload) => StatusCode::REQUEST_TIMEOUT,
            Kind::Overloaded | Kind::HeldTooLong | Kind::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Connect | Kind::Reset | Kind::Tls | Kind::Protocol => StatusCode::BAD_GATEWAY,
        }
    }

    /// (PostgREST-style code, GoTrue-style code, message).
    fn codes(&self) -> (&'static str, &'static str, String) {
        let b = self.backend;
        match self.kind {
            Kind::Unauthorized(AuthReason::Expired) => ("PGRST303", "bad_jwt", "JWT expired".into()),
            Kind::Unauthorized(r) => ("PGRST301", "bad_jwt", format!("JWT invalid ({})", r.as_str())),
            Kind::Connect => ("SWY502", "upstream_unreachable", format!("upstream {b} unreachable")),
            Kind::Timeout => ("SWY504", "upstream_timeout", format!("upstream {b} timed out")),
            Kind::Reset => ("SWY502", "upstream_reset", format!("upstream {b} closed the connection")),
            Kind::Tls => ("SWY502", "upstream_tls", format!("TLS with upstream {b} failed")),
            Kind::Protocol => ("SWY502", "upstream_protocol", format!("upstream {b} sent an invalid response")),
            Kind::BadRequest => ("SWY400", "validation_failed", "request cannot be forwarded".into()),
            Kind::Overloaded => ("SWY503", "over_request_rate_limit", "switchyard is overloaded, retry shortly".into()),
            Kind::HeldTooLong => (
                "SWY503",
                "request_timeout",
                "this user's data is moving between projects; the write was not made, retry shortly".into(),
            ),
            Kind::KeysUnavailable => (
                "SWY503",
                "unexpected_failure",
                "the token cannot be verified for this project yet; retry shortly".into(),
            ),
            Kind::PayloadTooLarge => ("SWY413", "request_too_large", "request body too large".into()),
            Kind::Client(ClientFault::MalformedBody) => {
                ("SWY400", "validation_failed", "request body is malformed".into())
            }
            Kind::Client(ClientFault::AbortedBody) => {
                ("SWY400", "validation_failed", "request body ended before it was complete".into())
            }
            Kind::Client(ClientFault::SlowUpload) => {
                ("SWY408", "request_timeout", "request body did not arrive in time".into())
            }
            Kind::CrossSchemaEmbed => (
                "PGRST200",
                "validation_failed",
                "Could not embed across schemas: these tables live in different schemas on the new project".into(),
            ),
        }
    }

    /// The response for this error, in the shape the service's clients expect.
    /// `versioned` is whether the request carried `X-Supabase-Api-Version`.
    pub fn into_response(self, service: Service, versioned: bool) -> Response<Full<Bytes>> {
        let (pgrst, gotrue, message) = self.codes();
        // What the OS or TLS said of an upstream failure is logged, not sent: it
        // describes the proxy's network, not the client's request.
        let details = (!self.detail.is_empty() && !self.is_upstream_io()).then_some(self.detail.as_str());
        let body = if service.speaks_gotrue() {
            serde_json::json!({ "code": gotrue, "message": message })
        } else {
            serde_json::json!({ "code": pgrst, "message": message, "details": details, "hint": null })
        };
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        if let Kind::Unauthorized(r) = self.kind {
            let desc = if r == AuthReason::Expired { "JWT expired" } else { "JWT invalid" };
            let v = format!("Bearer error=\"invalid_token\", error_description=\"{desc}\"");
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&v).expect("ascii"));
        }
        if matches!(self.kind, Kind::Overloaded | Kind::HeldTooLong | Kind::KeysUnavailable) {
            // supabase-js retries GET/HEAD on 503, honouring Retry-After.
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if versioned && service.speaks_gotrue() {
            h.insert("x-sb-error-code", HeaderValue::from_static(gotrue));
        }
        resp
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, _, message) = self.codes();
        write!(f, "{code} {message}")?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

fn find<'a, T: std::error::Error + 'static>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    std::iter::successors(Some(err), |e| e.source()).find_map(|e| e.downcast_ref::<T>())
}

/// A TLS failure, also when wrapped in an `io::Error` (whose `source()` skips the
/// wrapped error itself).
fn is_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        let mut cur: &(dyn std::error::Error + 'static) = e;
        loop {
            if cur.is::<rustls::Error>() {
                return true;
            }
            match cur.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                Some(inner) => cur = inner,
                None => return false,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(resp: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn postgrest_shape() {
        let e = Error::timeout(BackendId::V2, Duration::from_millis(1500));
        assert!(e.is_timeout() && e.is_upstream());
        let resp = e.into_response(Service::Rest, false);
        assert_eq!(resp.status(), 504);
        let v = body(resp).await;
        assert_eq!(v["code"], "SWY504");
        assert_eq!(v["message"], "upstream v2 timed out");
        assert!(v.get("hint").is_some() && v.get("details").is_some());
    }

    #[tokio::test]
    async fn gotrue_shape_with_version_header() {
        let resp = Error::unauthorized(BackendId::V1, AuthReason::Expired).into_response(Service::Auth, true);
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["x-sb-error-code"], "bad_jwt");
        assert!(resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer "));
        let v = body(resp).await;
        assert_eq!(v, serde_json::json!({"code": "bad_jwt", "message": "JWT expired"}));
    }

    #[test]
    fn a_clients_failure_is_never_the_upstreams() {
        use crate::upstream::Failure;
        let slow =
            Error::upstream(BackendId::V2, Failure::TimedOut { upload_incomplete: true }, Duration::from_secs(1));
        assert!(slow.is_client() && !slow.is_upstream());
        assert_eq!((slow.status(), slow.client_label()), (StatusCode::REQUEST_TIMEOUT, Some("slow_upload")));
        let body = Failure::Body(Box::new(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk")));
        let malformed = Error::upstream(BackendId::V2, body, Duration::from_secs(1));
        assert!(malformed.is_client() && !malformed.is_upstream());
        assert_eq!(malformed.client_label(), Some("malformed_body"));
        let late =
            Error::upstream(BackendId::V2, Failure::TimedOut { upload_incomplete: false }, Duration::from_secs(1));
        assert!(late.is_upstream() && late.is_timeout() && !late.is_client());
    }
}
