//! HTTPS for clients (`[server.tls]`, docs/tls.md): rustls with TLS 1.2 and 1.3 only,
//! ALPN `h2` and `http/1.1`, optional client certificates, a bounded handshake. The
//! certificate and key are read at start and again whenever their files change
//! (renewals, a Kubernetes Secret's symlink swap) or on SIGHUP: each new handshake
//! takes the pair in force, connections already open keep theirs, and a new pair that
//! cannot be used whole (unreadable, or a key that is not the certificate's, as while
//! one file is replaced and not yet the other) is refused and the old one stays.

use std::io;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::tls::TlsConfig;
use crate::metrics::Metrics;
use crate::watch::files::Changes;

/// The certificate and key in force, handed to each new handshake.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A pair read from the files, with its certificate's expiry.
struct Pair {
    key: Arc<CertifiedKey>,
    /// Seconds since the epoch.
    not_after: i64,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain and its key, and checks that they belong together.
fn read_pair(cert_file: &Path, key_file: &Path) -> Result<Pair, String> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert_file.display()))?;
    let leaf = chain.first().ok_or_else(|| format!("no certificate in {}", cert_file.display()))?;
    let not_after = not_after(leaf)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_file.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key in {}: {e}", key_file.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    Ok(Pair { key: Arc::new(certified), not_after })
}

/// The certificate's not-after time, in seconds since the epoch.
fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(parsed.validity().not_after.timestamp())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// rustls' server side: TLS 1.3 and 1.2, ALPN `h2` then `http/1.1`, the pair in
/// `current`, client certificates checked by `clients` when given.
fn server_config(
    current: &Arc<Current>,
    clients: Option<&Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match clients {
        Some(v) => builder.with_client_cert_verifier(v.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(current.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The TLS side of the HTTPS listener.
pub struct Tls {
    config: TlsConfig,
    current: Arc<Current>,
    /// Client certificates' verifier, when they are required.
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// Rebuilt at each reload: a session of the old pair is not resumed with the new.
    server: ArcSwap<rustls::ServerConfig>,
    metrics: Arc<Metrics>,
}

/// What a handshake gave.
pub struct Accepted {
    pub stream: TlsStream<TcpStream>,
    /// The client chose HTTP/2 (ALPN `h2`).
    pub h2: bool,
}

impl Tls {
    /// Reads the pair and builds the server side. An expired certificate is served,
    /// with a warning and its expiry in the metrics, as nginx does.
    pub fn new(config: &TlsConfig, metrics: Arc<Metrics>) -> Result<Arc<Tls>, String> {
        let pair = read_pair(&config.cert_file, &config.key_file)?;
        let current = Arc::new(Current(ArcSwap::new(pair.key.clone())));
        let clients = match &config.client_ca_file {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("cannot read client CA certificates from {}: {e}", ca.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("no usable CA certificate in {}", ca.display()));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| e.to_string())?;
                Some(verifier)
            }
            None => None,
        };
        let server = ArcSwap::from(server_config(&current, clients.as_ref())?);
        let tls = Arc::new(Tls { config: config.clone(), current, clients, server, metrics });
        tls.in_force(&pair);
        Ok(tls)
    }

    /// Records `pair` as the one in force.
    fn in_force(&self, pair: &Pair) {
        self.metrics.tls_certificate(pair.not_after, self.config.expiry_warning);
        if pair.not_after <= now() {
            tracing::warn!(
                cert_file = %self.config.cert_file.display(),
                "the TLS certificate has expired: served anyway; clients will refuse it"
            );
        }
    }

    /// Reads the files again: the new pair is in force for new handshakes, or, if it
    /// cannot be used, the old one stays (logged and counted). Whether it changed.
    pub fn reload(&self, trigger: &'static str) -> bool {
        match read_pair(&self.config.cert_file, &self.config.key_file) {
            Ok(pair) if pair.key.cert == self.current.0.load().cert => false,
            Ok(pair) => {
                self.current.0.store(pair.key.clone());
                if let Ok(server) = server_config(&self.current, self.clients.as_ref()) {
                    self.server.store(server);
                }
                self.in_force(&pair);
                self.metrics.tls_reload("success");
                tracing::info!(trigger, "TLS certificate reloaded");
                true
            }
            Err(e) => {
                self.metrics.tls_reload("failure");
                tracing::error!(trigger, error = %e, "TLS certificate reload refused; the previous one stays");
                false
            }
        }
    }

    /// The server side of a handshake on `stream`, bounded by the handshake timeout.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<Accepted> {
        let acceptor = TlsAcceptor::from(self.server.load_full());
        let handshake = tokio::time::timeout(self.config.handshake_timeout, acceptor.accept(stream)).await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.metrics.tls_handshake_failed("error");
                return Err(e);
            }
            Err(_) => {
                self.metrics.tls_handshake_failed("timeout");
                return Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"));
            }
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Accepted { stream, h2 })
    }

    /// Reloads when either file changes (see [`Changes`]) and on SIGHUP, until
    /// `shutdown`.
    pub fn watch(self: &Arc<Self>, shutdown: CancellationToken) -> io::Result<()> {
        let changes =
            Changes::watch(&[&self.config.cert_file, &self.config.key_file], None).map_err(io::Error::other)?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let trigger = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = hup.recv() => "sighup",
                    _ = changes.settled() => "file",
                };
                tls.reload(trigger);
            }
        });
        Ok(())
    }
}
