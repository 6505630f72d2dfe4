# Shell shared by the benchmark scripts in docs/ (sourced, not run): processes started and cleaned up,
# simulators and edges, the edge's metrics, and load runs with merchant-loadgen summarised.
#   . "$(dirname "$0")/bench-lib.sh"
# KEEP_TMP=1 keeps the processes' logs and the reports (the path is printed at exit).
# Every process is started with `spawn`, which remembers it; on exit (normal, error or signal) the ones
# still running are stopped. A PID is only signalled while it is still a child of this shell, so a
# process that already ended and whose PID the kernel handed to someone else is never hit.
BIN=${BIN:-target/release/merchant-edge} LOADGEN=${LOADGEN:-target/release/merchant-loadgen}
TMP=$(mktemp -d)
BENCH_PIDS=()

# Whether PID is still a child of this shell (and so safe to signal).
ours() { [ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" = "$$" ]; }

bench_cleanup() {
  local pid running=()
  for pid in "${BENCH_PIDS[@]}"; do ours "$pid" && running+=("$pid"); done
  stop "${running[@]}"
  if [ -n "${KEEP_TMP:-}" ]; then echo "logs and reports kept in $TMP" >&2; else rm -rf "$TMP"; fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# spawn LOG CMD...: starts CMD in the background, output to $TMP/LOG; its PID is left in SPAWNED.
spawn() {
  local log=$1; shift
  "$@" >"$TMP/$log" 2>&1 &
  SPAWNED=$!
  BENCH_PIDS+=("$SPAWNED")
}

# stop PID...: ends processes started with spawn and reaps them (those that are still ours).
stop() {
  local pid running=()
  for pid in "$@"; do ours "$pid" && running+=("$pid"); done
  for pid in "${running[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${running[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# Other builds and benchmarks share the two cores: wait until none is running before measuring
# (NO_WAIT=1 skips this, for trying a script out).
wait_for_quiet_machine() {
  [ -n "${NO_WAIT:-}" ] && return
  while pgrep -x rustc >/dev/null || pgrep -f h2load >/dev/null; do
    echo "  (waiting: rustc or h2load is running)" >&2
    sleep 15
  done
}

# wait_listening PORT [SECONDS]: until something accepts TCP connections on 127.0.0.1:PORT.
wait_listening() {
  local deadline=$((SECONDS + ${2:-30}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "nothing listens on port $1" >&2; return 1; }
    sleep 0.1
  done
}

# start_core LOG PORT MERCHANTS [CORE-SIM OPTION...]: a standalone simulator; its PID in SPAWNED.
start_core() {
  local log=$1 port=$2 merchants=$3; shift 3
  spawn "$log" "$BIN" core-sim --listen "127.0.0.1:$port" --merchants "$merchants" "$@"
  wait_listening "$port"
}

# start_edge NAME GRPC-PORT ADMIN-PORT CORE-PORT RUNTIME [TOML...]: an edge warm-starting from the
# simulator on CORE-PORT; extra TOML lines go at the end of its config (e.g. a [cache] section).
# Its PID in SPAWNED. Call wait_ready ADMIN-PORT before loading it.
start_edge() {
  local name=$1 grpc=$2 admin=$3 core=$4 runtime=$5; shift 5
  {
    printf '[server]\nlisten = "127.0.0.1:%s"\nruntime = "%s"\n' "$grpc" "$runtime"
    printf '[admin]\nlisten = "127.0.0.1:%s"\n[upstream]\nendpoint = "http://127.0.0.1:%s"\n' "$admin" "$core"
    printf '[log]\nlevel = "warn"\n'
    printf '%s\n' "$@"
  } >"$TMP/$name.toml"
  spawn "$name.log" "$BIN" serve --config "$TMP/$name.toml"
}

# wait_ready ADMIN-PORT [SECONDS]: until the edge's /readyz answers 200 (a warm start has loaded).
wait_ready() {
  local deadline=$((SECONDS + ${2:-120}))
  until curl -sf "localhost:$1/readyz" >/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "the edge on admin port $1 was not ready within ${2:-120} s" >&2; return 1; }
    sleep 0.2
  done
}

# metric ADMIN-PORT PREFIX: the sum of the edge's /metrics samples whose line starts with PREFIX
# (taken literally: a name followed by a space or "{", or a name and labels, e.g. 'x{reason="y"}').
metric() {
  curl -s "localhost:$1/metrics" | PREFIX=$2 awk '
    BEGIN { p = ENVIRON["PREFIX"]; n = length(p) }
    substr($0, 1, n) == p && (substr(p, n) == "}" || substr($0, n + 1, 1) ~ /[ {]/) { s += $NF }
    END { printf "%d\n", s }'
}

# cpu_ticks PID: user + system CPU the process has used, in clock ticks (getconf CLK_TCK a second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# load REPORT LOADGEN-RUN-OPTION...: one merchant-loadgen run in the foreground, its report in
# $TMP/REPORT. (In the background: spawn REPORT "$LOADGEN" run ..., then wait_loaded $SPAWNED REPORT.)
load() {
  local report=$1; shift
  "$LOADGEN" run "$@" >"$TMP/$report" 2>&1 || { echo "merchant-loadgen run failed:" >&2; cat "$TMP/$report" >&2; return 1; }
}

# wait_loaded PID REPORT: waits for a loadgen run spawned into $TMP/REPORT.
wait_loaded() {
  wait "$1" || { echo "merchant-loadgen run failed:" >&2; cat "$TMP/$2" >&2; return 1; }
}

# summary NAME REPORT: one line from a loadgen report: req/s, p50 / p99 / p99.9 and the status codes.
summary() {
  python3 - "$1" "$TMP/$2" <<'PY'
import re, sys
text = open(sys.argv[2]).read()
pct = dict(re.findall(r"^  ([0-9.]+)% in ([0-9.]+) ms", text, re.M))
rps = re.search(r"Requests/sec:\s*([0-9.]+)", text).group(1)
codes = " ".join(f"{c}={n}" for c, n in re.findall(r"^  \[(\w+)\]\t(\d+) responses", text, re.M))
print(f"{sys.argv[1]}: {float(rps):.0f} req/s, p50 {pct['50']} ms, p99 {pct['99']} ms, p99.9 {pct['99.9']} ms ({codes})")
PY
}

# ok_count REPORT: how many calls of a loadgen report were answered OK.
ok_count() { awk -F'\t' '/^  \[OK\]/ {split($2, a, " "); print a[1]; found = 1} END {if (!found) print 0}' "$TMP/$1"; }
