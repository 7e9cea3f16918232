"""A throwaway PostgreSQL cluster on a free loopback port, for the benchmarks
(initdb refuses root: as root the cluster is made and run as the postgres user)."""
import glob
import os
import shutil
import socket
import subprocess


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
