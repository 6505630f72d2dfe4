#!/usr/bin/env bash
# CPU per looked-up ID: unary Lookup vs BatchLookup of 100 IDs, against one running edge, side by side.
#   batch-bench.sh EDGE_ADDR EDGE_PID [ROUNDS] [SECONDS]
set -euo pipefail
EDGE=$1 PID=$2 ROUNDS=${3:-3} SECS=${4:-6}
python3 - <<'PY'
import struct
def frame(msg): return b"\x00" + struct.pack(">I", len(msg)) + msg
def string(field, s): b = s.encode(); return bytes([field << 3 | 2, len(b)]) + b
ids = ["898%012d" % (i * 997 % 100000) for i in range(100)]
open("/tmp/unary.bin", "wb").write(frame(string(1, ids[0])))
open("/tmp/batch.bin", "wb").write(frame(b"".join(string(1, i) for i in ids)))
PY
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
run() { # name path body ids-per-request
  local before after out ok
  before=$(cpu)
  out=$(h2load -D "$SECS" -c 16 -m 32 -t 1 -d "$3" -H 'content-type: application/grpc' -H 'te: trailers' "http://$EDGE/merchant.v1.MerchantLookup/$2" 2>&1)
  after=$(cpu)
  ok=$(sed -n 's/.* \([0-9]*\) succeeded.*/\1/p' <<<"$out")
  python3 -c "import sys; t=(int(sys.argv[2])-int(sys.argv[1]))*1e4; n=int(sys.argv[3])*int(sys.argv[4]); print(f'{sys.argv[5]} {n/float(sys.argv[6]):.0f} {t/max(n,1):.3f}')" "$before" "$after" "${ok:-0}" "$4" "$1" "$SECS"
}
for r in $(seq "$ROUNDS"); do run unary Lookup /tmp/unary.bin 1; run batch BatchLookup /tmp/batch.bin 100; done | tee /tmp/batch-rows
python3 - <<'PY'
import statistics
rows = [l.split() for l in open("/tmp/batch-rows")]
u = [float(r[2]) for r in rows if r[0] == "unary"]; b = [float(r[2]) for r in rows if r[0] == "batch"]
ur = [float(r[1]) for r in rows if r[0] == "unary"]; br = [float(r[1]) for r in rows if r[0] == "batch"]
print(f"unary: {statistics.median(ur):.0f} lookups/s, {statistics.median(u):.3f} us CPU per lookup")
print(f"batch: {statistics.median(br):.0f} lookups/s, {statistics.median(b):.3f} us CPU per lookup")
print(f"lookups per CPU-second, batch/unary: {statistics.median(u)/statistics.median(b):.1f}x")
PY
