#!/usr/bin/env bash
# ../shared/bench/floor-compare.sh with a connections (and streams) argument and several edges measured
# in the same run: floor, then each edge, round after round, identical h2load settings. The floor is
# the unchanged stock multi-thread bare tonic server (../shared/bench/tonic-floor).
#   docs/floor-compare.sh CONNECTIONS STREAMS ID ROUNDS SECONDS NAME=ADDR@PID [NAME=ADDR@PID ...]
# e.g. docs/floor-compare.sh 16 32 898000000000042 3 6 per-core=127.0.0.1:50071@1234 shared=127.0.0.1:50072@1235
# Per round and server: requests/s and server CPU microseconds per successful request (utime+stime
# from /proc); at the end, per edge, the medians and the median ratios edge/floor of CPU per request
# and of requests/s (each ratio taken within one round, so machine noise between rounds cancels).
set -euo pipefail
CONNS=$1 STREAMS=$2 ID=$3 ROUNDS=$4 SECS=$5; shift 5
FLOOR_DIR=${FLOOR_DIR:-$(cd "$(dirname "$0")/../../shared/bench/tonic-floor" && pwd)}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client"; exit 2; }
TMP=$(mktemp -d)
FLOOR_PID=
trap '[ -n "$FLOOR_PID" ] && kill $FLOOR_PID 2>/dev/null; rm -rf "$TMP"' EXIT
CARGO_TARGET_DIR=${FLOOR_TARGET:-$HOME/.cache/tonic-floor-target} cargo build --release --quiet --manifest-path "$FLOOR_DIR/Cargo.toml"
FLOOR_BIN=${FLOOR_TARGET:-$HOME/.cache/tonic-floor-target}/release/tonic-floor
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$FLOOR_BIN" "127.0.0.1:$PORT" 1000000 2>"$TMP/floor.log" & FLOOR_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
SERVERS=("floor=127.0.0.1:$PORT@$FLOOR_PID" "$@")
python3 - "$ID" "$TMP/req.bin" <<'PY'
import struct, sys
mid = sys.argv[1].encode()
msg = b"\x0a" + bytes([len(mid)]) + mid
open(sys.argv[2], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
PY
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
h2() { h2load "$@" -t 1 -d "$TMP/req.bin" -H 'content-type: application/grpc' -H 'te: trailers'; }
run() { # name addr pid
  local before after out ok rps
  before=$(cpu $3)
  out=$(h2 -D "$SECS" -c "$CONNS" -m "$STREAMS" "http://$2/merchant.v1.MerchantLookup/Lookup" 2>&1)
  after=$(cpu $3)
  ok=$(sed -n 's/.* \([0-9]*\) succeeded.*/\1/p' <<<"$out")
  rps=$(sed -n 's/.*finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  python3 -c "import sys; t=int(sys.argv[2])-int(sys.argv[1]); n=int(sys.argv[3]); print(f'{sys.argv[4]} {float(sys.argv[5]):.0f} {t*1e6/100/max(n,1):.2f}')" "$before" "$after" "${ok:-0}" "$1" "${rps:-0}"
}
for s in "${SERVERS[@]}"; do   # warm: fill the edges' caches, fault in pages
  addr=${s#*=}; h2 -n 2000 -c 4 -m 8 "http://${addr%@*}/merchant.v1.MerchantLookup/Lookup" >/dev/null 2>&1
done
echo "# $CONNS connections x $STREAMS streams, $SECS s per run, $ROUNDS rounds, ID $ID"
for r in $(seq "$ROUNDS"); do
  for s in "${SERVERS[@]}"; do name=${s%%=*}; rest=${s#*=}; run "$name" "${rest%@*}" "${rest#*@}"; done
done | tee "$TMP/rows"
python3 - "$TMP/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
names = list(dict.fromkeys(r[0] for r in rows))
by = {n: [(float(r[1]), float(r[2])) for r in rows if r[0] == n] for n in names}
for n in names:
    print(f"{n}: {statistics.median(x[0] for x in by[n]):.0f} req/s, {statistics.median(x[1] for x in by[n]):.2f} us CPU/req")
for n in names[1:]:
    cpu = statistics.median(e[1] / f[1] for f, e in zip(by["floor"], by[n]))
    rps = statistics.median(e[0] / f[0] for f, e in zip(by["floor"], by[n]))
    print(f"{n}/floor: CPU per request {cpu:.2f}, requests/s {rps:.2f}x")
PY
