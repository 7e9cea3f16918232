#!/usr/bin/env python3
"""How long a handoff holds the moving band's writes, against how many rows it moves.

For each size, two databases on a throwaway PostgreSQL (v1's `notes` in `public`, v2's
in `content` with its own id range), 2 x ROWS notes of 20,000 users on v1, and a
release switchyard with `[handoff]` (built-in sync) at 0 %. A change to 50 % moves
about half the users, so about ROWS rows (`precopied`, before the fence);
`last_handoff.fenced_ms` is the time the band's writes were held (fence, drain, the
fenced pass, flip). Nothing writes meanwhile: the fenced pass finds no change.

    benches/handoff/run.sh [rows ...]      (default 10000 100000 1000000)
"""
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tmp_stack import Cluster, serve  # noqa: E402

TOKEN = "bench-token"
SIZES = [int(a) for a in sys.argv[1:]] or [10_000, 100_000, 1_000_000]


def request(url, method="GET", body=None):
    req = urllib.request.Request(url, method=method, data=body and json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def one(pg, dir, rows):
    for db in ("v1", "v2"):
        pg.psql(f"DROP DATABASE IF EXISTS {db}")
        pg.psql(f"CREATE DATABASE {db}")
    table = "(id bigserial PRIMARY KEY, user_id text NOT NULL, body text, created_at timestamptz DEFAULT now())"
    pg.psql(f"CREATE TABLE public.notes {table}; CREATE INDEX ON public.notes (user_id);"
            f"INSERT INTO public.notes (user_id, body) SELECT 'user-' || (g % 20000), repeat('x', 100) "
            f"FROM generate_series(1, {2 * rows}) g; ANALYZE", "v1")
    pg.psql(f"CREATE SCHEMA content; CREATE TABLE content.notes {table}; CREATE INDEX ON content.notes (user_id);"
            "ALTER SEQUENCE content.notes_id_seq RESTART 1000000000", "v2")
    proc, base = serve(dir, f"bench-{rows}", f"""[rollout]
percentage = 0
[guard]
enabled = false
[handoff]
enabled = true
timeout_seconds = 600
max_hold_seconds = 600
[translation.tables]
notes = "content"
[backends.v1]
url = "http://127.0.0.1:1"
database_url = "{pg.url('v1')}"
[backends.v2]
url = "http://127.0.0.1:2"
database_url = "{pg.url('v2')}"
""", TOKEN)
    try:
        request(base + "/admin/rollout", "PUT", {"percentage": 50})
        while True:
            s = request(base + "/admin/rollout")
            if s.get("last_handoff") and not s.get("handoff"):
                return s["last_handoff"]
            time.sleep(0.05)
    finally:
        proc.kill()


def main():
    dir = tempfile.mkdtemp(prefix="switchyard-handoff-bench-")
    os.chmod(dir, 0o755)
    pg = Cluster(dir)
    try:
        print(f"{'rows on v1':>12} {'rows moved':>12} {'fenced':>10}  result")
        for rows in SIZES:
            end = one(pg, dir, rows)
            moved = (end.get("synced") or {}).get("precopied", 0)
            print(f"{2 * rows:>12} {moved:>12} {end['fenced_ms']:>8} ms  {end['result']} {end.get('error') or ''}")
    finally:
        pg.stop()
        shutil.rmtree(dir, ignore_errors=True)


if __name__ == "__main__":
    main()
