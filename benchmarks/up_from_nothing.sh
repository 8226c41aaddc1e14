#!/bin/bash
# `maas up` from nothing, as a user runs it: no Ray running, `maas up` starts its own head (Ray's default ports and
# token auth), a fresh MAAS_HOME with the built models linked in, the default ray_configs/maas.yaml; timed until
# `maas up` returns (every model has answered a probe through the gateway), then `maas down`. Issue 14: <= 90 s.
#
#   flock /tmp/maas-heavy.lock bash benchmarks/up_from_nothing.sh [MAAS_HOME_WITH_MODELS] [ROUNDS] [PORT]
#
# Nothing else may run a Ray head on this machine meanwhile (the tests' cluster, another platform).
set -u
cd "$(dirname "$0")/.."
MODELS="${1:-$HOME/.maas}/models"
ROUNDS="${2:-2}"
PORT="${3:-8473}"
[ -d "$MODELS" ] || { echo "no built models at $MODELS (MAAS_HOME=... .venv/bin/maas models build)"; exit 2; }
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for round in $(seq 1 "$ROUNDS"); do
  home=$(mktemp -d /tmp/maas-up-from-nothing-XXXX)
  ln -s "$(readlink -f "$MODELS")" "$home/models"
  start=$(date +%s.%N)
  MAAS_HOME=$home MAAS_PORT=$PORT .venv/bin/maas up > "$home/up.log" 2>&1
  rc=$?
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  echo "round $round: rc=$rc, maas up returned after $seconds s ($(grep -ho 'MaaS is up in [0-9]* s' "$home/up.log"))"
  MAAS_HOME=$home MAAS_PORT=$PORT .venv/bin/maas down > "$home/down.log" 2>&1
  [ "$rc" = 0 ] && rm -rf "$home" || echo "  its MAAS_HOME is kept: $home"
  sleep 5
done
