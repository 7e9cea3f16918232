//! JSON Web Keys: a project's published key set (its JWKS) read into verifying keys,
//! and a private signing key (a JWK as `supabase gen signing-key` writes it, or PEM)
//! read into a signer. Only what Supabase signs user tokens with is taken: ES256 (EC
//! P-256) and RS256 (RSA of 2048 to 4096 bits). A key's algorithm comes from the key,
//! never from a token. A leaf: nothing else of the crate is used here.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rsa::BigUint;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;

/// Keys read from one set at most (a project publishes a handful).
pub const MAX_KEYS: usize = 32;
/// The largest key set or key file read, in bytes.
pub const MAX_BYTES: usize = 256 * 1024;

/// A key that verifies tokens.
pub struct PublicKey {
    /// Its `kid`, which a token names in its header.
    pub kid: Option<String>,
    /// ES256 or RS256: what it verifies, whatever a token says.
    pub alg: Algorithm,
    /// The key itself.
    pub key: DecodingKey,
    /// The key's public numbers, to tell a changed key under the same `kid`.
    pub material: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

/// The usable keys of a key set, and why the others were left out.
#[derive(Debug, Default)]
pub struct KeySet {
    /// Keys that verify ES256 or RS256 tokens.
    pub keys: Vec<PublicKey>,
    /// One line per key not taken (a symmetric key, another curve, malformed...).
    pub skipped: Vec<String>,
}

/// A private key that signs tokens for a project which lists its public half.
pub struct SigningKey {
    /// The `kid` put in the header of every token it signs.
    pub kid: String,
    /// ES256 or RS256.
    pub alg: Algorithm,
    key: EncodingKey,
    /// Its public half.
    pub public: PublicKey,
    /// That half as a public JWK.
    jwk: serde_json::Value,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey {{ kid: {:?}, alg: {:?}, key: <redacted> }}", self.kid, self.alg)
    }
}

impl SigningKey {
    /// The base64url header of the tokens it signs: `alg`, `kid`, `typ`.
    pub fn header(&self) -> String {
        let header = serde_json::json!({ "alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT" });
        B64.encode(header.to_string())
    }

    /// The base64url signature of `message` (`header.payload`).
    pub fn sign(&self, message: &[u8]) -> Option<String> {
        jsonwebtoken::crypto::sign(message, &self.key, self.alg).ok()
    }
}

/// What a JWK may hold; members not read here (`ext`, `dp`, ...) are ignored.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Raw {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<String>,
    n: Option<String>,
    e: Option<String>,
    p: Option<String>,
    q: Option<String>,
}

/// The keys of a key set as `{"keys": [...]}`, a bare array, or one key.
fn entries(json: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    use serde_json::Value;
    if json.len() > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    let not_a_set = |why: String| format!("not a JSON Web Key Set: {why}");
    match serde_json::from_slice::<Value>(json).map_err(|e| not_a_set(e.to_string()))? {
        Value::Array(keys) => Ok(keys),
        Value::Object(mut set) => match set.remove("keys") {
            Some(Value::Array(keys)) => Ok(keys),
            Some(_) => Err(not_a_set("`keys` is not an array".into())),
            None if set.contains_key("kty") => Ok(vec![Value::Object(set)]),
            None => Err(not_a_set("no `keys`".into())),
        },
        _ => Err(not_a_set("neither an object nor an array".into())),
    }
}

/// Reads a published key set: the keys that verify ES256 or RS256 tokens. A key of
/// another kind is skipped (and said why), not an error: the set as a whole is
/// refused only when it is not a key set at all.
pub fn key_set(json: &[u8]) -> Result<KeySet, String> {
    let mut set = KeySet::default();
    for (i, value) in entries(json)?.into_iter().enumerate() {
        if set.keys.len() == MAX_KEYS {
            set.skipped.push(format!("keys past the first {MAX_KEYS} are not read"));
            break;
        }
        let key = serde_json::from_value::<Raw>(value).map_err(|e| e.to_string()).and_then(|raw| public(&raw));
        match key {
            Ok(key) => set.keys.push(key),
            Err(why) => set.skipped.push(format!("key {i}: {why}")),
        }
    }
    Ok(set)
}

fn bytes(field: &str, value: &Option<String>) -> Result<Vec<u8>, String> {
    let v = value.as_deref().ok_or_else(|| format!("no `{field}`"))?;
    B64.decode(v.trim_end_matches('=')).map_err(|_| format!("`{field}` is not base64url"))
}

/// ES256 or RS256, from the key's type and its `alg` if it names one.
fn algorithm(raw: &Raw) -> Result<Algorithm, String> {
    let alg = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("EC", Some("P-256")) => Algorithm::ES256,
        ("EC", crv) => return Err(format!("curve {crv:?} is not P-256")),
        ("RSA", _) => Algorithm::RS256,
        ("oct", _) => return Err("a symmetric key is never taken from a key set".into()),
        (kty, _) => return Err(format!("key type {kty:?} is not EC or RSA")),
    };
    match raw.alg.as_deref() {
        None => Ok(alg),
        Some(named) if named == alg_name(alg) => Ok(alg),
        Some(named) => Err(format!("alg {named:?} is not ES256 or RS256 for this key")),
    }
}

/// The name of an algorithm read here, as a JWT header spells it.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        _ => "other",
    }
}

fn public(raw: &Raw) -> Result<PublicKey, String> {
    if raw.usage.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signature key (`use`)".into());
    }
    if raw.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|o| o == "verify")) {
        return Err("`key_ops` does not allow verify".into());
    }
    let alg = algorithm(raw)?;
    let (key, material) = match alg {
        Algorithm::ES256 => {
            let (x, y) = (bytes("x", &raw.x)?, bytes("y", &raw.y)?);
            let point = [&[4u8][..], &x, &y].concat();
            if x.len() != 32 || y.len() != 32 || p256::PublicKey::from_sec1_bytes(&point).is_err() {
                return Err("not a point of P-256".into());
            }
            (DecodingKey::from_ec_components(&B64.encode(&x), &B64.encode(&y)), B64.encode(&point))
        }
        _ => {
            let (n, e) = (bytes("n", &raw.n)?, bytes("e", &raw.e)?);
            let public = rsa::RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
                .map_err(|e| format!("not an RSA key: {e}"))?;
            rsa_size(public.n().bits())?;
            (
                DecodingKey::from_rsa_components(&B64.encode(&n), &B64.encode(&e)),
                format!("{}.{}", B64.encode(&n), B64.encode(&e)),
            )
        }
    };
    let key = key.map_err(|e| format!("unusable key: {e}"))?;
    Ok(PublicKey { kid: raw.kid.clone(), alg, key, material })
}

fn rsa_size(bits: usize) -> Result<(), String> {
    match bits {
        2048..=4096 => Ok(()),
        _ => Err(format!("an RSA key of {bits} bits (2048 to 4096 are taken)")),
    }
}

/// Reads a private signing key: a private JWK (alone, in an array or in a key set;
/// exactly one private key), or PEM (PKCS#8, SEC1 or PKCS#1) with `kid` given. A
/// `kid` given for a JWK must be the JWK's own.
pub fn signing_key(text: &[u8], kid: Option<&str>) -> Result<SigningKey, String> {
    if text.len() > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    let trimmed = text.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let pem = std::str::from_utf8(trimmed).map_err(|_| "PEM that is not text".to_string())?;
        let kid = kid.ok_or("a PEM key needs signing_key_id: the kid the project gave it")?;
        return from_pem(pem, kid);
    }
    let private: Vec<Raw> = entries(text)?
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Raw>(v).ok())
        .filter(|raw| raw.d.is_some())
        .collect();
    let [raw] = private.as_slice() else {
        return Err(format!("{} private keys found; exactly one is needed", private.len()));
    };
    let alg = algorithm(raw)?;
    let kid = match (raw.kid.as_deref(), kid) {
        (Some(own), Some(given)) if own != given => {
            return Err(format!("signing_key_id {given:?} is not the key's own kid {own:?}"));
        }
        (Some(own), _) => own,
        (None, Some(given)) => given,
        (None, None) => return Err("the key has no kid; set signing_key_id".into()),
    };
    let d = bytes("d", &raw.d)?;
    let key = match alg {
        Algorithm::ES256 => {
            let secret = p256::SecretKey::from_slice(&d).map_err(|_| "`d` is not a P-256 private key".to_string())?;
            let expected = secret.public_key();
            if let (Some(_), Some(_)) = (&raw.x, &raw.y) {
                let point = [&[4u8][..], &bytes("x", &raw.x)?, &bytes("y", &raw.y)?].concat();
                if p256::PublicKey::from_sec1_bytes(&point).ok() != Some(expected) {
                    return Err("`x`/`y` are not the public half of `d`".into());
                }
            }
            Private::Ec(secret)
        }
        _ => {
            let n = BigUint::from_bytes_be(&bytes("n", &raw.n)?);
            let e = BigUint::from_bytes_be(&bytes("e", &raw.e)?);
            let primes =
                vec![BigUint::from_bytes_be(&bytes("p", &raw.p)?), BigUint::from_bytes_be(&bytes("q", &raw.q)?)];
            let key = rsa::RsaPrivateKey::from_components(n, e, BigUint::from_bytes_be(&d), primes)
                .map_err(|e| format!("not an RSA private key: {e}"))?;
            key.validate().map_err(|e| format!("not an RSA private key: {e}"))?;
            Private::Rsa(Box::new(key))
        }
    };
    key.signer(kid)
}

enum Private {
    Ec(p256::SecretKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

fn from_pem(pem: &str, kid: &str) -> Result<SigningKey, String> {
    use p256::pkcs8::DecodePrivateKey;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let key = if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem).or_else(|_| p256::SecretKey::from_sec1_pem(pem)) {
        Private::Ec(k)
    } else if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(pem).or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem)) {
        Private::Rsa(Box::new(k))
    } else {
        return Err("not a P-256 or RSA private key in PEM".into());
    };
    key.signer(kid)
}

impl Private {
    fn signer(self, kid: &str) -> Result<SigningKey, String> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let (alg, key, jwk) = match self {
            Private::Ec(secret) => {
                let der = secret.to_pkcs8_der().map_err(|e| format!("cannot encode the key: {e}"))?;
                let point = secret.public_key().to_encoded_point(false);
                let (x, y) = (point.x().expect("uncompressed"), point.y().expect("uncompressed"));
                let jwk = serde_json::json!({ "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                    "x": B64.encode(x), "y": B64.encode(y) });
                (Algorithm::ES256, EncodingKey::from_ec_der(der.as_bytes()), jwk)
            }
            Private::Rsa(key) => {
                rsa_size(key.n().bits())?;
                let der = key.to_pkcs1_der().map_err(|e| format!("cannot encode the key: {e}"))?;
                let jwk = serde_json::json!({ "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                    "n": B64.encode(key.n().to_bytes_be()), "e": B64.encode(key.e().to_bytes_be()) });
                (Algorithm::RS256, EncodingKey::from_rsa_der(der.as_bytes()), jwk)
            }
        };
        let raw = serde_json::from_value::<Raw>(jwk.clone()).map_err(|e| e.to_string())?;
        Ok(SigningKey { kid: kid.to_string(), alg, key, public: public(&raw)?, jwk })
    }
}

/// The public JWK (as a project would publish it) of a signing key's public half.
pub fn public_jwk(key: &SigningKey) -> serde_json::Value {
    key.jwk.clone()
}

#[cfg(test)]
mod tests;
