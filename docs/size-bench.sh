#!/usr/bin/env bash
# Hit cost by store size, end to end: the edge's CPU per successful lookup with 10,000 merchants and
# with 10,000,000, same run (issue 12; `cargo bench --bench stores -- "hit by size"` is the store alone).
#   docs/size-bench.sh [ROUNDS] [SECONDS] [KEYS...]        KEYS: zipf, uniform (default: both)
# Two standalone simulators ($SMALL = 10,000 and $LARGE = 10,000,000 merchants) and an edge
# warm-started from each, both per-core with the same config (positive_capacity = $CAPACITY,
# 12,000,000; positive_ttl 1 h, so no entry expires or is refreshed during the run). Per round and key
# popularity, the same merchant-loadgen run against each edge (lookups spread over that edge's
# merchants, `--unknown 0 --malformed 0`; closed loop with $CONCURRENCY callers over 4 connections, or
# open loop at $RATE/s if set), alternating which edge goes first. The edge's CPU is the utime + stime
# delta of /proc/PID/stat around the run, divided by the loadgen's count of OK answers; printed per
# round with the ratio large / small, then the medians. The loadgen shares the cores with the edge
# being measured, the same way for both.
# Ports 50311-50314 and 9313-9314.
set -euo pipefail
cd "$(dirname "$0")/.."
. docs/bench-lib.sh
ROUNDS=${1:-5} SECS=${2:-10}
shift $(($# < 2 ? $# : 2))
KEYS=${*:-zipf uniform}
SMALL=${SMALL:-10000} LARGE=${LARGE:-10000000} CAPACITY=${CAPACITY:-12000000}
CONCURRENCY=${CONCURRENCY:-64} RATE=${RATE:-}
HZ=$(getconf CLK_TCK)
declare -A MERCHANTS=([small]=$SMALL [large]=$LARGE) GRPC=([small]=50313 [large]=50314)
declare -A ADMIN=([small]=9313 [large]=9314) CORE=([small]=50311 [large]=50312) PID=()

for size in small large; do
  start_core "core-$size.log" "${CORE[$size]}" "${MERCHANTS[$size]}"
  start_edge "edge-$size" "${GRPC[$size]}" "${ADMIN[$size]}" "${CORE[$size]}" per-core \
    '[cache]' "positive_capacity = $CAPACITY" 'positive_ttl = "1h"'
  PID[$size]=$SPAWNED
done
for size in small large; do
  wait_ready "${ADMIN[$size]}" 900
  echo "$size edge: $(metric "${ADMIN[$size]}" 'merchant_edge_cache_entries{store="positive"}') positive entries," \
    "$(awk '/VmRSS/ {print $2 / 1024 " MB"}' "/proc/${PID[$size]}/status") RSS"
done

# measure SIZE KEYS: one load run against that edge; leaves its CPU µs per OK answer in US.
measure() {
  local size=$1 keys=$2 before after ok pace=(--concurrency "$CONCURRENCY")
  [ -n "$RATE" ] && pace=(--rate "$RATE")
  wait_for_quiet_machine
  before=$(cpu_ticks "${PID[$size]}")
  load run.txt --target "127.0.0.1:${GRPC[$size]}" --duration "${SECS}s" --connections 4 "${pace[@]}" \
    --keys "$keys" --merchants "${MERCHANTS[$size]}" --unknown 0 --malformed 0
  after=$(cpu_ticks "${PID[$size]}")
  ok=$(ok_count run.txt)
  [ "$ok" -gt 0 ] || { echo "no OK answers from the $size edge:" >&2; cat "$TMP/run.txt" >&2; exit 1; }
  US=$(awk -v t=$((after - before)) -v hz="$HZ" -v ok="$ok" 'BEGIN {printf "%.3f", t * 1e6 / hz / ok}')
  RPS=$(awk '/Requests\/sec:/ {printf "%d", $2}' "$TMP/run.txt")
}

# Idle cost, so background work of the large edge is not mistaken for hit cost.
idle=()
for size in small large; do
  before=$(cpu_ticks "${PID[$size]}"); sleep 5; idle+=("$size $(($(cpu_ticks "${PID[$size]}") - before)) ticks")
done
echo "idle for 5 s (ticks of 1/$HZ s): ${idle[*]}"
for keys in $KEYS; do measure small "$keys"; measure large "$keys"; done # warm-up
for r in $(seq "$ROUNDS"); do
  order="small large"
  [ $((r % 2)) = 0 ] && order="large small"
  for keys in $KEYS; do
    declare -A us=() rps=()
    for size in $order; do measure "$size" "$keys"; us[$size]=$US rps[$size]=$RPS; done
    ratio=$(awk -v a="${us[large]}" -v b="${us[small]}" 'BEGIN {printf "%.3f", a / b}')
    echo "round $r $keys ($order): ${SMALL} ${us[small]} µs/OK (${rps[small]} req/s), ${LARGE} ${us[large]} µs/OK (${rps[large]} req/s), ratio $ratio"
    echo "$keys ${us[small]} ${us[large]} $ratio" >>"$TMP/results"
  done
done
python3 - "$TMP/results" "$SMALL" "$LARGE" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for keys in dict.fromkeys(row[0] for row in rows):
    mine = [[float(x) for x in row[1:]] for row in rows if row[0] == keys]
    small, large, ratio = (statistics.median(col) for col in zip(*mine))
    print(f"median over {len(mine)} rounds, {keys}: {sys.argv[2]} {small:.3f} µs/OK, {sys.argv[3]} {large:.3f} µs/OK, "
          f"ratio {ratio:.3f} (per round {min(r[2] for r in mine):.3f}-{max(r[2] for r in mine):.3f})")
PY
