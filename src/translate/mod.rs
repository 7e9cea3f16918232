//! Translation for requests sent to a project other than the one the client speaks
//! to (docs/translation.md): API keys and bearer keys swapped for the target's, user JWTs
//! re-signed for it, moved tables and RPC functions addressed in their new schema,
//! renamed Edge Functions, and the response's profile turned back to `public`. Built
//! once per config; every rewrite is a plain function over the request head.

pub mod keys;
pub mod schema;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, request};

use crate::backend::{BackendId, PerBackend};
use crate::config::Config;
use crate::identity::{self, Token};
use schema::{CrossSchemaEmbed, RestPath, SchemaMap};

/// What was translated; the `kind` label of `switchyard_translations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `apikey` header swapped for the target project's key.
    ApiKey,
    /// `Authorization: Bearer <project key>` swapped.
    BearerKey,
    /// User JWT re-signed with the target project's secret.
    JwtResign,
    /// Realtime's `apikey` query parameter swapped.
    RealtimeApiKey,
    /// Table path and profile rewritten to the table's v2 schema.
    Table,
    /// RPC path and profile rewritten.
    Rpc,
    /// Embedded table in `select=` renamed.
    Embed,
    /// Edge Function path renamed.
    EdgeFunction,
    /// Response `Content-Profile` turned back to `public`.
    ResponseProfile,
    /// A cross-schema embed answered 400.
    EmbedRejected,
}

impl Kind {
    /// Every kind, for metric initialisation.
    pub const ALL: [Kind; 10] = [
        Kind::ApiKey,
        Kind::BearerKey,
        Kind::JwtResign,
        Kind::RealtimeApiKey,
        Kind::Table,
        Kind::Rpc,
        Kind::Embed,
        Kind::EdgeFunction,
        Kind::ResponseProfile,
        Kind::EmbedRejected,
    ];

    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::ApiKey => "apikey",
            Kind::BearerKey => "bearer_key",
            Kind::JwtResign => "jwt_resign",
            Kind::RealtimeApiKey => "realtime_apikey",
            Kind::Table => "table",
            Kind::Rpc => "rpc",
            Kind::Embed => "embed",
            Kind::EdgeFunction => "edge_function",
            Kind::ResponseProfile => "response_profile",
            Kind::EmbedRejected => "embed_rejected",
        }
    }
}

static APIKEY: HeaderName = HeaderName::from_static("apikey");
static ACCEPT_PROFILE: HeaderName = HeaderName::from_static("accept-profile");
static CONTENT_PROFILE: HeaderName = HeaderName::from_static("content-profile");

/// The translations of one snapshot.
pub struct Translator {
    keys: keys::KeyMap,
    schema: SchemaMap,
    edge: PerBackend<std::collections::BTreeMap<String, String>>,
    reject_embeds: bool,
}

/// What the response needs after a request was translated.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// Kinds applied, in order.
    pub kinds: Vec<Kind>,
    /// The schema the request was sent to, whose `Content-Profile` goes back to `public`.
    pub profile: Option<String>,
}

impl Translator {
    /// Prepares key pairs, signers and name maps.
    pub fn new(config: &Config, keyring: std::sync::Arc<crate::identity::Keyring>) -> Translator {
        Translator {
            keys: keys::KeyMap::new(&config.backends, keyring),
            schema: config.translation.schema.clone(),
            edge: config.translation.edge_functions.clone(),
            reject_embeds: config.translation.reject_cross_schema_embeds,
        }
    }

    /// Rewrites an upstream request head (already pointed at `to`) for that project.
    /// `token` is what the bearer token was found to be. Keys are swapped in both
    /// directions; the schema map applies to requests sent to v2.
    pub fn request(
        &self,
        parts: &mut request::Parts,
        to: BackendId,
        token: Option<&Token>,
    ) -> Result<Applied, CrossSchemaEmbed> {
        let mut applied = Applied::default();
        self.credentials(parts, to, token, &mut applied);
        // Paths are copied only when a map may apply to them.
        let path = parts.uri.path();
        if let Some(rest) = path.strip_prefix("/functions/v1/") {
            if !self.edge.get(to).is_empty() {
                let rest = rest.to_string();
                self.edge_function(parts, to, &rest, &mut applied);
            }
        } else if to == BackendId::V2 && !self.schema.is_empty() && path.starts_with("/rest/v1/") {
            let path = path.to_string();
            self.rest(parts, &path, &mut applied)?;
        }
        Ok(applied)
    }

    fn credentials(&self, parts: &mut request::Parts, to: BackendId, token: Option<&Token>, applied: &mut Applied) {
        let h = &mut parts.headers;
        // Each header is looked up only if something could come of it.
        if self.keys.any_pair()
            && let Some(key) = h.get(&APIKEY).and_then(|v| v.to_str().ok())
            && let Some(new) = self.keys.counterpart(key, to).and_then(|k| HeaderValue::from_str(k).ok())
        {
            h.insert(APIKEY.clone(), new);
            applied.kinds.push(Kind::ApiKey);
        }
        // Only a token of the other project is translated (`token` is what the bearer
        // token was found to be), so only then is the header read again.
        let translated = match token {
            Some(Token::ApiKey(from)) if *from != to => identity::bearer(h)
                .map(|bearer| (self.keys.counterpart(bearer, to).map(str::to_string), Kind::BearerKey)),
            Some(t @ Token::Jwt { issuer: Some(from), signature, .. }) if *from != to && t.verified() => {
                identity::bearer(h).map(|bearer| (self.keys.resign(bearer, signature, to), Kind::JwtResign))
            }
            _ => None,
        };
        if let Some((Some(new), kind)) = translated
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {new}"))
        {
            h.insert(header::AUTHORIZATION, v);
            applied.kinds.push(kind);
        }
        if parts.uri.path().starts_with("/realtime/v1/")
            && let Some(query) = parts.uri.query()
            && let Some(new_query) = self.realtime_query(query, to)
            && let Ok(uri) = with_path_and_query(&parts.uri, parts.uri.path(), Some(&new_query))
        {
            parts.uri = uri;
            applied.kinds.push(Kind::RealtimeApiKey);
        }
    }

    /// The query with its `apikey` parameter swapped, if it needs to be.
    fn realtime_query(&self, query: &str, to: BackendId) -> Option<String> {
        let mut changed = false;
        let parts: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("apikey", value)) => match self.keys.counterpart(value, to) {
                    Some(new) => {
                        changed = true;
                        format!("apikey={new}")
                    }
                    None => pair.to_string(),
                },
                _ => pair.to_string(),
            })
            .collect();
        changed.then(|| parts.join("&"))
    }

    fn edge_function(&self, parts: &mut request::Parts, to: BackendId, rest: &str, applied: &mut Applied) {
        let (name, tail) = rest.split_once('/').map_or((rest, None), |(n, t)| (n, Some(t)));
        let Some(new) = self.edge.get(to).get(name) else { return };
        let path = match tail {
            Some(t) => format!("/functions/v1/{new}/{t}"),
            None => format!("/functions/v1/{new}"),
        };
        if let Ok(uri) = with_path_and_query(&parts.uri, &path, parts.uri.query()) {
            parts.uri = uri;
            applied.kinds.push(Kind::EdgeFunction);
        }
    }

    fn rest(&self, parts: &mut request::Parts, path: &str, applied: &mut Applied) -> Result<(), CrossSchemaEmbed> {
        let Some(rest_path) = RestPath::parse(path) else { return Ok(()) };
        // A client that already names a schema other than public knows where it goes.
        let asks_public = [&ACCEPT_PROFILE, &CONTENT_PROFILE]
            .iter()
            .filter_map(|n| parts.headers.get(*n))
            .all(|v| v.as_bytes() == b"public");
        if !asks_public {
            return Ok(());
        }
        let (target, kind, new_path) = match rest_path {
            RestPath::Table(t) => match self.schema.table(t) {
                Some(target) => {
                    let p = format!("/rest/v1/{}", target.name);
                    (target, Kind::Table, p)
                }
                None => return self.check_embeds(parts, t, applied),
            },
            RestPath::Rpc(f) => match self.schema.rpc(f) {
                Some(target) => {
                    let p = format!("/rest/v1/rpc/{}", target.name);
                    (target, Kind::Rpc, p)
                }
                None => return Ok(()),
            },
        };
        if let RestPath::Table(t) = rest_path {
            self.check_embeds(parts, t, applied)?;
        }
        if let Ok(uri) = with_path_and_query(&parts.uri, &new_path, parts.uri.query()) {
            parts.uri = uri;
        }
        let profile = HeaderValue::from_str(&target.schema).expect("schema names are validated");
        let wanted =
            if matches!(parts.method, Method::GET | Method::HEAD) { &ACCEPT_PROFILE } else { &CONTENT_PROFILE };
        for name in [&ACCEPT_PROFILE, &CONTENT_PROFILE] {
            if name == wanted || parts.headers.contains_key(name) {
                parts.headers.insert(name.clone(), profile.clone());
            }
        }
        applied.kinds.push(kind);
        applied.profile = Some(target.schema);
        Ok(())
    }

    /// Checks (and renames) the embeds of a `select=` parameter under table `root`.
    fn check_embeds(
        &self,
        parts: &mut request::Parts,
        root: &str,
        applied: &mut Applied,
    ) -> Result<(), CrossSchemaEmbed> {
        let Some(query) = parts.uri.query() else { return Ok(()) };
        let mut rewrite = None;
        let mut pairs = Vec::new();
        for pair in query.split('&') {
            let rewritten = match pair.split_once('=') {
                Some(("select", raw)) if raw.contains('(') || raw.contains("%28") => {
                    let decoded = percent_decode(raw);
                    match schema::rewrite_select(&self.schema, root, &decoded) {
                        Ok(Some(new)) => {
                            let pair = format!("select={}", percent_encode(&new.select));
                            rewrite = Some(new);
                            Some(pair)
                        }
                        Ok(None) => None,
                        Err(e) if self.reject_embeds => return Err(e),
                        Err(_) => None,
                    }
                }
                _ => None,
            };
            pairs.push(rewritten.unwrap_or_else(|| pair.to_string()));
        }
        let Some(rewrite) = rewrite else { return Ok(()) };
        // Filters and modifiers of a renamed embed name it as the select did.
        for pair in &mut pairs {
            let (key, value) = pair.split_once('=').map_or((pair.as_str(), None), |(k, v)| (k, Some(v)));
            if let Some(new) = rewrite.key(key) {
                *pair = match value {
                    Some(v) => format!("{new}={v}"),
                    None => new,
                };
            }
        }
        if let Ok(uri) = with_path_and_query(&parts.uri, parts.uri.path(), Some(&pairs.join("&"))) {
            parts.uri = uri;
            applied.kinds.push(Kind::Embed);
        }
        Ok(())
    }

    /// Turns the response's `Content-Profile` back into what the client asked for.
    pub fn response(&self, headers: &mut HeaderMap, applied: &mut Applied) {
        let Some(schema) = &applied.profile else { return };
        if headers.get(&CONTENT_PROFILE).is_some_and(|v| v.as_bytes() == schema.as_bytes()) {
            headers.insert(CONTENT_PROFILE.clone(), HeaderValue::from_static("public"));
            applied.kinds.push(Kind::ResponseProfile);
        }
    }
}

fn with_path_and_query(uri: &http::Uri, path: &str, query: Option<&str>) -> Result<http::Uri, http::Error> {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut b = http::Uri::builder();
    if let Some(s) = uri.scheme() {
        b = b.scheme(s.clone());
    }
    if let Some(a) = uri.authority() {
        b = b.authority(a.clone());
    }
    b.path_and_query(pq).build()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes a query value as `URLSearchParams` does, which is what supabase-js sends.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Token;

    const CONFIG: &str = r#"
[backends.v1]
url = "http://127.0.0.1:18001"
anon_key = "anon-1"
service_role_key = "service-1"
jwt_secret = "secret-1"
[backends.v2]
url = "http://127.0.0.1:18002"
anon_key = "anon-2"
service_role_key = "service-2"
jwt_secret = "secret-2"
[translation.tables]
profiles = "shared_services"
orders = "marketplace"
order_items = "marketplace"
vendor_api_keys_v2 = "vendors.api_keys"
vendor_organizations = "vendors.organizations"
[translation.rpc]
search_memories = "security_service.search"
[translation.edge_functions.v2]
memory-create = "memory/create"
"#;

    fn translator() -> Translator {
        Translator::new(&Config::parse(CONFIG, &|_| None).unwrap(), crate::identity::Keyring::new())
    }

    fn head(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn keys_are_swapped_for_the_target() {
        let t = translator();
        let mut p =
            head("GET", "http://u/rest/v1/unmapped", &[("apikey", "anon-1"), ("authorization", "Bearer service-1")]);
        let applied = t.request(&mut p, BackendId::V2, Some(&Token::ApiKey(BackendId::V1))).unwrap();
        assert_eq!(p.headers["apikey"], "anon-2");
        assert_eq!(p.headers["authorization"], "Bearer service-2");
        assert_eq!(applied.kinds, [Kind::ApiKey, Kind::BearerKey]);
        // And back.
        let mut p = head("GET", "http://u/rest/v1/x", &[("apikey", "anon-2")]);
        t.request(&mut p, BackendId::V1, None).unwrap();
        assert_eq!(p.headers["apikey"], "anon-1");
        // Unknown keys pass.
        let mut p = head("GET", "http://u/rest/v1/x", &[("apikey", "other")]);
        assert!(t.request(&mut p, BackendId::V2, None).unwrap().kinds.is_empty());
        assert_eq!(p.headers["apikey"], "other");
    }

    #[test]
    fn realtime_apikey_parameter() {
        let t = translator();
        let mut p = head("GET", "http://u/realtime/v1/websocket?apikey=anon-1&vsn=2.0.0", &[]);
        t.request(&mut p, BackendId::V2, None).unwrap();
        assert_eq!(p.uri.query(), Some("apikey=anon-2&vsn=2.0.0"));
    }

    #[test]
    fn tables_move_with_their_profile() {
        let t = translator();
        let mut p =
            head("GET", "http://u/rest/v1/vendor_api_keys_v2?select=id&id=eq.3", &[("accept-profile", "public")]);
        let mut applied = t.request(&mut p, BackendId::V2, None).unwrap();
        assert_eq!(p.uri.path(), "/rest/v1/api_keys");
        assert_eq!(p.uri.query(), Some("select=id&id=eq.3"));
        assert_eq!(p.headers["accept-profile"], "vendors");
        assert!(!p.headers.contains_key("content-profile"));
        let mut resp = HeaderMap::new();
        resp.insert("content-profile", HeaderValue::from_static("vendors"));
        t.response(&mut resp, &mut applied);
        assert_eq!(resp["content-profile"], "public");
        assert_eq!(applied.kinds, [Kind::Table, Kind::ResponseProfile]);

        let mut p = head("POST", "http://u/rest/v1/rpc/search_memories", &[("content-profile", "public")]);
        t.request(&mut p, BackendId::V2, None).unwrap();
        assert_eq!(
            (p.uri.path(), &p.headers["content-profile"]),
            ("/rest/v1/rpc/search", &HeaderValue::from_static("security_service"))
        );
        // Not for v1, nor for a client that names its schema.
        let mut p = head("GET", "http://u/rest/v1/profiles", &[("accept-profile", "public")]);
        t.request(&mut p, BackendId::V1, None).unwrap();
        assert_eq!(p.uri.path(), "/rest/v1/profiles");
        let mut p = head("GET", "http://u/rest/v1/profiles", &[("accept-profile", "custom")]);
        t.request(&mut p, BackendId::V2, None).unwrap();
        assert_eq!(p.uri.path(), "/rest/v1/profiles");
    }

    #[test]
    fn embeds_are_renamed_or_refused() {
        let t = translator();
        let mut p = head(
            "GET",
            "http://u/rest/v1/vendor_organizations?select=id%2Ckeys%3Avendor_api_keys_v2%28*%29&limit=1",
            &[],
        );
        t.request(&mut p, BackendId::V2, None).unwrap();
        assert_eq!(p.uri.query(), Some("select=id%2Ckeys%3Aapi_keys%28*%29&limit=1"));
        let mut p = head("GET", "http://u/rest/v1/profiles?select=*,orders(*)", &[]);
        let e = t.request(&mut p, BackendId::V2, None).unwrap_err();
        assert_eq!((e.parent.0.as_str(), e.child.0.as_str()), ("profiles", "orders"));
    }

    #[test]
    fn edge_functions_are_renamed_for_their_backend() {
        let t = translator();
        let mut p = head("POST", "http://u/functions/v1/memory-create?x=1", &[]);
        t.request(&mut p, BackendId::V2, None).unwrap();
        assert_eq!(p.uri.path_and_query().unwrap().as_str(), "/functions/v1/memory/create?x=1");
        let mut p = head("POST", "http://u/functions/v1/memory-create", &[]);
        t.request(&mut p, BackendId::V1, None).unwrap();
        assert_eq!(p.uri.path(), "/functions/v1/memory-create");
    }

    #[test]
    fn percent_coding_round_trips() {
        assert_eq!(percent_decode("a%2Cb%28*%29+c%zz"), "a,b(*) c%zz");
        assert_eq!(percent_encode("id,keys:api_keys(*) x"), "id%2Ckeys%3Aapi_keys%28*%29+x");
    }
}
