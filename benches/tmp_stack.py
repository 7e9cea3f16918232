"""Throwaway stacks for the benchmarks: a PostgreSQL cluster on a free loopback port
(initdb refuses root: as root it is made and run as the postgres user), and release
switchyard processes."""
import glob
import os
import shutil
import socket
import subprocess
import time
import urllib.request

BIN = os.environ.get("SWITCHYARD_BIN", "target/release/switchyard")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(args):
    return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + args


class Cluster:
    def __init__(self, dir):
        self.bin = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.dir, self.port = dir, free_port()
        if os.geteuid() == 0:
            shutil.chown(dir, "postgres", "postgres")
        self.data = os.path.join(dir, "data")
        subprocess.run(as_postgres([f"{self.bin}/initdb", "-A", "trust", "-U", "postgres", "--no-sync", "-D", self.data]),
                       check=True, stdout=subprocess.DEVNULL)
        opts = f"-p {self.port} -k {dir} -c listen_addresses=127.0.0.1"
        subprocess.run(as_postgres([f"{self.bin}/pg_ctl", "-D", self.data, "-l", f"{dir}/log", "-w", "-o", opts, "start"]),
                       check=True, stdout=subprocess.DEVNULL)

    def url(self, db="postgres"):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, sql, db="postgres"):
        subprocess.run([f"{self.bin}/psql", "-q", "-v", "ON_ERROR_STOP=1", self.url(db), "-c", sql],
                       check=True, stdout=subprocess.DEVNULL)

    def stop(self):
        subprocess.run(as_postgres([f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"]),
                       stdout=subprocess.DEVNULL)


def serve(dir, name, body, token):
    """Starts `switchyard serve` with `body` (TOML after [server]) and admin token
    `token`; waits until its admin listener answers. Returns (process, admin URL)."""
    admin = free_port()
    path = os.path.join(dir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:{admin}"\n{body}')
    env = dict(os.environ, SWITCHYARD_ADMIN_TOKEN=token, RUST_LOG="warn")
    proc = subprocess.Popen([BIN, "serve", "--config", path], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{admin}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{name} did not start")
