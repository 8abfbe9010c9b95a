#!/usr/bin/env bash
# Throwaway MariaDB and mosquitto for development and tests, as root, on loopback only, with all their
# state (data, logs, TLS files) in one run directory.
#
#   services.sh start|stop|status|stop-db|start-db|restart-mqtt|stop-mqtt|start-mqtt
#
#   GW_RUN_DIR        run directory (default: $GW_TEST_RUN_DIR when set, so tests that were handed
#                     services.env can call this script as is; else <repo>/.run)
#   GW_DB_PORT        MariaDB TCP port          (default: the one this run dir used last, else 3307)
#   GW_MQTT_PORT      mosquitto plain listener  (default: ditto, else 1884)
#   GW_MQTT_TLS_PORT  mosquitto TLS listener    (default: ditto, else 8884)
#   GW_MQTT_CERT_PORT mosquitto TLS listener that requires a client certificate signed by the test
#                     CA, the certificate's CN as user name (default: ditto, else 8885)
#
# `start` reuses an existing run dir (data, sessions, certificates) and writes services.env there:
# KEY=value lines for the tests (GW_TEST_*). Every action runs in bounded time and prints one line.
# mosquitto 2.0 speaks MQTT 3.1.1 and 5 on every listener.
set -euo pipefail

PATH="${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin"
# The MariaDB clients read these; a caller's MYSQL_PWD would break the root login over the socket.
unset MYSQL_PWD MYSQL_HOST MYSQL_TCP_PORT MYSQL_UNIX_PORT
SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_DIR="$(dirname "$(dirname "$SCRIPT_PATH")")"

readonly DB_NAME=gw DB_USER=gw DB_PASSWORD=gwpass
readonly DB_START_TIMEOUT=60 DB_STOP_TIMEOUT=60 MQ_START_TIMEOUT=15 MQ_STOP_TIMEOUT=15 KILL_TIMEOUT=5

say() { printf 'services: %s\n' "$*"; }
die() {
  printf 'services: ERROR: %s\n' "$*" >&2
  exit 1
}
# Prints the end of a log to stderr, to explain a failure.
show_tail() {
  if [[ -f $1 ]]; then
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n 25 "$1" >&2
  fi
}

usage() {
  sed -n '2,17p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[[ $# -eq 1 ]] || usage
ACTION="$1"
case "$ACTION" in
  start | stop | status | stop-db | start-db | restart-mqtt | stop-mqtt | start-mqtt) ;;
  *) usage ;;
esac
[[ $EUID -eq 0 ]] || die "run as root (mariadbd and mosquitto are started with user=root)"

RUN_DIR="${GW_RUN_DIR:-${GW_TEST_RUN_DIR:-$REPO_DIR/.run}}"
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd -P)"
ENV_FILE="$RUN_DIR/services.env"

DB_DIR="$RUN_DIR/mariadb"
DB_CNF="$DB_DIR/my.cnf"
DB_DATA="$DB_DIR/data"
DB_PIDFILE="$DB_DIR/server.pid"
DB_LOG="$DB_DIR/error.log"
DB_SOCK="$DB_DIR/mysqld.sock"
# A Unix socket path has at most 107 bytes; a deep checkout must not break the server.
if ((${#DB_SOCK} > 100)); then
  DB_SOCK="/tmp/gw-mariadb-$(printf '%s' "$RUN_DIR" | md5sum | cut -c1-12).sock"
fi

MQ_DIR="$RUN_DIR/mosquitto"
MQ_CONF="$MQ_DIR/mosquitto.conf"
MQ_DATA="$MQ_DIR/data/"
MQ_PIDFILE="$MQ_DIR/server.pid"
MQ_LOG="$MQ_DIR/mosquitto.log"

TLS_DIR="$RUN_DIR/tls"
CA_FILE="$TLS_DIR/ca.pem"
WRONG_CA_FILE="$TLS_DIR/wrong-ca.pem"
# Client certificates: signed by the test CA (plain and encrypted key), and by the wrong CA.
CLIENT_CERT="$TLS_DIR/client.pem"
CLIENT_KEY="$TLS_DIR/client.key"
CLIENT_KEY_ENCRYPTED="$TLS_DIR/client-encrypted.key"
CLIENT_KEY_PASSWORD_FILE="$TLS_DIR/client-key.password"
WRONG_CLIENT_CERT="$TLS_DIR/wrong-client.pem"
WRONG_CLIENT_KEY="$TLS_DIR/wrong-client.key"

# A value this run dir's services.env recorded, or nothing.
saved() {
  if [[ -f $ENV_FILE ]]; then sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1; fi
}
port_setting() { # env-value saved-key default
  local port="${1:-$(saved "$2")}"
  port="${port:-$3}"
  if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then die "bad port '$port' for $2"; fi
  printf '%s' "$port"
}
DB_PORT="$(port_setting "${GW_DB_PORT:-}" GW_TEST_DB_PORT 3307)"
MQTT_PORT="$(port_setting "${GW_MQTT_PORT:-}" GW_TEST_MQTT_PORT 1884)"
MQTT_TLS_PORT="$(port_setting "${GW_MQTT_TLS_PORT:-}" GW_TEST_MQTT_TLS_PORT 8884)"
MQTT_CERT_PORT="$(port_setting "${GW_MQTT_CERT_PORT:-}" GW_TEST_MQTT_CERT_PORT 8885)"

# One action at a time per run dir (tests restart services while others may query status).
# fd 9 is closed for the servers below, or they would hold the lock forever.
exec 9>"$RUN_DIR/.lock"
flock -w 120 9 || die "another services.sh holds $RUN_DIR/.lock for more than 120 s"

# True when the pid in $1 is alive and is our server: its command line names our config file $2
# (guards against a recycled pid; a zombie has an empty command line).
pid_alive() {
  local pid
  [[ -s $1 ]] || return 1
  pid="$(<"$1")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}
db_running() { pid_alive "$DB_PIDFILE" "$DB_CNF"; }
mq_running() { pid_alive "$MQ_PIDFILE" "$MQ_CONF"; }

port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Stops the server whose pid is in $2 (name $1, config $3): SIGTERM, wait up to $4 s, then SIGKILL.
# Sets STOP_RESULT to a few words for the one-line report.
stop_server() {
  local name="$1" pidfile="$2" conf="$3" limit="$4" pid deadline
  if ! pid_alive "$pidfile" "$conf"; then
    rm -f "$pidfile"
    STOP_RESULT="$name was not running"
    return 0
  fi
  pid="$(<"$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + limit))
  while pid_alive "$pidfile" "$conf" && ((SECONDS < deadline)); do sleep 0.1; done
  if pid_alive "$pidfile" "$conf"; then
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + KILL_TIMEOUT))
    while pid_alive "$pidfile" "$conf" && ((SECONDS < deadline)); do sleep 0.1; done
    pid_alive "$pidfile" "$conf" && die "$name (pid $pid) survived SIGKILL"
    STOP_RESULT="$name killed (pid $pid did not stop within ${limit}s)"
  else
    STOP_RESULT="$name stopped (pid $pid)"
  fi
  rm -f "$pidfile"
}

# ---------------------------------------------------------------------------------------------- MariaDB

write_db_cnf() {
  mkdir -p "$DB_DIR"
  # --defaults-file must come first on every command line: otherwise /etc/mysql/my.cnf leaks in.
  cat >"$DB_CNF" <<EOF
[mariadbd]
user=root
datadir=$DB_DATA
socket=$DB_SOCK
pid-file=$DB_DIR/mariadbd.pid
port=$DB_PORT
bind-address=127.0.0.1
skip-name-resolve
log-error=$DB_LOG
character-set-server=utf8mb4
collation-server=utf8mb4_unicode_ci
# TLS with the test CA's server certificate (SANs 127.0.0.1 and localhost), so that tests can use
# DB_SSL_MODE=verify-identity and require_secure_transport; plain TCP stays allowed unless a test
# turns that on.
ssl-ca=$CA_FILE
ssl-cert=$TLS_DIR/server.pem
ssl-key=$TLS_DIR/server.key
EOF
}

db_admin() {
  timeout 10 mariadb-admin --no-defaults --socket="$DB_SOCK" -uroot --connect-timeout=2 "$@"
}
db_root_sql() { # reads SQL on stdin
  timeout 30 mariadb --no-defaults --socket="$DB_SOCK" -uroot --connect-timeout=5
}

# Sets DB_RESULT.
start_db() {
  if db_running; then
    DB_RESULT="mariadb already running (pid $(<"$DB_PIDFILE"), 127.0.0.1:$DB_PORT)"
    return 0
  fi
  ensure_tls
  write_db_cnf
  local fresh=""
  if [[ ! -d $DB_DATA/mysql ]]; then
    rm -rf "$DB_DATA"
    if ! timeout 180 mariadb-install-db --defaults-file="$DB_CNF" --auth-root-authentication-method=normal \
      --skip-test-db >"$DB_DIR/install.log" 2>&1; then
      show_tail "$DB_DIR/install.log"
      rm -rf "$DB_DATA"
      die "mariadb-install-db failed"
    fi
    fresh=", new datadir"
  fi
  port_in_use "$DB_PORT" && die "127.0.0.1:$DB_PORT is already in use (another instance? set GW_DB_PORT)"
  rm -f "$DB_SOCK"
  # setsid: a Ctrl-C in the terminal that started us must not reach the server; only `stop` ends it.
  setsid mariadbd --defaults-file="$DB_CNF" </dev/null >>"$DB_DIR/stdout.log" 2>&1 9>&- &
  echo $! >"$DB_PIDFILE"
  local deadline=$((SECONDS + DB_START_TIMEOUT))
  # `mariadb-admin ping` succeeds even on "Access denied"; `status` does not.
  until db_admin status >/dev/null 2>&1; do
    if ! db_running; then
      show_tail "$DB_LOG"
      die "mariadbd exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      show_tail "$DB_LOG"
      die "mariadbd not ready after ${DB_START_TIMEOUT}s"
    fi
    sleep 0.1
  done
  # Idempotent. `gw%` lets the tests create and drop their own gw_test_* databases.
  db_root_sql <<SQL || die "creating database $DB_NAME / user $DB_USER failed"
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON \`gw%\`.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`gw%\`.* TO '$DB_USER'@'localhost';
SQL
  # What the gateway and the tests do: TCP, user gw (MYSQL_PWD keeps the password out of ps).
  MYSQL_PWD="$DB_PASSWORD" timeout 15 mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$DB_PORT" \
    -u"$DB_USER" --connect-timeout=5 -e 'SELECT 1' "$DB_NAME" >/dev/null ||
    die "mariadb is up but $DB_USER cannot log in over 127.0.0.1:$DB_PORT"
  DB_RESULT="mariadb started (pid $(<"$DB_PIDFILE"), 127.0.0.1:$DB_PORT, TLS$fresh)"
}

stop_db() {
  stop_server mariadb "$DB_PIDFILE" "$DB_CNF" "$DB_STOP_TIMEOUT"
  DB_RESULT="$STOP_RESULT"
}

# -------------------------------------------------------------------------------------------- mosquitto

# A test CA with a server certificate for 127.0.0.1 and localhost (used by mosquitto and MariaDB),
# and an unrelated "wrong" CA for negative tests. Generated once per run dir.
ensure_tls() {
  if [[ -s $CA_FILE && -s $WRONG_CA_FILE && -s $TLS_DIR/server.pem && -s $TLS_DIR/server.key ]]; then
    return 0
  fi
  mkdir -p "$TLS_DIR"
  local log="$TLS_DIR/openssl.log"
  (
    umask 077
    cd "$TLS_DIR"
    ca_cert() { # key cert common-name
      openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=$3" \
        -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' \
        -keyout "$1" -out "$2"
    }
    ca_cert ca.key ca.pem "mqtt-gateway test CA"
    ca_cert wrong-ca.key wrong-ca.pem "mqtt-gateway wrong CA"
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
    cat >server.ext <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EOF
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
      -days 3650 -sha256 -extfile server.ext -out server.pem
    openssl verify -CAfile ca.pem server.pem
    chmod 644 ca.pem wrong-ca.pem server.pem
  ) >"$log" 2>&1 || {
    show_tail "$log"
    die "generating the test certificates failed"
  }
}

# Client certificates for the listener that requires one: CN mqtt-gateway-test-client signed by
# the test CA (its key also encrypted, the password in a file), and one signed by the wrong CA.
# Generated once per run dir, from the CAs above.
ensure_client_certs() {
  local f missing=""
  for f in "$CLIENT_CERT" "$CLIENT_KEY" "$CLIENT_KEY_ENCRYPTED" "$CLIENT_KEY_PASSWORD_FILE" \
    "$WRONG_CLIENT_CERT" "$WRONG_CLIENT_KEY"; do
    [[ -s $f ]] || missing=1
  done
  [[ -n $missing ]] || return 0
  local log="$TLS_DIR/openssl-client.log"
  (
    umask 077
    cd "$TLS_DIR"
    printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
      'extendedKeyUsage=clientAuth' >client.ext
    client_cert() { # ca-prefix key cert common-name
      openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$4" -keyout "$2" -out "$3.csr"
      openssl x509 -req -in "$3.csr" -CA "$1.pem" -CAkey "$1.key" \
        -set_serial "0x$(openssl rand -hex 8)" -days 3650 -sha256 -extfile client.ext -out "$3"
      openssl verify -CAfile "$1.pem" "$3"
    }
    client_cert ca client.key client.pem mqtt-gateway-test-client
    client_cert wrong-ca wrong-client.key wrong-client.pem mqtt-gateway-wrong-client
    openssl rand -hex 16 >client-key.password
    openssl pkey -in client.key -aes256 -passout file:client-key.password -out client-encrypted.key
    # Readable by tests that run as another user: throwaway credentials of a throwaway CA.
    chmod 644 client.pem client.key client-encrypted.key client-key.password wrong-client.pem \
      wrong-client.key
  ) >"$log" 2>&1 || {
    show_tail "$log"
    die "generating the test client certificates failed"
  }
}

write_mq_conf() {
  mkdir -p "$MQ_DIR" "$MQ_DATA"
  cat >"$MQ_CONF" <<EOF
# Generated by scripts/services.sh; rewritten on every start.
per_listener_settings false
allow_anonymous true
# Started as root, mosquitto would otherwise switch to user mosquitto and lose access to the run dir.
user root
# Persistent so that a restart keeps clean_session=false sessions and their queued messages.
persistence true
persistence_location $MQ_DATA
autosave_interval 60
# A slow or blocked gateway must make the broker queue, never drop (the default is 1000 messages).
max_queued_messages 1000000
max_queued_bytes 0
log_dest file $MQ_LOG
log_type error
log_type warning
log_type notice
log_type information
log_timestamp_format %Y-%m-%dT%H:%M:%S

listener $MQTT_PORT 127.0.0.1

listener $MQTT_TLS_PORT 127.0.0.1
cafile $CA_FILE
certfile $TLS_DIR/server.pem
keyfile $TLS_DIR/server.key

# Certificate only: without a client certificate signed by the test CA, no connection.
listener $MQTT_CERT_PORT 127.0.0.1
cafile $CA_FILE
certfile $TLS_DIR/server.pem
keyfile $TLS_DIR/server.key
require_certificate true
use_identity_as_username true
EOF
}

# True once every listener answers (reading the retained $SYS version topic publishes nothing).
readonly SYS_VERSION_TOPIC="\$SYS/broker/version"
mq_ready() {
  timeout 3 mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -t "$SYS_VERSION_TOPIC" -C 1 -W 2 \
    >/dev/null 2>&1 &&
    timeout 3 mosquitto_sub -h 127.0.0.1 -p "$MQTT_TLS_PORT" --cafile "$CA_FILE" \
      -t "$SYS_VERSION_TOPIC" -C 1 -W 2 >/dev/null 2>&1 &&
    timeout 3 mosquitto_sub -h 127.0.0.1 -p "$MQTT_CERT_PORT" --cafile "$CA_FILE" \
      --cert "$CLIENT_CERT" --key "$CLIENT_KEY" -t "$SYS_VERSION_TOPIC" -C 1 -W 2 >/dev/null 2>&1
}

mq_ports() {
  printf '127.0.0.1:%s, TLS %s, client certificate %s' "$MQTT_PORT" "$MQTT_TLS_PORT" "$MQTT_CERT_PORT"
}

# Sets MQ_RESULT.
start_mqtt() {
  if mq_running; then
    MQ_RESULT="mosquitto already running (pid $(<"$MQ_PIDFILE"), $(mq_ports))"
    return 0
  fi
  ensure_tls
  ensure_client_certs
  write_mq_conf
  local port
  for port in "$MQTT_PORT" "$MQTT_TLS_PORT" "$MQTT_CERT_PORT"; do
    port_in_use "$port" && die "127.0.0.1:$port is already in use (another instance? set GW_MQTT_PORT/GW_MQTT_TLS_PORT/GW_MQTT_CERT_PORT)"
  done
  setsid mosquitto -c "$MQ_CONF" </dev/null >>"$MQ_DIR/stdout.log" 2>&1 9>&- &
  echo $! >"$MQ_PIDFILE"
  local deadline=$((SECONDS + MQ_START_TIMEOUT))
  until mq_ready; do
    if ! mq_running; then
      show_tail "$MQ_DIR/stdout.log"
      show_tail "$MQ_LOG"
      die "mosquitto exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      show_tail "$MQ_LOG"
      die "mosquitto not ready after ${MQ_START_TIMEOUT}s"
    fi
    sleep 0.1
  done
  MQ_RESULT="mosquitto started (pid $(<"$MQ_PIDFILE"), $(mq_ports))"
}

stop_mqtt() {
  # SIGTERM makes mosquitto write its persistence file before it exits.
  stop_server mosquitto "$MQ_PIDFILE" "$MQ_CONF" "$MQ_STOP_TIMEOUT"
  MQ_RESULT="$STOP_RESULT"
}

# ------------------------------------------------------------------------------------------ services.env

write_env() {
  local tmp="$ENV_FILE.tmp"
  {
    printf '# Written by %s start; sourceable.\n' "$SCRIPT_PATH"
    local kv
    for kv in \
      "GW_TEST_DB_HOST=127.0.0.1" \
      "GW_TEST_DB_PORT=$DB_PORT" \
      "GW_TEST_DB_USER=$DB_USER" \
      "GW_TEST_DB_PASSWORD=$DB_PASSWORD" \
      "GW_TEST_DB_NAME=$DB_NAME" \
      "GW_TEST_DB_SOCKET=$DB_SOCK" \
      "GW_TEST_DB_SSL_CA=$CA_FILE" \
      "GW_TEST_MQTT_HOST=127.0.0.1" \
      "GW_TEST_MQTT_PORT=$MQTT_PORT" \
      "GW_TEST_MQTT_TLS_PORT=$MQTT_TLS_PORT" \
      "GW_TEST_MQTT_CA_FILE=$CA_FILE" \
      "GW_TEST_MQTT_WRONG_CA_FILE=$WRONG_CA_FILE" \
      "GW_TEST_MQTT_CERT_PORT=$MQTT_CERT_PORT" \
      "GW_TEST_MQTT_CLIENT_CERT=$CLIENT_CERT" \
      "GW_TEST_MQTT_CLIENT_KEY=$CLIENT_KEY" \
      "GW_TEST_MQTT_CLIENT_KEY_ENCRYPTED=$CLIENT_KEY_ENCRYPTED" \
      "GW_TEST_MQTT_CLIENT_KEY_PASSWORD_FILE=$CLIENT_KEY_PASSWORD_FILE" \
      "GW_TEST_MQTT_WRONG_CLIENT_CERT=$WRONG_CLIENT_CERT" \
      "GW_TEST_MQTT_WRONG_CLIENT_KEY=$WRONG_CLIENT_KEY" \
      "GW_TEST_RUN_DIR=$RUN_DIR" \
      "GW_SERVICES_SCRIPT=$SCRIPT_PATH"; do
      printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
  } >"$tmp"
  chmod 600 "$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

# --------------------------------------------------------------------------------------------- actions

case "$ACTION" in
  start)
    start_mqtt
    start_db
    write_env
    say "$DB_RESULT; $MQ_RESULT; env in $ENV_FILE"
    ;;
  stop)
    stop_db
    stop_mqtt
    say "$DB_RESULT; $MQ_RESULT"
    ;;
  status)
    rc=0
    if db_running; then
      db="mariadb running (pid $(<"$DB_PIDFILE"), 127.0.0.1:$DB_PORT)"
    else
      db="mariadb stopped"
      rc=1
    fi
    if mq_running; then
      mq="mosquitto running (pid $(<"$MQ_PIDFILE"), $(mq_ports))"
    else
      mq="mosquitto stopped"
      rc=1
    fi
    say "$db; $mq; run dir $RUN_DIR"
    exit "$rc"
    ;;
  stop-db)
    stop_db
    say "$DB_RESULT"
    ;;
  start-db)
    start_db
    write_env
    say "$DB_RESULT"
    ;;
  stop-mqtt)
    stop_mqtt
    say "$MQ_RESULT"
    ;;
  start-mqtt)
    start_mqtt
    write_env
    say "$MQ_RESULT"
    ;;
  restart-mqtt)
    stop_mqtt
    first="$MQ_RESULT"
    start_mqtt
    write_env
    say "$first, then $MQ_RESULT"
    ;;
esac
