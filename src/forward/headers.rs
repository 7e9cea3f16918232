//! Header rewrites between client and upstream: hop-by-hop headers stripped (kept for
//! upgrades), `Host` set to the upstream's, `X-Forwarded-*` added, HTTP/2 requests
//! turned into HTTP/1.1. Pure functions over request and response parts.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Uri, Version, request};

use crate::backend::BackendId;
use crate::config::BaseUrl;
pub use crate::upstream::wire::Forwarded;
use crate::upstream::wire::{HOP_BY_HOP, X_FORWARDED_FOR, hop_by_hop_index};
#[cfg(test)]
use crate::upstream::wire::{X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// The response header naming the backend that answered.
pub static BACKEND_HEADER: HeaderName = HeaderName::from_static("x-switchyard-backend");

/// Headers a `Connection` header cannot nominate for removal.
const PROTECTED: [&str; 6] =
    ["host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"];

/// What one pass over a request's header names found: what the request path would
/// otherwise look up one name at a time (a hash and a probe each): the hop-by-hop
/// headers, those the forwarding headers depend on, whether the client asked for an
/// upgrade, and for the newer error shape.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    hop_by_hop: [bool; HOP_BY_HOP.len()],
    host: Option<HeaderValue>,
    chain: bool,
    proto: bool,
    forwarded_host: bool,
    upgrade: bool,
    versioned: bool,
    expect: bool,
}

impl Survey {
    /// The survey of `headers`.
    pub fn of(headers: &HeaderMap) -> Survey {
        let mut seen = Survey::default();
        for (name, value) in headers {
            match name.as_str() {
                "host" => seen.host = seen.host.or_else(|| Some(value.clone())),
                "x-forwarded-for" => seen.chain = true,
                "x-forwarded-proto" => seen.proto = true,
                "x-forwarded-host" => seen.forwarded_host = true,
                "x-supabase-api-version" => seen.versioned = true,
                "expect" => seen.expect = true,
                _ => {
                    if let Some(i) = hop_by_hop_index(name) {
                        seen.hop_by_hop[i] = true;
                    }
                }
            }
        }
        // Both names present (rare): then their values decide.
        seen.upgrade = seen.hop_by_hop[0] && seen.hop_by_hop[6] && is_upgrade(headers);
        seen
    }

    /// Whether the request asks for a WebSocket upgrade ([`is_upgrade`]).
    pub fn upgrade(&self) -> bool {
        self.upgrade
    }

    /// Whether the request asks for the newer error shape (`X-Supabase-Api-Version`).
    pub fn versioned(&self) -> bool {
        self.versioned
    }
}

/// A client connection as the forwarding headers describe it: its address as
/// `X-Forwarded-For` carries it (formatted once per connection, not per request),
/// whether it came over TLS, and whether it is a trusted proxy (`server.trusted_proxies`),
/// whose own `X-Forwarded-Proto`/`-Host` are kept.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    addr: HeaderValue,
    https: bool,
    trusted: bool,
}

impl ClientAddr {
    /// A plain-HTTP client, not trusted, connected from `ip`.
    pub fn new(ip: IpAddr) -> ClientAddr {
        ClientAddr::connection(ip, false, false)
    }

    /// A client connected from `ip`, over TLS when `https`, trusted or not.
    pub fn connection(ip: IpAddr, https: bool, trusted: bool) -> ClientAddr {
        let addr = HeaderValue::try_from(ip.to_string()).expect("an IP address is digits, dots and colons");
        ClientAddr { addr, https, trusted }
    }

    /// The address as text.
    pub fn as_bytes(&self) -> &[u8] {
        self.addr.as_bytes()
    }
}

/// Whether the comma-separated list header `name` holds `token` (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a request asks for a WebSocket upgrade (HTTP/1.1 `Connection: upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, &header::CONNECTION, "upgrade") && has_token(headers, &header::UPGRADE, "websocket")
}

/// Removes hop-by-hop headers, those named in `Connection` included. For an upgrade
/// the `Upgrade` header and `Connection: upgrade` are kept: they are the point.
/// `present` says which of [`HOP_BY_HOP`] are there: one pass over the names finds
/// them (usually none, or only `Connection`), instead of a look-up per name.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool, present: [bool; HOP_BY_HOP.len()]) {
    if !present.contains(&true) {
        return;
    }
    // Names a `Connection` header lists beyond the usual ones (`close`, `keep-alive`,
    // `upgrade` need no lookup of their own).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // What the proxy sets or frames the message by is never dropped on a client's
        // say-so: `Connection: x-forwarded-proto` must not remove what the proxy forwards.
        .filter(|t| !t.eq_ignore_ascii_case("close") && !PROTECTED.iter().any(|p| t.eq_ignore_ascii_case(p)))
        .filter(|t| !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h.as_str())))
        .filter_map(|t| HeaderName::try_from(t).ok())
        .collect();
    let kept_upgrade = if upgrade { headers.get(header::UPGRADE).cloned() } else { None };
    let listed = HOP_BY_HOP.iter().zip(present).filter_map(|(h, p)| p.then_some(h));
    for name in named.iter().chain(listed) {
        headers.remove(name);
    }
    if let Some(u) = kept_upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Turns a client request head, as `seen`, into the upstream request head for
/// `upstream`: the URI in origin form (the backend's path prefix is added last, by
/// [`BaseUrl::prefixed`], after translation has seen the client's path), and the
/// headers the proxy sets, which go on the wire after the client's.
pub fn prepare_request(
    parts: &mut request::Parts,
    upstream: &BaseUrl,
    peer: &ClientAddr,
    seen: Survey,
) -> Result<Forwarded, http::Error> {
    strip_hop_by_hop(&mut parts.headers, seen.upgrade, seen.hop_by_hop);
    if seen.expect {
        // Answered here (hyper's server sends 100 Continue when the body is first
        // read): an upstream told to expect would be free to answer before the body
        // and leave it on the connection to be read as the next request.
        parts.headers.remove(header::EXPECT);
    }
    // The host the client asked for: its `Host` header, else the URI's authority.
    let authority = || parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let original_host = seen.host.or_else(authority);
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = Version::HTTP_11;
    let chain = if seen.chain {
        // Every line of the chain, in order (a proxy in front may have added its own
        // line rather than joined the list), then this client.
        let mut chain: Vec<&str> =
            parts.headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
        chain.push(peer.addr.to_str().unwrap_or_default());
        HeaderValue::try_from(chain.join(", "))?
    } else {
        peer.addr.clone()
    };
    // A trusted proxy in front may have terminated TLS: what it said is kept. Anyone
    // else's say is replaced by what this connection is.
    let proto = HeaderValue::from_static(if peer.https { "https" } else { "http" });
    Ok(Forwarded {
        // The upstream's own host: Supabase (and Realtime's tenant lookup) key on it.
        host: upstream.host.clone(),
        chain,
        replaces_chain: seen.chain,
        proto: (!(peer.trusted && seen.proto)).then_some(proto),
        original_host: original_host.filter(|_| !(peer.trusted && seen.forwarded_host)),
        replaces_claims: !peer.trusted,
    })
}

/// Cleans an upstream response head and labels it with the backend. `switching` is
/// true for a `101 Switching Protocols` answer to an upgrade.
pub fn prepare_response(headers: &mut HeaderMap, switching: bool, backend: BackendId) {
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    strip_hop_by_hop(headers, switching, present);
    headers.insert(BACKEND_HEADER.clone(), HeaderValue::from_static(backend.as_str()));
}

/// The `Set-Cookie` value that keeps an anonymous browser in its cohort for a year.
pub fn cohort_cookie(name: &str, percentile: u8) -> HeaderValue {
    let v = format!("{name}={percentile}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax");
    HeaderValue::from_str(&v).expect("cookie name validated at config load")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::builder().uri(uri).version(Version::HTTP_2);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn rewrites_for_the_upstream() {
        let mut p = parts(
            "/rest/v1/t?select=*,a(b)&id=eq.%C3%A9",
            &[
                ("host", "proxy.example"),
                ("connection", "keep-alive, x-drop-me, host"),
                ("x-drop-me", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("upgrade", "h2c"),
                ("x-forwarded-for", "10.0.0.1"),
                ("apikey", "k"),
            ],
        );
        let up = BaseUrl::parse("https://abc.supabase.co").unwrap();
        let peer = ClientAddr::new("127.0.0.1".parse().unwrap());
        let seen = Survey::of(&p.headers);
        let fwd = prepare_request(&mut p, &up, &peer, seen).unwrap();
        assert_eq!(p.uri.to_string(), "/rest/v1/t?select=*,a(b)&id=eq.%C3%A9", "origin form, byte for byte");
        assert_eq!(p.version, Version::HTTP_11);
        assert_eq!(fwd.host(), "abc.supabase.co");
        assert!(fwd.leaves_out(&header::HOST), "the client's host is not forwarded");
        assert!(fwd.leaves_out(&X_FORWARDED_FOR), "nor its chain, which is forwarded in one line");
        assert_eq!(
            lines(&fwd),
            [
                ("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "proxy.example")
            ]
        );
        let h = &p.headers;
        assert_eq!(h["apikey"], "k");
        assert!(!fwd.leaves_out(&HeaderName::from_static("apikey")));
        for gone in ["connection", "x-drop-me", "keep-alive", "te", "upgrade"] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        let mut p = parts("/", &[("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2, 10.0.0.3")]);
        let seen = Survey::of(&p.headers);
        let fwd = prepare_request(&mut p, &up, &peer, seen).unwrap();
        assert_eq!(
            lines(&fwd)[0],
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"),
            "every line kept, in order, as one"
        );
    }

    fn lines(fwd: &Forwarded) -> Vec<(&str, &str)> {
        fwd.trailing().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect()
    }

    #[test]
    fn what_a_trusted_proxy_in_front_said_is_kept_and_anyone_else_s_replaced() {
        let claims = [("host", "a.example"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "lb.example")];
        let up = BaseUrl::parse("https://abc.supabase.co").unwrap();
        let ip = "10.1.2.3".parse().unwrap();
        let mut p = parts("/rest/v1/t", &claims);
        let seen = Survey::of(&p.headers);
        let fwd = prepare_request(&mut p, &up, &ClientAddr::connection(ip, false, true), seen).unwrap();
        assert_eq!(lines(&fwd), [("x-forwarded-for", "10.1.2.3")], "the proxy's proto and host stay, unchanged");
        assert!(!fwd.leaves_out(&X_FORWARDED_FOR), "no chain of the client's to replace");
        assert!(!fwd.leaves_out(&X_FORWARDED_PROTO) && !fwd.leaves_out(&X_FORWARDED_HOST));
        assert_eq!(p.headers["x-forwarded-proto"], "https");

        let mut p = parts("/rest/v1/t", &claims);
        let seen = Survey::of(&p.headers);
        let fwd = prepare_request(&mut p, &up, &ClientAddr::new(ip), seen).unwrap();
        assert_eq!(
            lines(&fwd),
            [("x-forwarded-for", "10.1.2.3"), ("x-forwarded-proto", "http"), ("x-forwarded-host", "a.example")],
            "an untrusted client's claims are replaced by what the connection is"
        );
        assert!(fwd.leaves_out(&X_FORWARDED_PROTO) && fwd.leaves_out(&X_FORWARDED_HOST));

        let mut p = parts("/rest/v1/t", &claims[..1]);
        let seen = Survey::of(&p.headers);
        let fwd = prepare_request(&mut p, &up, &ClientAddr::connection(ip, true, false), seen).unwrap();
        assert_eq!(lines(&fwd)[1], ("x-forwarded-proto", "https"), "set from the TLS connection");
    }

    #[test]
    fn keeps_upgrade_headers_for_websockets() {
        let mut p = parts(
            "http://proxy:8080/realtime/v1/websocket?apikey=a&vsn=2.0.0",
            &[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "x")],
        );
        assert!(is_upgrade(&p.headers));
        let up = BaseUrl::parse("http://127.0.0.1:9").unwrap();
        let seen = Survey::of(&p.headers);
        let fwd = prepare_request(&mut p, &up, &ClientAddr::new("::1".parse().unwrap()), seen).unwrap();
        assert_eq!(p.headers["connection"], "upgrade");
        assert_eq!(p.headers["upgrade"], "websocket");
        assert_eq!(lines(&fwd)[2], ("x-forwarded-host", "proxy:8080"), "from the URI's authority");
        assert_eq!(p.uri.to_string(), "/realtime/v1/websocket?apikey=a&vsn=2.0.0");
    }

    #[test]
    fn one_pass_finds_an_upgrade_and_the_newer_error_shape() {
        let survey = |h: &[(&str, &str)]| Survey::of(&parts("/", h).headers);
        let s = survey(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(s.upgrade() && !s.versioned());
        assert!(!survey(&[("upgrade", "websocket")]).upgrade(), "no Connection: upgrade");
        assert!(!survey(&[("connection", "keep-alive"), ("upgrade", "websocket")]).upgrade());
        assert!(!survey(&[("connection", "upgrade"), ("upgrade", "h2c")]).upgrade(), "not a WebSocket");
        assert!(survey(&[("x-supabase-api-version", "2024-01-01")]).versioned());
        assert!(!survey(&[("x-supabase-api-versions", "1")]).versioned());
    }

    #[test]
    fn hop_by_hop_names_are_found_by_their_text() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for other in ["host", "x-connection", "connections", "content-length", "tes"] {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(other)), None, "{other}");
        }
    }

    #[test]
    fn response_is_labelled_and_cleaned() {
        let mut h = HeaderMap::new();
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-profile", HeaderValue::from_static("public"));
        prepare_response(&mut h, false, BackendId::V2);
        assert_eq!(h["x-switchyard-backend"], "v2");
        assert!(!h.contains_key("transfer-encoding"));
        assert_eq!(h["content-profile"], "public");
        assert!(cohort_cookie("c", 7).to_str().unwrap().starts_with("c=7; Path=/"));
    }

    #[test]
    fn a_client_cannot_remove_what_the_proxy_forwards_or_frames_by() {
        let mut p = parts(
            "/rest/v1/t",
            &[
                ("connection", "x-forwarded-proto, X-Forwarded-Host, content-length, forwarded, x-other"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "lb.example"),
                ("content-length", "2"),
                ("x-other", "1"),
                ("expect", "100-continue"),
            ],
        );
        let up = BaseUrl::parse("http://127.0.0.1:9").unwrap();
        let seen = Survey::of(&p.headers);
        prepare_request(&mut p, &up, &ClientAddr::new("10.1.2.3".parse().unwrap()), seen).unwrap();
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        assert_eq!(p.headers["x-forwarded-host"], "lb.example");
        assert_eq!(p.headers["content-length"], "2");
        assert!(!p.headers.contains_key("x-other"), "other names it lists are still removed");
        assert!(!p.headers.contains_key("expect"), "Expect is answered by the proxy, never forwarded");
    }
}
