#!/usr/bin/env python3
"""How long a committed rollout change takes to be in force on every replica.

Starts a throwaway PostgreSQL cluster on a free loopback port and REPLICAS switchyard
processes (the release binary) on it, then makes CHANGES admin writes, each on the
next replica in turn. From the moment a write is answered 200 (committed), every
replica's GET /admin/rollout is polled until it shows that change's generation; the
time each replica took is one sample. Prints p50, p99 and max over all samples.

    benches/fleet/run.sh [changes] [replicas]
"""
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tmp_stack import Cluster, serve  # noqa: E402

CHANGES = int(sys.argv[1]) if len(sys.argv) > 1 else 200
REPLICAS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
TOKEN = "bench-token"


def start_replica(dir, i, pg_port):
    return serve(dir, f"replica-{i}", f"""[backends.v1]
url = "http://127.0.0.1:1"
[backends.v2]
url = "http://127.0.0.1:2"
[guard]
enabled = false
[cluster]
database_url = "postgresql://postgres@127.0.0.1:{pg_port}/postgres"
replica_id = "bench-{i}"
""", TOKEN)


def generation(url):
    with urllib.request.urlopen(url + "/admin/rollout", timeout=2) as r:
        return json.load(r)["generation"]


def put(url, percentage):
    req = urllib.request.Request(url + "/admin/rollout", method="PUT",
                                 data=json.dumps({"percentage": percentage}).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)["generation"]


def until(url, gen, started, out):
    while True:
        if generation(url) >= gen:
            out.append(time.monotonic() - started)
            return
        if time.monotonic() - started > 10:
            out.append(float("inf"))
            return
        time.sleep(0.002)


def main():
    dir = tempfile.mkdtemp(prefix="switchyard-fleet-bench-")
    os.chmod(dir, 0o755)
    pg = Cluster(dir)
    pg_port, stop_pg = pg.port, pg.stop
    procs = []
    try:
        urls = []
        for i in range(REPLICAS):
            proc, url = start_replica(dir, i, pg_port)
            procs.append(proc)
            urls.append(url)
        samples = []
        for n in range(CHANGES):
            writer = urls[n % len(urls)]
            # The writer's own view first, so it does not write on a stale generation.
            base = max(generation(u) for u in urls)
            while generation(writer) < base:
                time.sleep(0.001)
            gen = put(writer, n % 101)
            started = time.monotonic()
            threads = [threading.Thread(target=until, args=(u, gen, started, samples)) for u in urls]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        samples.sort()
        q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))]
        ms = lambda s: f"{s * 1000:.1f} ms"
        print(f"{CHANGES} changes x {REPLICAS} replicas = {len(samples)} samples: "
              f"p50 {ms(q(0.5))}, p99 {ms(q(0.99))}, max {ms(samples[-1])}")
    finally:
        for p in procs:
            p.kill()
        stop_pg()
        shutil.rmtree(dir, ignore_errors=True)


if __name__ == "__main__":
    main()
