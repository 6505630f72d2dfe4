#!/usr/bin/env bash
# Figures for the local snapshot, measured on a release build:
#  1. write and load time and file size for N merchants, through the real code
#     (examples/snapshot_bench.rs: Snapshots::write and Snapshots::restore on a full cache);
#  2. on the real binary: ready-to-serve after a restart with the core down (from spawning the process
#     to the first lookup of a merchant it held being answered), with 1,000,000 merchants;
#  3. a restart with the core up resumes the feed: no resync, no snapshot listed (tests/snapshot.rs
#     asserts zero ListMerchants calls through the simulator's GetStats).
# Usage: docs/snapshot-bench.sh            (MERCHANTS_LIST="1000000 10000000" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin merchant-edge --example snapshot_bench
BIN=target/release/merchant-edge
WORK=$(mktemp -d /var/tmp/merchant-edge-snapshot-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== write and load (examples/snapshot_bench.rs)"
for n in ${MERCHANTS_LIST:-1000000 10000000}; do
  target/release/examples/snapshot_bench "$n" "$WORK/bench.bin"
done

N=${RESTART_MERCHANTS:-1000000}
CORE=127.0.0.1:47052
cat > "$WORK/edge.toml" <<TOML
[server]
listen = "127.0.0.1:47051"
[admin]
listen = "127.0.0.1:47090"
[upstream]
endpoint = "http://$CORE"
[cache]
positive_capacity = $N
[reload]
watch_file = false
[snapshot]
path = "$WORK/snapshot.bin"
TOML

wait_ready() {
  for _ in $(seq 1 6000); do
    curl -fs http://127.0.0.1:47090/readyz > /dev/null 2>&1 && return 0
    sleep 0.01
  done
  echo "the edge never became ready" >&2
  return 1
}

echo "== restart with the core down ($N merchants)"
$BIN core-sim --listen $CORE --merchants "$N" > "$WORK/core.log" 2>&1 & CORE_PID=$!; PIDS+=($CORE_PID)
sleep 1
$BIN serve --config "$WORK/edge.toml" > "$WORK/edge1.log" 2>&1 & EDGE=$!; PIDS+=($EDGE)
wait_ready
kill -TERM $EDGE; wait $EDGE || true
grep -o 'local snapshot written for the next start.*' "$WORK/edge1.log" | sed 's/\x1b\[[0-9;]*m//g' || true
$BIN snapshot inspect "$WORK/snapshot.bin"
kill $CORE_PID; wait $CORE_PID 2>/dev/null || true

LAST=$(printf '898%012d' $((N - 1)))
start=$(date +%s%N)
$BIN serve --config "$WORK/edge.toml" > "$WORK/edge2.log" 2>&1 & EDGE=$!; PIDS+=($EDGE)
until $BIN lookup "$LAST" --server 127.0.0.1:47051 > "$WORK/answer.txt" 2>/dev/null; do sleep 0.005; done
end=$(date +%s%N)
echo "first answer $(( (end - start) / 1000000 )) ms after spawning the edge, core down: $(cat "$WORK/answer.txt")"
grep -o 'local snapshot loaded.*' "$WORK/edge2.log" | sed 's/\x1b\[[0-9;]*m//g' || true
curl -s http://127.0.0.1:47090/readyz
kill -TERM $EDGE; wait $EDGE || true

echo "== restart with the core up: the feed resumes from the snapshot"
$BIN core-sim --listen $CORE --merchants "$N" > "$WORK/core2.log" 2>&1 & CORE_PID=$!; PIDS+=($CORE_PID)
sleep 1
rm -f "$WORK/snapshot.bin"
$BIN serve --config "$WORK/edge.toml" > "$WORK/edge3.log" 2>&1 & EDGE=$!; PIDS+=($EDGE)
wait_ready
kill -TERM $EDGE; wait $EDGE || true
listings() { grpcurl -plaintext -d '{}' $CORE merchant.v1.CoreAdmin/GetStats | grep -o '"listMerchantsCalls": "[0-9]*"' | grep -o '[0-9]*' || echo 0; }
before=$(listings)
$BIN serve --config "$WORK/edge.toml" > "$WORK/edge4.log" 2>&1 & EDGE=$!; PIDS+=($EDGE)
wait_ready
until curl -s http://127.0.0.1:47090/readyz | grep -q '^ready$'; do sleep 0.01; done
after=$(listings)
echo "ListMerchants calls: $before for the warm start, $((after - before)) for the restart that resumed"
kill -TERM $EDGE; wait $EDGE || true
