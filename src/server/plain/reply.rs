//! The response head, as a pure function: status line, the response's headers, and
//! the framing, connection and date lines this hop sets (RFC 9112 §6).

use std::time::SystemTime;

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{StatusCode, response};

use crate::upstream::wire::parse_length;

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// The framing of a response with `status` and `headers` whose body's length is
/// `exact` (if known): the body's own length, else a `Content-Length` it came with,
/// else chunked.
pub fn framing(status: StatusCode, headers: &HeaderMap, exact: Option<u64>) -> Framing {
    if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Framing::Empty;
    }
    let declared = || headers.get(header::CONTENT_LENGTH).and_then(|v| parse_length(v.as_bytes()));
    exact.or_else(declared).map_or(Framing::Chunked, Framing::Length)
}

/// Appends the head of `parts`, sent with `framing`, to `out`; `close` says the
/// connection closes after it.
pub fn encode_head(parts: &response::Parts, framing: Framing, close: bool, out: &mut BytesMut) {
    let reason = parts.status.canonical_reason().unwrap_or("");
    for piece in [b"HTTP/1.1 ", parts.status.as_str().as_bytes(), b" ", reason.as_bytes(), b"\r\n"] {
        out.extend_from_slice(piece);
    }
    // A 304 keeps the length of the representation it stands for.
    let keep_length = parts.status == StatusCode::NOT_MODIFIED;
    for (name, value) in &parts.headers {
        let framing_line = *name == header::TRANSFER_ENCODING || *name == header::CONTENT_LENGTH && !keep_length;
        if framing_line || *name == header::CONNECTION {
            continue;
        }
        for piece in [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            out.extend_from_slice(piece);
        }
    }
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    // The projects date their answers; the proxy's own answers are dated here.
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Response};

    use super::*;

    fn parts(status: u16, headers: &[(&str, &str)]) -> response::Parts {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn head(parts: &response::Parts, framing: Framing, close: bool) -> String {
        let mut out = BytesMut::new();
        encode_head(parts, framing, close, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn framing_prefers_the_bodys_own_length() {
        let cl = parts(200, &[("content-length", "5")]).headers;
        assert_eq!(framing(StatusCode::OK, &cl, Some(7)), Framing::Length(7));
        assert_eq!(framing(StatusCode::OK, &cl, None), Framing::Length(5));
        assert_eq!(framing(StatusCode::OK, &HeaderMap::new(), None), Framing::Chunked);
        for s in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED, StatusCode::CONTINUE] {
            assert_eq!(framing(s, &cl, Some(7)), Framing::Empty);
        }
    }

    #[test]
    fn a_head_with_length_and_date_passed_on() {
        let p = parts(200, &[("content-type", "application/json"), ("date", "D"), ("content-length", "99")]);
        let h = head(&p, Framing::Length(41), false);
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: D\r\ncontent-length: 41\r\n\r\n");
    }

    #[test]
    fn framing_and_connection_lines_are_this_hops() {
        let p = parts(404, &[("transfer-encoding", "gzip"), ("connection", "keep-alive"), ("date", "D")]);
        let h = head(&p, Framing::Chunked, true);
        assert_eq!(h, "HTTP/1.1 404 Not Found\r\ndate: D\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
        let p = parts(304, &[("content-length", "12"), ("date", "D")]);
        assert_eq!(
            head(&p, Framing::Empty, false),
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 12\r\ndate: D\r\n\r\n"
        );
        let p = parts(204, &[("content-length", "0"), ("date", "D")]);
        assert_eq!(head(&p, Framing::Empty, false), "HTTP/1.1 204 No Content\r\ndate: D\r\n\r\n");
    }

    #[test]
    fn an_undated_answer_is_dated() {
        let mut p = parts(503, &[]);
        let h = head(&p, Framing::Length(0), false);
        let date = h.lines().find_map(|l| l.strip_prefix("date: ")).expect("dated");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        p.headers.insert("x-a", HeaderValue::from_static("b"));
        assert!(head(&p, Framing::Length(0), false).starts_with("HTTP/1.1 503 Service Unavailable\r\nx-a: b\r\n"));
    }
}
