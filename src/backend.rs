//! Names the two upstream projects. Everything that is "per backend" (metrics labels,
//! credentials, pools) is keyed by [`BackendId`], so it lives here on its own.

use std::fmt;

/// One of the two Supabase projects behind the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendId {
    /// The old project (flat `public` schema).
    V1,
    /// The new project (domain schemas).
    V2,
}

impl BackendId {
    /// Both backends, in a fixed order (v1 first).
    pub const ALL: [BackendId; 2] = [BackendId::V1, BackendId::V2];

    /// Label used in headers, metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendId::V1 => "v1",
            BackendId::V2 => "v2",
        }
    }

    /// The other project.
    pub const fn other(self) -> BackendId {
        match self {
            BackendId::V1 => BackendId::V2,
            BackendId::V2 => BackendId::V1,
        }
    }

    /// Index for per-backend arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Parses `v1` / `v2`.
    pub fn parse(s: &str) -> Option<BackendId> {
        match s {
            "v1" => Some(BackendId::V1),
            "v2" => Some(BackendId::V2),
            _ => None,
        }
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pair of values, one per backend, indexed by [`BackendId`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerBackend<T> {
    /// The value for v1.
    pub v1: T,
    /// The value for v2.
    pub v2: T,
}

impl<T> PerBackend<T> {
    /// The value for `id`.
    pub fn get(&self, id: BackendId) -> &T {
        match id {
            BackendId::V1 => &self.v1,
            BackendId::V2 => &self.v2,
        }
    }

    /// Iterates `(id, value)` pairs, v1 first.
    pub fn iter(&self) -> impl Iterator<Item = (BackendId, &T)> {
        [(BackendId::V1, &self.v1), (BackendId::V2, &self.v2)].into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for id in BackendId::ALL {
            assert_eq!(BackendId::parse(id.as_str()), Some(id));
            assert_eq!(id.other().other(), id);
        }
        assert_eq!(BackendId::parse("v3"), None);
    }
}
