#!/usr/bin/env bash
# Hot-key load alone, with a same-volume load of hits (control), and with a random-unknown-ID flood.
set -u
cd "$(dirname "$0")/.."
target/release/merchant-edge serve > /tmp/edge-default.log 2>&1 & EDGE=$!
until curl -sf localhost:9090/readyz >/dev/null; do sleep 0.2; done
CORE=$(grep -o "core_endpoint[^ ]*http://[0-9.:]*" /tmp/edge-default.log | grep -o "127.0.0.1:[0-9]*")
LG=target/release/merchant-loadgen
$LG faults --core $CORE --latency-ms 2
cpu() { awk '{print $14+$15}' /proc/$EDGE/stat; }
calls() { curl -s localhost:9090/metrics | awk '/^merchant_edge_core_calls_total/ {c+=$2} END {print c+0}'; }
hits() { curl -s localhost:9090/metrics | awk '/^merchant_edge_lookups_total\{source="cache",result="found"\}/ {print $2}'; }
for run in alone control flood; do
  e0=$(cpu); c0=$(calls); h0=$(hits); BG=
  case $run in
    control) $LG run --rate 20000 --keys uniform --unknown 0 --malformed 0 --duration 10s --connections 4 --seed 99 > /tmp/bg-$run.txt 2>&1 & BG=$! ;;
    flood) $LG run --rate 20000 --unknown 1.0 --malformed 0 --duration 10s --connections 4 --seed 97 > /tmp/bg-$run.txt 2>&1 & BG=$! ;;
  esac
  $LG run --rate 5000 --keys zipf --unknown 0 --malformed 0 --duration 10s --connections 2 > /tmp/hot-$run.txt 2>&1
  [ -n "$BG" ] && wait $BG
  e1=$(cpu); c1=$(calls); h1=$(hits)
  echo "== $run: edge cpu $((e1-e0)) cs, core calls $((c1-c0)), cache hits $((h1-h0))"
  grep -E "Count|Requests/sec|50% in|99% in|99.9% in" /tmp/hot-$run.txt | tr -s ' \t' ' ' | tr '\n' ';'; echo
  [ -n "$BG" ] && { grep -E "Requests/sec|\[OK\]|\[Res" /tmp/bg-$run.txt | head -3 | tr -s ' \t' ' ' | tr '\n' ';'; echo; }
done
curl -s localhost:9090/metrics | grep -E 'queue_full|cache_entries'
kill $EDGE; wait $EDGE
