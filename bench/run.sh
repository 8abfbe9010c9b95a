#!/usr/bin/env bash
# The gateway benchmark (issue 4). Builds Release into build-bench/, starts its own MariaDB and
# mosquitto (run dir .run/bench, ports 3347/1924/8924, the broker queues up to 1,000,000 messages
# per client), and measures, in one invocation:
#
#   1 ceiling           a do-nothing Paho QoS 1 subscriber, live burst of N
#   2 baseline          the gateway with MAX_BATCH=1 DB_POOL_SIZE=1 (one transaction per
#                       message, like the reference), live burst of BENCH_BASELINE_COUNT
#   3 gateway           the gateway as configured (defaults), live burst of N (+ its idle CPU)
#   4 ceiling-backlog   N queued by the broker for a persistent session, drained by the
#     gateway-backlog   do-nothing subscriber, then by the gateway (each from its connect)
#     dbceiling         the database ceiling (issue 11): the same rows for N messages inserted by
#                       `gw-bench dbceiling`, a plain client (1 connection, BENCH_DB_BATCH
#                       messages per transaction, 4,096-row INSERTs); the backlog drain's bound
#                       is min(ceiling-backlog, dbceiling)
#   table               STORE_TABLE (issue 13): the gateway's burst of N into one 6-column table
#   table-backlog       (one row per message, columns mapped from the payload, the topic and
#                       $msg_id), and its drain of N queued by the broker
#   5 gateway-1k/s      the gateway at a fixed 1,000 msg/s for BENCH_PACED_SECONDS: latency
#   steady-*            1,000 and 5,000 msg/s, batch linger off and default (issue 16)
#   flows-*             a burst over 1, 100 and 1,000 flows (issue 17; BENCH_CASES=manyflows),
#                       with transactions per second from the gateway's /metrics
#   startup-*           start-up and reload of one changed flow with 1 and BENCH_START_FLOWS
#                       flows on many/<i>/+ (issue 17; part of manyflows): times from the log
#                       lines, VmRSS, memory per flow
#   6 post-baseline     POST_ENDPOINT (issue 5): BENCH_POST_COUNT messages to one flow whose
#     post-outbox       endpoint is `gw-bench sink` on 127.0.0.1; the baseline POSTs inline
#                       (HTTP_DELIVERY=inline MAX_BATCH=1 DB_POOL_SIZE=1), the other case runs
#                       the defaults (outbox). post-outbox-backlog: the outbox draining N queued
#                       by the broker. post-*-4: the same as the first two with 4 flows, one
#                       endpoint each. post-ceiling: `gw-bench postceiling`, N POSTs like the
#                       gateway's on one kept-alive connection, nothing else (the POST bound).
#
# and prints the tables (bench/README.md explains the columns). Every case has its own database,
# topic prefix and client id. Runs as root (services.sh needs it); bounded in time; stops what it
# started on exit.
#
#   BENCH_CASES="all"   which cases, any of: ceiling baseline gateway backlog dbceiling table
#                       paced steady manyflows startup post1 post4; "store" = ceiling ... steady
#                       (STORE_DB and STORE_TABLE), "post" = post1 post4, "all" = both; backlog
#                       brings dbceiling, manyflows brings startup
#   BENCH_STEADY_SECONDS=20  (steady: 1k and 5k msg/s, linger off and default; DB us/msg column)
#   BENCH_MANY_COUNT=20000   (manyflows: one burst over 1, 100 and 1,000 flows; not in "all")
#   BENCH_DB_BATCH=5000      (dbceiling: messages per transaction)
#   BENCH_START_FLOWS=5000   (startup: the large case; the small one has 1 flow)
#   BENCH_METRICS_PORT=18348 (the gateway's METRICS_ADDRESS in the manyflows cases)
#   BENCH_COUNT=100000  BENCH_BASELINE_COUNT=10000  BENCH_PACED_SECONDS=10  BENCH_FLOWS=1
#   BENCH_POST_COUNT=20000  BENCH_SINK_PORT=18347
#   BENCH_KEEP_SERVICES=1   leave MariaDB and mosquitto running afterwards
#   BENCH_SKIP_BUILD=1      use build-bench/ as it is
set -euo pipefail

REPO="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
BUILD="$REPO/build-bench"
RUN="$REPO/.run/bench"
N="${BENCH_COUNT:-100000}"
NB="${BENCH_BASELINE_COUNT:-10000}"
PACED_SECONDS="${BENCH_PACED_SECONDS:-10}"
STEADY_SECONDS="${BENCH_STEADY_SECONDS:-20}"
MANY="${BENCH_MANY_COUNT:-20000}"
DB_BATCH="${BENCH_DB_BATCH:-5000}"
START_FLOWS="${BENCH_START_FLOWS:-5000}"
METRICS_PORT="${BENCH_METRICS_PORT:-18348}"
FLOWS="${BENCH_FLOWS:-1}"
NP="${BENCH_POST_COUNT:-20000}"
SINK_PORT="${BENCH_SINK_PORT:-18347}"
CASES=" ${BENCH_CASES:-all} "
CASES="${CASES//,/ }"
CASES="${CASES// all / store post }"
CASES="${CASES// store / ceiling baseline gateway backlog table paced steady }"
CASES="${CASES// post / post1 post4 }"
CASES="${CASES// backlog / backlog dbceiling }"
CASES="${CASES// manyflows / manyflows startup }"
UNIQUE=" "
for c in $CASES; do [[ $UNIQUE == *" $c "* ]] || UNIQUE+="$c "; done
CASES="$UNIQUE"
export GW_RUN_DIR="$RUN" GW_DB_PORT=3347 GW_MQTT_PORT=1924 GW_MQTT_TLS_PORT=8924 GW_MQTT_CERT_PORT=8925
DB_PORT=$GW_DB_PORT MQTT_PORT=$GW_MQTT_PORT
export MYSQL_PWD=gwpass # services.sh's throwaway user gw; gw-bench collect reads it too
ID="$(date +%s)"        # keeps topics and client ids apart from earlier runs
RESULTS="$RUN/results-$ID.jsonl"
BENCH="$BUILD/gw-bench"
GATEWAY="$BUILD/mqtt-gateway"

say() { printf '\n== %s\n' "$*" >&2; }
die() {
  printf 'bench: ERROR: %s\n' "$*" >&2
  exit 1
}

for c in $CASES; do
  case $c in
    ceiling | baseline | gateway | backlog | dbceiling | table | paced | steady | manyflows | startup | post1 | post4) ;;
    *) die "BENCH_CASES: unknown case '$c' (ceiling baseline gateway backlog dbceiling table paced steady manyflows startup post1 post4 store post all)" ;;
  esac
done
want() { [[ $CASES == *" $1 "* ]]; }

GW_PID=""
cleanup() {
  if [[ -n $GW_PID ]] && kill -0 "$GW_PID" 2>/dev/null; then kill -KILL "$GW_PID" 2>/dev/null || true; fi
  jobs -p | while read -r pid; do kill "$pid" 2>/dev/null || true; done
  if [[ -z ${BENCH_KEEP_SERVICES:-} ]]; then bash "$REPO/scripts/services.sh" stop >&2 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------- set-up

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  say "building Release into $BUILD"
  cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGATEWAY_BUILD_TESTS=OFF >/dev/null
  cmake --build "$BUILD" -j2 --target mqtt-gateway gw-bench >/dev/null
fi
[[ -x $BENCH && -x $GATEWAY ]] || die "$BENCH or $GATEWAY missing (build failed?)"

# Queued messages of an earlier, interrupted run would slow the broker down; sessions are per run.
bash "$REPO/scripts/services.sh" stop >/dev/null 2>&1 || true
rm -rf "$RUN/mosquitto/data" "$RUN"/cases
bash "$REPO/scripts/services.sh" start >&2
mkdir -p "$RUN/cases"

sql() { timeout 60 mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$DB_PORT" -ugw "$@"; }

# Waits (bounded) until file $1 exists.
wait_file() {
  local deadline=$((SECONDS + ${2:-20}))
  until [[ -e $1 ]]; do
    ((SECONDS < deadline)) || die "timed out waiting for $1"
    sleep 0.05
  done
}

# new_case NAME [KEY=VALUE...]: a fresh database gw_bench_NAME with the schema, the broker and
# K flows on bench/ID/NAME/1..K (on many/1..K/+ if FLOW_TOPICS=many), and the gateway's env file.
# K is POST_FLOWS if set (POST_ENDPOINT flows, flow k posting to the sink's /flow/k), else
# BENCH_FLOWS STORE_DB flows, or STORE_TABLE flows into table bench_rows if TABLE_FLOWS=1. Sets
# CASE_DIR, CASE_DB, CASE_PREFIX, CASE_FLOWS.
POST_FLOWS=""
FLOW_TOPICS=""
TABLE_FLOWS=""
# STORE_TABLE's table: 6 mapped columns (BENCH_TABLE_MAP), the id and created_at by default.
BENCH_TABLE_SQL="CREATE TABLE bench_rows (id BIGINT AUTO_INCREMENT PRIMARY KEY, seq BIGINT NOT NULL,
  sent_us BIGINT NOT NULL, temperature DOUBLE NULL, humidity DOUBLE NULL, topic VARCHAR(255) NOT NULL,
  msg_id BIGINT NOT NULL, created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
BENCH_TABLE_MAP='{"seq": "/seq", "sent_us": "/sent_us", "temperature": "/temperature", "humidity": "/humidity", "topic": "$topic", "msg_id": "$msg_id"}'
new_case() {
  local name="$1"
  shift
  CASE_FLOWS="${POST_FLOWS:-$FLOWS}"
  CASE_DIR="$RUN/cases/$name"
  CASE_DB="gw_bench_${name//-/_}"
  CASE_PREFIX="bench/$ID/$name"
  mkdir -p "$CASE_DIR"
  {
    # Clear text, as `gw-bench dbceiling` and `collect` connect: the cases compare like with like
    # (DB_SSL_MODE=preferred would encrypt, since services.sh's MariaDB offers TLS).
    printf '%s\n' DB_HOST=127.0.0.1 "DB_PORT=$DB_PORT" "DB_NAME=$CASE_DB" DB_USER=gw "DB_PASSWORD=$MYSQL_PWD"
    printf '%s\n' DB_SSL_MODE=disabled
    printf '%s\n' "MQTT_CLIENT_ID=gw-bench-$ID-$name" "LOG_DIR=$CASE_DIR/log" "SPOOL_DIR=$CASE_DIR/spool"
    # info, not warn: "ready" is logged at info; nothing is logged per message at info.
    printf '%s\n' LOG_LEVEL=info "$@"
  } >"$CASE_DIR/gateway.env"
  sql -e "DROP DATABASE IF EXISTS $CASE_DB; CREATE DATABASE $CASE_DB"
  "$GATEWAY" --env-file "$CASE_DIR/gateway.env" --init-db >/dev/null
  local k topic values=""
  for ((k = 1; k <= CASE_FLOWS; k++)); do
    topic="$CASE_PREFIX/$k"
    [[ $FLOW_TOPICS == many ]] && topic="many/$k/+"
    if [[ -n $POST_FLOWS ]]; then
      values+="${values:+,}('f$k', '$topic', 'POST_ENDPOINT', 'http://127.0.0.1:$SINK_PORT/flow/$k', NULL, NULL, "
    elif [[ -n $TABLE_FLOWS ]]; then
      values+="${values:+,}('f$k', '$topic', 'STORE_TABLE', NULL, 'bench_rows', '$BENCH_TABLE_MAP', "
    else
      values+="${values:+,}('f$k', '$topic', 'STORE_DB', NULL, NULL, NULL, "
    fi
    values+="'{\"seq\": \"int\", \"sent_us\": \"int\", \"temperature\": \"number\", \"humidity\": \"number\"}')"
  done
  # On stdin: with thousands of flows the statement is longer than one argument may be.
  sql "$CASE_DB" <<<"INSERT INTO mqtt_servers (name, host, port, is_default) VALUES ('bench', '127.0.0.1', $MQTT_PORT, 1);
    ${TABLE_FLOWS:+$BENCH_TABLE_SQL;}
    INSERT INTO flows (code, topic, action, endpoint_url, target_table, column_map, payload_schema) VALUES $values;"
}

# Starts the gateway of the current case in the background (GW_PID, its output in GW_OUT) and
# waits until it is ready.
GW_OUT=""
start_gateway() {
  local runs
  runs=$(find "$CASE_DIR" -maxdepth 1 -name 'gateway.*.out' | wc -l)
  local out="$CASE_DIR/gateway.$runs.out"
  GW_OUT="$out"
  : >"$out"
  local t0
  t0=$(date +%s%6N)
  "$GATEWAY" --env-file "$CASE_DIR/gateway.env" >"$out" 2>&1 &
  GW_PID=$!
  echo "$GW_PID $t0" >"$CASE_DIR/gateway.launched" # "PID START_US", for gw-bench sink --gateway-file
  local deadline=$((SECONDS + 30))
  until grep -q '\] ready$' "$out"; do
    kill -0 "$GW_PID" 2>/dev/null || {
      tail -n 20 "$out" >&2
      die "the gateway exited during start-up"
    }
    ((SECONDS < deadline)) || die "the gateway was not ready after 30 s (see $out)"
    sleep 0.05
  done
}

# SIGTERM, then wait up to 40 s (SHUTDOWN_TIMEOUT_SECONDS is 30) before SIGKILL.
stop_gateway() {
  kill -TERM "$GW_PID" 2>/dev/null || true
  local deadline=$((SECONDS + 40))
  while kill -0 "$GW_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$GW_PID" 2>/dev/null; then
    printf 'bench: the gateway did not stop in 40 s; killed\n' >&2
    kill -KILL "$GW_PID" 2>/dev/null || true
  fi
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=""
}

publish() { # COUNT [extra gw-bench publish options]
  local count="$1"
  shift
  timeout 600 "$BENCH" publish --port "$MQTT_PORT" --topic-prefix "$CASE_PREFIX" --flows "$CASE_FLOWS" \
    --count "$count" "$@"
}

collect() { # CASE KIND MODE COUNT [extra gw-bench collect options]; result appended to RESULTS
  timeout 900 "$BENCH" collect --db-port "$DB_PORT" --db "$CASE_DB" --pid "$GW_PID" \
    --db-pid "$(<"$RUN/mariadb/server.pid")" \
    --case "$1" --kind "$2" --mode "$3" --count "$4" "${@:5}" >>"$RESULTS"
}

# A live burst against a running gateway: collect watches while publish runs.
gateway_burst() { # CASE KIND COUNT [extra gw-bench collect options]
  rm -f "$CASE_DIR/collect.ready"
  collect "$1" "$2" burst "$3" --ready-file "$CASE_DIR/collect.ready" "${@:4}" &
  local collector=$!
  wait_file "$CASE_DIR/collect.ready"
  publish "$3"
  wait "$collector"
}

# The machine's busy cores over 2 s while no client of ours runs, less MariaDB's and mosquitto's
# own: other people's load on the box.
foreign_load() {
  timeout 30 "$BENCH" idle --seconds 2 --case "$1" --exclude-pid "$(<"$RUN/mariadb/server.pid")" \
    --exclude-pid "$(<"$RUN/mosquitto/server.pid")" >>"$RESULTS"
}

# A backlog drain: N queued by the broker for the gateway's persistent session while it was
# stopped, measured from the gateway's launch (start-up included).
gateway_backlog() { # CASE KIND [extra gw-bench collect options]
  foreign_load "$1"
  new_case "$1"
  start_gateway # creates the persistent session and its subscription
  stop_gateway
  publish "$N"
  local t0
  t0=$(date +%s%6N)
  start_gateway
  collect "$1" "$2" backlog "$N" --t0-us "$t0" --cpu-from-start "${@:3}"
  stop_gateway
}

# ------------------------------------------------------------------------------------------ cases

if want ceiling; then
  say "ceiling: do-nothing QoS 1 subscriber, burst of $N"
  foreign_load ceiling
  new_case ceiling
  timeout 600 "$BENCH" subscribe --port "$MQTT_PORT" --filter "$CASE_PREFIX/#" --client-id "ceil-$ID" \
    --count "$N" --case ceiling --mode burst --ready-file "$CASE_DIR/sub.ready" >>"$RESULTS" &
  SUB=$!
  wait_file "$CASE_DIR/sub.ready"
  publish "$N"
  wait "$SUB"
fi

if want baseline; then
  say "baseline: MAX_BATCH=1 DB_POOL_SIZE=1, burst of $NB"
  foreign_load baseline
  new_case baseline MAX_BATCH=1 DB_POOL_SIZE=1
  start_gateway
  gateway_burst baseline baseline "$NB"
  stop_gateway
fi

if want gateway; then
  say "gateway as configured (defaults), idle 5 s, then a burst of $N"
  foreign_load gateway
  new_case gateway
  start_gateway
  timeout 30 "$BENCH" idle --pid "$GW_PID" --seconds 5 >>"$RESULTS"
  gateway_burst gateway gateway "$N"
  stop_gateway
fi

if want backlog; then
  say "backlog of $N: do-nothing subscriber (persistent session), then the gateway"
  foreign_load ceiling-backlog
  new_case ceiling-backlog
  timeout 30 "$BENCH" subscribe --port "$MQTT_PORT" --filter "$CASE_PREFIX/#" --client-id "ceil-backlog-$ID" \
    --persistent --session-only
  publish "$N"
  timeout 600 "$BENCH" subscribe --port "$MQTT_PORT" --filter "$CASE_PREFIX/#" --client-id "ceil-backlog-$ID" \
    --persistent --from-connect --count "$N" --case ceiling-backlog --mode backlog >>"$RESULTS"

  gateway_backlog gateway-backlog gateway
fi

# The database ceiling (issue 11): the rows gateway-backlog stores (same schema, same topic,
# 4 fields per message), inserted by a plain client, one connection, BENCH_DB_BATCH messages per
# transaction (each also advancing flows.last_msg_id), durable commits as the server is set up.
if want dbceiling; then
  say "database ceiling: the rows of $N messages, $DB_BATCH per transaction, one connection"
  foreign_load dbceiling
  new_case dbceiling
  timeout 600 "$BENCH" dbceiling --db-port "$DB_PORT" --db "$CASE_DB" --count "$N" \
    --batch "$DB_BATCH" --topic "bench/$ID/gateway-backlog/1" \
    --db-pid "$(<"$RUN/mariadb/server.pid")" --case dbceiling --mode backlog >>"$RESULTS"
fi

# STORE_TABLE (issue 13): the gateway's burst and backlog drain of N into one 6-column table.
if want table; then
  say "STORE_TABLE: the gateway's burst of $N into one 6-column table, then a backlog of $N"
  TABLE_FLOWS=1
  foreign_load table
  new_case table
  start_gateway
  gateway_burst table table "$N" --table bench_rows
  stop_gateway
  gateway_backlog table-backlog table --table bench_rows
  TABLE_FLOWS=""
fi

if want paced; then
  say "latency: the gateway at 1,000 msg/s for $PACED_SECONDS s"
  foreign_load gateway-paced
  new_case gateway-paced
  start_gateway
  rm -f "$CASE_DIR/collect.ready"
  collect "gateway-1k/s" gateway paced $((1000 * PACED_SECONDS)) --ready-file "$CASE_DIR/collect.ready" &
  COLLECTOR=$!
  wait_file "$CASE_DIR/collect.ready"
  publish $((1000 * PACED_SECONDS)) --rate 1000
  wait "$COLLECTOR"
  stop_gateway
fi

# Steady rates (issue 16): BENCH_STEADY_SECONDS at 1,000 and 5,000 msg/s, with the batch linger
# off (BATCH_LINGER_MS=0) and at its default, same run: gateway and MariaDB CPU per message.
if want steady; then
  for rate in 1000 5000; do
    for linger in 0 default; do
      name="steady-$((rate / 1000))k-linger-$linger"
      say "steady: the gateway at $rate msg/s for $STEADY_SECONDS s, linger $linger"
      foreign_load "$name"
      if [[ $linger == default ]]; then new_case "$name"; else new_case "$name" BATCH_LINGER_MS=0; fi
      start_gateway
      rm -f "$CASE_DIR/collect.ready"
      collect "$name" gateway paced $((rate * STEADY_SECONDS)) --ready-file "$CASE_DIR/collect.ready" &
      COLLECTOR=$!
      wait_file "$CASE_DIR/collect.ready"
      publish $((rate * STEADY_SECONDS)) --rate "$rate"
      wait "$COLLECTOR"
      stop_gateway
    done
  done
fi

# Many flows (issue 17): the same live burst of BENCH_MANY_COUNT messages, round-robin over 1, 100
# and 1,000 STORE_DB flows (flow k on its own topic), same run.
if want manyflows; then
  for nflows in 1 100 1000; do
    say "many flows: $MANY messages over $nflows flow(s)"
    foreign_load "flows-$nflows"
    FLOWS=$nflows new_case "flows-$nflows" "METRICS_ADDRESS=127.0.0.1:$METRICS_PORT"
    start_gateway
    gateway_burst "flows-$nflows" gateway "$MANY" --flows "$nflows" --metrics-port "$METRICS_PORT"
    stop_gateway
  done
fi

# Start-up and reload (issue 17): K STORE_DB flows on many/1..K/+; the gateway's start-up (launch
# -> its log lines up to "ready"), its VmRSS 1 s later, then one flow's topic changed and SIGHUP
# (-> "flows reloaded" and -> "subscribed to" the new filter), and one message on the new filter
# must be stored. Run with 1 flow and BENCH_START_FLOWS: the RSS difference is the memory per
# flow. If the broker logs subscriptions (log_type subscribe / unsubscribe), the filters it saw
# for the reload are counted.
startup_case() { # NAME FLOWS
  local name="$1" nflows="$2"
  foreign_load "$name"
  FLOWS=$nflows FLOW_TOPICS=many new_case "$name"
  start_gateway
  local launched rss
  launched=$(cut -d' ' -f2 "$CASE_DIR/gateway.launched")
  sleep 1
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status")
  local moved="many/1/moved/+" mq_log="$RUN/mosquitto/mosquitto.log" mq_before hup
  sql "$CASE_DB" -e "UPDATE flows SET topic = '$moved' WHERE code = 'f1'"
  mq_before=$(wc -l <"$mq_log")
  hup=$(date +%s%6N)
  kill -HUP "$GW_PID"
  local deadline=$((SECONDS + 30))
  until grep -qF "] subscribed to $moved" "$GW_OUT"; do
    ((SECONDS < deadline)) || {
      printf 'bench: %s: no "subscribed to %s" 30 s after SIGHUP\n' "$name" "$moved" >&2
      break
    }
    sleep 0.05
  done
  local client="gw-bench-$ID-$name" broker_filters=-1
  if grep -qE ": $client [0-2] many/" "$mq_log"; then
    broker_filters=$(tail -n +"$((mq_before + 1))" "$mq_log" | grep -c ": $client " || true)
  fi
  timeout 60 "$BENCH" publish --port "$MQTT_PORT" --topic-prefix "${moved%/+}" --flows 1 --count 1
  local routed=()
  deadline=$((SECONDS + 10))
  while :; do
    if (($(sql -N "$CASE_DB" -e "SELECT last_msg_id FROM flows WHERE code = 'f1'") >= 1)); then
      routed=(--routed)
      break
    fi
    ((SECONDS < deadline)) || break
    sleep 0.1
  done
  timeout 30 "$BENCH" startup --log "$GW_OUT" --launched-us "$launched" --hup-us "$hup" \
    --moved-filter "$moved" --flows "$nflows" --rss-kib "$rss" --broker-filters "$broker_filters" \
    --pid "$GW_PID" --case "$name" "${routed[@]}" >>"$RESULTS"
  stop_gateway
}
if want startup; then
  for nflows in 1 "$START_FLOWS"; do
    say "start-up and reload with $nflows flow(s) on many/<i>/+"
    startup_case "startup-$nflows" "$nflows"
  done
fi

# post_case NAME KIND FLOWS [KEY=VALUE...]: a live burst of BENCH_POST_COUNT messages through
# FLOWS POST_ENDPOINT flows (published round-robin); `gw-bench sink` answers 200 and counts.
# The gateway starts first (the sink measures its CPU); it posts nothing until messages arrive.
post_case() {
  local name="$1" kind="$2"
  POST_FLOWS="$3"
  shift 3
  foreign_load "$name"
  new_case "$name" "$@"
  POST_FLOWS=""
  start_gateway
  rm -f "$CASE_DIR/sink.ready"
  timeout 900 "$BENCH" sink --port "$SINK_PORT" --count "$NP" --pid "$GW_PID" --flows "$CASE_FLOWS" \
    --case "$name" --kind "$kind" --ready-file "$CASE_DIR/sink.ready" "${SERVICE_PIDS[@]}" >>"$RESULTS" &
  local sink=$!
  wait_file "$CASE_DIR/sink.ready"
  publish "$NP"
  wait "$sink"
  stop_gateway
}

# post_backlog_case NAME FLOWS [KEY=VALUE...]: BENCH_POST_COUNT messages queued by the broker
# for the gateway's persistent session, then drained by the gateway from its launch: what it can
# deliver when the publisher does not set the pace.
post_backlog_case() {
  local name="$1"
  POST_FLOWS="$2"
  shift 2
  foreign_load "$name"
  new_case "$name" "$@"
  POST_FLOWS=""
  start_gateway # creates the persistent session and its subscription
  stop_gateway
  publish "$NP"
  rm -f "$CASE_DIR/sink.ready" "$CASE_DIR/gateway.launched"
  timeout 900 "$BENCH" sink --port "$SINK_PORT" --count "$NP" --gateway-file "$CASE_DIR/gateway.launched" \
    --flows "$CASE_FLOWS" --case "$name" --kind post --mode backlog --ready-file "$CASE_DIR/sink.ready" \
    "${SERVICE_PIDS[@]}" >>"$RESULTS" &
  local sink=$!
  wait_file "$CASE_DIR/sink.ready"
  start_gateway
  wait "$sink"
  stop_gateway
}

# post_ceiling_case NAME: the POST ceiling. `gw-bench postceiling` sends BENCH_POST_COUNT POSTs
# like the gateway's, one after the other on one kept-alive connection, to the same sink: what
# one ordered flow can get through one connection with nothing else to do (no MQTT, database or
# spool). The sink measures it from the client's launch (not its CPU: the client has exited).
post_ceiling_case() {
  local name="$1"
  foreign_load "$name"
  CASE_DIR="$RUN/cases/$name"
  mkdir -p "$CASE_DIR"
  rm -f "$CASE_DIR/sink.ready" "$CASE_DIR/client.launched"
  timeout 900 "$BENCH" sink --port "$SINK_PORT" --count "$NP" --gateway-file "$CASE_DIR/client.launched" \
    --flows 1 --case "$name" --kind post-ceiling --mode burst --ready-file "$CASE_DIR/sink.ready" \
    "${SERVICE_PIDS[@]}" >>"$RESULTS" &
  local sink=$!
  wait_file "$CASE_DIR/sink.ready"
  timeout 600 "$BENCH" postceiling --url "http://127.0.0.1:$SINK_PORT/flow/1" --count "$NP" \
    --launched-file "$CASE_DIR/client.launched"
  wait "$sink"
}

# The sink's options that let it say where the machine's CPU goes.
SERVICE_PIDS=(--db-pid "$(<"$RUN/mariadb/server.pid")" --broker-pid "$(<"$RUN/mosquitto/server.pid")")

# The reference: POST while the flow row is locked, one message per transaction, one connection.
POST_BASELINE=(HTTP_DELIVERY=inline MAX_BATCH=1 DB_POOL_SIZE=1)
if want post1; then
  say "POST_ENDPOINT, 1 flow, burst of $NP: the POST ceiling, the inline baseline, then the outbox (defaults)"
  post_ceiling_case post-ceiling
  post_case post-baseline post-baseline 1 "${POST_BASELINE[@]}"
  post_case post-outbox post 1
  post_backlog_case post-outbox-backlog 1
fi
if want post4; then
  say "POST_ENDPOINT, 4 flows (one endpoint each), burst of $NP: inline baseline, then the outbox"
  post_case post-baseline-4 post-baseline 4 "${POST_BASELINE[@]}"
  post_case post-outbox-4 post 4
fi

# --------------------------------------------------------------------------------------- report

say "results (cases:$CASES; N=$N, baseline N=$NB, $FLOWS flow(s), POST N=$NP; QoS 1; raw: $RESULTS)"
"$BENCH" report "$RESULTS"
