use super::*;
use jsonwebtoken::{Validation, decode};

const RSA_PEM: &str = include_str!("../../tests/data/rsa-2048.pem");

/// A private JWK of P-256 made from fixed bytes, as `supabase gen signing-key` writes one.
fn ec_jwk(kid: &str, seed: u8) -> serde_json::Value {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
    let point = secret.public_key().to_encoded_point(false);
    serde_json::json!({ "kty": "EC", "kid": kid, "use": "sig", "key_ops": ["sign", "verify"], "alg": "ES256",
        "ext": true, "crv": "P-256", "d": B64.encode(secret.to_bytes()),
        "x": B64.encode(point.x().unwrap()), "y": B64.encode(point.y().unwrap()) })
}

/// A token signed by `key` over `claims`, and whether `set` verifies it.
fn round_trip(key: &SigningKey, set: &KeySet) -> bool {
    let payload = B64.encode(r#"{"sub":"u1","exp":4000000000}"#);
    let message = format!("{}.{payload}", key.header());
    let token = format!("{message}.{}", key.sign(message.as_bytes()).unwrap());
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
    set.keys
        .iter()
        .filter(|k| k.kid == header.kid)
        .any(|k| decode::<serde_json::Value>(&token, &k.key, &Validation::new(k.alg)).is_ok())
}

fn published(key: &SigningKey) -> KeySet {
    key_set(serde_json::json!({ "keys": [public_jwk(key)] }).to_string().as_bytes()).unwrap()
}

#[test]
fn a_private_jwk_signs_what_its_public_half_verifies() {
    for shape in [ec_jwk("k1", 7), serde_json::json!([ec_jwk("k1", 7)]), serde_json::json!({"keys": [ec_jwk("k1", 7)]})]
    {
        let key = signing_key(shape.to_string().as_bytes(), None).unwrap();
        assert_eq!((key.kid.as_str(), key.alg), ("k1", Algorithm::ES256));
        assert!(round_trip(&key, &published(&key)));
        assert!(format!("{key:?}").contains("<redacted>"));
    }
    // Another key under the same kid does not verify it.
    let key = signing_key(ec_jwk("k1", 7).to_string().as_bytes(), None).unwrap();
    let other = signing_key(ec_jwk("k1", 8).to_string().as_bytes(), None).unwrap();
    assert!(!round_trip(&key, &published(&other)));
}

#[test]
fn pem_keys_need_their_kid() {
    use p256::pkcs8::EncodePrivateKey;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let ec = p256::SecretKey::from_slice(&[9; 32]).unwrap();
    let sec1 = ec.to_sec1_pem(Default::default()).unwrap();
    let pkcs8 = ec.to_pkcs8_pem(Default::default()).unwrap();
    let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PEM).unwrap();
    let pkcs1 = rsa.to_pkcs1_pem(Default::default()).unwrap();
    for (pem, alg) in [
        (sec1.as_str(), Algorithm::ES256),
        (pkcs8.as_str(), Algorithm::ES256),
        (RSA_PEM, Algorithm::RS256),
        (pkcs1.as_str(), Algorithm::RS256),
    ] {
        assert!(signing_key(pem.as_bytes(), None).unwrap_err().contains("signing_key_id"));
        let key = signing_key(pem.as_bytes(), Some("imported")).unwrap();
        assert_eq!(key.alg, alg);
        assert!(round_trip(&key, &published(&key)), "{alg:?}");
    }
}

#[test]
fn a_private_rsa_jwk_is_read() {
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PrivateKeyParts;
    let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PEM).unwrap();
    let b = |n: &BigUint| B64.encode(n.to_bytes_be());
    let jwk = serde_json::json!({ "kty": "RSA", "kid": "r1", "alg": "RS256", "n": b(rsa.n()), "e": b(rsa.e()),
        "d": b(rsa.d()), "p": b(&rsa.primes()[0]), "q": b(&rsa.primes()[1]) });
    let key = signing_key(jwk.to_string().as_bytes(), Some("r1")).unwrap();
    assert!(round_trip(&key, &published(&key)));
    assert!(signing_key(jwk.to_string().as_bytes(), Some("r2")).unwrap_err().contains("not the key's own kid"));
}

#[test]
fn bad_private_keys_are_refused_with_a_reason() {
    let mut wrong_half = ec_jwk("k", 7);
    wrong_half["x"] = ec_jwk("k", 8)["x"].clone();
    let no_kid = {
        let mut k = ec_jwk("k", 7);
        k.as_object_mut().unwrap().remove("kid");
        k
    };
    let cases = [
        (wrong_half.to_string(), None, "public half"),
        (serde_json::json!([ec_jwk("a", 7), ec_jwk("b", 8)]).to_string(), None, "2 private keys"),
        (serde_json::json!({"keys": []}).to_string(), None, "0 private keys"),
        (no_kid.to_string(), None, "no kid"),
        ("{\"kty\":\"oct\",\"k\":\"c2VjcmV0\",\"d\":\"eA\"}".into(), None, "symmetric"),
        ("not json".into(), None, "not a JSON Web Key Set"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(), Some("x"), "not a P-256 or RSA"),
    ];
    for (text, kid, why) in cases {
        let err = signing_key(text.as_bytes(), kid).err();
        assert!(err.as_deref().is_some_and(|e| e.contains(why)), "{text}: {err:?}");
    }
}

#[test]
fn key_sets_keep_only_es256_and_rs256_signature_keys() {
    let ec = public_jwk(&signing_key(ec_jwk("ec", 7).to_string().as_bytes(), None).unwrap());
    let mut hs = ec.clone();
    hs["alg"] = "HS256".into();
    let mut enc = ec.clone();
    enc["use"] = "enc".into();
    let mut p384 = ec.clone();
    p384["crv"] = "P-384".into();
    let mut off_curve = ec.clone();
    off_curve["y"] = off_curve["x"].clone();
    let small_rsa = serde_json::json!({ "kty": "RSA", "n": B64.encode([0xc5u8; 64]), "e": "AQAB" });
    let set =
        serde_json::json!({ "keys": [ec, {"kty": "oct", "k": "c2VjcmV0"}, hs, enc, p384, off_curve, small_rsa, 7] });
    let set = key_set(set.to_string().as_bytes()).unwrap();
    assert_eq!(set.keys.len(), 1, "{:?}", set.skipped);
    assert_eq!(set.keys[0].alg, Algorithm::ES256);
    let skipped = set.skipped.join("\n");
    for why in ["symmetric", "not ES256 or RS256", "not a signature key", "not P-256", "not a point", "512 bits"] {
        assert!(skipped.contains(why), "{why} in {skipped}");
    }
    assert_eq!(set.skipped.len(), 7);
    assert!(key_set(b"{\"keys\": 5}").is_err());
    assert!(key_set(b"").is_err());
    assert!(key_set(b"{\"keys\": []}").unwrap().keys.is_empty());
}

#[test]
fn large_sets_are_bounded() {
    let key = public_jwk(&signing_key(ec_jwk("ec", 7).to_string().as_bytes(), None).unwrap());
    let set = serde_json::json!({ "keys": vec![key; MAX_KEYS + 5] });
    assert_eq!(key_set(set.to_string().as_bytes()).unwrap().keys.len(), MAX_KEYS);
    assert!(key_set(&vec![b' '; MAX_BYTES + 1]).is_err());
}
