#!/usr/bin/env bash
# Hit-path latency while the edge resyncs 1,000,000 merchants, per-core against shared, in one run.
#   docs/resync-bench.sh [ROUNDS] [RATE] [SECONDS]
# For each runtime: a standalone core-sim with 1,000,000 merchants, an edge warm-started from it, then
# open-loop lookups of known merchants (merchant-loadgen, Zipf, no unknown or malformed IDs) twice:
# quiet, and with the core restarted 2 s in (a new incarnation: the edge drops what it cannot vouch
# for and re-validates every merchant from a ListMerchants snapshot while it keeps answering).
# Prints p50 / p99 / p99.9 of each run and whether the resync happened within it.
set -euo pipefail
ROUNDS=${1:-2} RATE=${2:-5000} SECS=${3:-8}
BIN=${BIN:-target/release/merchant-edge} LOADGEN=${LOADGEN:-target/release/merchant-loadgen}
TMP=$(mktemp -d)
CORE_PID= EDGE_PID=
cleanup() { for p in $EDGE_PID $CORE_PID; do kill $p 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
core() { "$BIN" core-sim --listen 127.0.0.1:50262 --merchants 1000000 >"$TMP/core.log" 2>&1 & CORE_PID=$!; sleep 0.3; }
resyncs() { curl -s localhost:9271/metrics | awk '/^merchant_edge_feed_resyncs_total/ {s+=$2} END {print s+0}'; }
load() { # name
  "$LOADGEN" run --target 127.0.0.1:50271 --duration "${SECS}s" --rate "$RATE" --merchants 1000000 \
    --unknown 0 --malformed 0 --connections 4 >"$TMP/lg.txt" 2>&1
  python3 - "$1" "$TMP/lg.txt" <<'PY'
import re, sys
text = open(sys.argv[2]).read()
pct = dict(re.findall(r"^  ([0-9.]+)% in ([0-9.]+) ms", text, re.M))
rps = re.search(r"Requests/sec:\s*([0-9.]+)", text).group(1)
codes = " ".join(re.findall(r"^  \[(\w+)\]\t(\d+) responses", text, re.M) and [f"{c}={n}" for c, n in re.findall(r"^  \[(\w+)\]\t(\d+) responses", text, re.M)])
print(f"{sys.argv[1]}: {float(rps):.0f} req/s, p50 {pct['50']} ms, p99 {pct['99']} ms, p99.9 {pct['99.9']} ms ({codes})")
PY
}
for runtime in per-core shared; do
  core
  printf '[server]\nlisten = "127.0.0.1:50271"\nruntime = "%s"\n[admin]\nlisten = "127.0.0.1:9271"\n[upstream]\nendpoint = "http://127.0.0.1:50262"\n[log]\nlevel = "warn"\n' "$runtime" >"$TMP/edge.toml"
  "$BIN" serve --config "$TMP/edge.toml" >"$TMP/edge.log" 2>&1 & EDGE_PID=$!
  until curl -sf localhost:9271/readyz >/dev/null; do sleep 0.2; done
  load "$runtime warm-up" >/dev/null
  for r in $(seq "$ROUNDS"); do
    load "$runtime quiet"
    before=$(resyncs)
    ( sleep 2; kill $CORE_PID; sleep 0.2; core; echo $CORE_PID >"$TMP/core.pid" ) & RESTARTER=$!
    load "$runtime during a 1M resync"
    wait $RESTARTER; CORE_PID=$(cat "$TMP/core.pid")
    echo "  resyncs during the run: $(( $(resyncs) - before ))"
    until curl -s localhost:9271/readyz | grep -q 'lag 0'; do sleep 0.2; done
  done
  kill $EDGE_PID $CORE_PID; wait $EDGE_PID $CORE_PID 2>/dev/null || true; EDGE_PID= CORE_PID=
done
