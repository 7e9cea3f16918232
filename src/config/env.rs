//! Environment overrides, named as the migration guide names them
//! (`V2_ROLLOUT_PERCENTAGE`, `SUPABASE_ENV`, `SUPABASE_V1_URL`, …). The names are
//! fixed by the guide rather than derived from a prefix, so they are mapped by hand.
//! An empty variable counts as unset (compose files often pass `VAR=`).

use super::ConfigError;
use super::file::{BackendFile, FileConfig};

/// What the environment changed, for `GET /admin/rollout`'s `source`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Overridden {
    /// `V2_ROLLOUT_PERCENTAGE` was set.
    pub percentage: bool,
    /// `SUPABASE_ENV` was set.
    pub force: bool,
}

/// Applies the overrides found through `get` (usually `std::env::var`).
pub fn apply(file: &mut FileConfig, get: &dyn Fn(&str) -> Option<String>) -> Result<Overridden, ConfigError> {
    let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let mut seen = Overridden::default();

    if let Some(v) = get("V2_ROLLOUT_PERCENTAGE") {
        file.rollout.percentage = v.trim().parse().map_err(|_| {
            ConfigError::new("V2_ROLLOUT_PERCENTAGE", format!("expected an integer from 0 to 100, got {v:?}"))
        })?;
        seen.percentage = true;
    }
    file.server.admin_token = get("SWITCHYARD_ADMIN_TOKEN");
    file.overrides.qa_token = get("SWITCHYARD_QA_TOKEN");
    if let Some(url) = get("SWITCHYARD_CLUSTER_DATABASE_URL") {
        file.cluster.database_url = Some(url);
    }
    if let Some(v) = get("SUPABASE_ENV") {
        let force = match v.trim() {
            "production" | "v1" => "v1",
            "v2" => "v2",
            other => {
                return Err(ConfigError::new(
                    "SUPABASE_ENV",
                    format!("expected \"production\" (all to v1) or \"v2\" (all to v2), got {other:?}"),
                ));
            }
        };
        file.rollout.force_backend = Some(force.into());
        seen.force = true;
    }
    for (name, slot) in [("V1", &mut file.backends.v1), ("V2", &mut file.backends.v2)] {
        let var = |field: &str| get(&format!("SUPABASE_{name}_{field}"));
        let url = var("URL");
        let fields = [
            var("ANON_KEY"),
            var("SERVICE_ROLE_KEY"),
            var("PUBLISHABLE_KEY"),
            var("SECRET_KEY"),
            var("JWT_SECRET"),
            var("DATABASE_URL"),
        ];
        if url.is_none() && fields.iter().all(Option::is_none) {
            continue;
        }
        let backend = slot.get_or_insert_with(BackendFile::default);
        if let Some(url) = url {
            backend.url = url;
        }
        let [anon, service, publishable, secret_key, jwt, database] = fields;
        for (value, target) in [
            (anon, &mut backend.anon_key),
            (service, &mut backend.service_role_key),
            (publishable, &mut backend.publishable_key),
            (secret_key, &mut backend.secret_key),
            (jwt, &mut backend.jwt_secret),
            (database, &mut backend.database_url),
        ] {
            if value.is_some() {
                *target = value;
            }
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(vars: &[(&str, &str)]) -> Result<(FileConfig, Overridden), ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut file = FileConfig::default();
        let seen = apply(&mut file, &|k| map.get(k).cloned())?;
        Ok((file, seen))
    }

    #[test]
    fn percentage_and_env() {
        let (f, seen) = run(&[("V2_ROLLOUT_PERCENTAGE", "50"), ("SUPABASE_ENV", "production")]).unwrap();
        assert_eq!(f.rollout.percentage, 50);
        assert_eq!(f.rollout.force_backend.as_deref(), Some("v1"));
        assert!(seen.percentage && seen.force);
        let (f, _) = run(&[("SUPABASE_ENV", "v2")]).unwrap();
        assert_eq!(f.rollout.force_backend.as_deref(), Some("v2"));
    }

    #[test]
    fn empty_is_unset() {
        let (f, seen) = run(&[("V2_ROLLOUT_PERCENTAGE", ""), ("SUPABASE_ENV", " ")]).unwrap();
        assert_eq!(f.rollout.percentage, 0);
        assert_eq!(seen, Overridden::default());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = run(&[("V2_ROLLOUT_PERCENTAGE", "ten")]).unwrap_err();
        assert_eq!(e.key, "V2_ROLLOUT_PERCENTAGE");
        let e = run(&[("SUPABASE_ENV", "staging")]).unwrap_err();
        assert_eq!(e.key, "SUPABASE_ENV");
    }

    #[test]
    fn backend_fields() {
        let (f, _) = run(&[
            ("SUPABASE_V2_URL", "https://new.supabase.co"),
            ("SUPABASE_V2_ANON_KEY", "anon2"),
            ("SUPABASE_V2_SERVICE_ROLE_KEY", "svc2"),
            ("SUPABASE_V2_JWT_SECRET", "sec2"),
        ])
        .unwrap();
        let v2 = f.backends.v2.unwrap();
        assert_eq!(v2.url, "https://new.supabase.co");
        assert_eq!(v2.anon_key.as_deref(), Some("anon2"));
        assert_eq!(v2.service_role_key.as_deref(), Some("svc2"));
        assert_eq!(v2.jwt_secret.as_deref(), Some("sec2"));
        assert!(f.backends.v1.is_none());
    }
}
