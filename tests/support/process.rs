//! switchyard as a child process: for what only a whole process shows (exit codes,
//! signals, resident memory).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A per-test temporary directory, made if missing.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to a fresh file in a per-test temporary directory.
pub fn write_config(name: &str, text: &str) -> PathBuf {
    let path = test_dir(name).join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `switchyard <args>` to completion with `env` added (and the proxy's own
/// variables cleared so the developer's shell cannot leak in).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in ["V2_ROLLOUT_PERCENTAGE", "SUPABASE_ENV", "SUPABASE_V1_URL", "SUPABASE_V2_URL", "SWITCHYARD_ADMIN_TOKEN"]
    {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).output().expect("switchyard runs")
}

/// A running `switchyard serve`.
pub struct Serving {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
}

impl Serving {
    /// Starts `switchyard serve --config path` and waits for its "serving" line.
    pub fn start(path: &Path) -> Serving {
        Serving::start_with(path, &[])
    }

    /// [`Serving::start`] with `env` added.
    pub fn start_with(path: &Path, env: &[(&str, &str)]) -> Serving {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("switchyard starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let field =
                    |name: &str| line.split(name).nth(1).map(|r| r.split_whitespace().next().unwrap().to_string());
                if let Some(addr) = field(" listen=") {
                    let _ = tx.send((addr, field(" admin=")));
                }
            }
        });
        let (addr, admin) = rx.recv_timeout(Duration::from_secs(20)).expect("switchyard said where it listens");
        let admin = admin.and_then(|a| a.parse().ok());
        Serving { child, addr: addr.parse().unwrap(), admin }
    }

    /// Peak resident memory so far, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Sends `signal` (e.g. "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
