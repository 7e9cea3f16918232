//! A real Prometheus scrapes two switchyard replicas under traffic to both backends,
//! loads `deploy/prometheus/rules.yml`, and every PromQL expression of the Grafana
//! dashboard and of the rules is evaluated through its HTTP API. The scenario makes
//! each alert's condition true: v2 slow behind replica A, v2 down behind replica B,
//! replicas at different percentages, a refused reload on B.
//!
//! Needs Debian's `prometheus` package (scripts/test.sh installs it and sets
//! SWITCHYARD_REQUIRE_PROMETHEUS=1, so CI cannot skip this silently).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::process::{test_dir, write_config};
use support::*;

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// The end of Prometheus' own log and whether it has exited, for a failure message.
    fn report(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited: {status}"),
            _ => "still running".to_string(),
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        format!("prometheus on {} {status}; its log ends:\n{}", self.addr, tail.join("\n"))
    }

    /// Whether `GET path` answers 200 with a body `accept` takes; a refused or failed
    /// connection is a no (Prometheus is still starting).
    async fn answers(&self, path: &str, accept: impl Fn(&[u8]) -> bool) -> bool {
        let url = format!("http://{}{path}", self.addr);
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            let resp = client().request(http::Request::get(url).body(full("")).unwrap()).await.ok()?;
            let ok = resp.status() == 200;
            let body = http_body_util::BodyExt::collect(resp.into_body()).await.ok()?.to_bytes();
            Some(ok && accept(&body))
        })
        .await;
        matches!(got, Ok(Some(true)))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running Prometheus that scrapes `targets` every second and evaluates the
/// project's rules every second, once it reports ready. The port is chosen before
/// Prometheus binds it, so another socket can take it in between: a Prometheus that
/// exits is started again on another port.
async fn start_prometheus(targets: &[SocketAddr]) -> Option<Prometheus> {
    if Command::new("prometheus").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_PROMETHEUS").is_none(),
            "prometheus is not installed (scripts/test.sh installs it)"
        );
        eprintln!("skipping: prometheus not installed; run scripts/test.sh");
        return None;
    }
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/rules.yml");
    // Rule groups declare their own interval; the test evaluates faster.
    let rules_text = std::fs::read_to_string(&rules).unwrap().replace("interval: 15s", "interval: 1s");
    let dir = test_dir("prometheus");
    let fast_rules = dir.join("rules.yml");
    std::fs::write(&fast_rules, rules_text).unwrap();
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: [{}]\n",
        fast_rules.display(),
        targets.join(", ")
    );
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let (data, log) = (dir.join("tsdb"), dir.join("prometheus.log"));
    let mut last = String::new();
    for _attempt in 0..3 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let _ = std::fs::remove_dir_all(&data);
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts");
        let mut prom = Prometheus { child, addr, log: log.clone() };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if prom.answers("/-/ready", |_| true).await {
                return Some(prom);
            }
            if matches!(prom.child.try_wait(), Ok(Some(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        last = prom.report();
    }
    panic!("prometheus never became ready: {last}");
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn query(prom: SocketAddr, expr: &str) -> Value {
    let got = send(prom, "GET", &format!("/api/v1/query?query={}", encode(expr)), &[], "").await;
    let v = got.json();
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].clone()
}

/// Grafana's template variables, as an operator viewing "All" would have them.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$service", ".*")
}

fn dashboard_exprs() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/switchyard-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut out);
    out
}

/// Both backends among the series, when the series are per backend at all.
fn covers_both_backends(result: &Value) -> bool {
    let series = result.as_array().unwrap();
    let backends: Vec<&str> = series.iter().filter_map(|s| s["metric"]["backend"].as_str()).collect();
    !series.is_empty() && (backends.is_empty() || (backends.contains(&"v1") && backends.contains(&"v2")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_queries_work_on_real_prometheus() {
    let v1 = echo("v1").await;
    let slow_v2 = slow(Duration::from_millis(40), "[]").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let token = [("SWITCHYARD_ADMIN_TOKEN", "t")];
    // The guard would roll both replicas back: this test wants the failures visible.
    let no_guard = "[guard]\nenabled = false\n";
    let a = start_with(&config_text(&v1.url(), &slow_v2.url(), 30, no_guard), &token, None).await;
    // B serves HTTPS too, with a certificate that has expired: its expiry alert holds,
    // A's (no TLS) stays silent.
    let tls_dir = test_dir("prom-replica-b-tls");
    let (cert, key) = support::ca::Ca::new().server(&rcgen::PKCS_ECDSA_P256_SHA256, true).write(&tls_dir, "b");
    let b_tls = format!(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let b_text = config_text(&v1.url(), &closed, 60, &format!("{no_guard}{b_tls}"));
    let b_path = write_config("prom-replica-b", &b_text);
    let b = start_with(&b_text, &[], Some(b_path.clone())).await;
    let Some(mut prom) = start_prometheus(&[a.admin_addr.unwrap(), b.admin_addr.unwrap()]).await else {
        return;
    };

    // Counters must start before the traffic, or Prometheus sees no increase.
    let ready = Instant::now();
    let both_up = |body: &[u8]| {
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        v["data"]["result"].as_array().is_some_and(|r| r.len() == 2)
    };
    while !prom.answers("/api/v1/query?query=up", both_up).await {
        if ready.elapsed() > Duration::from_secs(30) {
            panic!("prometheus never scraped both replicas: {}", prom.report());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Upstream failures behind B, fast and bounded, enough for a rate over 5 minutes.
    let b_addr = b.addr;
    let failing = tokio::spawn(async move {
        for n in 0..3000 {
            let user = (0..).map(|k| format!("down-{n}-{k}")).find(|u| percentile(u) < 60).unwrap();
            assert_eq!(get_as(b_addr, "/rest/v1/items", &user).await.status, 502);
        }
    });
    // Traffic to both backends through both replicas, bounded in count and time.
    let started = Instant::now();
    let mut changed = false;
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(8) && n < 4000 {
        let user = format!("user-{n}");
        for (sy, path) in [(&a, "/rest/v1/items"), (&b, "/rest/v1/items"), (&a, "/auth/v1/user")] {
            get_as(sy.addr, path, &user).await;
        }
        if !changed && started.elapsed() > Duration::from_secs(4) {
            // Once Prometheus has samples: a rollout change (the dashboard's
            // annotation) and a refused reload (an alert).
            assert_eq!(put_rollout(a.admin_addr.unwrap(), Some("t"), r#"{"percentage": 40}"#).await.status, 200);
            std::fs::write(&b_path, b_text.replace("percentage = 60", "percentage = 600")).unwrap();
            assert!(b.control.reload("test").await.is_err());
            changed = true;
        }
        n += 1;
    }
    failing.await.unwrap();

    let mut exprs: Vec<(String, bool)> = dashboard_exprs().iter().map(|e| (concrete(e), true)).collect();
    assert!(exprs.len() >= 10, "dashboard has only {} queries", exprs.len());
    let rules = send(prom.addr, "GET", "/api/v1/rules", &[], "").await.json();
    let mut alerts = 0;
    let mut fleet_alerts = Vec::new();
    let mut certificate = Vec::new();
    for group in rules["data"]["groups"].as_array().expect("rules loaded") {
        for rule in group["rules"].as_array().unwrap() {
            let is_alert = rule["type"] == "alerting";
            alerts += usize::from(is_alert);
            let query = rule["query"].as_str().unwrap().to_string();
            if rule["labels"]["scope"] == "fleet" {
                // These replicas keep their own state (no [cluster]): their generations
                // differ and no store is connected, and still no fleet alert may fire.
                fleet_alerts.push(query);
                continue;
            }
            if rule["labels"]["scope"] == "tls" {
                certificate.push(query);
                continue;
            }
            // Recording rules must cover both backends; an alert's condition must hold.
            exprs.push((query, !is_alert));
        }
    }
    assert!(alerts >= 4, "only {alerts} alerts loaded");
    assert_eq!(fleet_alerts.len(), 2, "the fleet's alerts are loaded");

    let started = Instant::now();
    let mut pending = exprs;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (expr, per_backend) in pending {
            let result = query(prom.addr, &expr).await;
            let ok = if per_backend { covers_both_backends(&result) } else { !result.as_array().unwrap().is_empty() };
            if !ok {
                still.push((expr, per_backend));
            }
        }
        pending = still;
        if !pending.is_empty() {
            let waiting: Vec<&String> = pending.iter().map(|(e, _)| e).collect();
            if started.elapsed() > Duration::from_secs(40) {
                panic!("no data for: {waiting:#?}\n{}", prom.report());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let generations = query(prom.addr, "switchyard_cluster_generation").await;
    let distinct: std::collections::HashSet<String> =
        generations.as_array().unwrap().iter().map(|s| s["value"][1].to_string()).collect();
    assert!(distinct.len() > 1, "the replicas' own generations differ: {generations}");
    for expr in fleet_alerts {
        assert_eq!(query(prom.addr, &expr).await, serde_json::json!([]), "{expr} fired without a fleet");
    }
    assert_eq!(certificate.len(), 1, "the certificate alert is loaded");
    for expr in certificate {
        let holds = query(prom.addr, &expr).await;
        let instances: Vec<&str> =
            holds.as_array().unwrap().iter().filter_map(|s| s["metric"]["instance"].as_str()).collect();
        assert_eq!(instances, [b.admin_addr.unwrap().to_string()], "{expr}: only B's expired certificate");
    }
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    if Command::new("promtool").arg("--version").output().is_err() {
        assert!(std::env::var_os("SWITCHYARD_REQUIRE_PROMETHEUS").is_none(), "promtool is not installed");
        eprintln!("skipping: promtool not installed; run scripts/test.sh");
        return;
    }
    let v1 = echo("v1").await;
    let sy = start(&config_text(&v1.url(), "http://127.0.0.1:1", 50, "")).await;
    for n in 0..40 {
        get_as(sy.addr, "/rest/v1/t", &format!("u{n}")).await;
        send(sy.addr, "POST", "/auth/v1/token", &[("authorization", "Bearer x")], "{}").await;
    }
    let text = send(sy.admin_addr.unwrap(), "GET", "/metrics", &[], "").await.body;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &text).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}");
    let body = String::from_utf8_lossy(&text);
    for name in ["switchyard_requests_total", "switchyard_request_duration_seconds_bucket"] {
        for b in ["v1", "v2"] {
            assert!(body.contains(&format!("{name}{{backend=\"{b}\"")), "{name} lacks {b}");
        }
    }
    assert!(body.contains("switchyard_upstream_errors_total{backend=\"v2\",kind=\"connect\"}"));
}
