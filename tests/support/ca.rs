//! A private CA made in the test, and certificates it signs: for `localhost` (a
//! server's, of any key type, valid or expired) or a client's.

use std::path::{Path, PathBuf};

/// A CA: its PEM, and what signs with it.
pub struct Ca {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
    /// The DER of the certificate (what a client sees).
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "switchyard test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { pem, issuer: rcgen::Issuer::new(params, key) }
    }

    /// A certificate for `localhost` with a key of `alg`; `expired`: its validity
    /// ended in 2020.
    pub fn server(&self, alg: &'static rcgen::SignatureAlgorithm, expired: bool) -> Issued {
        self.server_for(rcgen::KeyPair::generate_for(alg).unwrap(), expired)
    }

    /// A certificate for `localhost` for `key` (an RSA key made elsewhere, say).
    pub fn server_for(&self, key: rcgen::KeyPair, expired: bool) -> Issued {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        // Not the CA's name: OpenSSL takes a certificate named as its issuer for self-signed.
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// A client certificate.
    pub fn client(&self) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "client");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

impl Issued {
    /// Writes the pair to `dir`/`name`.pem and `name`.key, each by rename (as a
    /// renewal does): the two paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        for (path, text) in [(&cert, &self.cert), (&key, &self.key)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (cert, key)
    }
}
