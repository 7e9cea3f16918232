//! Tokens signed with a project's published keys (ES256, RS256): which project signed
//! it (its `iss` first, then the project that publishes its `kid`), which key, and the
//! check. The algorithm is the key's, never the token's: a token whose `alg` is not
//! its key's is refused, and no other algorithm is taken here at all.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};

use super::jwt::{AuthReason, Signature};
use super::keyring::Keyring;
use crate::backend::BackendId;

/// Checks a token whose header names an algorithm other than HS256. `named` is the
/// project its `iss` names, if any; `base` the validation rules (times, leeway).
pub fn check(
    keyring: &Keyring,
    named: Option<BackendId>,
    header: &Header,
    token: &str,
    base: &Validation,
) -> Result<(Option<BackendId>, Signature), AuthReason> {
    if !matches!(header.alg, Algorithm::ES256 | Algorithm::RS256) {
        return Err(AuthReason::Algorithm);
    }
    let kid = header.kid.as_deref();
    let publisher = || {
        let kid = kid?;
        BackendId::ALL.into_iter().find(|id| keyring.keys(*id).is_some_and(|p| p.lists(kid)))
    };
    let Some(issuer) = named.or_else(publisher) else {
        // Nobody here claims it. While some project's keys are not known, it may be
        // that project's: left to the projects (and never re-signed, its issuer
        // unknown). Otherwise no project signed it.
        if BackendId::ALL.into_iter().any(|id| keyring.keys(id).is_none()) {
            return Ok((None, Signature::Unchecked));
        }
        return Err(AuthReason::Signature);
    };
    let Some(published) = keyring.keys(issuer) else {
        return Ok((Some(issuer), Signature::KeysUnavailable));
    };
    // Without a `kid`, every key of the token's algorithm is tried.
    let mut candidates = published.candidates(kid).filter(|k| kid.is_some() || k.alg == header.alg).peekable();
    if candidates.peek().is_none() {
        return Err(if keyring.may_refetch(issuer) { AuthReason::UnknownKey(issuer) } else { AuthReason::Signature });
    }
    for key in candidates {
        if key.alg != header.alg {
            return Err(AuthReason::Algorithm);
        }
        let mut validation = base.clone();
        validation.algorithms = vec![key.alg];
        match jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.key, &validation) {
            Ok(_) => return Ok((Some(issuer), Signature::Key(kid.map(Arc::from)))),
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => continue,
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => return Err(AuthReason::Expired),
                ErrorKind::InvalidAlgorithm => return Err(AuthReason::Algorithm),
                _ => return Err(AuthReason::Malformed),
            },
        }
    }
    Err(AuthReason::Signature)
}

#[cfg(test)]
mod tests {
    use super::super::jwt::Verifier;
    use super::*;
    use crate::backend::PerBackend;
    use crate::jwk::{self, SigningKey};
    use base64::Engine;

    fn b64(v: impl AsRef<[u8]>) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    /// An ES256 signing key of P-256 made from `seed`.
    pub(crate) fn es256(kid: &str, seed: u8) -> SigningKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let p = secret.public_key().to_encoded_point(false);
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "d": b64(secret.to_bytes()),
            "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())});
        jwk::signing_key(jwk.to_string().as_bytes(), None).unwrap()
    }

    fn rs256(kid: &str) -> SigningKey {
        jwk::signing_key(include_bytes!("../../tests/data/rsa-2048.pem"), Some(kid)).unwrap()
    }

    fn sign_with(header: &str, key: &SigningKey, claims: serde_json::Value) -> String {
        let message = format!("{}.{}", b64(header), b64(claims.to_string()));
        format!("{message}.{}", key.sign(message.as_bytes()).unwrap())
    }

    fn token(key: &SigningKey, iss: Option<&str>) -> String {
        let header = format!(r#"{{"alg":"{}","kid":"{}","typ":"JWT"}}"#, jwk::alg_name(key.alg), key.kid);
        let mut claims = serde_json::json!({"sub": "u-1", "exp": 4_000_000_000u64});
        if let Some(iss) = iss {
            claims["iss"] = iss.into();
        }
        sign_with(&header, key, claims)
    }

    const ISS1: &str = "https://ref1.supabase.co/auth/v1";
    const ISS2: &str = "https://ref2.supabase.co/auth/v1";

    fn verifier(secret1: Option<&str>, keyring: Arc<Keyring>) -> Verifier {
        let b = crate::identity::jwt::tests::backend;
        Verifier::new(&PerBackend { v1: b(1, secret1), v2: b(2, None) }, 0, keyring)
    }

    fn publish(ring: &Keyring, id: BackendId, keys: &[&SigningKey]) {
        let set = serde_json::json!({ "keys": keys.iter().map(|k| jwk::public_jwk(k)).collect::<Vec<_>>() });
        ring.publish(id, "test", jwk::key_set(set.to_string().as_bytes()).unwrap().keys);
    }

    fn signature(t: Result<crate::identity::Token, AuthReason>) -> Result<(Option<BackendId>, Signature), AuthReason> {
        t.map(|t| match t {
            crate::identity::Token::Jwt { issuer, signature, .. } => (issuer, signature),
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn tokens_are_verified_with_their_issuers_published_key() {
        let (ring, v2key, rsa) = (Keyring::new(), es256("v2-a", 7), rs256("v2-r"));
        publish(&ring, BackendId::V1, &[]);
        publish(&ring, BackendId::V2, &[&v2key, &rsa]);
        let v = verifier(Some("s1"), ring.clone());
        let kid = |k: &str| Signature::Key(Some(Arc::from(k)));
        assert_eq!(signature(v.check(&token(&v2key, Some(ISS2)))), Ok((Some(BackendId::V2), kid("v2-a"))));
        assert_eq!(signature(v.check(&token(&rsa, Some(ISS2)))), Ok((Some(BackendId::V2), kid("v2-r"))));
        // No `iss`: the project that publishes the kid.
        assert_eq!(signature(v.check(&token(&v2key, None))), Ok((Some(BackendId::V2), kid("v2-a"))));
        // Signed by another key under a published kid.
        let impostor = es256("v2-a", 8);
        assert_eq!(v.check(&token(&impostor, Some(ISS2))), Err(AuthReason::Signature));
        // A key of v2 claimed by a token of v1: v1 does not publish it.
        assert_eq!(v.check(&token(&v2key, Some(ISS1))), Err(AuthReason::UnknownKey(BackendId::V1)));
        assert!(ring.ask(BackendId::V1));
        assert_eq!(v.check(&token(&v2key, Some(ISS1))), Err(AuthReason::Signature), "no second fetch so soon");
    }

    #[test]
    fn the_algorithm_is_the_keys() {
        let (ring, ec, rsa) = (Keyring::new(), es256("ec", 7), rs256("rsa"));
        publish(&ring, BackendId::V1, &[]);
        publish(&ring, BackendId::V2, &[&ec, &rsa]);
        let v = verifier(None, ring.clone());
        let claims = serde_json::json!({"sub": "u-1", "iss": ISS2});
        // The public key's bytes as an HS256 secret.
        let public = jwk::public_jwk(&ec).to_string();
        let header = r#"{"alg":"HS256","kid":"ec","typ":"JWT"}"#;
        let message = format!("{}.{}", b64(header), b64(claims.to_string()));
        let mac = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(v.check(&format!("{message}.{mac}")), Err(AuthReason::Algorithm));
        // ES256 named under the RSA key's kid, and RS256 under the EC key's.
        assert_eq!(
            v.check(&sign_with(r#"{"alg":"ES256","kid":"rsa"}"#, &ec, claims.clone())),
            Err(AuthReason::Algorithm)
        );
        assert_eq!(
            v.check(&sign_with(r#"{"alg":"RS256","kid":"ec"}"#, &rsa, claims.clone())),
            Err(AuthReason::Algorithm)
        );
        // `none`, and algorithms never taken.
        let unsigned = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(claims.to_string()));
        assert_eq!(v.check(&unsigned), Err(AuthReason::Malformed));
        let ps256 = format!("{}.{}.AAAA", b64(r#"{"alg":"PS256","kid":"rsa"}"#), b64(claims.to_string()));
        assert_eq!(v.check(&ps256), Err(AuthReason::Algorithm));
    }

    #[test]
    fn without_an_issuers_keys_its_tokens_wait_unverified() {
        let (ring, key) = (Keyring::new(), es256("v1-a", 7));
        publish(&ring, BackendId::V2, &[]);
        let v = verifier(None, ring.clone());
        let t = token(&key, Some(ISS1));
        assert_eq!(signature(v.check(&t)), Ok((Some(BackendId::V1), Signature::KeysUnavailable)));
        assert_eq!(signature(v.check(&t)), Ok((Some(BackendId::V1), Signature::KeysUnavailable)), "cached");
        // Once the keys come, the token is verified.
        publish(&ring, BackendId::V1, &[&key]);
        assert_eq!(signature(v.check(&t)), Ok((Some(BackendId::V1), Signature::Key(Some("v1-a".into())))));
    }

    #[test]
    fn a_key_that_leaves_the_set_stops_verifying_at_once() {
        let (ring, old, new) = (Keyring::new(), es256("old", 7), es256("new", 8));
        publish(&ring, BackendId::V1, &[]);
        publish(&ring, BackendId::V2, &[&old, &new]);
        let v = verifier(None, ring.clone());
        let t = token(&old, Some(ISS2));
        assert!(v.check(&t).is_ok());
        assert!(v.check(&t).is_ok(), "from the cache");
        publish(&ring, BackendId::V2, &[&new]);
        assert!(ring.ask(BackendId::V2));
        assert_eq!(v.check(&t), Err(AuthReason::Signature));
        assert!(v.check(&token(&new, Some(ISS2))).is_ok());
    }

    #[test]
    fn legacy_tokens_of_a_project_on_signing_keys_need_its_secret() {
        let (ring, key) = (Keyring::new(), es256("k", 7));
        publish(&ring, BackendId::V1, &[&key]);
        publish(&ring, BackendId::V2, &[]);
        let hs = |secret: &str| crate::identity::jwt::tests::sign(secret, serde_json::json!({"sub": "u", "iss": ISS1}));
        assert_eq!(verifier(None, ring.clone()).check(&hs("anything")), Err(AuthReason::Algorithm));
        let with_secret = verifier(Some("s1"), ring.clone());
        assert_eq!(signature(with_secret.check(&hs("s1"))), Ok((Some(BackendId::V1), Signature::Secret)));
        assert_eq!(with_secret.check(&hs("guess")), Err(AuthReason::Signature));
    }
}
