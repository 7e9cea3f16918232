//! A strict fake Supabase project, faithful where the proxy's translation matters: it
//! accepts only its own API keys, verifies user JWTs with its own secret, exposes only
//! its configured schemas (406 PGRST106 otherwise), finds tables and functions only
//! where they live, and answers in PostgREST's and GoTrue's shapes. It keeps rows in
//! memory so tests can see which project a write landed in, and records every request
//! it sees.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::{Body, Upstream, full, upstream};

/// What a fake project is.
#[derive(Clone)]
pub struct Spec {
    pub label: &'static str,
    pub anon: String,
    pub service: String,
    pub publishable: String,
    pub jwt_secret: String,
    /// Schemas PostgREST exposes (`db-schemas`).
    pub schemas: Vec<String>,
    /// (schema, table) pairs that exist.
    pub tables: Vec<(String, String)>,
    /// (schema, function) pairs that exist.
    pub rpc: Vec<(String, String)>,
    /// Edge Function paths that exist (`memory/create`).
    pub edge_functions: Vec<String>,
    /// Signing-keys mode: user tokens are signed with this key, and only tokens its
    /// published key set verifies are accepted (the HS256 secret no longer is).
    pub signing: Option<Arc<switchyard::jwk::SigningKey>>,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

/// A fake project's state, shared with the test.
pub struct Fake {
    pub spec: Spec,
    pub rows: Mutex<HashMap<(String, String), Vec<Value>>>,
    pub seen: Mutex<Vec<Seen>>,
    next_id: Mutex<u64>,
    /// The public keys it publishes at `/auth/v1/.well-known/jwks.json`.
    pub jwks: Mutex<Vec<Value>>,
    /// How often its key set was fetched.
    pub jwks_fetches: AtomicUsize,
    /// While set, its key set endpoint answers 503.
    pub jwks_down: AtomicBool,
}

impl Fake {
    /// The rows of `schema.table`.
    pub fn rows(&self, schema: &str, table: &str) -> Vec<Value> {
        self.rows.lock().unwrap().get(&(schema.to_string(), table.to_string())).cloned().unwrap_or_default()
    }

    /// Whether any request it saw carried `needle` in a header or the query.
    pub fn saw(&self, needle: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|s| {
            s.query.as_deref().is_some_and(|q| q.contains(needle))
                || s.headers.values().any(|v| String::from_utf8_lossy(v.as_bytes()).contains(needle))
        })
    }

    /// Its issuer claim for the given upstream address.
    pub fn issuer(url: &str) -> String {
        format!("{url}/auth/v1")
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(full(body.to_string()))
        .unwrap()
}

fn pgrst(status: StatusCode, code: &str, message: &str, details: Value, hint: Value) -> Response<Body> {
    reply(status, json!({"code": code, "details": details, "hint": hint, "message": message}))
}

fn gotrue(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut r = reply(status, json!({"code": status.as_u16(), "error_code": code, "msg": message}));
    r.headers_mut().insert("x-sb-error-code", code.parse().unwrap());
    r
}

/// Who the caller is: a key's role, or a verified user's claims.
enum Caller {
    Key(&'static str),
    User(Value),
}

impl Fake {
    fn key_role(&self, key: &str) -> Option<&'static str> {
        let s = &self.spec;
        if key == s.anon || key == s.publishable {
            Some("anon")
        } else if key == s.service {
            Some("service_role")
        } else {
            None
        }
    }

    /// Publishes `keys` (public JWKs) as its key set from now on.
    pub fn publish(&self, keys: Vec<Value>) {
        *self.jwks.lock().unwrap() = keys;
    }

    fn verify(&self, token: &str, check_exp: bool) -> Option<Value> {
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.validate_aud = false;
            v.validate_exp = check_exp;
            v.required_spec_claims.clear();
            v
        };
        if self.spec.signing.is_some() {
            // Its own published keys only, the algorithm the key's.
            let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
            let set = json!({ "keys": *self.jwks.lock().unwrap() }).to_string();
            let keys = switchyard::jwk::key_set(set.as_bytes()).ok()?.keys;
            let key = keys.iter().find(|k| k.kid.as_deref() == Some(kid.as_str()))?;
            return jsonwebtoken::decode::<Value>(token, &key.key, &validation(key.alg)).ok().map(|d| d.claims);
        }
        let key = DecodingKey::from_secret(self.spec.jwt_secret.as_bytes());
        jsonwebtoken::decode::<Value>(token, &key, &validation(Algorithm::HS256)).ok().map(|d| d.claims)
    }

    /// A user token as this project's Auth issues it.
    pub fn issue(&self, claims: Value) -> String {
        match &self.spec.signing {
            Some(key) => {
                use base64::Engine;
                let b64 = |v: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
                let message = format!("{}.{}", key.header(), b64(claims.to_string()));
                format!("{message}.{}", key.sign(message.as_bytes()).unwrap())
            }
            None => super::jwt(&self.spec.jwt_secret, claims),
        }
    }

    /// Kong's API-key gate, then the JWT check PostgREST/GoTrue do.
    #[allow(clippy::result_large_err)] // the refusal is the response itself
    fn authenticate(
        &self,
        headers: &HeaderMap,
        query_key: Option<&str>,
        auth_service: bool,
    ) -> Result<Caller, Response<Body>> {
        let key = headers.get("apikey").and_then(|v| v.to_str().ok()).or(query_key);
        let Some(role) = key.and_then(|k| self.key_role(k)) else {
            let hint = "Double check your Supabase `anon` or `service_role` API key.";
            return Err(reply(StatusCode::UNAUTHORIZED, json!({"message": "Invalid API key", "hint": hint})));
        };
        let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match bearer {
            None => Ok(Caller::Key(role)),
            Some(t) if self.key_role(t).is_some() => Ok(Caller::Key(self.key_role(t).unwrap())),
            Some(t) => match self.verify(t, true) {
                Some(claims) => Ok(Caller::User(claims)),
                None if auth_service => {
                    Err(gotrue(StatusCode::FORBIDDEN, "bad_jwt", "invalid JWT: unable to parse or verify signature"))
                }
                None => Err(pgrst(
                    StatusCode::UNAUTHORIZED,
                    "PGRST301",
                    "JWSError JWSInvalidSignature",
                    Value::Null,
                    Value::Null,
                )),
            },
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        // The key set is public (no API key), and its fetches are counted apart.
        if parts.uri.path() == "/auth/v1/.well-known/jwks.json" {
            self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            if self.jwks_down.load(Ordering::SeqCst) {
                return reply(StatusCode::SERVICE_UNAVAILABLE, json!({"message": "down"}));
            }
            return reply(StatusCode::OK, json!({ "keys": *self.jwks.lock().unwrap() }));
        }
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers.clone(),
        });
        let path = parts.uri.path().to_string();
        let query: Vec<(String, String)> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), decode(v)))
            .collect();
        let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());

        if let Some(rest) = path.strip_prefix("/storage/v1/object/sign/") {
            return match param("token").and_then(|t| self.verify(&t, true)) {
                Some(_) => reply(StatusCode::OK, json!({"object": rest, "project": self.spec.label})),
                None => reply(
                    StatusCode::BAD_REQUEST,
                    json!({"statusCode": "400", "error": "InvalidSignature", "message": "invalid signature"}),
                ),
            };
        }
        let caller = match self.authenticate(&parts.headers, param("apikey").as_deref(), path.starts_with("/auth/v1/"))
        {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let sub = match &caller {
            Caller::User(c) => c["sub"].clone(),
            Caller::Key(_) => Value::Null,
        };
        if path == "/realtime/v1/websocket" {
            return reply(StatusCode::OK, json!({"project": self.spec.label, "realtime": "ok"}));
        }
        if path == "/auth/v1/token" {
            return self.token(&bytes);
        }
        if path == "/auth/v1/user" {
            return match caller {
                Caller::User(c) => reply(
                    StatusCode::OK,
                    json!({"id": c["sub"], "aud": "authenticated", "role": "authenticated", "email": c["email"]}),
                ),
                Caller::Key(_) => {
                    gotrue(StatusCode::UNAUTHORIZED, "no_authorization", "This endpoint requires a valid Bearer token")
                }
            };
        }
        if let Some(name) = path.strip_prefix("/functions/v1/") {
            return if self.spec.edge_functions.iter().any(|f| f == name) {
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                reply(StatusCode::OK, json!({"function": name, "project": self.spec.label, "sub": sub, "body": body}))
            } else {
                reply(
                    StatusCode::NOT_FOUND,
                    json!({"code": "NOT_FOUND", "message": "Requested function was not found"}),
                )
            };
        }
        let Some(rest) = path.strip_prefix("/rest/v1/") else {
            return reply(StatusCode::NOT_FOUND, json!({"message": "no route"}));
        };
        let reading = matches!(parts.method, Method::GET | Method::HEAD);
        let profile_header = if reading { "accept-profile" } else { "content-profile" };
        let schema = parts.headers.get(profile_header).and_then(|v| v.to_str().ok()).unwrap_or("public").to_string();
        if !self.spec.schemas.contains(&schema) {
            let msg = format!("The schema must be one of the following: {}", self.spec.schemas.join(", "));
            return pgrst(StatusCode::NOT_ACCEPTABLE, "PGRST106", &msg, Value::Null, Value::Null);
        }
        let mut resp = if let Some(f) = rest.strip_prefix("rpc/") {
            if !self.spec.rpc.contains(&(schema.clone(), f.to_string())) {
                let msg = format!("Could not find the function {schema}.{f} without parameters in the schema cache");
                return pgrst(StatusCode::NOT_FOUND, "PGRST202", &msg, Value::Null, Value::Null);
            }
            let args: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            reply(
                StatusCode::OK,
                json!({"function": f, "schema": schema, "project": self.spec.label, "sub": sub, "args": args}),
            )
        } else {
            self.table(&parts.method, &schema, rest, &query, &bytes, &parts.headers)
        };
        resp.headers_mut().insert("content-profile", schema.parse().unwrap());
        resp
    }

    fn token(&self, body: &[u8]) -> Response<Body> {
        let creds: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let Some(email) = creds["email"].as_str() else {
            return gotrue(StatusCode::BAD_REQUEST, "validation_failed", "missing email");
        };
        // The test's users: the part before '@' is the user id.
        let sub = email.split('@').next().unwrap();
        let now = super::now();
        let claims = json!({"sub": sub, "email": email, "aud": "authenticated", "role": "authenticated",
            "exp": now + 3600, "iat": now, "iss": format!("{}-issuer", self.spec.label), "session_id": "s-1"});
        let token = self.issue(claims);
        reply(
            StatusCode::OK,
            json!({
                "access_token": token, "token_type": "bearer", "expires_in": 3600, "expires_at": now + 3600,
                "refresh_token": "r-1", "user": {"id": sub, "aud": "authenticated", "role": "authenticated", "email": email,
                "app_metadata": {}, "user_metadata": {}, "created_at": "2026-01-01T00:00:00Z"}
            }),
        )
    }

    fn table(
        &self,
        method: &Method,
        schema: &str,
        table: &str,
        query: &[(String, String)],
        body: &Bytes,
        headers: &HeaderMap,
    ) -> Response<Body> {
        let key = (schema.to_string(), table.to_string());
        if !self.spec.tables.contains(&key) {
            let msg = format!("Could not find the table '{schema}.{table}' in the schema cache");
            return pgrst(StatusCode::NOT_FOUND, "PGRST205", &msg, Value::Null, Value::Null);
        }
        if let Some((_, select)) = query.iter().find(|(k, _)| k == "select") {
            for embedded in embedded_names(select) {
                if !self.spec.tables.contains(&(schema.to_string(), embedded.clone())) {
                    let msg =
                        format!("Could not find a relationship between '{table}' and '{embedded}' in the schema cache");
                    let details = format!(
                        "Searched for a foreign key relationship between '{table}' and '{embedded}' in the schema '{schema}', but no matches were found."
                    );
                    return pgrst(StatusCode::BAD_REQUEST, "PGRST200", &msg, json!(details), Value::Null);
                }
            }
        }
        let filters: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| !["select", "order", "limit", "offset", "columns", "on_conflict"].contains(&k.as_str()))
            .filter_map(|(k, v)| v.strip_prefix("eq.").map(|v| (k.clone(), v.to_string())))
            .collect();
        let matches = |row: &Value| filters.iter().all(|(k, v)| row[k].to_string().trim_matches('"') == v);
        let representation =
            headers.get("prefer").and_then(|v| v.to_str().ok()).is_some_and(|p| p.contains("return=representation"));
        let mut rows = self.rows.lock().unwrap();
        let stored = rows.entry(key).or_default();
        let (status, out): (StatusCode, Vec<Value>) = match *method {
            Method::GET | Method::HEAD => (StatusCode::OK, stored.iter().filter(|r| matches(r)).cloned().collect()),
            Method::POST => {
                let new: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                let mut inserted = Vec::new();
                for mut row in new.as_array().cloned().unwrap_or_else(|| vec![new.clone()]) {
                    if row.get("id").is_none() {
                        let mut id = self.next_id.lock().unwrap();
                        *id += 1;
                        row["id"] = json!(*id);
                    }
                    stored.push(row.clone());
                    inserted.push(row);
                }
                (StatusCode::CREATED, inserted)
            }
            Method::PATCH => {
                let patch: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                let mut updated = Vec::new();
                for row in stored.iter_mut().filter(|r| matches(r)) {
                    for (k, v) in patch.as_object().cloned().unwrap_or_default() {
                        row[k] = v;
                    }
                    updated.push(row.clone());
                }
                (StatusCode::OK, updated)
            }
            Method::DELETE => {
                let (gone, kept): (Vec<Value>, Vec<Value>) = stored.drain(..).partition(|r| matches(r));
                *stored = kept;
                (StatusCode::OK, gone)
            }
            _ => {
                return pgrst(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "PGRST117",
                    "Unsupported HTTP method",
                    Value::Null,
                    Value::Null,
                );
            }
        };
        if *method != Method::GET && *method != Method::HEAD && !representation {
            return Response::builder().status(if *method == Method::POST { 201 } else { 204 }).body(full("")).unwrap();
        }
        reply(status, Value::Array(out))
    }
}

/// Top-level and nested embedded resource names of a select list.
fn embedded_names(select: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = String::new();
    for c in select.chars() {
        match c {
            '(' => {
                let name = token.rsplit(':').next().unwrap_or("").trim_start_matches('.');
                let name = name.split('!').next().unwrap_or("");
                if !name.is_empty() {
                    out.push(name.to_string());
                }
                token.clear();
            }
            ',' | ')' => token.clear(),
            c => token.push(c),
        }
    }
    out
}

/// Percent-decodes a query value (`+` is a space).
pub fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts a fake project on 127.0.0.1:0. WebSocket upgrades on
/// `/realtime/v1/websocket` are accepted (after the API-key check) and echo.
pub async fn spawn(spec: Spec) -> (Upstream, Arc<Fake>) {
    let published = spec.signing.iter().map(|k| switchyard::jwk::public_jwk(k)).collect();
    let fake = Arc::new(Fake {
        spec,
        rows: Mutex::new(HashMap::new()),
        seen: Mutex::new(Vec::new()),
        next_id: Mutex::new(0),
        jwks: Mutex::new(published),
        jwks_fetches: AtomicUsize::new(0),
        jwks_down: AtomicBool::new(false),
    });
    for t in &fake.spec.tables {
        fake.rows.lock().unwrap().insert(t.clone(), Vec::new());
    }
    let f = fake.clone();
    let up = upstream(move |mut req: Request<Incoming>| {
        let f = f.clone();
        async move {
            let wants_ws =
                req.headers().get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            if !wants_ws {
                return f.handle(req).await;
            }
            f.seen.lock().unwrap().push(Seen {
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
                query: req.uri().query().map(str::to_string),
                headers: req.headers().clone(),
            });
            let key_ok = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("apikey=")))
                .is_some_and(|k| f.key_role(k).is_some());
            if !key_ok {
                return reply(StatusCode::UNAUTHORIZED, json!({"message": "Invalid API key"}));
            }
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                req.headers()["sec-websocket-key"].as_bytes(),
            );
            let on = hyper::upgrade::on(&mut req);
            let label = f.spec.label;
            tokio::spawn(async move {
                let Ok(io) = on.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(io),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    let text = format!("{label}:{}", msg.to_text().unwrap_or(""));
                    if ws.send(tokio_tungstenite::tungstenite::Message::text(text)).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap()
        }
    })
    .await;
    (up, fake)
}

/// The two projects of the migration: v1 flat in `public`, v2 in domain schemas as
/// `config/schema-map.toml` places them.
pub fn migration_specs() -> (Spec, Spec, BTreeMap<String, String>) {
    let map_text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/schema-map.toml")).unwrap();
    let map: toml::Table = toml::from_str(&map_text).unwrap();
    let tables: BTreeMap<String, String> = map["tables"]
        .as_table()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.ends_with('*'))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let rpc: BTreeMap<String, String> = map
        .get("rpc")
        .and_then(|r| r.as_table())
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect())
        .unwrap_or_default();
    let edge_v2: Vec<String> = map
        .get("edge_functions")
        .and_then(|e| e.get("v2"))
        .and_then(|t| t.as_table())
        .map(|t| t.values().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    let split = |name: &str, value: &str| {
        let (schema, new) = value.split_once('.').unwrap_or((value, name));
        (schema.to_string(), new.to_string())
    };
    let v2_tables: Vec<(String, String)> = tables.iter().map(|(k, v)| split(k, v)).collect();
    let v2_schemas: HashSet<String> = v2_tables.iter().map(|(s, _)| s.clone()).chain(["public".to_string()]).collect();
    let mut v2_rpc: Vec<(String, String)> = rpc.iter().map(|(k, v)| split(k, v)).collect();
    v2_rpc.push(("public".into(), "ping".into()));
    let mut v1_rpc: Vec<(String, String)> = rpc.keys().map(|k| ("public".into(), k.clone())).collect();
    v1_rpc.push(("public".into(), "ping".into()));
    let v1 = Spec {
        label: "v1",
        anon: "v1-anon-key".into(),
        service: "v1-service-role-key".into(),
        publishable: "sb_publishable_v1".into(),
        jwt_secret: "v1-jwt-secret-0123456789abcdef0123456789".into(),
        schemas: vec!["public".into()],
        tables: tables
            .keys()
            .map(|t| ("public".to_string(), t.clone()))
            .chain([("public".into(), "unmapped_notes".into())])
            .collect(),
        rpc: v1_rpc,
        edge_functions: edge_v1_names(&map),
        signing: None,
    };
    let v2 = Spec {
        label: "v2",
        anon: "v2-anon-key".into(),
        service: "v2-service-role-key".into(),
        publishable: "sb_publishable_v2".into(),
        jwt_secret: "v2-jwt-secret-fedcba9876543210fedcba9876".into(),
        schemas: v2_schemas.into_iter().collect(),
        tables: v2_tables.into_iter().chain([("public".into(), "unmapped_notes".into())]).collect(),
        rpc: v2_rpc,
        edge_functions: edge_v2.into_iter().chain(["hello".to_string()]).collect(),
        signing: None,
    };
    (v1, v2, tables)
}

fn edge_v1_names(map: &toml::Table) -> Vec<String> {
    map.get("edge_functions")
        .and_then(|e| e.get("v2"))
        .and_then(|t| t.as_table())
        .map(|t| t.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["hello".to_string()])
        .collect()
}

/// switchyard config for two fakes with every key and secret, the real schema map.
pub fn config(v1: &Upstream, v2: &Upstream, s1: &Spec, s2: &Spec, percentage: u8, extra: &str) -> String {
    let map = concat!(env!("CARGO_MANIFEST_DIR"), "/config/schema-map.toml");
    let backend = |up: &Upstream, s: &Spec| {
        format!(
            "url = \"{}\"\nanon_key = \"{}\"\nservice_role_key = \"{}\"\npublishable_key = \"{}\"\njwt_secret = \"{}\"\nissuer = \"{}-issuer\"\n",
            up.url(),
            s.anon,
            s.service,
            s.publishable,
            s.jwt_secret,
            s.label
        )
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[rollout]\npercentage = {percentage}\n\
         [backends.v1]\n{}[backends.v2]\n{}[translation]\nschema_map = \"{map}\"\n{extra}",
        backend(v1, s1),
        backend(v2, s2)
    )
}

/// A signing key made in the test, and its private half as a file switchyard can be
/// given (`signing_key_file`, mode 600): ES256 as a private JWK the way
/// `supabase gen signing-key` writes one, RS256 as PEM (with `signing_key_id`).
#[derive(Clone)]
pub struct TestKey {
    pub key: Arc<switchyard::jwk::SigningKey>,
    pub file: std::path::PathBuf,
    /// The `signing_key_id` line switchyard needs with it (PEM only).
    pub id_line: String,
}

impl TestKey {
    /// A fresh P-256 key.
    pub fn es256(dir: &std::path::Path, kid: &str) -> TestKey {
        use base64::Engine;
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let secret = loop {
            let bytes: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
            if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
                break k;
            }
        };
        let p = secret.public_key().to_encoded_point(false);
        let jwk = json!([{"kty": "EC", "kid": kid, "use": "sig", "key_ops": ["sign", "verify"], "alg": "ES256",
            "ext": true, "crv": "P-256", "d": b64(&secret.to_bytes()), "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())}]);
        TestKey::write(dir, kid, jwk.to_string().as_bytes(), None)
    }

    /// The repository's RSA test key under `kid`.
    pub fn rs256(dir: &std::path::Path, kid: &str) -> TestKey {
        let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rsa-2048.pem")).unwrap();
        TestKey::write(dir, kid, &pem, Some(kid))
    }

    fn write(dir: &std::path::Path, kid: &str, text: &[u8], id: Option<&str>) -> TestKey {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.join(format!("{kid}.key"));
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = Arc::new(switchyard::jwk::signing_key(text, id).unwrap());
        let id_line = id.map(|i| format!("signing_key_id = \"{i}\"\n")).unwrap_or_default();
        TestKey { key, file, id_line }
    }

    /// Its public half as a project publishes it.
    pub fn public(&self) -> Value {
        switchyard::jwk::public_jwk(&self.key)
    }

    /// The config lines that give it to switchyard as a backend's signing key.
    pub fn config_lines(&self) -> String {
        format!("signing_key_file = \"{}\"\n{}", self.file.display(), self.id_line)
    }
}
