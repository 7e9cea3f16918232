//! Where a user id may come from, as the config names it (`identity.sources`).

/// A place a user id can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// `Authorization: Bearer <JWT>` → `sub`.
    Jwt,
    /// `/auth/v1/admin/users/<uid>`.
    Path,
    /// The configured header (default `x-user-id`).
    Header,
}

impl IdentitySource {
    /// Parses a config name.
    pub fn parse(s: &str) -> Option<IdentitySource> {
        match s {
            "jwt" => Some(IdentitySource::Jwt),
            "path" => Some(IdentitySource::Path),
            "header" => Some(IdentitySource::Header),
            _ => None,
        }
    }

    /// Label for logs and the `route` command.
    pub const fn as_str(self) -> &'static str {
        match self {
            IdentitySource::Jwt => "jwt",
            IdentitySource::Path => "path",
            IdentitySource::Header => "header",
        }
    }
}
