//! The schema map as the config holds it: where v2 keeps each v1 `public` table and
//! RPC function (`schema` or `schema.new_name`). The rewrites it implies are
//! the translation's.

use std::collections::{BTreeMap, HashMap};

/// Where a v1 name lives in the other project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The schema (PostgREST profile).
    pub schema: String,
    /// The table or function name there.
    pub name: String,
}

/// v1 name → v2 location, for tables (with `prefix_*` patterns) and RPC functions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchemaMap {
    tables: HashMap<String, Target>,
    /// `smart_recall_*` style entries: (prefix, schema); the name is kept.
    prefixes: Vec<(String, String)>,
    rpc: HashMap<String, Target>,
}

/// Whether `s` is a plain table, function or schema name.
pub fn identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn target(key: &str, name: &str, value: &str) -> Result<Target, String> {
    let (schema, new) = value.split_once('.').unwrap_or((value, name));
    if !identifier(schema) || !identifier(new) {
        return Err(format!("{key}.{name}: expected \"schema\" or \"schema.name\", got {value:?}"));
    }
    Ok(Target { schema: schema.to_string(), name: new.to_string() })
}

impl SchemaMap {
    /// The mapped tables: v1 `public` name and where v2 keeps it, by name.
    pub fn tables(&self) -> Vec<(&str, &Target)> {
        let mut tables: Vec<_> = self.tables.iter().map(|(k, t)| (k.as_str(), t)).collect();
        tables.sort_by_key(|(k, _)| *k);
        tables
    }

    /// The `prefix_*` patterns: (prefix, v2 schema).
    pub fn prefixes(&self) -> &[(String, String)] {
        &self.prefixes
    }

    /// Builds a map from `[tables]` and `[rpc]` entries. Errors name the entry.
    pub fn from_entries(
        tables: &BTreeMap<String, String>,
        rpc: &BTreeMap<String, String>,
    ) -> Result<SchemaMap, String> {
        let mut map = SchemaMap::default();
        for (name, value) in tables {
            if let Some(prefix) = name.strip_suffix('*') {
                if !identifier(prefix) || value.contains('.') {
                    return Err(format!("tables.{name}: a pattern maps to a schema only, got {value:?}"));
                }
                map.prefixes.push((prefix.to_string(), value.clone()));
                continue;
            }
            if !identifier(name) {
                return Err(format!("tables.{name}: not a table name"));
            }
            map.tables.insert(name.clone(), target("tables", name, value)?);
        }
        // Longest prefix first, so the most specific pattern wins.
        map.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        for (name, value) in rpc {
            if !identifier(name) {
                return Err(format!("rpc.{name}: not a function name"));
            }
            map.rpc.insert(name.clone(), target("rpc", name, value)?);
        }
        Ok(map)
    }

    /// Where table `name` lives, if it moved.
    pub fn table(&self, name: &str) -> Option<Target> {
        if let Some(t) = self.tables.get(name) {
            return Some(t.clone());
        }
        self.prefixes
            .iter()
            .find(|(p, _)| name.starts_with(p.as_str()))
            .map(|(_, schema)| Target { schema: schema.clone(), name: name.to_string() })
    }

    /// Where RPC function `name` lives, if it moved.
    pub fn rpc(&self, name: &str) -> Option<Target> {
        self.rpc.get(name).cloned()
    }

    /// The schema a v1 table ends up in: its target's, or `public` when not mapped.
    pub fn schema_of(&self, name: &str) -> String {
        self.table(name).map_or_else(|| "public".to_string(), |t| t.schema)
    }

    /// Number of entries (tables, patterns, functions).
    pub fn len(&self) -> usize {
        self.tables.len() + self.prefixes.len() + self.rpc.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
