#!/usr/bin/env bash
# Side-by-side hit-path cost of two running edges (say, before and after a change), in one run.
#   docs/ab-compare.sh A_ADDR A_PID B_ADDR B_PID [ID] [ROUNDS] [SECONDS] [CONNECTIONS]
# Alternates identical h2load runs (A B A B ...) and reports for each the requests per second and the
# server CPU microseconds per successful request (utime+stime from /proc, robust to machine noise),
# then the median ratio B/A of CPU per request. Needs h2load (Debian package nghttp2-client).
set -euo pipefail
A=$1 A_PID=$2 B=$3 B_PID=$4 ID=${5:-898000000000042} ROUNDS=${6:-5} SECS=${7:-6} CONNS=${8:-16}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client"; exit 2; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 - "$ID" "$TMP/req.bin" <<'PY'
import struct, sys
mid = sys.argv[1].encode()
msg = b"\x0a" + bytes([len(mid)]) + mid
open(sys.argv[2], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
PY
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
load() { h2load "$@" -d "$TMP/req.bin" -H 'content-type: application/grpc' -H 'te: trailers'; }
run() { # name addr pid
  local before after out ok rps
  before=$(cpu "$3")
  out=$(load -D "$SECS" -c "$CONNS" -m 32 -t 1 "http://$2/merchant.v1.MerchantLookup/Lookup" 2>&1)
  after=$(cpu "$3")
  ok=$(sed -n 's/.* \([0-9]*\) succeeded.*/\1/p' <<<"$out")
  rps=$(sed -n 's/.*finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  python3 -c "import sys; t=int(sys.argv[2])-int(sys.argv[1]); n=int(sys.argv[3]); print(f'{sys.argv[4]} {float(sys.argv[5]):.0f} {t*1e6/100/max(n,1):.2f}')" "$before" "$after" "${ok:-0}" "$1" "${rps:-0}"
}
for addr in "$A" "$B"; do   # warm: fill the caches, fault in pages
  load -n 2000 -c 4 -m 8 -t 1 "http://$addr/merchant.v1.MerchantLookup/Lookup" >/dev/null 2>&1
done
for _ in $(seq "$ROUNDS"); do run A "$A" "$A_PID"; run B "$B" "$B_PID"; done | tee "$TMP/rows"
python3 - "$TMP/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
a = [(float(r[1]), float(r[2])) for r in rows if r[0] == "A"]
b = [(float(r[1]), float(r[2])) for r in rows if r[0] == "B"]
print(f"A: {statistics.median(x[0] for x in a):.0f} req/s, {statistics.median(x[1] for x in a):.2f} us CPU/req")
print(f"B: {statistics.median(x[0] for x in b):.0f} req/s, {statistics.median(x[1] for x in b):.2f} us CPU/req")
print(f"B/A CPU per request: {statistics.median(y[1] / x[1] for x, y in zip(a, b)):.2f}")
PY
