//! Routing through real sockets: cohorts, stickiness, monotonicity, per-service
//! policy, anonymous policies and JWT identity.

mod support;

use serde_json::json;
use support::*;

const VECTORS: &str = include_str!("data/percentile-vectors.tsv");

fn vector_ids() -> Vec<(String, u8)> {
    VECTORS
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (serde_json::from_str(cols[0]).unwrap(), cols[2].parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn vector_users_land_on_their_cohort_backend() {
    let (v1, v2, sy) = stack(37, "").await;
    let mut checked = 0;
    // Header values must be visible ASCII; the unit test covers every row's hash.
    for (id, p) in vector_ids()
        .into_iter()
        .filter(|(id, _)| !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| (0x21..0x7f).contains(&b)))
    {
        let got = get_as(sy.addr, "/rest/v1/profiles", &id).await;
        assert_eq!(got.status, 200);
        let want = if p < 37 { "v2" } else { "v1" };
        assert_eq!(got.backend(), want, "user {id:?} at percentile {p}");
        assert_eq!(got.json()["backend"], want, "the {want} upstream answered");
        checked += 1;
        if checked == 400 {
            break;
        }
    }
    assert_eq!(checked, 400);
    assert_eq!(v1.hits() + v2.hits(), 400);
    assert!(v1.hits() > 0 && v2.hits() > 0);
}

#[tokio::test]
async fn a_user_always_lands_on_the_same_backend() {
    let (_v1, _v2, sy) = stack(50, "").await;
    for user in ["alice", "bob", "carol", "dave"] {
        let first = get_as(sy.addr, "/rest/v1/t", user).await.backend().to_string();
        for _ in 0..20 {
            assert_eq!(get_as(sy.addr, "/rest/v1/t", user).await.backend(), first, "{user} flapped");
        }
    }
}

#[tokio::test]
async fn raising_10_to_50_never_moves_a_v2_user_back() {
    let (_a1, _a2, at10) = stack(10, "").await;
    let (_b1, _b2, at50) = stack(50, "").await;
    let mut moved_up = 0;
    for n in 0..300 {
        let user = format!("user-{n}");
        let low = get_as(at10.addr, "/rest/v1/t", &user).await;
        let high = get_as(at50.addr, "/rest/v1/t", &user).await;
        if low.backend() == "v2" {
            assert_eq!(high.backend(), "v2", "{user} went back to v1");
        } else if high.backend() == "v2" {
            moved_up += 1;
        }
    }
    assert!(moved_up > 60, "only {moved_up} users moved to v2");
}

fn v2_user() -> String {
    (0..).map(|n| format!("u{n}")).find(|u| percentile(u) < 50).unwrap()
}

#[tokio::test]
async fn per_service_policy_defaults_and_overrides() {
    let user = v2_user();
    let (_v1, _v2, sy) = stack(50, "").await;
    for (path, want) in [
        ("/rest/v1/profiles", "v2"),
        ("/rest/v1/rpc/search", "v2"),
        ("/functions/v1/hello", "v2"),
        ("/graphql/v1", "v2"),
        ("/auth/v1/user", "v1"),
        ("/storage/v1/object/public/b/k", "v1"),
        ("/realtime/v1/api/ping", "v1"),
        ("/", "v1"),
    ] {
        assert_eq!(get_as(sy.addr, path, &user).await.backend(), want, "{path}");
    }
    let (_v1, _v2, sy) = stack(50, "[services]\nauth = \"rollout\"\nstorage = \"v2\"\nrest = \"v1\"\n").await;
    assert_eq!(get_as(sy.addr, "/auth/v1/user", &user).await.backend(), "v2");
    let someone_in_v1 = (0..).map(|n| format!("w{n}")).find(|u| percentile(u) >= 50).unwrap();
    assert_eq!(get_as(sy.addr, "/storage/v1/object/x", &someone_in_v1).await.backend(), "v2");
    assert_eq!(get_as(sy.addr, "/rest/v1/t", &user).await.backend(), "v1");
}

#[tokio::test]
async fn force_backend_beats_everything() {
    let user = v2_user();
    let (_v1, _v2, sy) = stack(100, "").await;
    assert_eq!(get_as(sy.addr, "/rest/v1/t", &user).await.backend(), "v2");
    let (_v1, _v2, sy) = stack(100, "[services]\nauth = \"v2\"\n").await;
    assert_eq!(get_as(sy.addr, "/auth/v1/user", &user).await.backend(), "v2");
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    let forced = config_text(&v1.url(), &v2.url(), 100, "")
        .replace("percentage = 100", "percentage = 100\nforce_backend = \"v1\"");
    let sy = start(&forced).await;
    assert_eq!(get_as(sy.addr, "/rest/v1/t", &user).await.backend(), "v1");
    assert_eq!(v2.hits(), 0);
}

async fn anonymous_backends(policy: &str, n: usize) -> (usize, usize) {
    let (_v1, _v2, sy) = stack(50, &format!("[identity]\nanonymous = \"{policy}\"\n")).await;
    let mut counts = (0, 0);
    for _ in 0..n {
        match send(sy.addr, "GET", "/rest/v1/t", &[], "").await.backend() {
            "v1" => counts.0 += 1,
            "v2" => counts.1 += 1,
            other => panic!("no backend header: {other:?}"),
        }
    }
    counts
}

#[tokio::test]
async fn anonymous_policies() {
    assert_eq!(anonymous_backends("v1", 20).await, (20, 0));
    assert_eq!(anonymous_backends("v2", 20).await, (0, 20));
    let (a, b) = anonymous_backends("random", 200).await;
    assert!(a > 50 && b > 50, "random split {a}/{b}");
}

#[tokio::test]
async fn cookie_policy_keeps_an_anonymous_browser_in_its_cohort() {
    let (_v1, _v2, sy) = stack(50, "[identity]\nanonymous = \"cookie\"\ncookie_name = \"cohort\"\n").await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let first = send(sy.addr, "GET", "/rest/v1/t", &[], "").await;
        let set = first.headers["set-cookie"].to_str().unwrap().to_string();
        let pair = set.split(';').next().unwrap().to_string();
        let p: u8 = pair.strip_prefix("cohort=").unwrap().parse().unwrap();
        let want = if p < 50 { "v2" } else { "v1" };
        assert_eq!(first.backend(), want);
        seen.insert(want);
        for _ in 0..3 {
            let again = send(sy.addr, "GET", "/rest/v1/t", &[("cookie", &pair)], "").await;
            assert_eq!(again.backend(), want);
            assert!(!again.headers.contains_key("set-cookie"), "cookie re-issued");
        }
    }
    assert_eq!(seen.len(), 2, "40 browsers all in one cohort");
}

const SECRET: &str = "v1-jwt-secret-for-tests-only-0123456789";

#[tokio::test]
async fn verified_jwt_sub_routes_and_is_forwarded_untouched() {
    let extra = "[identity]\nanonymous = \"v1\"\n";
    let v1 = echo("v1").await;
    let v2 = echo("v2").await;
    let text = config_text(&v1.url(), &v2.url(), 50, extra)
        .replace(&format!("url = \"{}\"", v1.url()), &format!("url = \"{}\"\njwt_secret = \"{SECRET}\"", v1.url()));
    let sy = start(&text).await;
    let user = v2_user();
    let token = jwt(
        SECRET,
        json!({"sub": user, "iss": format!("{}/auth/v1", v1.url()), "exp": now() + 600, "role": "authenticated"}),
    );
    let auth = format!("Bearer {token}");
    let got = send(sy.addr, "GET", "/rest/v1/t", &[("authorization", &auth)], "").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.backend(), "v2");
    assert_eq!(got.json()["headers"]["authorization"][0], auth.as_str());

    // Forged, expired, garbage: 401 in PostgREST's shape; no upstream sees them.
    let before = v1.hits() + v2.hits();
    let forged = jwt("not-the-secret", json!({"sub": user, "exp": now() + 600}));
    let expired = jwt(SECRET, json!({"sub": user, "exp": now() - 3600}));
    for (token, code) in [(forged.as_str(), "PGRST301"), (expired.as_str(), "PGRST303"), ("garbage", "PGRST301")] {
        let got = send(sy.addr, "GET", "/rest/v1/t", &[("authorization", &format!("Bearer {token}"))], "").await;
        assert_eq!(got.status, 401, "{token}");
        assert!(got.headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
        let body = got.json();
        assert_eq!(body["code"], code);
        assert!(body.get("details").is_some() && body.get("hint").is_some());
    }
    let got = send(sy.addr, "GET", "/auth/v1/user", &[("authorization", &format!("Bearer {forged}"))], "").await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["code"], "bad_jwt", "GoTrue's shape on /auth");
    assert_eq!(v1.hits() + v2.hits(), before, "a refused token reached an upstream");
}

#[tokio::test]
async fn without_a_secret_the_sub_still_routes() {
    let (_v1, _v2, sy) = stack(50, "[identity]\nanonymous = \"v1\"\n").await;
    let user = v2_user();
    let token = jwt("unknown-secret", json!({"sub": user, "exp": now() - 10}));
    let got = send(sy.addr, "GET", "/rest/v1/t", &[("authorization", &format!("Bearer {token}"))], "").await;
    assert_eq!(got.status, 200, "the backend, not the proxy, judges unverifiable tokens");
    assert_eq!(got.backend(), "v2");
}

#[tokio::test]
async fn admin_user_path_carries_the_user() {
    let user = v2_user();
    let (_v1, _v2, sy) = stack(50, "[services]\nauth = \"rollout\"\n[identity]\nanonymous = \"v1\"\n").await;
    let path = format!("/auth/v1/admin/users/{user}");
    let got = send(sy.addr, "GET", &path, &[("authorization", "Bearer some-service-key")], "").await;
    assert_eq!(got.backend(), "v2");
}
