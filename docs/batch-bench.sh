#!/usr/bin/env bash
# CPU per looked-up ID: unary Lookup vs BatchLookup of 100 IDs vs StreamLookup carrying 100 requests per
# call, against one running edge, side by side.
#   batch-bench.sh EDGE_ADDR EDGE_PID [ROUNDS] [SECONDS] [CONNECTIONS]
# (CONNECTIONS, default 16, each with 32 streams: 1 measures what one heavy connection gets.)
set -euo pipefail
EDGE=$1 PID=$2 ROUNDS=${3:-3} SECS=${4:-6} CONNS=${5:-16}
python3 - <<'PY'
import struct
def frame(msg): return b"\x00" + struct.pack(">I", len(msg)) + msg
def string(field, s): b = s.encode(); return bytes([field << 3 | 2, len(b)]) + b
ids = ["898%012d" % (i * 997 % 100000) for i in range(100)]
open("/tmp/unary.bin", "wb").write(frame(string(1, ids[0])))
open("/tmp/batch.bin", "wb").write(frame(b"".join(string(1, i) for i in ids)))
open("/tmp/stream.bin", "wb").write(b"".join(frame(string(1, i)) for i in ids))
PY
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
run() { # name path body ids-per-request
  local before after out ok
  before=$(cpu)
  out=$(h2load -D "$SECS" -c "$CONNS" -m 32 -t 1 -d "$3" -H 'content-type: application/grpc' -H 'te: trailers' "http://$EDGE/merchant.v1.MerchantLookup/$2" 2>&1)
  after=$(cpu)
  ok=$(sed -n 's/.* \([0-9]*\) succeeded.*/\1/p' <<<"$out")
  python3 -c "import sys; t=(int(sys.argv[2])-int(sys.argv[1]))*1e4; n=int(sys.argv[3])*int(sys.argv[4]); print(f'{sys.argv[5]} {n/float(sys.argv[6]):.0f} {t/max(n,1):.3f}')" "$before" "$after" "${ok:-0}" "$4" "$1" "$SECS"
}
for r in $(seq "$ROUNDS"); do run unary Lookup /tmp/unary.bin 1; run batch BatchLookup /tmp/batch.bin 100; run stream StreamLookup /tmp/stream.bin 100; done | tee /tmp/batch-rows
python3 - <<'PY'
import statistics
rows = [l.split() for l in open("/tmp/batch-rows")]
cpu = {k: statistics.median(float(r[2]) for r in rows if r[0] == k) for k in ("unary", "batch", "stream")}
rate = {k: statistics.median(float(r[1]) for r in rows if r[0] == k) for k in cpu}
for k in cpu:
    print(f"{k}: {rate[k]:.0f} lookups/s, {cpu[k]:.3f} us CPU per lookup")
print(f"lookups per CPU-second, batch/unary: {cpu['unary']/cpu['batch']:.1f}x, stream/unary: {cpu['unary']/cpu['stream']:.1f}x")
PY
