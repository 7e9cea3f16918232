//! Configuration: the TOML file, environment overrides, and validation into the typed
//! [`Config`] the rest of the proxy reads. A config is accepted or refused whole; every
//! refusal names the key (or variable) at fault.

pub mod cluster;
pub mod env;
pub mod file;
pub mod handoff;
pub mod keys;
pub mod limits;
pub mod safety;
pub mod schema_map;
pub mod secret;
mod source;
pub mod tls;
pub mod url;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use crate::backend::{BackendId, PerBackend};
use crate::routing::policy::{AnonymousPolicy, ServicePolicies};
use crate::routing::service::Service;
pub use schema_map::SchemaMap;
pub use secret::Secret;
pub use source::IdentitySource;

pub use url::BaseUrl;

/// A refused configuration: which key, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted TOML key (`rollout.percentage`) or environment variable name.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { key: key.into(), message: message.into() }
    }
}

/// Where the effective rollout percentage came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PercentageSource {
    /// `rollout.percentage` in the file (or its default, 0).
    File,
    /// `V2_ROLLOUT_PERCENTAGE`.
    Env,
    /// `PUT /admin/rollout`.
    Api,
    /// The canary guard's automatic rollback.
    Guard,
    /// A step of `[rollout.schedule]`.
    Schedule,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub rollout: RolloutConfig,
    pub identity: IdentityConfig,
    pub services: ServicePolicies,
    pub upstream: UpstreamConfig,
    pub backends: PerBackend<BackendConfig>,
    pub translation: TranslationConfig,
    pub guard: safety::GuardConfig,
    pub shadow: safety::ShadowConfig,
    pub overrides: safety::OverridesConfig,
    pub limits: limits::LimitsConfig,
    /// The fleet's shared state (`[cluster]`), when configured.
    pub cluster: Option<cluster::ClusterConfig>,
    /// Percentage changes as handoffs (`[handoff]`), when enabled.
    pub handoff: Option<handoff::HandoffConfig>,
}

/// What changes in a request sent to the project whose layout is not the client's.
#[derive(Debug, Clone, Default)]
pub struct TranslationConfig {
    /// v1 `public` tables and functions → their v2 schema and name.
    pub schema: SchemaMap,
    /// Edge Function renames (first path segment → new path), per target backend.
    pub edge_functions: PerBackend<BTreeMap<String, String>>,
    /// Answer 400 to a `select=` embed across v2 schemas (else pass it through).
    pub reject_cross_schema_embeds: bool,
}

/// Listener settings: read at start; a reload that changes them is logged and
/// ignored until the next restart (sockets are not rebound live).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The plain HTTP listener (none when only `[server.tls]` is wanted).
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    /// The listen socket's accept backlog.
    pub listen_backlog: u32,
    pub watch_config: bool,
    /// Bearer token for admin writes (`SWITCHYARD_ADMIN_TOKEN`); none = writes refused.
    pub admin_token: Option<Secret>,
    /// Peers whose `X-Forwarded-Proto`/`-Host` are kept; everyone else's are replaced.
    pub trusted_proxies: Vec<tls::Cidr>,
    /// HTTPS for clients.
    pub tls: Option<tls::TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// 0–100.
    pub percentage: u8,
    pub percentage_source: PercentageSource,
    /// Prepended to user ids before hashing; empty = compatible with the TypeScript.
    pub hash_seed: Vec<u8>,
    /// Everything to one backend (`SUPABASE_ENV`), whatever the percentage.
    pub force: Option<BackendId>,
    /// Staged steps, if any.
    pub schedule: Option<safety::ScheduleConfig>,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub sources: Vec<IdentitySource>,
    pub header: HeaderName,
    pub anonymous: AnonymousPolicy,
    pub cookie_name: String,
    pub jwt_leeway: u64,
}

/// Upstream client settings, fixed at start except `timeout`, which reloads apply.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Busy (or connecting) connections to all hosts together.
    pub max_connections: usize,
    /// Busy (or connecting) connections to one host.
    pub max_connections_per_host: usize,
    /// Trusted for https upstreams besides the webpki roots.
    pub extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Reading answers ahead of slow clients (docs/configuration.md, `[upstream]`).
    pub buffer: BufferConfig,
}

impl UpstreamConfig {
    /// The upstream client's settings.
    pub fn client(&self) -> crate::upstream::Settings {
        crate::upstream::Settings {
            connect_timeout: self.connect_timeout,
            pool_idle_timeout: self.pool_idle_timeout,
            pool_max_idle_per_host: self.pool_max_idle_per_host,
            max_connections: self.max_connections,
            max_connections_per_host: self.max_connections_per_host,
            extra_roots: self.extra_roots.clone(),
        }
    }
}

/// How far answers are read ahead of slow clients: per answer and process-wide, in
/// memory and then in unlinked temporary files.
#[derive(Debug, Clone, PartialEq)]
pub struct BufferConfig {
    pub memory_per_answer: u64,
    pub memory_total: u64,
    pub file_per_answer: u64,
    pub file_total: u64,
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub url: BaseUrl,
    pub anon_key: Option<Secret>,
    pub service_role_key: Option<Secret>,
    pub publishable_key: Option<Secret>,
    pub secret_key: Option<Secret>,
    pub jwt_secret: Option<Secret>,
    /// `iss` of the user tokens this project signs.
    pub issuer: String,
    /// The project's database URL (a secret: it carries a password).
    pub database_url: Option<Secret>,
    /// Its public signing keys and the private key that signs for it.
    pub keys: keys::KeysConfig,
}

impl Config {
    /// Reads `path`, applies the process environment and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Config::parse_in(&text, &|k| std::env::var(k).ok(), dir)
    }

    /// Parses TOML text, applies the environment seen through `env`, validates.
    /// Relative file names in it are relative to the current directory.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::parse_in(text, env, Path::new("."))
    }

    /// As [`Config::parse`], with relative file names resolved against `dir`.
    pub fn parse_in(text: &str, env: &dyn Fn(&str) -> Option<String>, dir: &Path) -> Result<Config, ConfigError> {
        let mut raw: file::FileConfig = from_toml(text, "")?;
        let seen = env::apply(&mut raw, env)?;
        let translation = translation(&mut raw.translation, dir)?;
        let tls = tls::tls(raw.server.tls.take(), dir)?;
        let mut config = validate(raw, seen, dir)?;
        config.translation = translation;
        if tls.is_none() && config.server.listen.is_none() {
            config.server.listen = Some(SocketAddr::from(([127, 0, 0, 1], 8080)));
        }
        config.server.tls = tls;
        handoff::requires(&config)?;
        Ok(config)
    }
}

/// Deserialises TOML; errors name the dotted key, prefixed with `prefix`.
fn from_toml<T: serde::de::DeserializeOwned>(text: &str, prefix: &str) -> Result<T, ConfigError> {
    let at = |key: String| if prefix.is_empty() { key } else { format!("{prefix}: {key}") };
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::new(at("config".into()), e.to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        // The root, or a key that is itself empty (`'' = 1`).
        let key = if key == "." || key.trim_matches('.').is_empty() { "config".to_string() } else { key };
        ConfigError::new(at(key), e.into_inner().message().to_string())
    })
}

/// Name maps for translated requests: the schema-map file, then inline entries.
fn translation(raw: &mut file::TranslationFile, dir: &Path) -> Result<TranslationConfig, ConfigError> {
    let mut merged = file::SchemaMapFile::default();
    if let Some(name) = &raw.schema_map {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::new("translation.schema_map", format!("cannot read {}: {e}", path.display())))?;
        merged = from_toml(&text, &path.display().to_string())?;
    }
    merged.tables.append(&mut raw.tables);
    merged.rpc.append(&mut raw.rpc);
    merged.edge_functions.v1.append(&mut raw.edge_functions.v1);
    merged.edge_functions.v2.append(&mut raw.edge_functions.v2);
    let schema =
        SchemaMap::from_entries(&merged.tables, &merged.rpc).map_err(|m| ConfigError::new("translation", m))?;
    let reject_cross_schema_embeds = match raw.cross_schema_embeds.as_deref() {
        None | Some("reject") => true,
        Some("pass") => false,
        Some(other) => {
            return Err(ConfigError::new(
                "translation.cross_schema_embeds",
                format!("expected \"reject\" or \"pass\", got {other:?}"),
            ));
        }
    };
    for (id, map) in [("v1", &merged.edge_functions.v1), ("v2", &merged.edge_functions.v2)] {
        if let Some((k, _)) = map.iter().find(|(k, v)| k.is_empty() || k.contains('/') || v.is_empty()) {
            return Err(ConfigError::new(
                format!("translation.edge_functions.{id}.{k}"),
                "names a function by its first path segment, mapped to a non-empty path",
            ));
        }
    }
    Ok(TranslationConfig {
        schema,
        edge_functions: PerBackend { v1: merged.edge_functions.v1, v2: merged.edge_functions.v2 },
        reject_cross_schema_embeds,
    })
}

/// The longest duration accepted: a day. Longer ones are mistakes, and deadlines are
/// computed as now + duration, which must not overflow.
const MAX_SECONDS: f64 = 86_400.0;

pub(crate) fn seconds(key: &str, v: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v).ok().filter(|d| !d.is_zero() && v <= MAX_SECONDS).ok_or_else(|| {
        ConfigError::new(key, format!("expected a positive number of seconds up to {MAX_SECONDS}, got {v}"))
    })
}

/// `v`, if it is at least `min`.
fn at_least(key: &str, v: usize, min: usize) -> Result<usize, ConfigError> {
    if v < min { Err(ConfigError::new(key, format!("must be at least {min}, got {v}"))) } else { Ok(v) }
}

pub(crate) fn ca_certificates(
    key: &str,
    path: &str,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::new(key, format!("cannot read certificates from {path:?}: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::new(key, format!("no certificate in {path:?}")));
    }
    Ok(certs)
}

fn socket_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| ConfigError::new(key, format!("expected IP:PORT (e.g. 127.0.0.1:8080), got {v:?}")))
}

fn validate(raw: file::FileConfig, seen: env::Overridden, dir: &Path) -> Result<Config, ConfigError> {
    let pct_key = if seen.percentage { "V2_ROLLOUT_PERCENTAGE" } else { "rollout.percentage" };
    let percentage = u8::try_from(raw.rollout.percentage)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| ConfigError::new(pct_key, format!("must be 0 to 100, got {}", raw.rollout.percentage)))?;
    let force = match raw.rollout.force_backend.as_deref() {
        None => None,
        Some(s) => Some(BackendId::parse(s).ok_or_else(|| {
            ConfigError::new("rollout.force_backend", format!("expected \"v1\" or \"v2\", got {s:?}"))
        })?),
    };

    let mut sources = Vec::new();
    for s in &raw.identity.sources {
        let src = IdentitySource::parse(s).ok_or_else(|| {
            ConfigError::new("identity.sources", format!("expected \"jwt\", \"path\" or \"header\", got {s:?}"))
        })?;
        if !sources.contains(&src) {
            sources.push(src);
        }
    }
    let header = HeaderName::try_from(raw.identity.header.as_str())
        .map_err(|_| ConfigError::new("identity.header", format!("not a header name: {:?}", raw.identity.header)))?;
    let cookie_ok = !raw.identity.cookie_name.is_empty()
        && raw.identity.cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !cookie_ok {
        return Err(ConfigError::new("identity.cookie_name", "use letters, digits, '-', '_' or '.'"));
    }

    let mut services = ServicePolicies::default();
    let s = &raw.services;
    for (service, policy) in [
        (Service::Rest, s.rest),
        (Service::Functions, s.functions),
        (Service::Graphql, s.graphql),
        (Service::Auth, s.auth),
        (Service::Storage, s.storage),
        (Service::Realtime, s.realtime),
        (Service::Other, s.other),
    ] {
        if let Some(p) = policy {
            services.set(service, p);
        }
    }

    let admin_listen = match raw.server.admin_listen.trim() {
        "" => None,
        a => Some(socket_addr("server.admin_listen", a)?),
    };
    let u = &raw.upstream;
    let upstream = UpstreamConfig {
        connect_timeout: seconds("upstream.connect_timeout_seconds", u.connect_timeout_seconds)?,
        timeout: seconds("upstream.timeout_seconds", u.timeout_seconds)?,
        pool_idle_timeout: seconds("upstream.pool_idle_timeout_seconds", u.pool_idle_timeout_seconds)?,
        pool_max_idle_per_host: u.pool_max_idle_per_host,
        max_connections: at_least("upstream.max_connections", u.max_connections, 1)?,
        max_connections_per_host: at_least("upstream.max_connections_per_host", u.max_connections_per_host, 1)?,
        extra_roots: match &u.ca_file {
            None => Vec::new(),
            Some(path) => ca_certificates("upstream.ca_file", path)?,
        },
        buffer: BufferConfig {
            memory_per_answer: u.buffer_bytes,
            memory_total: u.buffer_total_bytes,
            file_per_answer: u.buffer_file_max_bytes,
            file_total: u.buffer_file_total_bytes,
            dir: match u.buffer_dir.trim() {
                "" => std::env::temp_dir(),
                d => PathBuf::from(d),
            },
        },
    };

    Ok(Config {
        server: ServerConfig {
            listen: raw.server.listen.as_deref().map(|l| socket_addr("server.listen", l)).transpose()?,
            admin_listen,
            shutdown_grace: seconds("server.shutdown_grace_seconds", raw.server.shutdown_grace_seconds)?,
            header_read_timeout: seconds("server.header_read_timeout_seconds", raw.server.header_read_timeout_seconds)?,
            listen_backlog: u32::try_from(at_least("server.listen_backlog", raw.server.listen_backlog as usize, 1)?)
                .unwrap_or(u32::MAX),
            watch_config: raw.server.watch_config,
            admin_token: raw.server.admin_token.map(Secret::new),
            trusted_proxies: tls::trusted_proxies(&raw.server.trusted_proxies)?,
            tls: None,
        },
        rollout: RolloutConfig {
            percentage,
            percentage_source: if seen.percentage { PercentageSource::Env } else { PercentageSource::File },
            hash_seed: raw.rollout.hash_seed.into_bytes(),
            force,
            schedule: safety::schedule(raw.rollout.schedule)?,
        },
        identity: IdentityConfig {
            sources,
            header,
            anonymous: raw.identity.anonymous,
            cookie_name: raw.identity.cookie_name,
            jwt_leeway: raw.identity.jwt_leeway_seconds,
        },
        services,
        upstream,
        backends: PerBackend {
            v1: backend(BackendId::V1, raw.backends.v1, dir)?,
            v2: backend(BackendId::V2, raw.backends.v2, dir)?,
        },
        translation: TranslationConfig::default(),
        guard: safety::guard(raw.guard)?,
        shadow: safety::shadow(raw.shadow)?,
        overrides: safety::overrides(raw.overrides)?,
        limits: limits::limits(raw.limits)?,
        cluster: cluster::cluster(raw.cluster)?,
        handoff: handoff::handoff(raw.handoff)?,
    })
}

fn backend(id: BackendId, raw: Option<file::BackendFile>, dir: &Path) -> Result<BackendConfig, ConfigError> {
    let key = format!("backends.{id}");
    let raw = raw.ok_or_else(|| {
        ConfigError::new(
            &key,
            format!("missing: add a [{key}] table with a url (or set SUPABASE_{}_URL)", id.as_str().to_uppercase()),
        )
    })?;
    let url = BaseUrl::parse(&raw.url).map_err(|m| ConfigError::new(format!("{key}.url"), m))?;
    let secret = |field: &str, v: Option<String>| -> Result<Option<Secret>, ConfigError> {
        match v {
            Some(v) if v.trim().is_empty() => Err(ConfigError::new(format!("{key}.{field}"), "is empty")),
            other => Ok(other.map(Secret::new)),
        }
    };
    let keys = keys::keys(&key, &raw, &url, dir)?;
    let issuer = raw.issuer.unwrap_or_else(|| format!("{url}/auth/v1"));
    Ok(BackendConfig {
        keys,
        anon_key: secret("anon_key", raw.anon_key)?,
        service_role_key: secret("service_role_key", raw.service_role_key)?,
        publishable_key: secret("publishable_key", raw.publishable_key)?,
        secret_key: secret("secret_key", raw.secret_key)?,
        jwt_secret: secret("jwt_secret", raw.jwt_secret)?,
        issuer,
        url,
        database_url: match raw.database_url.filter(|u| !u.trim().is_empty()) {
            Some(u) => Some(cluster::database_url(&format!("{key}.database_url"), u)?),
            None => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = include_str!("../../tests/data/minimal.toml");

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn minimal_file_is_accepted() {
        let c = Config::parse(MINIMAL, &no_env).unwrap();
        assert_eq!(c.rollout.percentage, 37);
        assert_eq!(c.rollout.percentage_source, PercentageSource::File);
        assert_eq!(c.server.listen.unwrap().port(), 8080);
        assert_eq!(c.server.admin_listen.unwrap().port(), 9090);
        assert_eq!(c.backends.v2.url.to_string(), "http://127.0.0.1:18002");
        assert_eq!(c.backends.v1.issuer, "http://127.0.0.1:18001/auth/v1");
        assert_eq!(c.identity.sources, [IdentitySource::Jwt, IdentitySource::Path, IdentitySource::Header]);
        assert_eq!(c.identity.anonymous, AnonymousPolicy::Random);
    }

    fn err(text: &str) -> ConfigError {
        Config::parse(text, &no_env).unwrap_err()
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(err(&MINIMAL.replace("= 37", "= 101")).key, "rollout.percentage");
        assert_eq!(err(&MINIMAL.replace("= 37", "= -1")).key, "rollout.percentage");
        assert_eq!(err(&MINIMAL.replace("http://127.0.0.1:18002", "not a url")).key, "backends.v2.url");
        let e = err(&MINIMAL.replace("percentage = 37", "percentage = 37\npercentag = 3"));
        assert_eq!(e.key, "rollout.percentag", "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        let no_v2 = MINIMAL.split("[backends.v2]").next().unwrap();
        assert_eq!(err(no_v2).key, "backends.v2");
        assert_eq!(err(&MINIMAL.replace("\"127.0.0.1:8080\"", "\"nowhere\"")).key, "server.listen");
        assert_eq!(err("[backends.v3]\nurl = \"http://x\"").key, "backends.v3");
        assert_eq!(err("[rollout\n").key, "config");
        // Found by fuzzing: empty keys still name where the error is.
        assert_eq!(err("'' = ''").key, "config");
        assert_eq!(err("\n['']\n").key, "config");
        assert_eq!(err(&format!("{MINIMAL}\n[services]\nauth = \"v3\"")).key, "services.auth");
        for key in ["max_connections", "max_connections_per_host"] {
            let none = format!("{MINIMAL}\n[upstream]\n{key} = 0");
            assert_eq!(err(&none).key, format!("upstream.{key}"));
        }
        for v in ["0", "-1", "1e20", "86401", "nan"] {
            let e = err(&format!("{MINIMAL}\n[upstream]\ntimeout_seconds = {v}"));
            assert_eq!(e.key, "upstream.timeout_seconds", "{v}: {e}");
        }
        let day = Config::parse(&format!("{MINIMAL}\n[upstream]\ntimeout_seconds = 86400"), &no_env).unwrap();
        assert_eq!(day.upstream.timeout, Duration::from_secs(86_400));
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |k: &str| match k {
            "V2_ROLLOUT_PERCENTAGE" => Some("80".to_string()),
            "SUPABASE_V1_URL" => Some("https://old.supabase.co".to_string()),
            _ => None,
        };
        let c = Config::parse(MINIMAL, &env).unwrap();
        assert_eq!(c.rollout.percentage, 80);
        assert_eq!(c.rollout.percentage_source, PercentageSource::Env);
        assert_eq!(c.backends.v1.url.to_string(), "https://old.supabase.co");
        let bad = |k: &str| (k == "V2_ROLLOUT_PERCENTAGE").then(|| "120".to_string());
        assert_eq!(Config::parse(MINIMAL, &bad).unwrap_err().key, "V2_ROLLOUT_PERCENTAGE");
    }

    #[test]
    fn backends_can_come_from_the_environment_alone() {
        let env = |k: &str| match k {
            "SUPABASE_V1_URL" => Some("http://127.0.0.1:1".to_string()),
            "SUPABASE_V2_URL" => Some("http://127.0.0.1:2".to_string()),
            _ => None,
        };
        assert!(Config::parse("", &env).is_ok());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let text = MINIMAL.replace(
            "url = \"http://127.0.0.1:18002\"",
            "url = \"http://127.0.0.1:18002\"\njwt_secret = \"super-secret-value\"",
        );
        let c = Config::parse(&text, &no_env).unwrap();
        assert!(!format!("{c:?}").contains("super-secret-value"));
    }
}
