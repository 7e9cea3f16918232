//! `[server.tls]`: HTTPS for clients (docs/tls.md), and `server.trusted_proxies`, the
//! peers whose `X-Forwarded-Proto`/`-Host` are believed.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, seconds};

/// `[server.tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFile {
    pub listen: String,
    /// PEM: the certificate chain, leaf first, and its private key (relative to the
    /// config file).
    pub cert_file: String,
    pub key_file: String,
    /// PEM CA certificates: when set, clients must present a certificate it signed.
    pub client_ca_file: Option<String>,
    pub handshake_timeout_seconds: f64,
    /// How many days before the certificate's expiry the alert fires.
    pub expiry_warning_days: f64,
}

impl Default for TlsFile {
    fn default() -> Self {
        TlsFile {
            listen: "127.0.0.1:8443".into(),
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: None,
            handshake_timeout_seconds: 10.0,
            expiry_warning_days: 14.0,
        }
    }
}

/// Validated `[server.tls]`: the files are read when the listener starts (and on
/// every change of them).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub handshake_timeout: Duration,
    pub expiry_warning: Duration,
}

pub fn tls(raw: Option<TlsFile>, dir: &Path) -> Result<Option<TlsConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let file = |key: &str, v: &str| {
        if v.trim().is_empty() {
            return Err(ConfigError::new(key, "is required with [server.tls] (a PEM file)"));
        }
        Ok(dir.join(v))
    };
    let listen = raw
        .listen
        .parse()
        .map_err(|_| ConfigError::new("server.tls.listen", format!("not a socket address: {:?}", raw.listen)))?;
    let days = raw.expiry_warning_days;
    if !(days.is_finite() && days >= 0.0) {
        return Err(ConfigError::new("server.tls.expiry_warning_days", "must be 0 or more"));
    }
    Ok(Some(TlsConfig {
        listen,
        cert_file: file("server.tls.cert_file", &raw.cert_file)?,
        key_file: file("server.tls.key_file", &raw.key_file)?,
        client_ca_file: raw.client_ca_file.as_deref().map(|f| file("server.tls.client_ca_file", f)).transpose()?,
        handshake_timeout: seconds("server.tls.handshake_timeout_seconds", raw.handshake_timeout_seconds)?,
        expiry_warning: Duration::from_secs_f64(days * 86_400.0),
    }))
}

/// A network, `addr/prefix` (or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| match a {
            IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        };
        let ((net, nbits), (host, hbits)) = (bits(self.addr), bits(ip));
        if nbits != hbits {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        net & mask == host & mask
    }
}

/// `server.trusted_proxies`.
pub fn trusted_proxies(list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .map(|c| {
            Cidr::parse(c).ok_or_else(|| {
                ConfigError::new("server.trusted_proxies", format!("not an address or CIDR network: {c:?}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped");
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tls_needs_its_files() {
        let raw = || TlsFile { cert_file: "c.pem".into(), key_file: "k.pem".into(), ..TlsFile::default() };
        let t = tls(Some(raw()), Path::new("/etc/sy")).unwrap().unwrap();
        assert_eq!(t.cert_file, Path::new("/etc/sy/c.pem"));
        assert_eq!(t.expiry_warning, Duration::from_secs(14 * 86_400));
        let e = tls(Some(TlsFile { key_file: String::new(), ..raw() }), Path::new(".")).unwrap_err();
        assert_eq!(e.key, "server.tls.key_file");
        let e = tls(Some(TlsFile { listen: "x".into(), ..raw() }), Path::new(".")).unwrap_err();
        assert_eq!(e.key, "server.tls.listen");
    }
}
