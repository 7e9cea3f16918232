"""Locked (atomic read-modify-write) instructions per request, from a callgrind dump
made with --dump-instr=yes --compress-strings=no --compress-pos=no.

callgrind counts each instruction as one, but an atomic read-modify-write (a `lock`
prefix, or `xchg` with memory) costs about 20 cycles and drains the store buffer: a
hundred of them are a few tenths of a microsecond that an instruction count does not
show. The dump says how often each instruction ran; objdump says which are locked.

    python3 locked.py DUMP REQUESTS [TOP]   # per request, and the TOP functions"""
import collections
import re
import subprocess
import sys


def executions(path):
    """(object, address) -> times run, and the function each address is in."""
    runs, where = collections.Counter(), {}
    obj = fn = None
    after_call = False
    with open(path) as f:
        for line in f:
            if line.startswith("ob="):
                obj = line[3:].strip()
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("calls="):
                # The next cost line is the call's inclusive cost, not an instruction's.
                after_call = True
            elif line.startswith("0x"):
                if after_call:
                    after_call = False
                    continue
                fields = line.split()
                addr = int(fields[0], 16)
                runs[(obj, addr)] += int(fields[-1])
                where[(obj, addr)] = fn
            elif not line.startswith(("cob=", "cfn=", "cfi=", "cfl=")):
                after_call = False
    return runs, where


LOCKED = re.compile(r"^\s*([0-9a-f]+):\s+(lock\b|xchg\s+\S*\()")


def locked_addresses(obj):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True).stdout
    return {int(m.group(1), 16) for m in map(LOCKED.match, out.splitlines()) if m}


def main():
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    runs, where = executions(path)
    objects = {obj for obj, _ in runs if obj and obj.startswith("/")}
    locked = {obj: locked_addresses(obj) for obj in objects}
    per_fn = collections.Counter()
    for (obj, addr), n in runs.items():
        if addr in locked.get(obj, ()):
            per_fn[where[(obj, addr)]] += n
    print(f"{sum(per_fn.values()) / requests:.1f}")
    for fn, n in per_fn.most_common(top):
        print(f"{n / requests:8.2f}  {fn[:140]}", file=sys.stderr)


if __name__ == "__main__":
    main()
