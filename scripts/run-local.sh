#!/usr/bin/env bash
# Runs mqtt-gateway locally: installs what it needs, builds it, starts a throwaway MariaDB and
# mosquitto on loopback (state in .run/local, kept between runs) with the demo flows of
# config/demo.sql, and runs the gateway in the foreground. Ctrl-C stops the gateway and then the
# services. GW_SKIP_APT=1 skips apt-get; GW_DB_PORT / GW_MQTT_PORT / GW_MQTT_TLS_PORT move the
# services (defaults 3307 / 1884 / 8884).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd "$REPO_DIR"
PATH="${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin"
unset MYSQL_PWD MYSQL_HOST MYSQL_TCP_PORT MYSQL_UNIX_PORT

say() { printf 'run-local: %s\n' "$*"; }

export GW_RUN_DIR="$REPO_DIR/.run/local"
export GW_DB_PORT="${GW_DB_PORT:-3307}" GW_MQTT_PORT="${GW_MQTT_PORT:-1884}"
export GW_MQTT_TLS_PORT="${GW_MQTT_TLS_PORT:-8884}"
SERVICES="$REPO_DIR/scripts/services.sh"
GATEWAY="$REPO_DIR/build/mqtt-gateway"
ENV_FILE="$GW_RUN_DIR/gateway.env"

bash scripts/setup.sh

say "building build/mqtt-gateway"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target mqtt-gateway

gateway_pid=""
services_started=0
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $gateway_pid ]] && kill -0 "$gateway_pid" 2>/dev/null; then
    kill -TERM "$gateway_pid" 2>/dev/null || true
    wait "$gateway_pid" 2>/dev/null || true
  fi
  if ((services_started)); then bash "$SERVICES" stop || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

services_started=1
bash "$SERVICES" start
# shellcheck source=/dev/null
source "$GW_RUN_DIR/services.env"

mkdir -p "$GW_RUN_DIR/log" "$GW_RUN_DIR/spool"
(
  umask 077
  cat >"$ENV_FILE" <<EOF
# Written by scripts/run-local.sh for the local demo; see .env.example for every setting.
DB_HOST=127.0.0.1
DB_PORT=$GW_DB_PORT
DB_NAME=gw
DB_USER=$GW_TEST_DB_USER
DB_PASSWORD=$GW_TEST_DB_PASSWORD
LOG_DIR=$GW_RUN_DIR/log
SPOOL_DIR=$GW_RUN_DIR/spool
EOF
)

# Schema (with the upgrades of a database an older version made) and demo data are idempotent;
# the demo data is applied as root over the socket (no password needed).
"$GATEWAY" --env-file "$ENV_FILE" --init-db
db_root() { timeout 60 mariadb --no-defaults --socket="$GW_TEST_DB_SOCKET" -uroot "$@"; }
db_root gw <config/demo.sql
# demo.sql names the broker at the default port; follow GW_MQTT_PORT if it was moved.
if [[ $GW_MQTT_PORT != 1884 ]]; then
  db_root gw -e "UPDATE mqtt_servers SET port=$GW_MQTT_PORT WHERE host='127.0.0.1' AND port=1884"
fi
say "schema and demo flows applied to database gw"

echo
echo "Publish: mosquitto_pub -h 127.0.0.1 -p $GW_MQTT_PORT -q 1 -t demo/kitchen/temperature -m '{\"temperature\": 21.5, \"unit\": \"C\"}'"
echo "Rows:    mariadb --no-defaults -h127.0.0.1 -P$GW_DB_PORT -ugw -p$GW_TEST_DB_PASSWORD gw -e 'SELECT * FROM data_records ORDER BY id DESC LIMIT 10'"
echo "Table:   mariadb --no-defaults -h127.0.0.1 -P$GW_DB_PORT -ugw -p$GW_TEST_DB_PASSWORD gw -e 'SELECT * FROM demo_room_latest'  (STORE_TABLE flow demo-room-latest: one row per room)"
echo "Stop:    Ctrl-C (stops the gateway, then MariaDB and mosquitto; their data stays in .run/local)"
echo

# In the background, not exec'd: this shell forwards SIGINT/SIGTERM and stops the services after.
"$GATEWAY" --env-file "$ENV_FILE" &
gateway_pid=$!
# shellcheck disable=SC2317  # called by the INT/TERM traps
forward() { kill "-$1" "$gateway_pid" 2>/dev/null || true; }
trap 'forward INT' INT
trap 'forward TERM' TERM
rc=0
while :; do
  # wait returns early (status > 128) when a trapped signal arrives; then wait again.
  if wait "$gateway_pid"; then rc=0; else rc=$?; fi
  kill -0 "$gateway_pid" 2>/dev/null || break
done
gateway_pid=""
say "gateway exited with status $rc"
exit "$rc"
