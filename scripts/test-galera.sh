#!/usr/bin/env bash
# The Galera tests at full load (issue 15): builds build/, starts mosquitto (scripts/services.sh)
# and a 3-node MariaDB Galera cluster on 127.0.0.1 (scripts/galera.sh), runs the tests labelled
# `galera` (DB_HOST node lists, nodes that do not take writes, certification conflicts, and two
# gateways on two nodes with one node killed -9 under 5,000 messages), and stops what it started,
# also on failure or Ctrl-C. scripts/test.sh runs the same tests on a smaller load.
#
#   GW_SKIP_APT=1     skip apt-get (scripts/setup.sh)
#   GW_BUILD_DIR      the build directory (default build/)
#   GW_SKIP_BUILD=1   use it as it is
#   GW_FAULT_SCALE    load factor of the e2e test (default 1: 5,000 messages)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd "$REPO_DIR"
PATH="${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin"

# Not test.sh's or run-local's ports or run dirs, so that they can run at the same time.
export GW_RUN_DIR="$REPO_DIR/.run/test-galera"
export GW_DB_PORT=3327 GW_MQTT_PORT=1904 GW_MQTT_TLS_PORT=8904 GW_MQTT_CERT_PORT=8906
export GW_GALERA_DIR="$GW_RUN_DIR/galera"
export GW_GALERA_SQL_PORT=3384 GW_GALERA_GCOMM_PORT=4574 GW_GALERA_IST_PORT=4584 \
  GW_GALERA_SST_PORT=4594
export GW_FAULT_SCALE="${GW_FAULT_SCALE:-1}"
BUILD_DIR="${GW_BUILD_DIR:-build}"

say() { printf 'test-galera: %s\n' "$*"; }

started=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((started)); then
    bash scripts/galera.sh stop || true
    bash scripts/services.sh stop || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "test-galera: interrupted" >&2; exit 130' INT TERM

bash scripts/setup.sh
if [[ ${GW_SKIP_BUILD:-0} != 1 ]]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGATEWAY_WERROR=ON >/dev/null
  cmake --build "$BUILD_DIR" -j2 --target mqtt-gateway galera_tests
fi

# Fresh state: no databases, broker sessions or cluster data left over from an earlier run.
bash scripts/galera.sh stop >/dev/null 2>&1 || true
bash scripts/services.sh stop >/dev/null 2>&1 || true
rm -rf "$GW_RUN_DIR"
started=1
t0=$SECONDS
bash scripts/services.sh start
bash scripts/galera.sh start
set -a
# shellcheck source=/dev/null
source "$GW_RUN_DIR/services.env"
# shellcheck source=/dev/null
source "$GW_GALERA_DIR/galera.env"
set +a
export GW_TEST_LOG_ARCHIVE="$GW_RUN_DIR/gateway-logs"
say "services and cluster up in $((SECONDS - t0)) s; GW_FAULT_SCALE=$GW_FAULT_SCALE"

t1=$SECONDS
rc=0
ctest --test-dir "$BUILD_DIR" -L galera --output-on-failure --timeout 900 --no-tests=error || rc=$?
say "galera tests: $([[ $rc == 0 ]] && echo passed || echo FAILED) in $((SECONDS - t1)) s (whole run $((SECONDS - t0)) s)"
exit "$rc"
