//! The request head, as a pure function over the connection's read buffer: parsed
//! when it is a request the plain path serves, otherwise left, unread, to hyper's
//! server, which answers everything else (HTTP/1.0, `HEAD`, upgrades, `Expect`,
//! chunked or large uploads, malformed and oversized heads) as it always has.

use std::mem::MaybeUninit;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use crate::proxy::Inbound;
use crate::upstream::wire::parse_length;

/// The most header lines parsed here; a request with more goes to hyper's server,
/// which applies `limits.max_header_count` (and answers 431).
const MAX_HEADERS: usize = 128;
/// The largest request (head and body) read whole before it is handled: a bigger
/// body is streamed, by hyper's server.
pub const MAX_WHOLE: usize = 64 * 1024;

/// What the front of the read buffer holds.
#[derive(Debug)]
pub enum Step {
    /// Not a whole request head yet.
    Partial,
    /// A whole head, its body not yet.
    Body,
    /// A request the plain path serves.
    Ready(Head),
    /// One it leaves to hyper's server.
    Handoff,
}

/// A parsed request head: where its parts sit in the buffer, and what its framing says.
#[derive(Debug)]
pub struct Head {
    method: Method,
    target: (usize, usize),
    headers: Vec<(HeaderName, usize, usize)>,
    /// Bytes of head.
    pub len: usize,
    /// Bytes of body after it.
    pub body: usize,
    /// Whether the client asked to close the connection after this request.
    pub close: bool,
}

/// Reads the request at the front of `buf`, with at most `max_headers` header lines
/// and `max_head` bytes of head.
pub fn parse(buf: &[u8], max_headers: usize, max_head: usize) -> Step {
    // Left uninitialised: zeroing every slot would cost more than parsing a small head.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots[..max_headers.min(MAX_HEADERS)]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Step::Partial,
        _ => return Step::Handoff,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else { return Step::Handoff };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Step::Handoff };
    if method == Method::HEAD || method == Method::CONNECT || !target.starts_with('/') {
        return Step::Handoff;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.as_ptr() as usize - base + s.len());
    let mut headers = Vec::with_capacity(req.headers.len());
    let (mut body, mut close) = (None, false);
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else { return Step::Handoff };
        if name == header::CONTENT_LENGTH {
            match (body, parse_length(h.value)) {
                (None, Some(n)) => body = Some(n),
                _ => return Step::Handoff,
            }
        } else if name == header::CONNECTION {
            let Some(c) = connection_close(h.value) else { return Step::Handoff };
            close |= c;
        } else if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return Step::Handoff;
        }
        let (from, to) = at(h.value);
        headers.push((name, from, to));
    }
    let body = body.unwrap_or(0);
    if body > (MAX_WHOLE - len.min(MAX_WHOLE)) as u64 {
        return Step::Handoff;
    }
    let body = body as usize;
    if buf.len() < len + body {
        return Step::Body;
    }
    Step::Ready(Head { method, target: at(target.as_bytes()), headers, len, body, close })
}

/// Whether a `Connection` header asks to close; `None` for any token but `close` and
/// `keep-alive` (an upgrade, or headers named hop-by-hop: hyper's server handles those).
fn connection_close(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
            return None;
        }
    }
    Some(close)
}

impl Head {
    /// The request (its body still to be set), its target and header values sharing
    /// `head` (the bytes parsed). Fails only on a target or a value `http` refuses that
    /// the parser let through.
    pub fn request(self, head: &Bytes) -> Result<Request<Inbound>, http::Error> {
        let uri = Uri::from_maybe_shared(head.slice(self.target.0..self.target.1))?;
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, from, to) in self.headers {
            headers.append(name, HeaderValue::from_maybe_shared(head.slice(from..to))?);
        }
        let mut req = Request::new(Inbound::Read(None));
        *req.method_mut() = self.method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(wire: &str) -> Head {
        match parse(wire.as_bytes(), 100, 8192) {
            Step::Ready(h) => h,
            other => panic!("{wire:?}: {other:?}"),
        }
    }

    fn step(wire: &str) -> &'static str {
        match parse(wire.as_bytes(), 100, 8192) {
            Step::Partial => "partial",
            Step::Body => "body",
            Step::Ready(_) => "ready",
            Step::Handoff => "handoff",
        }
    }

    #[test]
    fn a_get_becomes_the_request_it_says() {
        let wire = "GET /rest/v1/todos?select=* HTTP/1.1\r\nHost: a\r\nX-User-Id: u1\r\nx-user-id: u2\r\n\r\nNEXT";
        let head = ready(wire);
        assert_eq!((head.len, head.body, head.close), (wire.len() - 4, 0, false));
        let bytes = Bytes::from(wire);
        let req = head.request(&bytes).unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/rest/v1/todos?select=*");
        assert_eq!(req.version(), Version::HTTP_11);
        let ids: Vec<_> = req.headers().get_all("x-user-id").iter().collect();
        assert_eq!(ids, ["u1", "u2"]);
        assert_eq!(req.headers()["host"], "a");
        assert!(hyper::body::Body::is_end_stream(req.body()));
    }

    #[test]
    fn a_body_is_waited_for_until_it_is_whole() {
        let wire = "POST /rest/v1/t HTTP/1.1\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        let head = wire.find("{").unwrap();
        for cut in 1..wire.len() {
            assert_eq!(step(&wire[..cut]), if cut < head { "partial" } else { "body" }, "cut at {cut}");
        }
        let head = ready(wire);
        assert_eq!((head.body, head.len + head.body), (7, wire.len()));
    }

    #[test]
    fn a_target_http_refuses_fails_to_build() {
        // httparse lets `<`, `>` and a backtick through in a target; `http` does not.
        let wire = "GET /a<b HTTP/1.1\r\n\r\n";
        assert!(ready(wire).request(&Bytes::from(wire)).is_err());
    }

    #[test]
    fn connection_tokens() {
        assert!(ready("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").close);
        assert!(ready("GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n").close);
        assert!(!ready("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").close);
        assert_eq!(step("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), "handoff");
        assert_eq!(step("GET / HTTP/1.1\r\nConnection: x-secret\r\n\r\n"), "handoff");
    }

    #[test]
    fn what_hyper_answers_is_left_to_it() {
        for wire in [
            "GET / HTTP/1.0\r\n\r\n",
            "HEAD / HTTP/1.1\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 65536\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "G\0T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(step(wire), "handoff", "{wire:?}");
        }
    }

    #[test]
    fn header_limits_are_left_to_hyper() {
        let many: String = (0..9).map(|i| format!("x-{i}: v\r\n")).collect();
        let wire = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(wire.as_bytes(), 8, 8192), Step::Handoff));
        assert!(matches!(parse(wire.as_bytes(), 9, 8192), Step::Ready(_)));
        let long = format!("GET / HTTP/1.1\r\nx: {}", "v".repeat(100));
        assert!(matches!(parse(long.as_bytes(), 100, 64), Step::Handoff));
        assert!(matches!(parse(long.as_bytes(), 100, 8192), Step::Partial));
    }
}
