//! The TOML file as written by operators: every key optional where a safe default
//! exists, unknown keys refused (a typo must not silently fall back to a default).

use serde::Deserialize;

use crate::routing::policy::{AnonymousPolicy, Policy};

/// `switchyard.toml`, before environment overrides and validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerFile,
    pub rollout: RolloutFile,
    pub identity: IdentityFile,
    pub services: ServicesFile,
    pub upstream: UpstreamFile,
    pub backends: BackendsFile,
    pub translation: TranslationFile,
    pub guard: super::safety::GuardFile,
    pub shadow: super::safety::ShadowFile,
    pub overrides: super::safety::OverridesFile,
    pub limits: super::limits::LimitsFile,
    pub cluster: super::cluster::ClusterFile,
    pub handoff: super::handoff::HandoffFile,
}

/// Name maps for requests sent to a project whose layout differs from the client's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranslationFile {
    /// TOML file with `[tables]`, `[rpc]` and `[edge_functions.v1|v2]` (relative to
    /// this config's directory); inline tables below add to it and win.
    pub schema_map: Option<String>,
    /// `reject` (400 naming both tables) or `pass` for a `select=` embed that v2 could
    /// not resolve because the tables live in different schemas.
    pub cross_schema_embeds: Option<String>,
    pub tables: std::collections::BTreeMap<String, String>,
    pub rpc: std::collections::BTreeMap<String, String>,
    pub edge_functions: EdgeFunctionsFile,
}

/// Edge Function renames, per backend the request is sent to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeFunctionsFile {
    pub v1: std::collections::BTreeMap<String, String>,
    pub v2: std::collections::BTreeMap<String, String>,
}

/// `schema-map.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaMapFile {
    pub tables: std::collections::BTreeMap<String, String>,
    pub rpc: std::collections::BTreeMap<String, String>,
    pub edge_functions: EdgeFunctionsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    /// The plain listener; left out with `[server.tls]`, there is none.
    pub listen: Option<String>,
    /// Empty string disables the admin listener.
    pub admin_listen: String,
    pub shutdown_grace_seconds: f64,
    pub header_read_timeout_seconds: f64,
    /// The listen socket's accept backlog: connections the kernel completes while the
    /// accept loop catches up (a reconnect storm after a deploy).
    pub listen_backlog: u32,
    /// Reload when the file (or anything in its directory) changes.
    pub watch_config: bool,
    /// Only from `SWITCHYARD_ADMIN_TOKEN`: a token does not belong in a file.
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// Peers (CIDRs) whose `X-Forwarded-Proto` and `-Host` are kept.
    pub trusted_proxies: Vec<String>,
    pub tls: Option<super::tls::TlsFile>,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            listen: None,
            admin_listen: "127.0.0.1:9090".into(),
            shutdown_grace_seconds: 30.0,
            header_read_timeout_seconds: 10.0,
            listen_backlog: 4096,
            watch_config: true,
            admin_token: None,
            trusted_proxies: Vec::new(),
            tls: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutFile {
    /// Signed so that a negative value is reported as out of range, not as a type error.
    pub percentage: i64,
    pub hash_seed: String,
    /// `v1` or `v2`: send everything there whatever the percentage.
    pub force_backend: Option<String>,
    pub schedule: Option<super::safety::ScheduleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityFile {
    pub sources: Vec<String>,
    pub header: String,
    pub anonymous: AnonymousPolicy,
    pub cookie_name: String,
    pub jwt_leeway_seconds: u64,
}

impl Default for IdentityFile {
    fn default() -> Self {
        IdentityFile {
            sources: vec!["jwt".into(), "path".into(), "header".into()],
            header: "x-user-id".into(),
            anonymous: AnonymousPolicy::Random,
            cookie_name: "switchyard_cohort".into(),
            jwt_leeway_seconds: 30,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesFile {
    pub rest: Option<Policy>,
    pub functions: Option<Policy>,
    pub graphql: Option<Policy>,
    pub auth: Option<Policy>,
    pub storage: Option<Policy>,
    pub realtime: Option<Policy>,
    pub other: Option<Policy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFile {
    pub connect_timeout_seconds: f64,
    /// Time allowed for the upstream to start answering (status line and headers).
    pub timeout_seconds: f64,
    /// Keep below the upstreams' own keep-alive timeout so the proxy never reuses a
    /// connection the upstream is about to close.
    pub pool_idle_timeout_seconds: f64,
    pub pool_max_idle_per_host: usize,
    /// Busy connections to all upstream hosts together; more requests wait for a
    /// free one, in arrival order.
    pub max_connections: usize,
    /// Busy connections to one host at once: what a hung host can take of the above.
    pub max_connections_per_host: usize,
    /// PEM file of extra CA certificates trusted for https upstreams (private CAs).
    pub ca_file: Option<String>,
    /// Read ahead of a slow client, per answer, in memory ...
    pub buffer_bytes: u64,
    /// ... and in memory for all answers together ...
    pub buffer_total_bytes: u64,
    /// ... then in a temporary file, per answer ...
    pub buffer_file_max_bytes: u64,
    /// ... and on disk for all answers together.
    pub buffer_file_total_bytes: u64,
    /// Where the temporary files go (unlinked at once); empty: the system's.
    pub buffer_dir: String,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        UpstreamFile {
            connect_timeout_seconds: 3.0,
            timeout_seconds: 30.0,
            pool_idle_timeout_seconds: 50.0,
            pool_max_idle_per_host: 256,
            max_connections: 256,
            max_connections_per_host: 192,
            ca_file: None,
            buffer_bytes: 64 * 1024,
            buffer_total_bytes: 64 * 1024 * 1024,
            buffer_file_max_bytes: 1024 * 1024 * 1024,
            buffer_file_total_bytes: 4 * 1024 * 1024 * 1024,
            buffer_dir: String::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendsFile {
    pub v1: Option<BackendFile>,
    pub v2: Option<BackendFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendFile {
    pub url: String,
    pub anon_key: Option<String>,
    pub service_role_key: Option<String>,
    /// New-style opaque keys (`sb_publishable_…`, `sb_secret_…`).
    pub publishable_key: Option<String>,
    pub secret_key: Option<String>,
    pub jwt_secret: Option<String>,
    /// The `iss` of user tokens this project signs; defaults to `<url>/auth/v1`.
    pub issuer: Option<String>,
    /// The project's database (for `switchyard cohort count` and the handoff's sync).
    pub database_url: Option<String>,
    /// Whether its published signing keys are fetched at all (default true).
    pub jwks_enabled: Option<bool>,
    /// Its JWKS, when not `<url>/auth/v1/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// Its JWKS from a file instead (air-gapped setups).
    pub jwks_file: Option<String>,
    pub jwks_refresh_seconds: Option<f64>,
    /// A private key imported into this project as a signing key (JWK or PEM).
    pub signing_key_file: Option<String>,
    /// The kid of a PEM signing key.
    pub signing_key_id: Option<String>,
}
