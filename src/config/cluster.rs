//! `[cluster]`: the fleet's shared rollout state in PostgreSQL (docs/fleet.md). Off
//! unless a database URL is given.

use std::time::Duration;

use serde::Deserialize;

use super::secret::Secret;
use super::{ConfigError, seconds};

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterFile {
    /// Or `SWITCHYARD_CLUSTER_DATABASE_URL`.
    pub database_url: Option<String>,
    pub schema: String,
    pub replica_id: Option<String>,
    pub heartbeat_seconds: f64,
    /// With `[handoff]`: how long a heartbeat holds the replica's lease (default three
    /// heartbeats).
    pub lease_seconds: Option<f64>,
    pub startup_wait_seconds: f64,
    /// PEM CA certificates trusted for the database's TLS besides the webpki roots
    /// (Supabase's database CA, say).
    pub ca_file: Option<String>,
}

impl Default for ClusterFile {
    fn default() -> Self {
        ClusterFile {
            database_url: None,
            schema: "switchyard".into(),
            replica_id: None,
            heartbeat_seconds: 5.0,
            lease_seconds: None,
            startup_wait_seconds: 10.0,
            ca_file: None,
        }
    }
}

/// Validated `[cluster]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// A libpq URL or key=value string: a secret (it carries the password).
    pub database_url: Secret,
    /// The schema holding the state and heartbeats (a plain identifier).
    pub schema: String,
    /// This replica's name in the heartbeats.
    pub replica_id: String,
    /// How often this replica reports itself and re-reads the state (the fallback
    /// for a missed notification).
    pub heartbeat: Duration,
    /// How long a heartbeat holds this replica's lease: past it, with `[handoff]`,
    /// the replica holds every write until it reads the store again.
    pub lease: Duration,
    /// How long a start waits for the store before serving from the file.
    pub startup_wait: Duration,
    /// Trusted for the database's TLS besides the webpki roots.
    pub extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

pub fn cluster(raw: ClusterFile) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(url) = raw.database_url.filter(|u| !u.trim().is_empty()) else { return Ok(None) };
    let database_url = database_url("cluster.database_url", url)?;
    if !is_identifier(&raw.schema) {
        return Err(ConfigError::new(
            "cluster.schema",
            format!("must be a plain identifier (lowercase letters, digits, _), got {:?}", raw.schema),
        ));
    }
    let replica_id = match raw.replica_id {
        Some(id) if id.trim().is_empty() || id.len() > 200 => {
            return Err(ConfigError::new("cluster.replica_id", "must be 1 to 200 characters"));
        }
        Some(id) => id,
        None => hostname(),
    };
    let heartbeat = seconds("cluster.heartbeat_seconds", raw.heartbeat_seconds)?;
    if heartbeat.is_zero() {
        return Err(ConfigError::new("cluster.heartbeat_seconds", "must be over 0"));
    }
    let lease = match raw.lease_seconds {
        None => heartbeat * 3,
        Some(s) => seconds("cluster.lease_seconds", s)?,
    };
    if lease <= heartbeat {
        return Err(ConfigError::new("cluster.lease_seconds", "must be longer than cluster.heartbeat_seconds"));
    }
    Ok(Some(ClusterConfig {
        database_url,
        schema: raw.schema,
        replica_id,
        heartbeat,
        lease,
        startup_wait: seconds("cluster.startup_wait_seconds", raw.startup_wait_seconds)?,
        extra_roots: match &raw.ca_file {
            Some(path) => super::ca_certificates("cluster.ca_file", path)?,
            None => Vec::new(),
        },
    }))
}

/// A PostgreSQL connection URL, checked and kept secret. The parser's message can
/// quote the URL, so it is never shown.
pub(crate) fn database_url(key: &str, url: String) -> Result<Secret, ConfigError> {
    match url.parse::<tokio_postgres::Config>() {
        Ok(_) => Ok(Secret::new(url)),
        Err(_) => {
            Err(ConfigError::new(key, "not a PostgreSQL connection URL (postgresql://user:password@host:5432/db)"))
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// The machine's name (a pod's name in Kubernetes).
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchyard".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(url: &str, schema: &str) -> Result<Option<ClusterConfig>, ConfigError> {
        cluster(ClusterFile { database_url: Some(url.into()), schema: schema.into(), ..ClusterFile::default() })
    }

    #[test]
    fn off_without_a_url_and_checked_with_one() {
        assert!(cluster(ClusterFile::default()).unwrap().is_none());
        let c = with("postgresql://sy:hunter2@127.0.0.1:5432/fleet", "switchyard").unwrap().unwrap();
        assert_eq!(format!("{c:?}").matches("hunter2").count(), 0, "the URL is redacted");
        assert!(!c.replica_id.is_empty());
        let bad = with("postgresql://sy:hunter2@127.0.0.1:notaport/fleet", "switchyard").unwrap_err();
        assert_eq!(bad.key, "cluster.database_url");
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
        assert_eq!(with("postgresql://h/db", "Switch-yard").unwrap_err().key, "cluster.schema");
        assert_eq!(with("postgresql://h/db", "x; drop table y").unwrap_err().key, "cluster.schema");
    }
}
