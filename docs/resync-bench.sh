#!/usr/bin/env bash
# Hit-path latency while the edge resyncs 1,000,000 merchants, per-core against shared, in one run.
#   docs/resync-bench.sh [ROUNDS] [RATE] [SECONDS] [restart|trimmed]
# For each runtime: a standalone core-sim with $MERCHANTS (1,000,000) merchants, an edge warm-started
# from it, then open-loop lookups of known merchants (merchant-loadgen, Zipf, no unknown or malformed
# IDs) twice: quiet, and with a resync caused 2 s in. Prints p50 / p99 / p99.9 of each run, the resyncs
# the edge counted during it by reason and when the first ended, and the fewest positive entries it
# held (the edge's /metrics sampled every 0.1 s).
#
# restart (the default): the core is restarted (a new incarnation). The edge drops what it cannot
#   vouch for, positives included, and re-installs every merchant from a ListMerchants snapshot, so
#   for about a second lookups are misses: the p99 measures those, not the hit path.
# trimmed: the core keeps only the last $HISTORY (2) changes (core-sim --history). 2 s in, the
#   simulator drops the edge's change stream and refuses it again (SetFaults drop_streams), $HISTORY + 1
#   merchants are onboarded meanwhile, and the fault is cleared: the edge's resume point has been
#   trimmed, WatchChanges answers OUT_OF_RANGE, and the edge resyncs keeping its positives (it drops
#   its not-founds and re-reads the snapshot). The run fails unless that resync (reason too_old, and
#   no core_restarted) happened within the load and the positive entries never fell below the count
#   before it: the p99 then measures hits during a 1M resync. The edge's reconnect backoff is capped at
#   0.5 s (feed.reconnect_max_backoff; 5 s by default) so that its attempts, refused while the stream
#   is held down, do not back off past the load window before it learns of the trim.
# Needs grpcurl (for CoreAdmin) and curl. Ports 50301-50302 and 9302.
set -euo pipefail
cd "$(dirname "$0")/.."
. docs/bench-lib.sh
ROUNDS=${1:-2} RATE=${2:-5000} SECS=${3:-8} MODE=${4:-restart}
MERCHANTS=${MERCHANTS:-1000000} HISTORY=${HISTORY:-2}
CORE_PORT=50301 GRPC_PORT=50302 ADMIN_PORT=9302
case $MODE in restart | trimmed) ;; *) echo "mode: restart or trimmed, not $MODE" >&2; exit 2 ;; esac
core_options=() edge_options=()
[ "$MODE" = trimmed ] && core_options=(--history "$HISTORY") edge_options=('[feed]' 'reconnect_max_backoff = "500ms"')
CORE_PID= FAILED=0 ONBOARDED=0

core() { start_core core.log $CORE_PORT "$MERCHANTS" "${core_options[@]}"; CORE_PID=$SPAWNED; }
core_admin() { grpcurl -plaintext -d "$2" "127.0.0.1:$CORE_PORT" "merchant.v1.CoreAdmin/$1" >/dev/null; }
resyncs() { metric $ADMIN_PORT "merchant_edge_feed_resyncs_total{reason=\"$1\"}"; }
positives() { metric $ADMIN_PORT 'merchant_edge_cache_entries{store="positive"}'; }
# Every 0.1 s: milliseconds since it started, positive entries, resyncs (any reason).
sample_edge() {
  local start=${EPOCHREALTIME/./}
  while :; do
    curl -s localhost:$ADMIN_PORT/metrics | awk -v ms=$(((${EPOCHREALTIME/./} - start) / 1000)) '
      /^merchant_edge_cache_entries\{store="positive"\} / {p = $2}
      /^merchant_edge_feed_resyncs_total\{/ {r += $2}
      END {print ms, p + 0, r + 0}'
    sleep 0.1
  done
}
lookups() { # the options of every load run
  echo --target "127.0.0.1:$GRPC_PORT" --duration "${SECS}s" --rate "$RATE" --merchants "$MERCHANTS" \
    --unknown 0 --malformed 0 --connections 4
}

# The resync of the restart mode: the same simulator started again, with a new incarnation.
restart_core() { stop "$CORE_PID"; core; }

# The resync of the trimmed mode: the edge's stream is held down while the core's kept history moves
# past the edge's resume point; the edge's next attempt is answered OUT_OF_RANGE.
trim_history() {
  local reconnects
  reconnects=$(metric $ADMIN_PORT merchant_edge_feed_reconnects_total)
  core_admin SetFaults '{"dropStreams": true}'
  # Onboarding before the edge has seen its stream end would only stream the changes to it.
  until [ "$(metric $ADMIN_PORT merchant_edge_feed_reconnects_total)" -gt "$reconnects" ]; do sleep 0.02; done
  # In parallel: each grpcurl takes 0.1 - 0.4 s, and the resync must begin and end within the load.
  local onboarding=()
  for _ in $(seq $((HISTORY + 1))); do
    ONBOARDED=$((ONBOARDED + 1))
    core_admin UpsertMerchant "$(printf '{"merchant": {"merchantId": "895%012d", "name": "resync-bench"}}' $ONBOARDED)" &
    onboarding+=($!)
  done
  for pid in "${onboarding[@]}"; do wait "$pid"; done
  core_admin SetFaults '{}'
}

check() { # CONDITION-HOLDS WHAT
  if [ "$1" = 1 ]; then echo "  ok: $2"; else echo "  CHECK FAILED: $2"; FAILED=1; fi
}

wait_for_quiet_machine
for runtime in per-core shared; do
  core
  start_edge edge $GRPC_PORT $ADMIN_PORT $CORE_PORT "$runtime" "${edge_options[@]}"; EDGE_PID=$SPAWNED
  wait_ready $ADMIN_PORT
  # shellcheck disable=SC2046 # lookups prints options, split on purpose
  load warm-up.txt $(lookups)
  for r in $(seq "$ROUNDS"); do
    wait_for_quiet_machine
    load quiet.txt $(lookups)
    summary "$runtime quiet" quiet.txt
    too_old=$(resyncs too_old) restarted=$(resyncs core_restarted) held=$(positives)
    spawn samples.txt sample_edge; SAMPLER=$SPAWNED
    # shellcheck disable=SC2046
    spawn during.txt "$LOADGEN" run $(lookups); LOAD_PID=$SPAWNED
    sleep 2
    if [ "$MODE" = restart ]; then restart_core; else trim_history; fi
    wait_loaded $LOAD_PID during.txt
    stop $SAMPLER
    summary "$runtime during a resync of $MERCHANTS ($MODE)" during.txt
    too_old=$(($(resyncs too_old) - too_old)) restarted=$(($(resyncs core_restarted) - restarted))
    fewest=$(awk 'NR == 1 || $2 < f {f = $2} END {print f + 0}' "$TMP/samples.txt")
    ended=$(awk 'NR == 1 {r = $3} $3 > r && t == "" {t = $1 / 1000} END {print t == "" ? "not seen" : t " s"}' "$TMP/samples.txt")
    echo "  resyncs during the run: too_old $too_old, core_restarted $restarted (one ended at $ended of ${SECS} s);" \
      "positive entries $held before, fewest $fewest during"
    if [ "$MODE" = trimmed ]; then
      check $((too_old >= 1 && restarted == 0)) "the resync was the history-trimmed kind (OUT_OF_RANGE)"
      check $((fewest >= held)) "positives stayed held"
    fi
    until curl -s localhost:$ADMIN_PORT/readyz | grep -q 'feed: connected.* lag 0 '; do sleep 0.2; done
  done
  stop "$EDGE_PID" "$CORE_PID"
done
exit $FAILED
