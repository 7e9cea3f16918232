//! `switchyard rollout`: the operator's side of the admin API. Reads and changes the
//! rollout through any replica (in fleet mode, the fleet's), and prints it for a
//! person or, with `--json`, as the API gives it.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use serde_json::Value;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Status,
    Set(u8),
    Pause,
    Resume,
    ClearGuard,
}

impl Action {
    fn request(self) -> (Method, &'static str, Option<String>) {
        match self {
            Action::Status => (Method::GET, "/admin/rollout", None),
            Action::Set(p) => (Method::PUT, "/admin/rollout", Some(format!(r#"{{"percentage": {p}}}"#))),
            Action::Pause => (Method::POST, "/admin/rollout/pause", None),
            Action::Resume => (Method::POST, "/admin/rollout/resume", None),
            Action::ClearGuard => (Method::POST, "/admin/guard/clear", None),
        }
    }
}

/// Runs `action` against the admin API at `admin` (e.g. `http://127.0.0.1:9090`),
/// writes with `token`. `Ok`: what to print; `Err`: the error to print (exit 1).
pub async fn run(admin: &str, token: Option<&str>, action: Action, local: bool, json: bool) -> Result<String, String> {
    let (method, path, body) = action.request();
    let query = if local && method != Method::GET { "?local=true" } else { "" };
    let uri = format!("{}{path}{query}", admin.trim_end_matches('/'));
    let mut req = Request::builder().method(method.clone()).uri(&uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token.filter(|_| method != Method::GET) {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| format!("bad admin URL: {e}"))?;
    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{admin}: {e}"))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| format!("{admin}: {e}"))?.to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("{admin}: no answer in 10 s"))??;
    let value: Value = serde_json::from_slice(&body).map_err(|_| format!("{admin} answered {status}, not JSON"))?;
    if !status.is_success() {
        let why = value["error"].as_str().unwrap_or("refused");
        let hint = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => " (set SWITCHYARD_ADMIN_TOKEN)",
            _ => "",
        };
        return Err(format!("{status}: {why}{hint}"));
    }
    // A guard clear answers {cleared, rollout}.
    let rollout = if value.get("rollout").is_some() { &value["rollout"] } else { &value };
    Ok(if json { value.to_string() } else { describe(rollout) })
}

/// The rollout, for a person.
pub fn describe(r: &Value) -> String {
    let mut lines = vec![format!(
        "rollout: {}% to v2 (from {}), generation {}{}",
        r["percentage"],
        r["source"].as_str().unwrap_or("?"),
        r["generation"],
        if r["local_only"] == true { ", LOCAL-ONLY change in force on this replica" } else { "" }
    )];
    if let Some(forced) = r["force_backend"].as_str() {
        lines.push(format!("forced: everything to {forced}"));
    }
    let t = &r["guard_tripped"];
    lines.push(if t.is_null() {
        format!("guard: {}", if r["guard_enabled"] == true { "watching" } else { "off" })
    } else {
        format!(
            "guard: TRIPPED ({} on {}: {}), rolled back from {}% to {}%; clear with `switchyard rollout clear-guard`",
            t["reason"].as_str().unwrap_or("?"),
            t["service"].as_str().unwrap_or("?"),
            t["detail"].as_str().unwrap_or(""),
            t["from_percentage"],
            t["rolled_back_to"]
        )
    });
    let s = &r["schedule"];
    if !s.is_null() {
        let next = match (s["next_percentage"].as_u64(), s["seconds_to_next"].as_u64()) {
            (Some(p), Some(secs)) => format!(", next {p}% in {secs} s"),
            (Some(p), None) => format!(", next {p}%"),
            _ => ", last step".into(),
        };
        let paused = if s["paused"] == true { " (paused)" } else { "" };
        lines.push(format!("schedule: step {} of {}{next}{paused}", s["step"], s["steps"]));
    }
    let h = &r["handoff"];
    if !h.is_null() {
        lines.push(format!(
            "handoff: {} of percentiles {}..{} from {} to {}, {} writes held",
            h["phase"].as_str().unwrap_or("?"),
            h["band"]["low"],
            h["band"]["high"].as_u64().map_or(0, |x| x.saturating_sub(1)),
            h["band"]["from"].as_str().unwrap_or("?"),
            h["band"]["to"].as_str().unwrap_or("?"),
            h["held"]
        ));
    }
    let last = &r["last_handoff"];
    if !last.is_null() {
        let why = last["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
        lines.push(format!(
            "last handoff: {} (fenced {} ms){why}",
            last["result"].as_str().unwrap_or("?"),
            last["fenced_ms"]
        ));
    }
    let f = &r["fleet"];
    if !f.is_null() {
        let state = if f["connected"] == true { "connected" } else { "DISCONNECTED (degraded)" };
        lines.push(format!("fleet: {state}, this replica {}", f["replica_id"].as_str().unwrap_or("?")));
        for rep in f["replicas"].as_array().into_iter().flatten() {
            let lag = if rep["applied_generation"] == r["generation"] { "" } else { "  <- behind" };
            lines.push(format!(
                "  {:<20} generation {:<6} seen {:.1} s ago{lag}",
                rep["id"].as_str().unwrap_or("?"),
                rep["applied_generation"],
                rep["seen_seconds_ago"].as_f64().unwrap_or(f64::NAN)
            ));
        }
        if let Some(e) = f["last_error"].as_str() {
            lines.push(format!("  last error: {e}"));
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_with_a_tripped_guard_and_a_lagging_replica_reads_plainly() {
        let r = serde_json::json!({
            "percentage": 0, "source": "guard", "generation": 7, "force_backend": null,
            "guard_enabled": true,
            "guard_tripped": {"reason": "error_ratio", "service": "rest", "detail": "v2 12%", "from_percentage": 40, "rolled_back_to": 0},
            "schedule": {"steps": [10, 40], "step": 0, "next_percentage": 40, "seconds_to_next": null, "paused": true},
            "fleet": {"replica_id": "a", "connected": true, "replicas": [
                {"id": "a", "applied_generation": 7, "seen_seconds_ago": 0.2},
                {"id": "b", "applied_generation": 6, "seen_seconds_ago": 9.0}
            ]}
        });
        let text = describe(&r);
        assert!(text.starts_with("rollout: 0% to v2 (from guard), generation 7"), "{text}");
        assert!(text.contains("guard: TRIPPED (error_ratio on rest: v2 12%), rolled back from 40% to 0%"), "{text}");
        assert!(text.contains("schedule: step 0 of [10,40], next 40% (paused)"), "{text}");
        assert!(text.lines().any(|l| l.contains("b ") && l.ends_with("<- behind")), "{text}");
        assert!(!text.lines().any(|l| l.trim_start().starts_with("a ") && l.contains("behind")), "{text}");
    }

    #[test]
    fn a_handoff_in_progress_and_the_last_ones_end_are_shown() {
        let r = serde_json::json!({
            "percentage": 10, "source": "api", "generation": 3, "guard_enabled": false, "guard_tripped": null,
            "handoff": {"phase": "sync", "band": {"low": 10, "high": 25, "from": "v1", "to": "v2"}, "held": 4},
            "last_handoff": {"result": "aborted", "fenced_ms": 120, "error": "the sync command failed"}
        });
        let text = describe(&r);
        assert!(text.contains("handoff: sync of percentiles 10..24 from v1 to v2, 4 writes held"), "{text}");
        assert!(text.contains("last handoff: aborted (fenced 120 ms): the sync command failed"), "{text}");
    }
}
