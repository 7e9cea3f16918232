//! Resource limits of the client side, each with a safe default: what a proxy facing
//! the internet must bound (slow or huge headers, too many connections or requests,
//! oversized bodies).

use serde::Deserialize;

use super::{ConfigError, at_least, seconds};

/// `[limits]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    /// 0: no limit (uploads to Storage can be large).
    pub max_body_bytes: u64,
    /// A client connection (or HTTP/2 stream) that takes no byte of its answer for
    /// this long is closed, as nginx's `send_timeout`.
    pub send_timeout_seconds: f64,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_connections: 10_000,
            max_in_flight: 10_000,
            max_header_count: 100,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 0,
            send_timeout_seconds: 60.0,
        }
    }
}

/// Validated limits.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Requests handled at once; further ones are answered 503 with `Retry-After`.
    pub max_in_flight: usize,
    /// Request headers per request (HTTP/1.1); more is answered 431.
    pub max_header_count: usize,
    /// Bytes of request head; more is answered 431.
    pub max_header_bytes: usize,
    /// Request body bytes; more is answered 413. `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    /// How long a client may take no byte of its answer before it is closed.
    pub send_timeout: std::time::Duration,
}

pub fn limits(raw: LimitsFile) -> Result<LimitsConfig, ConfigError> {
    Ok(LimitsConfig {
        max_connections: at_least("limits.max_connections", raw.max_connections, 1)?,
        max_in_flight: at_least("limits.max_in_flight", raw.max_in_flight, 1)?,
        max_header_count: at_least("limits.max_header_count", raw.max_header_count, 8)?,
        // hyper's read buffer cannot be smaller than 8 KiB.
        max_header_bytes: at_least("limits.max_header_bytes", raw.max_header_bytes, 8192)?,
        max_body_bytes: (raw.max_body_bytes > 0).then_some(raw.max_body_bytes),
        send_timeout: seconds("limits.send_timeout_seconds", raw.send_timeout_seconds)?,
    })
}
