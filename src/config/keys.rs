//! Per backend: where the project's public signing keys are (`jwks_url`, `jwks_file`,
//! or by default its Auth's well-known JWKS), how often they are fetched, and the
//! private key that signs tokens for it (`signing_key_file`, a secret: it can mint any
//! token of that project). docs/identity.md.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::file::BackendFile;
use super::url::BaseUrl;
use super::{ConfigError, seconds};
use crate::jwk::SigningKey;

/// Where a project's public keys are read from.
#[derive(Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched over HTTP(S).
    Url(String),
    /// Read from a file (air-gapped setups), again at every refresh.
    File(PathBuf),
    /// None (`jwks_enabled = false`): the project's asymmetric tokens are never
    /// verified here, so never re-signed.
    Disabled,
}

impl fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Url(u) => write!(f, "{u}"),
            JwksSource::File(p) => write!(f, "{}", p.display()),
            JwksSource::Disabled => f.write_str("nowhere (jwks_enabled = false)"),
        }
    }
}

/// The keys of one project.
#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub jwks: JwksSource,
    /// Fetched again this often (and sooner when a token names an unknown key).
    pub refresh: Duration,
    /// Signs the tokens re-signed for this project, when set.
    pub signing_key: Option<Arc<SigningKey>>,
}

impl KeysConfig {
    /// The defaults for a project at `url`: its well-known JWKS, no signing key.
    pub fn well_known(url: &BaseUrl) -> KeysConfig {
        KeysConfig {
            jwks: JwksSource::Url(format!("{url}/auth/v1/.well-known/jwks.json")),
            refresh: Duration::from_secs_f64(DEFAULT_REFRESH_SECONDS),
            signing_key: None,
        }
    }
}

/// The default time between fetches of a key set.
pub const DEFAULT_REFRESH_SECONDS: f64 = 300.0;

/// What the `[backends.*]` table `raw` says of keys.
pub fn keys(key: &str, raw: &BackendFile, url: &BaseUrl, dir: &Path) -> Result<KeysConfig, ConfigError> {
    let set = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let enabled = raw.jwks_enabled.unwrap_or(true);
    let jwks = match (set(&raw.jwks_url), set(&raw.jwks_file)) {
        (Some(_), _) | (_, Some(_)) if !enabled => {
            return Err(ConfigError::new(format!("{key}.jwks_enabled"), "is false, yet jwks_url or jwks_file is set"));
        }
        (None, None) if !enabled => JwksSource::Disabled,
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(format!("{key}.jwks_file"), "set jwks_url or jwks_file, not both"));
        }
        (Some(u), None) => {
            BaseUrl::parse(&u).map_err(|m| ConfigError::new(format!("{key}.jwks_url"), m))?;
            JwksSource::Url(u)
        }
        (None, Some(f)) => JwksSource::File(dir.join(f)),
        (None, None) => KeysConfig::well_known(url).jwks,
    };
    let refresh =
        seconds(&format!("{key}.jwks_refresh_seconds"), raw.jwks_refresh_seconds.unwrap_or(DEFAULT_REFRESH_SECONDS))?;
    let signing_key = match set(&raw.signing_key_file) {
        Some(f) => {
            let kid = raw.signing_key_id.clone();
            Some(Arc::new(signing_key(&format!("{key}.signing_key_file"), &dir.join(f), kid)?))
        }
        None if raw.signing_key_id.is_some() => {
            return Err(ConfigError::new(
                format!("{key}.signing_key_id"),
                "names the kid of signing_key_file: set both",
            ));
        }
        None => None,
    };
    Ok(KeysConfig { jwks, refresh, signing_key })
}

/// Reads a private key, refusing a file others may read (it mints tokens).
fn signing_key(key: &str, path: &Path, kid: Option<String>) -> Result<SigningKey, ConfigError> {
    let err = |m: String| ConfigError::new(key, m);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?
            .permissions()
            .mode();
        if mode & 0o027 != 0 {
            return Err(err(format!(
                "{} is open to others (mode {:o}): it can sign any user's token; chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let text = std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    crate::jwk::signing_key(&text, kid.as_deref()).map_err(|m| err(format!("{}: {m}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> BaseUrl {
        BaseUrl::parse("https://abc.supabase.co").unwrap()
    }

    fn raw() -> BackendFile {
        BackendFile::default()
    }

    #[test]
    fn the_default_is_the_projects_well_known_key_set() {
        let k = keys("backends.v2", &raw(), &url(), Path::new("/etc/sy")).unwrap();
        assert_eq!(k.jwks, JwksSource::Url("https://abc.supabase.co/auth/v1/.well-known/jwks.json".into()));
        assert_eq!(k.refresh, Duration::from_secs(300));
        let file =
            keys("b", &BackendFile { jwks_file: Some("jwks.json".into()), ..raw() }, &url(), Path::new("/etc/sy"));
        assert_eq!(file.unwrap().jwks, JwksSource::File("/etc/sy/jwks.json".into()));
        let both = BackendFile { jwks_file: Some("a".into()), jwks_url: Some("https://x".into()), ..raw() };
        assert!(keys("b", &both, &url(), Path::new(".")).unwrap_err().to_string().contains("not both"));
        let off = keys("b", &BackendFile { jwks_enabled: Some(false), ..raw() }, &url(), Path::new("."));
        assert_eq!(off.unwrap().jwks, JwksSource::Disabled);
        let contradiction = BackendFile { jwks_enabled: Some(false), jwks_file: Some("a".into()), ..raw() };
        assert!(keys("b", &contradiction, &url(), Path::new(".")).unwrap_err().to_string().contains("jwks_enabled"));
        let id_alone = BackendFile { signing_key_id: Some("k".into()), ..raw() };
        assert!(keys("b", &id_alone, &url(), Path::new(".")).is_err());
    }

    #[test]
    fn a_signing_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, include_str!("../../tests/data/rsa-2048.pem")).unwrap();
        let with = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let raw =
                BackendFile { signing_key_file: Some("key.pem".into()), signing_key_id: Some("k1".into()), ..raw() };
            keys("backends.v2", &raw, &url(), dir.path())
        };
        let open = with(0o644).unwrap_err().to_string();
        assert!(open.contains("backends.v2.signing_key_file") && open.contains("chmod 600"), "{open}");
        let key = with(0o600).unwrap().signing_key.unwrap();
        assert_eq!(key.kid, "k1");
        assert!(!format!("{key:?}").contains("BEGIN"));
    }
}
