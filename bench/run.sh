#!/usr/bin/env bash
# Benchmarks for expense-sync, against the simulator in a separate process
# (so the exporter's memory is measured alone). Figures are printed as a
# table; compare them side by side within one run, never across machines.
#
#   bench/run.sh export    # 100,000 expenses, rate limit and latency off: records/s and peak memory, CSV vs Parquet
#   bench/run.sh million   # CSV + Parquet in one run at 100,000 and at 1,000,000 expenses (N_SMALL, N_LARGE):
#                          # exporter peak RSS (from /usr/bin/time -v, the exporter process alone), CPU, wall, side by side
#   bench/run.sh backfill  # 20,000 expenses at 150 ms latency and 10 requests/s: share of the allowed rate used, 429s
#   bench/run.sh peers     # expense-sync vs the official `fyle` SDK and dlt's rest_api on the same simulator:
#                          # 10,000 expenses at 150 ms / 10 req/s, then 50,000 with no limits; wall, CPU, peak RSS, ratios
#                          # (installs bench/peers/requirements.txt into bench/.venv on first use; needs python3 >= 3.9)
#
# Environment: N (records), PORT (simulator accounts port; cluster is PORT+1),
# BIN (an already built expense-sync to measure instead of building target/release),
# N_RATE / N_CPU (records of the two `peers` scenarios), PEERS_OUT (keep their measured rows).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-export}
PORT=${PORT:-8750}
if [ -n "${BIN:-}" ]; then
  echo "using BIN=$BIN (not rebuilt)" >&2
else
  cargo build --release --quiet
  BIN=target/release/expense-sync
fi
work=$(mktemp -d)
trap 'kill "${SIM:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

start_sim() { # args passed to simulate
  "$BIN" simulate --port "$PORT" "$@" >"$work/sim.log" 2>&1 &
  SIM=$!
  for _ in $(seq 1 1200); do
    grep -q "FYLE_CLIENT_ID" "$work/sim.log" 2>/dev/null && break
    sleep 0.1
  done
  eval "$(grep -E '^(export )?FYLE_[A-Z_]+=' "$work/sim.log" | sed 's/^export //; s/^/export /')"
  FYLE_CLUSTER_URL=$(sed -n 's/^ *cluster server: *//p' "$work/sim.log" | head -1)
  export FYLE_CLUSTER_URL
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
million)
  printf '%-10s %10s %10s %10s %12s %14s\n' records pages seconds cpu_s records/s peak_rss_MiB
  for n in "${N_SMALL:-100000}" "${N_LARGE:-1000000}"; do
    start_sim --expenses "$n" --rate-limit 0
    pipeline "bench-million" csv 1000 4
    printf '[[sinks]]\ntype = "parquet"\npath = "{pipeline}.parquet"\n' >>"$work/bench-million.toml"
    rm -rf "$work/out"
    /usr/bin/time -v -o "$work/time.txt" \
      "$BIN" --log-level warn run "$work/bench-million.toml" --output-dir "$work/out" >"$work/bench-million.json"
    f="$work/bench-million.json"
    recs=$(field "$f" records_out); pages=$(field "$f" pages); ms=$(field "$f" duration_ms)
    kb=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$work/time.txt")
    cpu=$(awk -F': *' '/User time|System time/ { s += $2 } END { print s }' "$work/time.txt")
    awk -v r="$recs" -v p="$pages" -v ms="$ms" -v c="$cpu" -v kb="$kb" \
      'BEGIN { printf "%-10d %10d %10.1f %10.1f %12.0f %14.1f\n", r, p, ms/1000, c, r/(ms/1000), kb/1024 }'
    kill "$SIM" 2>/dev/null || true; wait "$SIM" 2>/dev/null || true
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
peers)
  VENV=bench/.venv
  if [ ! -x "$VENV/bin/python" ] || ! cmp -s bench/peers/requirements.txt "$VENV/.requirements"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/peers/requirements.txt
    cp bench/peers/requirements.txt "$VENV/.requirements"
  fi
  PY="$VENV/bin/python"
  rows="${PEERS_OUT:-$work/peers.jsonl}" # PEERS_OUT keeps the measured rows (JSON lines)
  measure() { # scenario, tool, command...
    local scenario=$1 tool=$2; shift 2
    sleep 1.5 # let the simulator's per-IP token bucket refill between tools
    "$PY" bench/peers/measure.py "$scenario" "$tool" "$rows" -- "$@" >/dev/null
  }
  both_sinks() { # name, rps, concurrency: one pipeline writing CSV and Parquet
    pipeline "$1" csv "$2" "$3"
    printf '[[sinks]]\ntype = "parquet"\npath = "{pipeline}.parquet"\n' >>"$work/$1.toml"
  }
  scenario() { # label, records, the exporter's requests/s, simulate args...
    local label=$1 n=$2 rps=$3; shift 3
    start_sim --expenses "$n" "$@"
    both_sinks "peers-$label" "$rps" 4
    measure "$label" "expense-sync (csv+parquet)" \
      "$BIN" --log-level warn run "$work/peers-$label.toml" --output-dir "$work/out-$label"
    for fmt in parquet csv; do
      measure "$label" "dlt rest_api ($fmt)" "$PY" bench/peers/dlt_rest_api.py "$fmt" "$work/dlt-$label-$fmt"
    done
    measure "$label" "fyle SDK (fetch only)" "$PY" bench/peers/fyle_sdk.py
    kill "$SIM" 2>/dev/null || true; wait "$SIM" 2>/dev/null || true
  }
  scenario "10k-rate" "${N_RATE:-10000}" 10 --rate-limit 10 --latency 150ms
  scenario "50k-cpu" "${N_CPU:-50000}" 1000 --rate-limit 0
  "$PY" bench/peers/report.py "$rows"
  ;;
*) echo "usage: $0 export|million|backfill|peers" >&2; exit 2 ;;
esac
