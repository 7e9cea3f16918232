//! Who a request is for: the user id that decides the cohort, read from the bearer
//! JWT's `sub`, the admin path, or a configured header (docs/routing.md), plus the cohort
//! cookie of anonymous browsers. Pure functions over request parts.

mod cache;
pub mod fetch;
pub mod jwt;
mod keyed;
pub mod keyring;

use http::{HeaderMap, HeaderName, header};

pub use jwt::{AuthReason, Signature, Token, Verifier};
pub use keyring::Keyring;

pub use crate::config::IdentitySource;

use crate::backend::BackendId;

/// The outcome of identity extraction, borrowing the user id from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity<'a> {
    /// Where the user id is, if any source gave one, and which source did.
    user: Option<(UserId<'a>, IdentitySource)>,
    /// What the bearer token was, if there was one.
    pub token: Option<Token>,
}

/// Where a user id is: in the request head, or the token's `sub`. Not copied: this
/// runs for every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserId<'a> {
    In(&'a str),
    Subject,
}

/// The longest user id accepted from a header or path; longer ones are ignored
/// rather than hashed (they are not Supabase ids).
const MAX_ID_LEN: usize = 256;

/// The bearer token of an `Authorization` header. A token of anything but ASCII is
/// none.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    std::str::from_utf8(bearer_bytes(headers)?).ok().filter(|t| t.is_ascii())
}

/// The bearer token of an `Authorization` header, as it came: not yet read as text
/// (a Supabase token is a kilobyte, and a token the cache knows need not be).
fn bearer_bytes(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(6)?;
    let token = rest.strip_prefix(b" ")?.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

/// The user of an admin call: `/auth/v1/admin/users/<uid>[/...]`.
pub fn admin_path_user(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/auth/v1/admin/users/")?;
    let uid = rest.split('/').next()?;
    (!uid.is_empty() && uid.len() <= MAX_ID_LEN).then_some(uid)
}

fn header_user<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (!v.is_empty() && v.len() <= MAX_ID_LEN).then_some(v)
}

/// Finds the user id of a request, trying `sources` in order. A bearer token is
/// always checked when present, whatever the order, so a forged token is refused even
/// when another source names the user.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    path: &'a str,
    sources: &[IdentitySource],
    header_name: &HeaderName,
    verifier: &Verifier,
) -> Result<Identity<'a>, AuthReason> {
    let token = bearer_bytes(headers).and_then(|t| verifier.check_bytes(t)).transpose()?;
    let user = sources.iter().find_map(|src| {
        let id = match src {
            IdentitySource::Jwt => subject(&token).map(|_| UserId::Subject),
            IdentitySource::Path => admin_path_user(path).map(UserId::In),
            IdentitySource::Header => header_user(headers, header_name).map(UserId::In),
        };
        id.map(|id| (id, *src))
    });
    Ok(Identity { user, token })
}

fn subject(token: &Option<Token>) -> Option<&str> {
    match token {
        Some(Token::Jwt { sub: Some(sub), .. }) => Some(sub.as_ref()),
        _ => None,
    }
}

impl<'a> Identity<'a> {
    /// Nobody: no user id, no token.
    pub const NOBODY: Identity<'a> = Identity { user: None, token: None };

    /// The user id, and the source that gave it.
    pub fn user(&self) -> Option<(&str, IdentitySource)> {
        let (id, source) = self.user?;
        let id = match id {
            UserId::In(id) => id,
            UserId::Subject => subject(&self.token)?,
        };
        Some((id, source))
    }

    /// The project that signed the bearer token, when it is a verified user JWT.
    pub fn verified_issuer(&self) -> Option<BackendId> {
        match &self.token {
            Some(t @ Token::Jwt { issuer, .. }) if t.verified() => *issuer,
            _ => None,
        }
    }
}

/// The cohort percentile an anonymous browser keeps in cookie `name`, if valid.
pub fn cookie_percentile(headers: &HeaderMap, name: &str) -> Option<u8> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse::<u8>().ok())
        .filter(|p| *p < 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PerBackend;
    use crate::config::{BackendConfig, BaseUrl, Secret};
    use http::HeaderValue;
    use serde_json::json;

    const ALL: [IdentitySource; 3] = [IdentitySource::Jwt, IdentitySource::Path, IdentitySource::Header];

    fn verifier(secret: Option<&str>) -> Verifier {
        let b = |n: u8| BackendConfig {
            url: BaseUrl::parse(&format!("http://127.0.0.1:1800{n}")).unwrap(),
            anon_key: Some(Secret::new(format!("anon-{n}"))),
            service_role_key: None,
            publishable_key: None,
            secret_key: None,
            jwt_secret: if n == 1 { secret.map(Secret::new) } else { None },
            issuer: format!("iss-{n}"),
            database_url: None,
            keys: crate::config::keys::KeysConfig::well_known(&BaseUrl::parse("http://127.0.0.1:1").unwrap()),
        };
        Verifier::new(&PerBackend { v1: b(1), v2: b(2) }, 0, Keyring::new())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::try_from(*k).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn user_of(
        h: &HeaderMap,
        path: &str,
        sources: &[IdentitySource],
        v: &Verifier,
    ) -> Option<(String, IdentitySource)> {
        let id = extract(h, path, sources, &HeaderName::from_static("x-user-id"), v).unwrap();
        id.user().map(|(u, s)| (u.to_string(), s))
    }

    #[test]
    fn jwt_sub_wins_over_header() {
        let t = jwt::tests::sign("s", json!({"sub": "from-jwt", "iss": "iss-1"}));
        let h = headers(&[("authorization", &format!("Bearer {t}")), ("x-user-id", "from-header")]);
        let v = verifier(Some("s"));
        assert_eq!(user_of(&h, "/rest/v1/t", &ALL, &v), Some(("from-jwt".into(), IdentitySource::Jwt)));
        let order = [IdentitySource::Header, IdentitySource::Jwt];
        assert_eq!(user_of(&h, "/rest/v1/t", &order, &v), Some(("from-header".into(), IdentitySource::Header)));
    }

    #[test]
    fn anon_key_falls_through_to_header_and_path() {
        let v = verifier(Some("s"));
        let h = headers(&[("authorization", "Bearer anon-1"), ("x-user-id", " u-9 ")]);
        assert_eq!(user_of(&h, "/rest/v1/t", &ALL, &v), Some(("u-9".into(), IdentitySource::Header)));
        let path = "/auth/v1/admin/users/2b6e-uid/factors";
        assert_eq!(user_of(&h, path, &ALL, &v), Some(("2b6e-uid".into(), IdentitySource::Path)));
        assert_eq!(user_of(&headers(&[]), "/rest/v1/t", &ALL, &v), None);
    }

    #[test]
    fn forged_token_is_refused_even_with_a_header() {
        let t = jwt::tests::sign("wrong", json!({"sub": "x", "iss": "iss-1"}));
        let h = headers(&[("authorization", &format!("bearer {t}")), ("x-user-id", "u")]);
        let r = extract(&h, "/", &ALL, &HeaderName::from_static("x-user-id"), &verifier(Some("s")));
        assert_eq!(r, Err(AuthReason::Signature));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(&headers(&[("authorization", "Bearer  abc ")])), Some("abc"));
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "bEaReR t.k.n")])), Some("t.k.n"));
        assert_eq!(bearer(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearerx abc")])), None);
        // Not visible ASCII (UTF-8 as obs-text): no token, as `to_str` would have it.
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, http::HeaderValue::from_bytes("Bearer tök".as_bytes()).unwrap());
        assert_eq!(bearer(&h), None);
        assert_eq!(admin_path_user("/auth/v1/admin/users/"), None);
        assert_eq!(admin_path_user("/auth/v1/admin/users"), None);
    }

    #[test]
    fn cookie() {
        let h = headers(&[("cookie", "a=1; switchyard_cohort=42; b=2")]);
        assert_eq!(cookie_percentile(&h, "switchyard_cohort"), Some(42));
        for bad in ["switchyard_cohort=100", "switchyard_cohort=x", "other=5"] {
            assert_eq!(cookie_percentile(&headers(&[("cookie", bad)]), "switchyard_cohort"), None);
        }
    }
}
