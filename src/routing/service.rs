//! Which Supabase service a request is for. Clients derive every service URL from one
//! base URL, so the path prefix is all the proxy needs to tell them apart.

use serde::{Deserialize, Serialize};

/// A Supabase service, by path prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// PostgREST: `/rest/v1/`.
    Rest,
    /// Edge Functions: `/functions/v1/`.
    Functions,
    /// pg_graphql: `/graphql/v1`.
    Graphql,
    /// GoTrue: `/auth/v1/`.
    Auth,
    /// Storage: `/storage/v1/`.
    Storage,
    /// Realtime: `/realtime/v1/`.
    Realtime,
    /// Anything else (dashboards' `/`, health probes of the projects, …).
    Other,
}

impl Service {
    /// Every service, in label order.
    pub const ALL: [Service; 7] = [
        Service::Rest,
        Service::Functions,
        Service::Graphql,
        Service::Auth,
        Service::Storage,
        Service::Realtime,
        Service::Other,
    ];

    /// Classifies a request path.
    pub fn from_path(path: &str) -> Service {
        const PREFIXES: [(&str, Service); 6] = [
            ("/rest/v1", Service::Rest),
            ("/functions/v1", Service::Functions),
            ("/graphql/v1", Service::Graphql),
            ("/auth/v1", Service::Auth),
            ("/storage/v1", Service::Storage),
            ("/realtime/v1", Service::Realtime),
        ];
        for (prefix, service) in PREFIXES {
            if let Some(rest) = path.strip_prefix(prefix)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return service;
            }
        }
        Service::Other
    }

    /// Label used in metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Service::Rest => "rest",
            Service::Functions => "functions",
            Service::Graphql => "graphql",
            Service::Auth => "auth",
            Service::Storage => "storage",
            Service::Realtime => "realtime",
            Service::Other => "other",
        }
    }

    /// Index for per-service arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether errors for this service are answered in GoTrue's shape rather than
    /// PostgREST's.
    pub const fn speaks_gotrue(self) -> bool {
        matches!(self, Service::Auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        let cases = [
            ("/rest/v1/profiles", Service::Rest),
            ("/rest/v1/rpc/do_it", Service::Rest),
            ("/rest/v1", Service::Rest),
            ("/functions/v1/hello", Service::Functions),
            ("/graphql/v1", Service::Graphql),
            ("/auth/v1/token", Service::Auth),
            ("/storage/v1/object/sign/a/b", Service::Storage),
            ("/realtime/v1/websocket", Service::Realtime),
            ("/rest/v10/x", Service::Other),
            ("/restful", Service::Other),
            ("/", Service::Other),
            ("", Service::Other),
        ];
        for (path, want) in cases {
            assert_eq!(Service::from_path(path), want, "{path}");
        }
    }

    #[test]
    fn indexes_match_all() {
        for (i, s) in Service::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
    }
}
