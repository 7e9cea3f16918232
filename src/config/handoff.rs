//! `[handoff]`: percentage changes carried out as handoffs of the moving band, so
//! that users move with their data (docs/handoff.md). Off by default.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, seconds};

/// `[handoff]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandoffFile {
    pub enabled: bool,
    /// `postgres` (built in) or `command`.
    pub sync: String,
    pub command: Vec<String>,
    pub timeout_seconds: f64,
    pub max_hold_seconds: f64,
    pub user_column: String,
    /// Per-table settings, by v1 `public` name.
    pub tables: BTreeMap<String, TableFile>,
}

impl Default for HandoffFile {
    fn default() -> Self {
        HandoffFile {
            enabled: false,
            sync: "postgres".into(),
            command: Vec::new(),
            timeout_seconds: 30.0,
            max_hold_seconds: 10.0,
            user_column: "user_id".into(),
            tables: BTreeMap::new(),
        }
    }
}

/// `[handoff.tables.<name>]`: a table's own user column, or the parent row it belongs to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableFile {
    pub user_column: Option<String>,
    /// The owning table (v1 name) of a table without a user column...
    pub parent: Option<String>,
    /// ... and this table's column that holds the parent's key ...
    pub key: Option<String>,
    /// ... which is the parent's `parent_key` column (default `id`).
    pub parent_key: Option<String>,
}

/// How the band's rows are carried to the new side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sync {
    /// Built in: both projects' `database_url`.
    Postgres,
    /// An operator's program and its arguments.
    Command(Vec<String>),
}

/// Which of a table's rows belong to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Its own column holds the user id.
    Column(String),
    /// It belongs to a row of `parent` (v1 name): `key` here is the parent's `parent_key`.
    Parent { parent: String, key: String, parent_key: String },
}

/// Validated `[handoff]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoffConfig {
    pub sync: Sync,
    /// Fence, drain and sync together, before the handoff is aborted.
    pub timeout: Duration,
    /// How long a write may be held before it is answered 503.
    pub max_hold: Duration,
    /// The user column of tables not configured otherwise.
    pub user_column: String,
    /// Tables configured otherwise, by v1 name.
    pub tables: BTreeMap<String, Owner>,
}

impl HandoffConfig {
    /// How `table` (v1 name) belongs to users.
    pub fn owner(&self, table: &str) -> Owner {
        self.tables.get(table).cloned().unwrap_or_else(|| Owner::Column(self.user_column.clone()))
    }
}

fn column(key: &str, name: &str) -> Result<String, ConfigError> {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok { Ok(name.to_string()) } else { Err(ConfigError::new(key, format!("not a column name: {name:?}"))) }
}

pub fn handoff(raw: HandoffFile) -> Result<Option<HandoffConfig>, ConfigError> {
    if !raw.enabled {
        return Ok(None);
    }
    let sync = match raw.sync.as_str() {
        "postgres" => Sync::Postgres,
        "command" if raw.command.is_empty() => {
            return Err(ConfigError::new("handoff.command", "sync = \"command\" needs command = [\"program\", ...]"));
        }
        "command" => Sync::Command(raw.command),
        other => {
            return Err(ConfigError::new(
                "handoff.sync",
                format!("expected \"postgres\" or \"command\", got {other:?}"),
            ));
        }
    };
    let mut tables = BTreeMap::new();
    for (name, t) in raw.tables {
        let key = format!("handoff.tables.{name}");
        let owner = match (t.user_column, t.parent, t.key) {
            (Some(c), None, None) => Owner::Column(column(&format!("{key}.user_column"), &c)?),
            (None, Some(parent), Some(k)) => Owner::Parent {
                parent,
                key: column(&format!("{key}.key"), &k)?,
                parent_key: column(&format!("{key}.parent_key"), t.parent_key.as_deref().unwrap_or("id"))?,
            },
            _ => return Err(ConfigError::new(key, "set either user_column, or parent and key")),
        };
        tables.insert(name, owner);
    }
    Ok(Some(HandoffConfig {
        sync,
        timeout: seconds("handoff.timeout_seconds", raw.timeout_seconds)?,
        max_hold: seconds("handoff.max_hold_seconds", raw.max_hold_seconds)?,
        user_column: column("handoff.user_column", &raw.user_column)?,
        tables,
    }))
}

/// What `[handoff]` needs of the rest of the config.
pub fn requires(config: &super::Config) -> Result<(), ConfigError> {
    let Some(h) = &config.handoff else { return Ok(()) };
    if h.sync == Sync::Postgres {
        for (id, b) in config.backends.iter() {
            if b.database_url.is_none() {
                return Err(ConfigError::new(
                    format!("backends.{id}.database_url"),
                    "sync = \"postgres\" copies the moving users' rows between both projects' databases: set both URLs",
                ));
            }
        }
    }
    for (name, owner) in &h.tables {
        if let Owner::Parent { parent, .. } = owner
            && !matches!(h.owner(parent), Owner::Column(_))
        {
            return Err(ConfigError::new(
                format!("handoff.tables.{name}.parent"),
                "the parent must have a user column",
            ));
        }
    }
    Ok(())
}
