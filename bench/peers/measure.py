"""Runs one command and prints what it cost, as one JSON line.

Usage: measure.py SCENARIO TOOL OUT_JSONL -- COMMAND...
Wall time is measured around the child; CPU seconds (user + system) and
peak RSS come from wait4(2), so they cover the child and every descendant it
waited for, and nothing else (the simulator runs in its own process). The
child's last stdout line, if JSON, is merged in (records, requests, ...).
"""
import json
import os
import subprocess
import sys
import time

scenario, tool, out = sys.argv[1], sys.argv[2], sys.argv[3]
cmd = sys.argv[sys.argv.index("--") + 1 :]
start = time.monotonic()
child = subprocess.Popen(cmd, stdout=subprocess.PIPE)
stdout = child.stdout.read()
_, status, usage = os.wait4(child.pid, 0)
wall = time.monotonic() - start
child.returncode = os.waitstatus_to_exitcode(status)
row = {
    "scenario": scenario,
    "tool": tool,
    "rc": child.returncode,
    "wall_s": round(wall, 3),
    "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
}
text = stdout.decode(errors="replace").strip()
try:
    parsed = json.loads(text) if text.startswith("{") else json.loads(text.splitlines()[-1])
    # expense-sync's run summary nests its HTTP counters under "http".
    flat = {**parsed, **(parsed.get("http") or {})}
    for k in ("records", "records_out", "requests", "throttled_429", "pages"):
        if k in flat:
            row["records" if k == "records_out" else k] = flat[k]
except (ValueError, IndexError):
    pass
if child.returncode != 0:
    sys.stderr.write(f"{tool} ({scenario}) exited with {child.returncode}\n{text[-2000:]}\n")
with open(out, "a") as f:
    f.write(json.dumps(row) + "\n")
print(json.dumps(row))
