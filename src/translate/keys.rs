//! Project credentials in pairs: v1's anon key ↔ v2's anon key, and so on for
//! service_role, publishable and secret keys, and re-signing of user JWTs for the
//! project that did not issue them: with its signing key (ES256/RS256) or its HS256
//! secret, unless it lists the key that signed the token (docs/identity.md).

use std::sync::Arc;

use jsonwebtoken::{Algorithm, EncodingKey};

use crate::backend::{BackendId, PerBackend};
use crate::config::{BackendConfig, Secret};
use crate::identity::{Keyring, Signature};
use crate::jwk::SigningKey;

/// What signs tokens for one project.
struct Signer {
    /// An imported signing key, and the header of the tokens it signs.
    key: Option<(Arc<SigningKey>, String)>,
    /// The legacy HS256 secret.
    secret: Option<EncodingKey>,
}

/// The credentials of both projects, row by kind.
pub struct KeyMap {
    rows: Vec<PerBackend<Option<String>>>,
    /// Whether any row has both keys (else no key has a counterpart).
    paired: bool,
    signers: PerBackend<Signer>,
    keyring: Arc<Keyring>,
}

/// `{"alg":"HS256","typ":"JWT"}`, base64url: the header of every re-signed token.
const HS256_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

impl KeyMap {
    /// Pairs up the keys configured for both backends.
    pub fn new(backends: &PerBackend<BackendConfig>, keyring: Arc<Keyring>) -> KeyMap {
        let pick = |f: fn(&BackendConfig) -> &Option<Secret>| PerBackend {
            v1: f(&backends.v1).as_ref().map(|s| s.expose().to_string()),
            v2: f(&backends.v2).as_ref().map(|s| s.expose().to_string()),
        };
        let rows = vec![
            pick(|b| &b.anon_key),
            pick(|b| &b.service_role_key),
            pick(|b| &b.publishable_key),
            pick(|b| &b.secret_key),
        ];
        let signer = |b: &BackendConfig| Signer {
            key: b.keys.signing_key.clone().map(|k| {
                let header = k.header();
                (k, header)
            }),
            secret: b.jwt_secret.as_ref().map(|s| EncodingKey::from_secret(s.expose().as_bytes())),
        };
        let paired = rows.iter().any(|row| row.v1.is_some() && row.v2.is_some());
        let signers = PerBackend { v1: signer(&backends.v1), v2: signer(&backends.v2) };
        KeyMap { rows, paired, signers, keyring }
    }

    /// Whether any kind of key is known for both projects (else no key has a
    /// counterpart).
    pub fn any_pair(&self) -> bool {
        self.paired
    }

    /// `to`'s counterpart of a key that belongs to the other project, if both are known.
    pub fn counterpart(&self, key: &str, to: BackendId) -> Option<&str> {
        let from = to.other();
        self.rows
            .iter()
            .find(|row| row.get(from).as_deref() == Some(key))
            .and_then(|row| row.get(to).as_deref())
            .filter(|k| *k != key)
    }

    /// `token` (verified as issued by the other project, its signature checked as
    /// `signature` says) made acceptable to `to`, every claim byte for byte the same:
    /// `None` (left as it is) when `to` lists the key that signed it, or when nothing
    /// here signs for `to`; else signed with `to`'s signing key, or its HS256 secret.
    pub fn resign(&self, token: &str, signature: &Signature, to: BackendId) -> Option<String> {
        if let Signature::Key(Some(kid)) = signature
            && self.keyring.keys(to).is_some_and(|p| p.lists(kid))
        {
            return None;
        }
        let signer = self.signers.get(to);
        let payload = token.split('.').nth(1)?;
        if let Some((key, header)) = &signer.key {
            let message = format!("{header}.{payload}");
            let signature = key.sign(message.as_bytes())?;
            return Some(format!("{message}.{signature}"));
        }
        let message = format!("{HS256_HEADER}.{payload}");
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), signer.secret.as_ref()?, Algorithm::HS256).ok()?;
        Some(format!("{message}.{signature}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BaseUrl;
    use jsonwebtoken::{DecodingKey, Validation};

    fn backend(n: u8, publishable: bool) -> BackendConfig {
        BackendConfig {
            url: BaseUrl::parse(&format!("http://127.0.0.1:{n}")).unwrap(),
            anon_key: Some(Secret::new(format!("anon-{n}"))),
            service_role_key: Some(Secret::new(format!("service-{n}"))),
            publishable_key: publishable.then(|| Secret::new(format!("sb_publishable_{n}"))),
            secret_key: None,
            jwt_secret: Some(Secret::new(format!("secret-{n}"))),
            issuer: format!("iss-{n}"),
            database_url: None,
            keys: crate::config::keys::KeysConfig::well_known(&BaseUrl::parse("http://127.0.0.1:1").unwrap()),
        }
    }

    #[test]
    fn keys_translate_both_ways_and_unknown_keys_do_not() {
        let m = KeyMap::new(&PerBackend { v1: backend(1, true), v2: backend(2, true) }, Keyring::new());
        assert_eq!(m.counterpart("anon-1", BackendId::V2), Some("anon-2"));
        assert_eq!(m.counterpart("service-2", BackendId::V1), Some("service-1"));
        assert_eq!(m.counterpart("sb_publishable_1", BackendId::V2), Some("sb_publishable_2"));
        assert_eq!(m.counterpart("anon-2", BackendId::V2), None, "already the target's key");
        assert_eq!(m.counterpart("someone-else", BackendId::V2), None);
        let half = KeyMap::new(&PerBackend { v1: backend(1, true), v2: backend(2, false) }, Keyring::new());
        assert_eq!(half.counterpart("sb_publishable_1", BackendId::V2), None, "no v2 counterpart configured");
    }

    #[test]
    fn resigned_tokens_keep_every_claim() {
        let m = KeyMap::new(&PerBackend { v1: backend(1, false), v2: backend(2, false) }, Keyring::new());
        let claims = serde_json::json!({"sub": "u", "exp": 4_000_000_000u64, "role": "authenticated", "x": [1, 2]});
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("v1-kid".into());
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(b"secret-1")).unwrap();
        let resigned = m.resign(&token, &Signature::Secret, BackendId::V2).unwrap();
        assert_eq!(resigned.split('.').nth(1), token.split('.').nth(1), "payload byte for byte");
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_aud = false;
        let got =
            jsonwebtoken::decode::<serde_json::Value>(&resigned, &DecodingKey::from_secret(b"secret-2"), &v).unwrap();
        assert_eq!(got.claims, claims);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&resigned, &DecodingKey::from_secret(b"secret-1"), &v).is_err()
        );
    }

    #[test]
    fn a_signing_key_re_signs_unless_the_target_lists_the_tokens_key() {
        let pem = include_bytes!("../../tests/data/rsa-2048.pem");
        let key = Arc::new(crate::jwk::signing_key(pem, Some("v2-imported")).unwrap());
        let mut v2 = backend(2, false);
        v2.keys.signing_key = Some(key.clone());
        let ring = Keyring::new();
        let m = KeyMap::new(&PerBackend { v1: backend(1, false), v2 }, ring.clone());
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "u", "exp": 4_000_000_000u64}),
            &EncodingKey::from_secret(b"secret-1"),
        )
        .unwrap();
        let resigned = m.resign(&token, &Signature::Secret, BackendId::V2).unwrap();
        let header = jsonwebtoken::decode_header(&resigned).unwrap();
        assert_eq!((header.alg, header.kid.as_deref()), (Algorithm::RS256, Some("v2-imported")));
        assert_eq!(resigned.split('.').nth(1), token.split('.').nth(1), "payload byte for byte");
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_aud = false;
        assert!(jsonwebtoken::decode::<serde_json::Value>(&resigned, &key.public.key, &v).is_ok());
        // v2 lists the key a v1 token was signed with: it goes as it is.
        let set = serde_json::json!({ "keys": [crate::jwk::public_jwk(&key)] }).to_string();
        ring.publish(BackendId::V2, "test", crate::jwk::key_set(set.as_bytes()).unwrap().keys);
        let shared = Signature::Key(Some("v2-imported".into()));
        assert_eq!(m.resign(&token, &shared, BackendId::V2), None);
        assert!(m.resign(&token, &Signature::Key(Some("other".into())), BackendId::V2).is_some());
    }
}
