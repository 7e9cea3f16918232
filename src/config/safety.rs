//! Configuration of rollout safety: the canary guard, the staged schedule, shadow
//! reads and per-user overrides — file shape and validated form side by side.

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::{ConfigError, Secret};
use crate::backend::BackendId;

/// `[guard]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardFile {
    pub enabled: bool,
    pub window_seconds: u64,
    pub min_requests: u64,
    pub max_error_ratio_increase: f64,
    pub max_p99_ratio: f64,
    pub min_p99_increase_seconds: f64,
    pub rollback_to: String,
}

impl Default for GuardFile {
    fn default() -> Self {
        GuardFile {
            enabled: true,
            window_seconds: 60,
            min_requests: 50,
            max_error_ratio_increase: 0.05,
            max_p99_ratio: 2.0,
            min_p99_increase_seconds: 0.025,
            rollback_to: "zero".into(),
        }
    }
}

/// Where the guard rolls back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackTo {
    /// 0 %: everybody back on v1.
    Zero,
    /// The percentage in force before the last raise.
    PreviousStep,
}

/// The canary guard.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    pub enabled: bool,
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_ratio_increase: f64,
    pub max_p99_ratio: f64,
    /// A p99 regression must also be at least this much slower: at a few milliseconds,
    /// a 2× ratio is noise.
    pub min_p99_increase: Duration,
    pub rollback_to: RollbackTo,
}

/// `[rollout.schedule]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleFile {
    pub steps: Vec<i64>,
    pub hold_seconds: u64,
}

/// A staged rollout: each step held for `hold`, advancing only while the guard is
/// healthy.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub steps: Vec<u8>,
    pub hold: Duration,
}

/// `[shadow]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowFile {
    pub fraction: f64,
    pub max_concurrent: usize,
    pub max_body_bytes: usize,
    pub timeout_seconds: f64,
    pub ignore_fields: Vec<String>,
    pub mismatch_log_per_minute: u32,
}

impl Default for ShadowFile {
    fn default() -> Self {
        ShadowFile {
            fraction: 0.0,
            max_concurrent: 32,
            max_body_bytes: 1 << 20,
            timeout_seconds: 10.0,
            ignore_fields: vec!["created_at".into(), "updated_at".into()],
            mismatch_log_per_minute: 10,
        }
    }
}

/// Shadow reads: a copy of some GET/HEAD requests sent to the other project.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    pub fraction: f64,
    pub max_concurrent: usize,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    pub ignore_fields: Vec<String>,
    pub mismatch_log_per_minute: u32,
}

/// `[overrides]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverridesFile {
    pub v1: Vec<String>,
    pub v2: Vec<String>,
    pub qa_header: String,
    /// Only from `SWITCHYARD_QA_TOKEN`.
    #[serde(skip)]
    pub qa_token: Option<String>,
}

impl Default for OverridesFile {
    fn default() -> Self {
        OverridesFile { v1: Vec::new(), v2: Vec::new(), qa_header: "x-switchyard-qa".into(), qa_token: None }
    }
}

/// Users pinned to a backend, and the QA override header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OverridesConfig {
    pub users: HashMap<String, BackendId>,
    /// `<qa_header>: v1|v2;<token>`; honoured only when the token matches.
    pub qa_header: Option<HeaderName>,
    pub qa_token: Option<Secret>,
}

fn positive(key: &str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(ConfigError::new(key, format!("must be a positive number, got {v}")))
    }
}

pub fn guard(raw: GuardFile) -> Result<GuardConfig, ConfigError> {
    if raw.window_seconds == 0 || raw.window_seconds > 3600 {
        return Err(ConfigError::new("guard.window_seconds", "must be 1 to 3600"));
    }
    let rollback_to = match raw.rollback_to.as_str() {
        "zero" => RollbackTo::Zero,
        "previous_step" => RollbackTo::PreviousStep,
        other => {
            return Err(ConfigError::new(
                "guard.rollback_to",
                format!("expected \"zero\" or \"previous_step\", got {other:?}"),
            ));
        }
    };
    Ok(GuardConfig {
        enabled: raw.enabled,
        window: Duration::from_secs(raw.window_seconds),
        min_requests: raw.min_requests.max(1),
        max_error_ratio_increase: positive("guard.max_error_ratio_increase", raw.max_error_ratio_increase)?,
        max_p99_ratio: positive("guard.max_p99_ratio", raw.max_p99_ratio)?,
        min_p99_increase: Duration::try_from_secs_f64(raw.min_p99_increase_seconds)
            .map_err(|_| ConfigError::new("guard.min_p99_increase_seconds", "must be 0 or more seconds"))?,
        rollback_to,
    })
}

pub fn schedule(raw: Option<ScheduleFile>) -> Result<Option<ScheduleConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let key = "rollout.schedule.steps";
    if raw.steps.is_empty() {
        return Err(ConfigError::new(key, "list at least one percentage"));
    }
    let mut steps = Vec::new();
    for s in raw.steps {
        let p = u8::try_from(s)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| ConfigError::new(key, format!("{s} is not 0 to 100")))?;
        if steps.last().is_some_and(|last| *last >= p) {
            return Err(ConfigError::new(key, "steps must increase"));
        }
        steps.push(p);
    }
    if raw.hold_seconds == 0 {
        return Err(ConfigError::new("rollout.schedule.hold_seconds", "must be positive"));
    }
    Ok(Some(ScheduleConfig { steps, hold: Duration::from_secs(raw.hold_seconds) }))
}

pub fn shadow(raw: ShadowFile) -> Result<ShadowConfig, ConfigError> {
    if !(0.0..=1.0).contains(&raw.fraction) {
        return Err(ConfigError::new("shadow.fraction", format!("must be 0 to 1, got {}", raw.fraction)));
    }
    let timeout = Duration::from_secs_f64(positive("shadow.timeout_seconds", raw.timeout_seconds)?);
    Ok(ShadowConfig {
        fraction: raw.fraction,
        max_concurrent: raw.max_concurrent.max(1),
        max_body_bytes: raw.max_body_bytes,
        timeout,
        ignore_fields: raw.ignore_fields,
        mismatch_log_per_minute: raw.mismatch_log_per_minute,
    })
}

pub fn overrides(raw: OverridesFile) -> Result<OverridesConfig, ConfigError> {
    let mut users = HashMap::new();
    for (list, id) in [(&raw.v1, BackendId::V1), (&raw.v2, BackendId::V2)] {
        for u in list {
            if users.insert(u.clone(), id).is_some_and(|prev| prev != id) {
                return Err(ConfigError::new("overrides", format!("user {u:?} is pinned to both v1 and v2")));
            }
        }
    }
    let qa_header = match raw.qa_token {
        None => None,
        Some(_) => Some(
            HeaderName::try_from(raw.qa_header.as_str())
                .map_err(|_| ConfigError::new("overrides.qa_header", "not a header name"))?,
        ),
    };
    Ok(OverridesConfig { users, qa_header, qa_token: raw.qa_token.map(Secret::new) })
}
