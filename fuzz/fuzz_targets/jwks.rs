//! Key sets and private signing keys on arbitrary bytes: read or refused with a
//! reason, never a panic. A key set read holds only ES256 and RS256 keys, no more
//! than MAX_KEYS; a private key read signs what its own public half verifies.
#![no_main]

use jsonwebtoken::{Algorithm, Validation};
use libfuzzer_sys::fuzz_target;
use switchyard::jwk;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = jwk::key_set(data) {
        assert!(set.keys.len() <= jwk::MAX_KEYS);
        assert!(set.keys.iter().all(|k| matches!(k.alg, Algorithm::ES256 | Algorithm::RS256)));
    }
    for kid in [None, Some("fuzz")] {
        let Ok(key) = jwk::signing_key(data, kid) else { continue };
        let message = format!("{}.e30", key.header());
        let signature = key.sign(message.as_bytes()).expect("a key read signs");
        let token = format!("{message}.{signature}");
        let mut v = Validation::new(key.alg);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(&token, &key.public.key, &v).expect("its public half verifies");
        // And the public half as published reads back as one key.
        let published = serde_json::json!({ "keys": [jwk::public_jwk(&key)] }).to_string();
        assert_eq!(jwk::key_set(published.as_bytes()).expect("readable").keys.len(), 1);
    }
});
