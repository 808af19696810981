"""Prints the measured rows of one `bench/run.sh peers` run as a Markdown
table, each peer's cost as a ratio to expense-sync in the same scenario
(ratio > 1: the peer needs more)."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| scenario | tool | records | wall s | CPU s | peak RSS MiB | wall × | CPU × | RSS × | records per CPU-s |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    base = next(
        (b for b in rows if b["scenario"] == r["scenario"] and b["tool"].startswith("expense-sync")),
        None,
    )
    ratio = lambda k: f"{r[k] / base[k]:.1f}" if base and base[k] else "–"
    recs = r.get("records", "?")
    per_cpu = f"{recs / r['cpu_s']:,.0f}" if isinstance(recs, int) and r["cpu_s"] else "–"
    failed = "" if r["rc"] == 0 else f" (exit {r['rc']})"
    print(
        f"| {r['scenario']} | {r['tool']}{failed} | {recs:,} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} "
        f"| {r['peak_rss_mib']:.1f} | {ratio('wall_s')} | {ratio('cpu_s')} | {ratio('peak_rss_mib')} | {per_cpu} |"
        if isinstance(recs, int)
        else f"| {r['scenario']} | {r['tool']}{failed} | ? | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_rss_mib']:.1f} | {ratio('wall_s')} | {ratio('cpu_s')} | {ratio('peak_rss_mib')} | – |"
    )
for r in rows:
    if "requests" in r:
        print(f"\n{r['tool']} ({r['scenario']}): {r['requests']} requests, {r.get('throttled_429', 0)} × 429")
