#!/usr/bin/env bash
# The project's whole test run on a new machine: installs the real components the tests start
# (Debian's nats-server, prometheus/promtool, chromium, postgresql) when they are missing, checks that the
# top-level modules have no import cycle, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# tests/core_pg.rs runs initdb and pg_ctl from /usr/lib/postgresql/*/bin (not on PATH).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing missing test components: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${need[@]}"
fi

cycles_tool=../shared/tools/module-cycles.py
if [ -f "$cycles_tool" ]; then
  python3 "$cycles_tool" src
fi

cargo test --workspace
