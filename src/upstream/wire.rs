//! HTTP/1.1 towards the upstream, as pure functions over bytes: how the request body
//! is framed, the request head encoded, the response head parsed, and how the response
//! body is delimited (RFC 9112 §6). The connection and its I/O are elsewhere.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version, request};

/// The largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most response header lines accepted.
const MAX_HEADERS: usize = 128;

/// `X-Forwarded-For`, `-Proto` and `-Host`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1, plus the
/// non-standard ones peers still send).
pub static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where `name` is in [`HOP_BY_HOP`], if it is there. By its text: a string match
/// rules most names out by their length alone, where comparing names one by one
/// costs seven comparisons for every header of every request and response.
pub fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        _ => None,
    }
}

/// Whether `name` is a hop-by-hop header (one of those every connection strips; the
/// ones `Connection` names aside).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some()
}

/// The headers the proxy sets on a request for the upstream. They are written after
/// the client's own lines, by [`encode_head`], instead of being put in the request's
/// header map, where each would cost a look-up and an insert on
/// every request.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// `Host`: the upstream's own. The client's is left out.
    pub host: HeaderValue,
    /// `X-Forwarded-For`: the client's chain, if it sent one, then its address.
    pub chain: HeaderValue,
    /// Whether the client sent `X-Forwarded-For` lines, which are then left out.
    pub replaces_chain: bool,
    /// `X-Forwarded-Proto`, unless a trusted proxy in front said it.
    pub proto: Option<HeaderValue>,
    /// `X-Forwarded-Host`: the host the client asked for, unless a trusted proxy in
    /// front said it.
    pub original_host: Option<HeaderValue>,
    /// Whether the client's own `X-Forwarded-Proto` and `-Host` are left out (it is
    /// not a trusted proxy).
    pub replaces_claims: bool,
}

impl Forwarded {
    /// Whether the client's header `name` is left out: the proxy writes its own.
    pub fn leaves_out(&self, name: &HeaderName) -> bool {
        name == header::HOST
            || self.replaces_chain && name == X_FORWARDED_FOR
            || self.replaces_claims && (name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST)
    }

    /// The `Host` line's value, written first.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The lines written after the client's.
    pub fn trailing(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let proto = self.proto.as_ref().map(|v| (&X_FORWARDED_PROTO, v));
        let host = self.original_host.as_ref().map(|v| (&X_FORWARDED_HOST, v));
        std::iter::once((&X_FORWARDED_FOR, &self.chain)).chain(proto).chain(host)
    }
}

/// A response the proxy cannot pass on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream response: {0}")]
pub struct Malformed(pub &'static str);

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// No body.
    Nothing,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// Decides the request body's framing and says it in the head: the client's
/// `Content-Length` if it sent one, else the body's exact size, else chunked.
/// `empty` is whether the body is known to be over already.
pub fn frame_request(parts: &mut request::Parts, empty: bool, exact: Option<u64>) -> Result<Sent, Malformed> {
    let h = &mut parts.headers;
    if let Some(v) = h.get(header::CONTENT_LENGTH) {
        let n = parse_length(v.as_bytes()).ok_or(Malformed("request content-length"))?;
        normalise_length(h, n);
        return Ok(if n == 0 { Sent::Nothing } else { Sent::Length(n) });
    }
    if empty {
        // Methods that normally carry a body say that this one has none.
        if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        return Ok(Sent::Nothing);
    }
    Ok(match exact {
        Some(n) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            if n == 0 { Sent::Nothing } else { Sent::Length(n) }
        }
        None => {
            h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            Sent::Chunked
        }
    })
}

/// The request head, origin-form, ready to write (left unfrozen: freezing a buffer
/// that is not exactly full costs an allocation): `Host` first, then the client's
/// headers, then the other headers the proxy sets.
pub fn encode_head(parts: &request::Parts, forwarded: &Forwarded) -> BytesMut {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let host = (&header::HOST, forwarded.host());
    let client = || parts.headers.iter().filter(|(name, _)| !forwarded.leaves_out(name));
    let lines = || std::iter::once(host).chain(client()).chain(forwarded.trailing());
    let size: usize = lines().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    let mut out = BytesMut::with_capacity(parts.method.as_str().len() + target.len() + size + 16);
    for piece in [parts.method.as_str().as_bytes(), b" ", target.as_bytes(), b" HTTP/1.1\r\n"] {
        out.extend_from_slice(piece);
    }
    for (name, value) in lines() {
        for piece in [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            out.extend_from_slice(piece);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Makes `Content-Length` one line holding `n` when it was a list (`5, 5`) or several
/// lines of the same value: a list is never forwarded.
fn normalise_length(headers: &mut HeaderMap, n: u64) {
    let mut lines = headers.get_all(header::CONTENT_LENGTH).iter();
    let plain = lines.next().is_some_and(|v| !v.as_bytes().contains(&b',')) && lines.next().is_none();
    if !plain {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes.
    Close,
    /// 101: the connection now carries another protocol.
    Upgrade,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// The status.
    pub status: StatusCode,
    /// The headers, as sent.
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this body.
    pub reusable: bool,
}

/// What the front of the read buffer holds.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim (1xx) response, consumed; the real one follows.
    Interim,
    /// The response head, consumed from the buffer.
    Head(Head),
}

/// Parses (and consumes) the response head at the front of `buf`, for a request that
/// was `HEAD` or not. Hop-by-hop headers are left out of the head (they describe this
/// connection, not the answer), except in a `101` (the upgrade needs them) and a
/// `Connection` naming other headers (the proxy's header rewrite removes those).
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, Malformed> {
    // Left uninitialised: zeroing every slot would cost more than parsing a small head.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    // The projects' answers: be as lenient as browsers are.
    let status = httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
        .map_err(|e| Malformed(if e == httparse::Error::TooManyHeaders { "too many headers" } else { "head" }))?;
    let len = match status {
        httparse::Status::Partial if buf.len() > MAX_HEAD => return Err(Malformed("head too large")),
        httparse::Status::Partial => return Ok(Parsed::Partial),
        httparse::Status::Complete(len) => len,
    };
    let code = resp.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| Malformed("status"))?;
    let version = if resp.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    // One pass reads what framing and reuse depend on, and where each kept header sits
    // in the head, so that the values can share its bytes.
    let base = buf.as_ptr() as usize;
    let mut said = Said::default();
    let mut spans = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Malformed("header name"))?;
        let hop = said.note(&name, h.value);
        if !hop || switching || name == header::CONNECTION {
            let at = h.value.as_ptr() as usize - base;
            spans.push((name, at, at + h.value.len()));
        }
    }
    let head = buf.split_to(len).freeze();
    if status.is_informational() && !switching {
        return Ok(Parsed::Interim);
    }
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, from, to) in spans {
        if name == header::CONNECTION && !switching && !said.connection_names_others {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(from..to)).map_err(|_| Malformed("header value"))?;
        headers.append(name, value);
    }
    let (framing, delimited) = said.framing(status, head_request)?;
    if said.chunked.is_some() {
        if version == Version::HTTP_10 {
            // An HTTP/1.0 recipient would not decode it: a smuggling vector, refused.
            return Err(Malformed("transfer-encoding in an HTTP/1.0 response"));
        }
        // Framed by Transfer-Encoding: a Content-Length beside it is stale (RFC 9112
        // §6.3) and would frame the client's copy wrongly.
        headers.remove(header::CONTENT_LENGTH);
    } else if let Some(Ok(n)) = said.length {
        normalise_length(&mut headers, n);
    }
    let stays_open = if version == Version::HTTP_10 { said.keep_alive } else { !said.close };
    Ok(Parsed::Head(Head { status, headers, framing, reusable: delimited && stays_open }))
}

/// What a response head said about its body's framing and its connection.
#[derive(Default)]
struct Said {
    /// `Content-Length`, if any, or why it cannot be used.
    length: Option<Result<u64, &'static str>>,
    /// Whether the last `Transfer-Encoding` header ends in `chunked`, if there is one.
    chunked: Option<bool>,
    /// `Connection` tokens.
    close: bool,
    keep_alive: bool,
    connection_names_others: bool,
}

impl Said {
    /// Takes note of one header; says whether it is hop-by-hop.
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        if *name == header::CONTENT_LENGTH {
            self.length = Some(match (self.length, parse_length(value)) {
                (Some(Err(e)), _) => Err(e),
                (_, None) => Err("content-length"),
                (Some(Ok(n)), Some(m)) if n != m => Err("conflicting content-length"),
                (_, Some(m)) => Ok(m),
            });
            return false;
        }
        if *name == header::TRANSFER_ENCODING {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
            self.chunked = Some(value.is_ascii() && last.eq_ignore_ascii_case(b"chunked"));
        } else if *name == header::CONNECTION && value.is_ascii() {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let is = |t: &[u8]| token.eq_ignore_ascii_case(t);
                if is(b"close") {
                    self.close = true;
                } else if is(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.is_empty() && !is(b"upgrade") {
                    self.connection_names_others = true;
                }
            }
        }
        is_hop_by_hop(name)
    }

    /// The body's framing, and whether its end is known without the connection closing
    /// (and without any doubt about where it is).
    fn framing(&self, status: StatusCode, head_request: bool) -> Result<(Framing, bool), Malformed> {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((Framing::Upgrade, false));
        }
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Ok((Framing::Empty, true));
        }
        match (self.chunked, self.length) {
            (Some(false), _) => Ok((Framing::Close, false)),
            // Both framings sent: chunked wins, but such a connection is not trusted again.
            (Some(true), length) => Ok((Framing::Chunked, length.is_none())),
            (None, Some(Err(e))) => Err(Malformed(e)),
            (None, Some(Ok(0))) => Ok((Framing::Empty, true)),
            (None, Some(Ok(n))) => Ok((Framing::Length(n), true)),
            (None, None) => Ok((Framing::Close, false)),
        }
    }
}

/// A `Content-Length` value: digits only (a list of equal values is also accepted).
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let mut found = None;
    for part in v.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() {
            return None;
        }
        let mut n: u64 = 0;
        for &b in part {
            let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
            n = n.checked_mul(10)?.checked_add(u64::from(digit))?;
        }
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(method: Method, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::builder().method(method).uri("/rest/v1/items?id=eq.1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn head(raw: &str, head_request: bool) -> Result<Parsed, Malformed> {
        parse_head(&mut BytesMut::from(raw), head_request)
    }

    fn parsed(raw: &str) -> Head {
        match head(raw, false) {
            Ok(Parsed::Head(h)) => h,
            other => panic!("not a head: {other:?}"),
        }
    }

    #[test]
    fn request_framing_follows_the_client_then_the_body() {
        let mut p = parts(Method::POST, &[("content-length", "5")]);
        assert_eq!(frame_request(&mut p, false, None), Ok(Sent::Length(5)));
        let mut p = parts(Method::POST, &[]);
        assert_eq!(frame_request(&mut p, true, Some(0)), Ok(Sent::Nothing));
        assert_eq!(p.headers["content-length"], "0", "a POST says it has no body");
        let mut p = parts(Method::GET, &[]);
        assert_eq!(frame_request(&mut p, true, Some(0)), Ok(Sent::Nothing));
        assert!(p.headers.is_empty(), "a GET says nothing");
        let mut p = parts(Method::PUT, &[]);
        assert_eq!(frame_request(&mut p, false, Some(12)), Ok(Sent::Length(12)));
        assert_eq!(p.headers["content-length"], "12");
        let mut p = parts(Method::POST, &[]);
        assert_eq!(frame_request(&mut p, false, None), Ok(Sent::Chunked));
        assert_eq!(p.headers["transfer-encoding"], "chunked");
        let mut p = parts(Method::POST, &[("content-length", "5x")]);
        assert!(frame_request(&mut p, false, None).is_err());
    }

    #[test]
    fn the_head_is_origin_form_http11_with_the_proxys_headers_around_the_clients() {
        let p = parts(Method::GET, &[("host", "client.example"), ("x-a", "1"), ("x-forwarded-for", "10.0.0.9")]);
        let fwd = Forwarded {
            host: HeaderValue::from_static("v2.example"),
            chain: HeaderValue::from_static("10.0.0.9, 127.0.0.1"),
            replaces_chain: true,
            proto: Some(HeaderValue::from_static("http")),
            original_host: Some(HeaderValue::from_static("client.example")),
            replaces_claims: true,
        };
        let head = encode_head(&p, &fwd);
        let expected = "GET /rest/v1/items?id=eq.1 HTTP/1.1\r\nhost: v2.example\r\nx-a: 1\r\n\
                        x-forwarded-for: 10.0.0.9, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
                        x-forwarded-host: client.example\r\n\r\n";
        assert_eq!(String::from_utf8_lossy(&head), expected);
        assert!(head.capacity() <= head.len() + 2, "sized for what is written, in one allocation");
    }

    #[test]
    fn a_head_in_pieces_then_whole() {
        let raw = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nX-Odd : yes\r\n\r\nok";
        let mut buf = BytesMut::from(&raw[..20]);
        assert!(matches!(parse_head(&mut buf, false), Ok(Parsed::Partial)));
        let mut buf = BytesMut::from(raw);
        let Ok(Parsed::Head(h)) = parse_head(&mut buf, false) else { panic!("whole head") };
        assert_eq!((h.status, h.framing, h.reusable), (StatusCode::OK, Framing::Length(2), true));
        assert_eq!(h.headers["x-odd"], "yes", "space before the colon tolerated");
        assert_eq!(&buf[..], b"ok", "the body stays in the buffer");
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert!(matches!(parse_head(&mut buf, false), Ok(Parsed::Interim)));
        let Ok(Parsed::Head(h)) = parse_head(&mut buf, false) else { panic!("final head") };
        assert_eq!((h.status, h.framing), (StatusCode::NO_CONTENT, Framing::Empty));
    }

    #[test]
    fn body_framing() {
        let f = |raw: &str| parsed(raw).framing;
        assert_eq!(f("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"), Framing::Chunked);
        assert_eq!(f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"), Framing::Close);
        assert_eq!(f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked \r\n\r\n"), Framing::Chunked);
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n"),
            Framing::Close
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n"), Framing::Length(3));
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n"), Framing::Close);
        assert_eq!(f("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), Framing::Empty);
        assert_eq!(f("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"), Framing::Empty);
        assert_eq!(f("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"), Framing::Upgrade);
        let Ok(Parsed::Head(h)) = head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true) else { panic!() };
        assert_eq!(h.framing, Framing::Empty, "the answer to HEAD has no body");
    }

    #[test]
    fn when_the_connection_is_reused() {
        let r = |raw: &str| parsed(raw).reusable;
        assert!(r("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n"));
        assert!(!r("HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n"));
        assert!(!r("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"));
        assert!(r("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n"));
        assert!(!r("HTTP/1.1 200 OK\r\n\r\n"), "delimited by close");
        assert!(!r("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"), "both framings");
    }

    #[test]
    fn hop_by_hop_headers_are_left_out_but_for_an_upgrade() {
        let h = parsed(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n",
        );
        assert_eq!(h.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-a", "content-length"]);
        let h = parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n");
        assert_eq!((h.framing, h.headers.len()), (Framing::Chunked, 0), "framing read, headers left out");
        // Naming another header: `Connection` stays, for the rewrite to remove both.
        let h = parsed("HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!((h.headers["connection"].to_str().unwrap(), h.reusable), ("close, X-Hop", false));
        assert!(h.headers.contains_key("x-hop"));
        let h = parsed("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(
            (h.headers["connection"].to_str().unwrap(), h.headers["upgrade"].to_str().unwrap()),
            ("Upgrade", "websocket")
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1,\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad\0name: x\r\n\r\n",
        ] {
            assert!(head(raw, false).is_err(), "{raw:?}");
        }
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(head(&long, false).unwrap_err(), Malformed("head too large"));
        let many: String = (0..200).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), false).is_err());
    }

    #[test]
    fn a_length_beside_transfer_encoding_or_in_a_list_never_reaches_the_client() {
        let h = parsed("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
        assert!(!h.headers.contains_key("content-length"), "a stale length would truncate the client's copy");
        let h = parsed("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(h.headers.get_all("content-length").iter().collect::<Vec<_>>(), ["5"]);
        let h = parsed("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(h.headers.get_all("content-length").iter().collect::<Vec<_>>(), ["5"]);
        let mut p = parts(Method::POST, &[("content-length", "3, 3")]);
        assert_eq!(frame_request(&mut p, false, None), Ok(Sent::Length(3)));
        assert_eq!(p.headers.get_all("content-length").iter().collect::<Vec<_>>(), ["3"]);
    }

    #[test]
    fn transfer_encoding_in_an_http_1_0_response_is_refused() {
        let raw = "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(head(raw, false).unwrap_err(), Malformed("transfer-encoding in an HTTP/1.0 response"));
    }
}
