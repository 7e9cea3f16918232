//! A throwaway PostgreSQL cluster for a test: initdb in a temporary directory, the
//! server on a free loopback port, stopped and removed on drop. `initdb` refuses to
//! run as root, so as root the cluster is made and run as the `postgres` user.

use std::path::PathBuf;
use std::process::Command;

/// A running (or stopped) test cluster.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// Server options beyond the port and socket directory.
    options: String,
}

fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl Postgres {
    /// A new cluster, running. `None` when PostgreSQL is not installed (a failure
    /// instead when `SWITCHYARD_REQUIRE_POSTGRES` is set, as the test command sets it).
    pub fn start(name: &str) -> Option<Postgres> {
        Postgres::start_with(name, None)
    }

    /// [`Postgres::start`] with TLS: `(certificate chain, key)` as PEM.
    pub fn start_with(name: &str, tls: Option<(&str, &str)>) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("SWITCHYARD_REQUIRE_POSTGRES").is_none(),
                "PostgreSQL is required (scripts/test.sh installs it)"
            );
            eprintln!("skipped: PostgreSQL is not installed");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("switchyard-pg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut options = "-c listen_addresses=127.0.0.1 -c fsync=off".to_string();
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            // PostgreSQL refuses a key others may read.
            std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            options +=
                &format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert_path.display(), key_path.display());
        }
        let pg = Postgres { dir, bin, port, options };
        if as_root() {
            assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&pg.dir).status().unwrap().success());
        }
        let data = pg.dir.join("data");
        let initdb = pg.bin.join("initdb");
        let out =
            pg.command(&initdb).args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"]).arg(&data).output().unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        pg.resume();
        Some(pg)
    }

    fn command(&self, program: &std::path::Path) -> Command {
        if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = self
            .command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts the server (again).
    pub fn resume(&self) {
        let options = format!("-p {} -k {} {}", self.port, self.dir.display(), self.options);
        self.pg_ctl(&["-w", "-t", "60", "-o", &options, "start"]);
    }

    /// Stops the server at once (connections are cut).
    pub fn stop(&self) {
        self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
    }

    /// Runs `sql` on its own connection.
    pub async fn execute(&self, sql: &str) {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(conn);
        client.batch_execute(sql).await.unwrap();
        drop(client);
        let _ = driver.await;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
