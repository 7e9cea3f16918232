//! Translation end to end through real sockets, against two strict fake Supabase
//! projects (tests/support/fake.rs): v1 flat in `public`, v2 in domain schemas as
//! config/schema-map.toml says. Clients hold v1's credentials and table names only.

mod support;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::fake::{self, Fake, Spec};
use support::*;

struct Stack {
    sy: switchyard::server::Running,
    v1: Arc<Fake>,
    v2: Arc<Fake>,
    s1: Spec,
    _ups: (Upstream, Upstream),
}

async fn stack(percentage: u8, extra: &str) -> Stack {
    let (s1, s2, _) = fake::migration_specs();
    let (u1, v1) = fake::spawn(s1.clone()).await;
    let (u2, v2) = fake::spawn(s2.clone()).await;
    let sy = start(&fake::config(&u1, &u2, &s1, &s2, percentage, extra)).await;
    Stack { sy, v1, v2, s1, _ups: (u1, u2) }
}

/// A user id in the given cohort at 50 %.
fn user_in(backend: &str, n: usize) -> String {
    (0..).map(|k| format!("user-{backend}-{n}-{k}")).find(|u| (percentile(u) < 50) == (backend == "v2")).unwrap()
}

/// A session token as v1's auth (the auth home) issues it.
fn v1_token(s: &Stack, user: &str) -> String {
    jwt(
        &s.s1.jwt_secret,
        json!({"sub": user, "iss": "v1-issuer", "aud": "authenticated", "role": "authenticated", "exp": now() + 600}),
    )
}

fn as_user<'a>(s: &'a Stack, token: &'a str) -> Vec<(&'a str, String)> {
    vec![("apikey", s.s1.anon.clone()), ("authorization", format!("Bearer {token}"))]
}

async fn call(s: &Stack, method: &str, path: &str, headers: &[(&str, String)], body: &str) -> Got {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send(s.sy.addr, method, path, &h, body).await
}

fn metric(s: &Stack, line: &str) -> bool {
    s.sy.proxy.metrics.render().lines().any(|l| l == line)
}

#[tokio::test]
async fn crud_rpc_and_functions_work_for_both_cohorts_with_v1_credentials() {
    let s = stack(50, "").await;
    for backend in ["v1", "v2"] {
        let user = user_in(backend, 0);
        let token = v1_token(&s, &user);
        let mut h = as_user(&s, &token);
        h.push(("content-profile", "public".into()));
        h.push(("prefer", "return=representation".into()));
        let row = json!({"id": format!("{user}-p"), "owner": user, "name": "first"}).to_string();
        let got = call(&s, "POST", "/rest/v1/profiles", &h, &row).await;
        assert_eq!(got.status, 201, "{backend}: {:?}", got.body);
        assert_eq!(got.backend(), backend);
        assert_eq!(got.headers["content-profile"], "public", "the client sees its own profile");

        let filter = format!("/rest/v1/profiles?id=eq.{user}-p&select=id,name");
        let got = call(&s, "PATCH", &filter, &h, r#"{"name":"second"}"#).await;
        assert_eq!(got.status, 200, "{:?}", got.body);
        let mut read = as_user(&s, &token);
        read.push(("accept-profile", "public".into()));
        let got = call(&s, "GET", &filter, &read, "").await;
        assert_eq!(got.status, 200, "{:?}", got.body);
        assert_eq!(got.json()[0]["name"], "second");

        let got = call(&s, "POST", "/rest/v1/rpc/search_memories", &h, r#"{"q":"x"}"#).await;
        assert_eq!(got.status, 200, "{:?}", got.body);
        let body = got.json();
        assert_eq!((body["project"].as_str(), body["sub"].as_str()), (Some(backend), Some(user.as_str())));
        let want_schema = if backend == "v2" { "security_service" } else { "public" };
        assert_eq!(body["schema"], want_schema);

        let got = call(&s, "POST", "/functions/v1/memory-create", &as_user(&s, &token), r#"{"title":"t"}"#).await;
        assert_eq!(got.status, 200, "{:?}", got.body);
        let want_fn = if backend == "v2" { "memory/create" } else { "memory-create" };
        assert_eq!(got.json()["function"], want_fn);
    }
    // Each row landed in its user's project, in the right schema.
    let (a, b) = (user_in("v1", 0), user_in("v2", 0));
    assert_eq!(s.v1.rows("public", "profiles").len(), 1);
    assert_eq!(s.v1.rows("public", "profiles")[0]["owner"], a.as_str());
    assert_eq!(s.v2.rows("shared_services", "profiles").len(), 1);
    assert_eq!(s.v2.rows("shared_services", "profiles")[0]["owner"], b.as_str());
    assert!(s.v2.rows("public", "profiles").is_empty());
    // Deletes too.
    let token = v1_token(&s, &b);
    let mut h = as_user(&s, &token);
    h.push(("content-profile", "public".into()));
    let got = call(&s, "DELETE", &format!("/rest/v1/profiles?id=eq.{b}-p"), &h, "").await;
    assert_eq!(got.status, 204);
    assert!(s.v2.rows("shared_services", "profiles").is_empty());
    // The v2 user's six calls: insert, update, select, rpc, function, delete.
    assert!(metric(&s, r#"switchyard_translations_total{kind="jwt_resign"} 6"#));
    assert!(metric(&s, r#"switchyard_translations_total{kind="apikey"} 6"#));
    assert!(metric(&s, r#"switchyard_translations_total{kind="response_profile"} 5"#));
    assert!(metric(&s, r#"switchyard_translations_total{kind="table"} 4"#));
    assert!(metric(&s, r#"switchyard_translations_total{kind="rpc"} 1"#));
    assert!(metric(&s, r#"switchyard_translations_total{kind="edge_function"} 1"#));
}

#[tokio::test]
async fn merged_and_renamed_tables() {
    let s = stack(100, "").await;
    let service = [("apikey", s.s1.service.clone()), ("authorization", format!("Bearer {}", s.s1.service))];
    for name in ["vendor_api_keys", "vendor_api_keys_v2"] {
        let mut h = service.to_vec();
        h.push(("content-profile", "public".into()));
        let got = call(&s, "POST", &format!("/rest/v1/{name}"), &h, &json!({"from": name}).to_string()).await;
        assert_eq!(got.status, 201, "{name}: {:?}", got.body);
    }
    assert_eq!(s.v2.rows("vendors", "api_keys").len(), 2, "both v1 tables land in vendors.api_keys");
    // An embed renamed inside one schema.
    let got = call(&s, "GET", "/rest/v1/vendor_organizations?select=id,keys:vendor_api_keys_v2(*)", &service, "").await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen = s.v2.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.path, "/rest/v1/organizations");
    assert_eq!(seen.query.as_deref(), Some("select=id%2Ckeys%3Aapi_keys%28*%29"));
    assert_eq!(seen.headers["accept-profile"], "vendors");
    assert_eq!(seen.headers["authorization"], format!("Bearer {}", "v2-service-role-key"));
    // Filters and modifiers on an embed without an alias follow its rename; an
    // alias's stay, as do the parent's own.
    let q = "select=id,vendor_api_keys_v2(id,status)&vendor_api_keys_v2.status=eq.live\
             &vendor_api_keys_v2.order=id.desc&vendor_api_keys_v2.limit=2&vendor_api_keys_v2.offset=1&id=eq.7";
    let got = call(&s, "GET", &format!("/rest/v1/vendor_organizations?{q}"), &service, "").await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let seen = s.v2.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        seen.query.as_deref(),
        Some(
            "select=id%2Capi_keys%28id%2Cstatus%29&api_keys.status=eq.live&api_keys.order=id.desc\
             &api_keys.limit=2&api_keys.offset=1&id=eq.7"
        )
    );
}

#[tokio::test]
async fn cross_schema_embeds_are_refused_clearly_or_passed() {
    let s = stack(100, "").await;
    let h = [("apikey", s.s1.anon.clone())];
    let got = call(&s, "GET", "/rest/v1/profiles?select=*,orders(*)", &h, "").await;
    assert_eq!(got.status, 400);
    let body = got.json();
    assert_eq!(body["code"], "PGRST200");
    let details = body["details"].as_str().unwrap();
    for needle in ["profiles", "shared_services", "orders", "marketplace"] {
        assert!(details.contains(needle), "{details} lacks {needle}");
    }
    assert!(!s.v2.saw("orders(*)") && s.v2.seen.lock().unwrap().is_empty(), "v2 was asked anyway");
    assert!(metric(&s, r#"switchyard_translations_total{kind="embed_rejected"} 1"#));

    let s = stack(100, "cross_schema_embeds = \"pass\"\n").await;
    let got = call(&s, "GET", "/rest/v1/profiles?select=*,orders(*)", &[("apikey", s.s1.anon.clone())], "").await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["code"], "PGRST200");
    assert_eq!(s.v2.seen.lock().unwrap().len(), 1, "passed through to v2, which answered itself");
}

#[tokio::test]
async fn keys_of_every_kind_are_translated_and_unknown_ones_pass() {
    let s = stack(100, "").await;
    for (apikey, bearer) in [
        (s.s1.anon.clone(), None),
        (s.s1.publishable.clone(), None),
        (s.s1.anon.clone(), Some(s.s1.anon.clone())),
        (s.s1.service.clone(), Some(s.s1.service.clone())),
    ] {
        let mut h = vec![("apikey", apikey.clone()), ("accept-profile", "public".into())];
        if let Some(b) = &bearer {
            h.push(("authorization", format!("Bearer {b}")));
        }
        let got = call(&s, "GET", "/rest/v1/unmapped_notes", &h, "").await;
        assert_eq!(got.status, 200, "{apikey} / {bearer:?}: {:?}", got.body);
        assert_eq!(got.backend(), "v2");
    }
    assert!(!s.v2.saw("v1-anon-key") && !s.v2.saw("sb_publishable_v1") && !s.v2.saw("v1-service-role-key"));
    // A key the proxy does not know reaches v2 unchanged, and v2 refuses it.
    let got = call(&s, "GET", "/rest/v1/unmapped_notes", &[("apikey", "stranger".into())], "").await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["message"], "Invalid API key");
    assert!(s.v2.saw("stranger"));
}

#[tokio::test]
async fn refused_tokens_never_reach_an_upstream_nor_get_resigned() {
    let s = stack(100, "").await;
    let user = user_in("v2", 1);
    let good = v1_token(&s, &user);
    let payload = good.split('.').nth(1).unwrap().to_string();
    let forged =
        jwt("attacker-secret", json!({"sub": user, "iss": "v1-issuer", "role": "service_role", "exp": now() + 600}));
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    // HS256 signed with v1's *anon key* as the secret: the classic confusion attempt.
    let confused = jwt(&s.s1.anon, json!({"sub": user, "iss": "v1-issuer", "exp": now() + 600}));
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": user, "iss": "v1-issuer", "exp": now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(s.s1.jwt_secret.as_bytes()),
    )
    .unwrap();
    let expired = jwt(&s.s1.jwt_secret, json!({"sub": user, "iss": "v1-issuer", "exp": now() - 3600}));
    for (name, token) in [
        ("forged", forged.as_str()),
        ("alg none", none.as_str()),
        ("confusion", confused.as_str()),
        ("hs512", hs512.as_str()),
        ("expired", expired.as_str()),
        ("garbage", "not.a.jwt"),
    ] {
        let got = call(&s, "GET", "/rest/v1/profiles", &as_user_raw(&s, token), "").await;
        assert_eq!(got.status, 401, "{name}");
        assert!(got.headers["www-authenticate"].to_str().unwrap().starts_with("Bearer error=\"invalid_token\""));
        assert!(got.json()["code"].as_str().unwrap().starts_with("PGRST30"), "{name}");
        assert!(!s.v1.saw(token) && !s.v2.saw(token), "{name} reached an upstream");
    }
    assert!(s.v1.seen.lock().unwrap().is_empty() && s.v2.seen.lock().unwrap().is_empty());
    let m = s.sy.proxy.metrics.render();
    for (reason, n) in [("signature", 2), ("malformed", 2), ("algorithm", 1), ("expired", 1)] {
        assert!(m.contains(&format!("switchyard_auth_rejections_total{{reason=\"{reason}\"}} {n}")), "{reason}: {m}");
    }
    // The genuine token is re-signed, and only the re-signed form reaches v2.
    let got = call(&s, "GET", "/rest/v1/profiles", &as_user_raw(&s, &good), "").await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert!(!s.v2.saw(&good));
    assert!(s.v2.saw(&payload), "claims forwarded unchanged");
}

fn as_user_raw(s: &Stack, token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("apikey", s.s1.anon.clone()),
        ("authorization", format!("Bearer {token}")),
        ("accept-profile", "public".into()),
    ]
}

#[tokio::test]
async fn storage_signed_urls_go_to_the_project_that_signed_them() {
    let s = stack(0, "").await;
    let v2_secret = "v2-jwt-secret-fedcba9876543210fedcba9876";
    let token = jwt(v2_secret, json!({"url": "avatars/a.png", "exp": now() + 600}));
    let got = send(s.sy.addr, "GET", &format!("/storage/v1/object/sign/avatars/a.png?token={token}"), &[], "").await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.backend(), "v2", "storage is pinned to v1, but v2 signed this URL");
    let token = jwt(&s.s1.jwt_secret, json!({"url": "avatars/a.png", "exp": now() + 600}));
    let got = send(s.sy.addr, "GET", &format!("/storage/v1/object/sign/avatars/a.png?token={token}"), &[], "").await;
    assert_eq!((got.status.as_u16(), got.backend()), (200, "v1"));
}

#[tokio::test]
async fn realtime_apikey_parameter_is_translated() {
    let s = stack(100, "[services]\nrealtime = \"rollout\"\n").await;
    let url = format!("ws://{}/realtime/v1/websocket?apikey={}&vsn=2.0.0", s.sy.addr, s.s1.anon);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("x-user-id", "someone".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("v2 accepted the translated key");
    assert_eq!(resp.headers()["x-switchyard-backend"], "v2");
    ws.send(tokio_tungstenite::tungstenite::Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "v2:hello");
    assert!(s.v2.saw("apikey=v2-anon-key&vsn=2.0.0"));
}
