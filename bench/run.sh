#!/usr/bin/env bash
# Benchmarks for expense-sync, against the simulator in a separate process
# (so the exporter's memory is measured alone). Figures are printed as a
# table; compare them side by side within one run, never across machines.
#
#   bench/run.sh export    # 100,000 expenses, rate limit and latency off: records/s and peak memory, CSV vs Parquet
#   bench/run.sh backfill  # 20,000 expenses at 150 ms latency and 10 requests/s: share of the allowed rate used, 429s
#
# Environment: N (records), PORT (simulator accounts port; cluster is PORT+1).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-export}
PORT=${PORT:-8750}
cargo build --release --quiet
BIN=target/release/expense-sync
work=$(mktemp -d)
trap 'kill "${SIM:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

start_sim() { # args passed to simulate
  "$BIN" simulate --port "$PORT" "$@" >"$work/sim.log" 2>&1 &
  SIM=$!
  for _ in $(seq 1 200); do
    grep -q "FYLE_CLIENT_ID" "$work/sim.log" 2>/dev/null && break
    sleep 0.1
  done
  eval "$(grep -E '^(export )?FYLE_[A-Z_]+=' "$work/sim.log" | sed 's/^export //; s/^/export /')"
}

pipeline() { # name, sink type, rps, concurrency
  cat >"$work/$1.toml" <<TOML
[pipeline]
name = "$1"
[connection]
accounts_url = "http://127.0.0.1:$PORT"
client_id = { env = "FYLE_CLIENT_ID" }
client_secret = { env = "FYLE_CLIENT_SECRET" }
refresh_token = { env = "FYLE_REFRESH_TOKEN" }
[http]
requests_per_second = $3
[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"
concurrency = $4
[[sinks]]
type = "$2"
path = "{pipeline}.$2"
TOML
}

field() { grep -o "\"$2\": *[0-9.]*" "$1" | head -1 | sed 's/.*: *//'; }

run_one() { # name
  "$BIN" --log-level warn run "$work/$1.toml" --output-dir "$work/out" >"$work/$1.json"
}

case "$what" in
export)
  N=${N:-100000}
  start_sim --expenses "$N" --rate-limit 0
  printf '%-10s %10s %10s %12s %14s\n' sink records seconds records/s peak_rss_MiB
  for sink in csv parquet; do
    pipeline "bench-$sink" "$sink" 1000 4
    run_one "bench-$sink"
    recs=$(field "$work/bench-$sink.json" records_out)
    ms=$(field "$work/bench-$sink.json" duration_ms)
    rss=$(field "$work/bench-$sink.json" peak_rss_bytes)
    awk -v s="$sink" -v r="$recs" -v ms="$ms" -v rss="$rss" \
      'BEGIN { printf "%-10s %10d %10.2f %12.0f %14.1f\n", s, r, ms/1000, r/(ms/1000), rss/1048576 }'
  done
  ;;
backfill)
  N=${N:-20000}
  start_sim --expenses "$N" --rate-limit 10 --latency 150ms
  pipeline bench-backfill csv 10 4
  run_one bench-backfill
  f="$work/bench-backfill.json"
  recs=$(field "$f" records_out); ms=$(field "$f" duration_ms)
  reqs=$(field "$f" requests); thr=$(field "$f" throttled_429)
  awk -v r="$recs" -v ms="$ms" -v q="$reqs" -v t="$thr" 'BEGIN {
    rate = q / (ms/1000);
    printf "records %d, requests %d in %.1f s = %.2f requests/s = %.1f%% of the allowed 10/s; 429s: %d\n", r, q, ms/1000, rate, rate*10, t }'
  ;;
*) echo "usage: $0 export|backfill" >&2; exit 2 ;;
esac
