//! Bearer-token checks. A token is one of: a project's own API key (not a user), a
//! user JWT verified with its issuing project's HS256 secret or published key
//! (ES256/RS256, `keyed.rs`), or a user JWT nobody here can verify (decoded for
//! routing only, forwarded untouched, and still verified by the backend)
//! (docs/identity.md).

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::cache::{self, Window};
use super::keyed;
use super::keyring::Keyring;

use crate::backend::{BackendId, PerBackend};
use crate::config::BackendConfig;

/// Why a token was refused; also the `reason` label of auth-rejection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthReason {
    /// Not a JWT at all (wrong shape, bad base64 or JSON, unknown `alg` such as `none`).
    Malformed,
    /// An algorithm the issuer's keys do not sign with (HS256 where the issuer
    /// publishes asymmetric keys and no secret is configured, ES256 under an RSA key,
    /// HS512...).
    Algorithm,
    /// No configured secret or published key verifies the signature.
    Signature,
    /// Signature valid, but `exp` is past (beyond the leeway) or `nbf` in the future.
    Expired,
    /// A `kid` the issuer does not publish, while its keys may be fetched again: the
    /// request waits for that fetch and is checked once more.
    UnknownKey(BackendId),
}

impl AuthReason {
    /// Metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthReason::Malformed => "malformed",
            AuthReason::Algorithm => "algorithm",
            AuthReason::Signature => "signature",
            AuthReason::Expired => "expired",
            AuthReason::UnknownKey(_) => "unknown_key",
        }
    }
}

/// How a user JWT's signature was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// Not checked: nothing here could (forwarded untouched; its project checks it).
    Unchecked,
    /// Verified with the issuer's HS256 secret.
    Secret,
    /// Verified with the key of this `kid` that the issuer publishes.
    Key(Option<Arc<str>>),
    /// Signed with an asymmetric key of an issuer whose keys could not be fetched
    /// yet: not verified, so never re-signed.
    KeysUnavailable,
}

/// What a bearer token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// The anon or service_role key of a project: a credential, not an identity.
    ApiKey(BackendId),
    /// A user (or other) JWT.
    Jwt {
        /// The `sub` claim, when present and non-empty. Shared: a cached token's
        /// answer is handed out for every request that carries it.
        sub: Option<Arc<str>>,
        /// The project that signed it, when known.
        issuer: Option<BackendId>,
        /// How its signature was checked.
        signature: Signature,
    },
}

impl Token {
    /// Whether a user JWT's signature was verified here.
    pub fn verified(&self) -> bool {
        matches!(self, Token::Jwt { signature: Signature::Secret | Signature::Key(_), .. })
    }
}

#[derive(Deserialize)]
struct Claims<'a> {
    #[serde(default, borrow)]
    sub: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    iss: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
}

/// What routing reads from a JWT's payload, unverified.
struct Routing {
    sub: Option<Arc<str>>,
    iss: Option<String>,
    /// `nbf` and `exp`, in Unix seconds.
    times: (Option<f64>, Option<f64>),
}

/// The routing claims of a JWT's payload, unverified, read without copying more than
/// the decoded payload.
fn claims(token: &str) -> Option<Routing> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let c: Claims<'_> = serde_json::from_slice(&json).ok()?;
    Some(Routing {
        sub: c.sub.map(|s| Arc::from(s.as_ref())),
        iss: c.iss.map(|s| s.into_owned()),
        times: (c.nbf, c.exp),
    })
}

/// Tells verifiers apart in the token cache: each config builds a new one.
static VERIFIERS: AtomicU64 = AtomicU64::new(0);

struct Project {
    issuer: String,
    key: Option<DecodingKey>,
    api_keys: Vec<String>,
}

/// Checks bearer tokens against the configured projects; built once per config.
pub struct Verifier {
    projects: PerBackend<Project>,
    keyring: Arc<Keyring>,
    validation: Validation,
    signature_only: Validation,
    any_secret: bool,
    /// This verifier's tag in the token cache.
    id: u64,
}

impl Verifier {
    /// Prepares secrets and validation rules from the backends' configuration; the
    /// projects' published keys are read from `keyring` as they are fetched.
    pub fn new(backends: &PerBackend<BackendConfig>, leeway_seconds: u64, keyring: Arc<Keyring>) -> Verifier {
        let project = |b: &BackendConfig| Project {
            issuer: b.issuer.clone(),
            key: b.jwt_secret.as_ref().map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            api_keys: [&b.anon_key, &b.service_role_key, &b.publishable_key, &b.secret_key]
                .into_iter()
                .flatten()
                .map(|k| k.expose().to_string())
                .collect(),
        };
        let projects = PerBackend { v1: project(&backends.v1), v2: project(&backends.v2) };
        let any_secret = projects.iter().any(|(_, p)| p.key.is_some());
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_seconds;
        validation.validate_nbf = true;
        // Supabase user tokens carry `aud: authenticated`; the backend checks audience.
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut signature_only = validation.clone();
        signature_only.validate_exp = false;
        signature_only.validate_nbf = false;
        let id = VERIFIERS.fetch_add(1, Ordering::Relaxed);
        Verifier { projects, keyring, validation, signature_only, any_secret, id }
    }

    /// The published keys this verifier reads.
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The project whose secret signed `token` (expiry not checked: the service that
    /// gets it answers an expired token itself). Used for Storage signed URLs.
    pub fn signed_by(&self, token: &str) -> Option<BackendId> {
        self.projects.iter().find_map(|(id, p)| {
            let key = p.key.as_ref()?;
            jsonwebtoken::decode::<serde::de::IgnoredAny>(token, key, &self.signature_only).ok().map(|_| id)
        })
    }

    /// Classifies and, where a secret or published key can, verifies `token`. A JWT
    /// this verifier accepted before on this thread is answered from the token cache
    /// while its `exp`/`nbf` still allow it and the projects' keys have not changed.
    pub fn check(&self, token: &str) -> Result<Token, AuthReason> {
        self.known(token.as_bytes()).map_or_else(|| self.check_new(token), Ok)
    }

    /// As [`Verifier::check`], for a token as it came, in bytes: an API key or a token in
    /// the cache is answered without reading it as text, and any other must be ASCII,
    /// or it is no token at all (`None`), as [`super::bearer`] has it.
    pub fn check_bytes(&self, token: &[u8]) -> Option<Result<Token, AuthReason>> {
        if let Some(known) = self.known(token) {
            return Some(Ok(known));
        }
        let token = std::str::from_utf8(token).ok().filter(|t| t.is_ascii())?;
        Some(self.check_new(token))
    }

    /// The token cache's tag for answers given now: this verifier under the keys
    /// published now.
    fn tag(&self) -> u64 {
        (self.id << 32) ^ (self.keyring.epoch() & 0xffff_ffff)
    }

    /// What `token` is, if it is an API key or a token this verifier accepted before on
    /// this thread (and still valid).
    fn known(&self, token: &[u8]) -> Option<Token> {
        if let Some((id, _)) = self.projects.iter().find(|(_, p)| p.api_keys.iter().any(|k| k.as_bytes() == token)) {
            return Some(Token::ApiKey(id));
        }
        cache::get(self.tag(), token, jsonwebtoken::get_current_timestamp())
    }

    /// The full check of a token met for the first time, its answer kept if accepted
    /// (one given while its issuer's keys were missing is forgotten when they come:
    /// they move the tag).
    fn check_new(&self, token: &str) -> Result<Token, AuthReason> {
        let tag = self.tag();
        let (checked, window) = self.check_jwt(token)?;
        cache::put(tag, token, &checked, window);
        Ok(checked)
    }

    /// The full check of a token that is not an API key, and when its answer holds.
    fn check_jwt(&self, token: &str) -> Result<(Token, Window), AuthReason> {
        let unverified =
            |sub, issuer| Ok((Token::Jwt { sub, issuer, signature: Signature::Unchecked }, Window::ALWAYS));
        let checkable = self.any_secret || self.keyring.epoch() != 0;
        // With nothing to verify with, only the routing claims matter: skip the header.
        let decoded = if checkable {
            jsonwebtoken::decode_header(token).ok().and_then(|h| Some((Some(h), claims(token)?)))
        } else {
            claims(token).map(|c| (None, c))
        };
        let (header, claims) = match decoded.ok_or(()) {
            Ok(c) => c,
            // Nothing here could verify it anyway: let the backend answer.
            Err(_) if !checkable => return unverified(None, None),
            Err(_) => return Err(AuthReason::Malformed),
        };
        let Routing { sub, iss, times } = claims;
        let sub = sub.filter(|s| !s.is_empty());
        let named =
            iss.as_deref().and_then(|iss| self.projects.iter().find(|(_, p)| p.issuer == iss).map(|(id, _)| id));
        let Some(header) = header else { return unverified(sub, named) };
        if header.alg != Algorithm::HS256 {
            let (issuer, signature) = keyed::check(&self.keyring, named, &header, token, &self.validation)?;
            let window = if matches!(signature, Signature::Key(_)) { self.window(times) } else { Window::ALWAYS };
            return Ok((Token::Jwt { sub, issuer, signature }, window));
        }
        // The issuer's own secret if the token names a known issuer, else any secret.
        let mut candidates =
            self.projects.iter().filter(|(id, p)| p.key.is_some() && named.is_none_or(|n| n == *id)).peekable();
        if candidates.peek().is_none() {
            // An HS256 token of a project that signs with published keys, and whose
            // secret is not configured, cannot be told from one signed with a public
            // key as its secret: refused.
            if named.is_some_and(|n| self.keyring.signs_with_keys(n)) {
                return Err(AuthReason::Algorithm);
            }
            return unverified(sub, named);
        }
        for (id, project) in candidates {
            let key = project.key.as_ref().expect("filtered on key");
            match jsonwebtoken::decode::<serde::de::IgnoredAny>(token, key, &self.validation) {
                Ok(_) => {
                    let window = self.window(times);
                    return Ok((Token::Jwt { sub, issuer: Some(id), signature: Signature::Secret }, window));
                }
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => return Err(AuthReason::Expired),
                    ErrorKind::InvalidAlgorithm => return Err(AuthReason::Algorithm),
                    _ => return Err(AuthReason::Malformed),
                },
            }
        }
        Err(AuthReason::Signature)
    }

    /// When a verified token with these `(nbf, exp)` stays valid, as the full check
    /// judges it (leeway included; fractions of a second rounded toward shorter).
    fn window(&self, (nbf, exp): (Option<f64>, Option<f64>)) -> Window {
        let leeway = self.validation.leeway;
        Window {
            from: nbf.map_or(0, |n| (n.ceil() as u64).saturating_sub(leeway)),
            until: exp.map_or(u64::MAX, |e| (e.max(0.0) as u64).saturating_add(leeway)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{BaseUrl, Secret};
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    pub(crate) fn sign(secret: &str, claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    pub(crate) fn backend(n: u8, secret: Option<&str>) -> BackendConfig {
        BackendConfig {
            url: BaseUrl::parse(&format!("http://127.0.0.1:1800{n}")).unwrap(),
            anon_key: Some(Secret::new(format!("anon-{n}"))),
            service_role_key: Some(Secret::new(format!("service-{n}"))),
            publishable_key: None,
            secret_key: None,
            jwt_secret: secret.map(Secret::new),
            issuer: format!("https://ref{n}.supabase.co/auth/v1"),
            database_url: None,
            keys: crate::config::keys::KeysConfig::well_known(&BaseUrl::parse("http://127.0.0.1:1").unwrap()),
        }
    }

    fn verifier(s1: Option<&str>, s2: Option<&str>) -> Verifier {
        Verifier::new(&PerBackend { v1: backend(1, s1), v2: backend(2, s2) }, 30, Keyring::new())
    }

    fn user(secret: &str, iss: &str, exp: u64) -> String {
        sign(secret, json!({"sub": "u-1", "iss": iss, "exp": exp, "aud": "authenticated", "role": "authenticated"}))
    }

    const ISS1: &str = "https://ref1.supabase.co/auth/v1";

    #[test]
    fn api_keys_are_not_identities() {
        let v = verifier(Some("s1"), None);
        assert_eq!(v.check("anon-1"), Ok(Token::ApiKey(BackendId::V1)));
        assert_eq!(v.check("service-2"), Ok(Token::ApiKey(BackendId::V2)));
    }

    #[test]
    fn verifies_with_the_issuers_secret() {
        let v = verifier(Some("s1"), Some("s2"));
        let t = user("s1", ISS1, now() + 600);
        assert_eq!(
            v.check(&t),
            Ok(Token::Jwt { sub: Some("u-1".into()), issuer: Some(BackendId::V1), signature: Signature::Secret })
        );
        assert_eq!(v.check(&user("s2", ISS1, now() + 600)), Err(AuthReason::Signature));
        assert_eq!(v.check(&user("s1", ISS1, now() - 600)), Err(AuthReason::Expired));
        // Within the leeway.
        assert!(v.check(&user("s1", ISS1, now() - 10)).is_ok());
    }

    #[test]
    fn unknown_issuer_must_match_some_secret() {
        let v = verifier(Some("s1"), Some("s2"));
        let t = sign("s2", json!({"sub": "u-2", "iss": "supabase", "exp": now() + 60}));
        assert_eq!(
            v.check(&t).unwrap(),
            Token::Jwt { sub: Some("u-2".into()), issuer: Some(BackendId::V2), signature: Signature::Secret }
        );
        let forged = sign("nope", json!({"sub": "u-2", "exp": now() + 60}));
        assert_eq!(v.check(&forged), Err(AuthReason::Signature));
    }

    #[test]
    fn refuses_none_confusion_and_garbage() {
        let v = verifier(Some("s1"), None);
        let t = user("s1", ISS1, now() + 600);
        let mut parts = t.split('.');
        let (_, payload) = (parts.next(), parts.next().unwrap());
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(v.check(&none), Err(AuthReason::Malformed));
        let hs512 =
            encode(&Header::new(Algorithm::HS512), &json!({"sub":"x","iss":ISS1}), &EncodingKey::from_secret(b"s1"))
                .unwrap();
        assert_eq!(v.check(&hs512), Err(AuthReason::Algorithm));
        for garbage in ["", "abc", "a.b.c", "....", "eyJ.eyJ.x"] {
            assert_eq!(v.check(garbage), Err(AuthReason::Malformed), "{garbage:?}");
        }
    }

    #[test]
    fn without_secrets_decodes_for_routing_only() {
        let v = verifier(None, None);
        let t = user("whatever", ISS1, now() - 6000);
        assert_eq!(
            v.check(&t),
            Ok(Token::Jwt { sub: Some("u-1".into()), issuer: Some(BackendId::V1), signature: Signature::Unchecked })
        );
        assert_eq!(v.check("garbage"), Ok(Token::Jwt { sub: None, issuer: None, signature: Signature::Unchecked }));
    }

    #[test]
    fn issuer_without_secret_is_not_checked_against_the_other_project() {
        let v = verifier(Some("s1"), None);
        let t = user("v2-secret", "https://ref2.supabase.co/auth/v1", now() + 60);
        assert_eq!(
            v.check(&t),
            Ok(Token::Jwt { sub: Some("u-1".into()), issuer: Some(BackendId::V2), signature: Signature::Unchecked })
        );
    }

    #[test]
    fn cached_answers_are_the_full_checks_and_die_with_their_verifier() {
        let v = verifier(Some("s1"), None);
        let t = user("s1", ISS1, now() + 600);
        let first = v.check(&t);
        assert_eq!(v.check(&t), first, "a repeat is answered from the cache, identically");
        // A reload with another secret: the cached acceptance does not carry over.
        let rotated = verifier(Some("rotated"), None);
        assert_eq!(rotated.check(&t), Err(AuthReason::Signature));
        // Refusals are never cached: they stay refused, and a forged twin stays out.
        let expired = user("s1", ISS1, now() - 600);
        assert_eq!(v.check(&expired), Err(AuthReason::Expired));
        assert_eq!(v.check(&expired), Err(AuthReason::Expired));
        let at = t.len() - 10;
        let swapped = if &t[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{swapped}{}", &t[..at], &t[at + 1..]);
        assert_eq!(v.check(&forged), Err(AuthReason::Signature));
    }

    #[test]
    fn tokens_in_bytes_are_checked_alike_and_only_ascii_ones_are_tokens() {
        let v = verifier(Some("s1"), None);
        let t = user("s1", ISS1, now() + 600);
        assert_eq!(v.check_bytes(b"anon-2"), Some(Ok(Token::ApiKey(BackendId::V2))));
        let first = v.check_bytes(t.as_bytes());
        assert_eq!(first, Some(v.check(&t)));
        assert_eq!(v.check_bytes(t.as_bytes()), first, "from the cache, identically");
        assert_eq!(v.check_bytes(user("s2", ISS1, now() + 600).as_bytes()), Some(Err(AuthReason::Signature)));
        assert_eq!(v.check_bytes("ey.é.x".as_bytes()), None, "UTF-8 beyond ASCII: no token");
        assert_eq!(v.check_bytes(b"ey.\xff.x"), None, "not UTF-8: no token");
        assert_eq!(v.check_bytes(b"garbage"), Some(Err(AuthReason::Malformed)));
    }

    #[test]
    fn a_cached_tokens_window_has_the_full_checks_bounds_and_leeway() {
        let v = verifier(Some("s1"), None);
        assert_eq!(v.window((None, None)), Window::ALWAYS);
        // Leeway 30 s on both sides; fractional times round toward the shorter window.
        assert_eq!(v.window((Some(1000.0), Some(2000.0))), Window { from: 970, until: 2030 });
        assert_eq!(v.window((Some(1000.2), Some(2000.7))), Window { from: 971, until: 2030 });
        assert_eq!(v.window((Some(10.0), Some(-5.0))), Window { from: 0, until: 30 });
    }
}
