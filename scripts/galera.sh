#!/usr/bin/env bash
# A throwaway 3-node MariaDB Galera cluster on 127.0.0.1 for the Galera tests (issue 15): three
# data dirs, three SQL ports, gcomm on loopback, rsync state transfers. Run as root; the nodes
# run as the mysql user (see below). All state lives in one run directory.
#
#   galera.sh start|stop|status|env
#   galera.sh kill-node N|stop-node N|start-node N     (N = 1, 2 or 3)
#
#   GW_GALERA_DIR         run directory (default <repo>/.run/galera)
#   GW_GALERA_SQL_PORT    SQL port of node 1; node N listens on it + N - 1 (default 3381)
#   GW_GALERA_GCOMM_PORT  group communication port of node 1 (default 4571)
#   GW_GALERA_IST_PORT    incremental state transfer port of node 1 (default 4581)
#   GW_GALERA_SST_PORT    rsync state snapshot transfer port of node 1 (default 4591)
#
# `start` bootstraps node 1 (--wsrep-new-cluster) unless a node is already running, then joins
# the others, waits until all three are Synced, creates database gw and user gw (as
# scripts/services.sh does) and writes galera.env (sourceable: GW_TEST_GALERA_*). `kill-node`
# is kill -9; `start-node` brings a node back (incremental transfer from the others' gcache when
# its position can be recovered, else a full rsync copy). Every wait is bounded; a start that
# fails stops the nodes it started. Each action prints one line.
set -euo pipefail

PATH="${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin"
unset MYSQL_PWD MYSQL_HOST MYSQL_TCP_PORT MYSQL_UNIX_PORT
SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_DIR="$(dirname "$(dirname "$SCRIPT_PATH")")"

readonly DB_NAME=gw DB_USER=gw DB_PASSWORD=gwpass CLUSTER_NAME=gw_test_galera NODES=(1 2 3)
readonly BOOTSTRAP_TIMEOUT=60 JOIN_TIMEOUT=180 STOP_TIMEOUT=60 KILL_TIMEOUT=10 RECOVER_TIMEOUT=60
readonly PROVIDER=/usr/lib/galera/libgalera_smm.so
# The nodes run as this user, not root: the rsync daemon that receives a state transfer drops to
# `nobody` when started as root (rsyncd.conf's default uid), and then cannot write the datadir.
readonly NODE_USER=mysql

say() { printf 'galera: %s\n' "$*"; }
die() {
  printf 'galera: ERROR: %s\n' "$*" >&2
  exit 1
}
show_tail() {
  if [[ -f $1 ]]; then
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n 30 "$1" >&2
  fi
}
usage() {
  sed -n '2,20p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

ACTION="${1:-}"
NODE_ARG="${2:-}"
case "$ACTION" in
  start | stop | status | env) [[ $# -eq 1 ]] || usage ;;
  kill-node | stop-node | start-node)
    [[ $# -eq 2 && $NODE_ARG =~ ^[123]$ ]] || usage
    ;;
  *) usage ;;
esac
[[ $EUID -eq 0 ]] || die "run as root (the nodes are started as root and switch to $NODE_USER)"
[[ -e $PROVIDER ]] || die "$PROVIDER not found: install galera-4 (scripts/setup.sh)"
id "$NODE_USER" >/dev/null 2>&1 || die "no user $NODE_USER (it comes with mariadb-server)"
command -v rsync >/dev/null || die "rsync not found (scripts/setup.sh installs it)"

RUN_DIR="${GW_GALERA_DIR:-$REPO_DIR/.run/galera}"
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd -P)"
ENV_FILE="$RUN_DIR/galera.env"

saved() {
  if [[ -f $ENV_FILE ]]; then sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1; fi
}
port_setting() { # env-value saved-key default
  local port="${1:-$(saved "$2")}"
  port="${port:-$3}"
  if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65533)); then die "bad port '$port' for $2"; fi
  printf '%s' "$port"
}
SQL_PORT="$(port_setting "${GW_GALERA_SQL_PORT:-}" GW_TEST_GALERA_SQL_PORT 3381)"
GCOMM_PORT="$(port_setting "${GW_GALERA_GCOMM_PORT:-}" GW_TEST_GALERA_GCOMM_PORT 4571)"
IST_PORT="$(port_setting "${GW_GALERA_IST_PORT:-}" GW_TEST_GALERA_IST_PORT 4581)"
SST_PORT="$(port_setting "${GW_GALERA_SST_PORT:-}" GW_TEST_GALERA_SST_PORT 4591)"

exec 9>"$RUN_DIR/.lock"
flock -w 300 9 || die "another galera.sh holds $RUN_DIR/.lock for more than 300 s"

node_dir() { printf '%s/node%s' "$RUN_DIR" "$1"; }
node_cnf() { printf '%s/my.cnf' "$(node_dir "$1")"; }
node_data() { printf '%s/data' "$(node_dir "$1")"; }
node_log() { printf '%s/error.log' "$(node_dir "$1")"; }
node_pidfile() { printf '%s/server.pid' "$(node_dir "$1")"; }
node_port() { printf '%s' $((SQL_PORT + $1 - 1)); }
node_sock() {
  local sock
  sock="$(node_dir "$1")/mysqld.sock"
  # A Unix socket path has at most 107 bytes.
  if ((${#sock} > 100)); then
    sock="/tmp/gw-galera-$(printf '%s' "$RUN_DIR" | md5sum | cut -c1-12)-$1.sock"
  fi
  printf '%s' "$sock"
}
cluster_address() {
  printf 'gcomm://127.0.0.1:%s,127.0.0.1:%s,127.0.0.1:%s' "$GCOMM_PORT" $((GCOMM_PORT + 1)) \
    $((GCOMM_PORT + 2))
}

# True when node $1's pid is alive and its command line names its config file.
node_running() {
  local pidfile pid
  pidfile="$(node_pidfile "$1")"
  [[ -s $pidfile ]] || return 1
  pid="$(<"$pidfile")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(node_cnf "$1")"
}
running_nodes() {
  local n out=""
  for n in "${NODES[@]}"; do if node_running "$n"; then out+="$n "; fi; done
  printf '%s' "${out% }"
}

port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

root_sql() { # node, then SQL on stdin; prints tab-separated rows
  timeout 30 mariadb --no-defaults --socket="$(node_sock "$1")" -uroot --connect-timeout=5 -N -B
}
# wsrep_local_state of node $1 (4 = Synced), or nothing when it does not answer.
node_state() {
  timeout 5 mariadb --no-defaults --socket="$(node_sock "$1")" -uroot --connect-timeout=2 -N -B \
    -e "SHOW GLOBAL STATUS LIKE 'wsrep_local_state'" 2>/dev/null | cut -f2
}

write_cnf() { # node
  local n="$1" dir
  dir="$(node_dir "$n")"
  mkdir -p "$dir"
  # --defaults-file must come first on every command line: otherwise /etc/mysql/my.cnf leaks in.
  cat >"$(node_cnf "$n")" <<EOF
# Generated by scripts/galera.sh; rewritten on every start of the node.
[mariadbd]
user=$NODE_USER
datadir=$(node_data "$n")
socket=$(node_sock "$n")
pid-file=$dir/mariadbd.pid
port=$(node_port "$n")
bind-address=127.0.0.1
skip-name-resolve
log-error=$(node_log "$n")
character-set-server=utf8mb4
collation-server=utf8mb4_unicode_ci
innodb_buffer_pool_size=128M
# Galera's own durability is the other nodes; the log is still written at every commit.
innodb_flush_log_at_trx_commit=2
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider=$PROVIDER
wsrep_cluster_name=$CLUSTER_NAME
wsrep_cluster_address=$(cluster_address)
wsrep_node_name=node$n
wsrep_node_address=127.0.0.1:$((GCOMM_PORT + n - 1))
wsrep_node_incoming_address=127.0.0.1:$(node_port "$n")
# The evs.* timeouts stay at their defaults: shorter ones (suspect 3 s, inactive 6 s) split the
# cluster into non-primary parts while a killed node rejoined under load. A node killed with -9
# is noticed within evs.suspect_timeout (5 s); commits wait for the new view meanwhile.
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:$((GCOMM_PORT + n - 1));ist.recv_addr=127.0.0.1:$((IST_PORT + n - 1));gcache.size=256M"
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:$((SST_PORT + n - 1))
wsrep_slave_threads=2
EOF
  chown "$NODE_USER:" "$dir"
}

# A test cluster: node 1 may always bootstrap a new cluster (also after a kill -9 or a stop in
# another order, which leaves safe_to_bootstrap: 0).
allow_bootstrap() {
  local grastate
  grastate="$(node_data "$1")/grastate.dat"
  if [[ -f $grastate ]]; then sed -i 's/^safe_to_bootstrap: 0/safe_to_bootstrap: 1/' "$grastate"; fi
}

# After an unclean stop grastate.dat says seqno -1: recover the position from InnoDB, as
# /usr/bin/galera_recovery does, so that the node can ask for an incremental transfer. Prints
# --wsrep_start_position=... or nothing.
recovered_position() {
  local n="$1" grastate log pos
  grastate="$(node_data "$n")/grastate.dat"
  [[ -f $grastate ]] || return 0
  grep -q '^seqno: *-1' "$grastate" || return 0
  log="$(node_dir "$n")/recover.log"
  if ! timeout "$RECOVER_TIMEOUT" mariadbd --defaults-file="$(node_cnf "$n")" --wsrep-recover \
    --log-error="$log" </dev/null >/dev/null 2>&1 9>&-; then
    return 0 # a full state transfer then
  fi
  pos="$(sed -n 's/.*WSREP: Recovered position: *//p' "$log" | tail -n 1)"
  if [[ $pos =~ ^[0-9a-f-]+:-?[0-9]+$ ]]; then printf -- '--wsrep_start_position=%s' "$pos"; fi
}

stop_node_now() { # node signal limit; sets NODE_RESULT
  local n="$1" sig="$2" limit="$3" pid deadline
  if ! node_running "$n"; then
    rm -f "$(node_pidfile "$n")"
    NODE_RESULT="node$n was not running"
    return 0
  fi
  pid="$(<"$(node_pidfile "$n")")"
  kill "-$sig" "$pid" 2>/dev/null || true
  deadline=$((SECONDS + limit))
  while node_running "$n" && ((SECONDS < deadline)); do sleep 0.1; done
  if node_running "$n"; then
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + KILL_TIMEOUT))
    while node_running "$n" && ((SECONDS < deadline)); do sleep 0.1; done
    node_running "$n" && die "node$n (pid $pid) survived SIGKILL"
    NODE_RESULT="node$n killed (pid $pid did not stop within ${limit}s)"
  else
    NODE_RESULT="node$n $([[ $sig == KILL ]] && echo killed || echo stopped) (pid $pid)"
  fi
  rm -f "$(node_pidfile "$n")"
}

# Starts node $1: bootstrap ($2 = new) or join ($2 = join); waits until it is Synced. Sets
# NODE_RESULT.
start_node() {
  local n="$1" mode="$2" data port limit started=$SECONDS extra=() how
  if node_running "$n"; then
    NODE_RESULT="node$n already running (pid $(<"$(node_pidfile "$n")"))"
    return 0
  fi
  write_cnf "$n"
  data="$(node_data "$n")"
  port="$(node_port "$n")"
  for p in "$port" $((GCOMM_PORT + n - 1)) $((IST_PORT + n - 1)) $((SST_PORT + n - 1)); do
    port_in_use "$p" && die "127.0.0.1:$p is already in use (another instance? set GW_GALERA_*_PORT)"
  done
  if [[ $mode == new ]]; then
    if [[ ! -d $data/mysql ]]; then
      rm -rf "$data"
      mkdir -p "$data"
      chown "$NODE_USER:" "$data"
      if ! timeout 180 mariadb-install-db --defaults-file="$(node_cnf "$n")" --user="$NODE_USER" \
        --auth-root-authentication-method=normal --skip-test-db \
        >"$(node_dir "$n")/install.log" 2>&1 9>&-; then
        show_tail "$(node_dir "$n")/install.log"
        die "mariadb-install-db for node$n failed"
      fi
    fi
    allow_bootstrap "$n"
    extra=(--wsrep-new-cluster)
    how="bootstrapped"
    limit=$BOOTSTRAP_TIMEOUT
  else
    # A joiner receives the data by state transfer into an existing, writable datadir.
    mkdir -p "$data"
    # gvwstate.dat (pc.recovery) would bring back the killed instance's node UUID, which the
    # running nodes refuse until they have forgotten it (~15 s more); this is a join, not a
    # recovery of the whole cluster, so the node comes back under a new UUID.
    rm -f "$data/gvwstate.dat"
    local pos
    pos="$(recovered_position "$n")"
    if [[ -n $pos ]]; then extra=("$pos"); fi
    how="joined"
    limit=$JOIN_TIMEOUT
  fi
  chown -R "$NODE_USER:" "$(node_dir "$n")"
  rm -f "$(node_sock "$n")"
  # setsid: a Ctrl-C in the terminal that started us must not reach the node.
  setsid mariadbd --defaults-file="$(node_cnf "$n")" "${extra[@]}" </dev/null \
    >>"$(node_dir "$n")/stdout.log" 2>&1 9>&- &
  echo $! >"$(node_pidfile "$n")"
  local deadline=$((SECONDS + limit))
  until [[ "$(node_state "$n")" == 4 ]]; do
    if ! node_running "$n"; then
      show_tail "$(node_log "$n")"
      die "node$n exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      show_tail "$(node_log "$n")"
      die "node$n not Synced after ${limit}s"
    fi
    sleep 0.2
  done
  local transfer=""
  if [[ $mode == join ]]; then
    if grep -q 'IST received' "$(node_log "$n")" 2>/dev/null &&
      [[ ${#extra[@]} -gt 0 ]]; then transfer=", incremental transfer"; fi
  fi
  NODE_RESULT="node$n $how (pid $(<"$(node_pidfile "$n")"), 127.0.0.1:$port, $((SECONDS - started)) s$transfer)"
}

write_env() {
  local tmp="$ENV_FILE.tmp" n nodes="" sockets=""
  for n in "${NODES[@]}"; do
    nodes+="${nodes:+,}127.0.0.1:$(node_port "$n")"
    sockets+="${sockets:+,}$(node_sock "$n")"
  done
  {
    printf '# Written by %s start; sourceable.\n' "$SCRIPT_PATH"
    local kv
    for kv in \
      "GW_TEST_GALERA_NODES=$nodes" \
      "GW_TEST_GALERA_SOCKETS=$sockets" \
      "GW_TEST_GALERA_USER=$DB_USER" \
      "GW_TEST_GALERA_PASSWORD=$DB_PASSWORD" \
      "GW_TEST_GALERA_NAME=$DB_NAME" \
      "GW_TEST_GALERA_SQL_PORT=$SQL_PORT" \
      "GW_TEST_GALERA_GCOMM_PORT=$GCOMM_PORT" \
      "GW_TEST_GALERA_IST_PORT=$IST_PORT" \
      "GW_TEST_GALERA_SST_PORT=$SST_PORT" \
      "GW_TEST_GALERA_DIR=$RUN_DIR" \
      "GW_GALERA_SCRIPT=$SCRIPT_PATH"; do
      # Plain when it needs no quoting (lists stay readable for tools that are not a shell).
      if [[ ${kv#*=} =~ ^[A-Za-z0-9_.:,/@+-]*$ ]]; then
        printf '%s\n' "$kv"
      else
        printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"
      fi
    done
  } >"$tmp"
  chmod 600 "$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

# Idempotent; replicated to every node (DDL and account statements are).
create_user() { # node
  root_sql "$1" <<SQL >/dev/null || die "creating database $DB_NAME / user $DB_USER on node$1 failed"
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL PRIVILEGES ON \`gw%\`.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`gw%\`.* TO '$DB_USER'@'localhost';
SQL
}

# On a failed start: stop what this invocation started, then report.
STARTED_HERE=()
cleanup_failed_start() {
  local rc=$? n
  trap - EXIT
  if ((rc != 0)); then
    for n in "${STARTED_HERE[@]}"; do stop_node_now "$n" TERM "$STOP_TIMEOUT" || true; done
  fi
  exit "$rc"
}

case "$ACTION" in
  start)
    trap cleanup_failed_start EXIT
    started=$SECONDS
    results=()
    if [[ -z "$(running_nodes)" ]]; then
      STARTED_HERE+=(1)
      start_node 1 new
      results+=("$NODE_RESULT")
    fi
    for n in "${NODES[@]}"; do
      node_running "$n" && continue
      STARTED_HERE+=("$n")
      start_node "$n" join
      results+=("$NODE_RESULT")
    done
    create_user "$(running_nodes | cut -d' ' -f1)"
    for n in "${NODES[@]}"; do
      MYSQL_PWD="$DB_PASSWORD" timeout 15 mariadb --no-defaults --protocol=tcp -h127.0.0.1 \
        -P"$(node_port "$n")" -u"$DB_USER" --connect-timeout=5 -e 'SELECT 1' "$DB_NAME" \
        >/dev/null || die "node$n is up but $DB_USER cannot log in over 127.0.0.1:$(node_port "$n")"
    done
    write_env
    trap - EXIT
    say "$( ((${#results[@]})) && printf '%s; ' "${results[@]}" || printf 'all nodes already running; ')cluster ready in $((SECONDS - started)) s; env in $ENV_FILE"
    ;;
  stop)
    # Last one stopped is the one safe to bootstrap from; node 1 bootstraps the next start.
    results=()
    for n in 3 2 1; do
      stop_node_now "$n" TERM "$STOP_TIMEOUT"
      results+=("$NODE_RESULT")
    done
    say "$(printf '%s; ' "${results[@]}" | sed 's/; $//')"
    ;;
  status)
    rc=0
    parts=()
    for n in "${NODES[@]}"; do
      if node_running "$n"; then
        state="$(node_state "$n")"
        parts+=("node$n running (pid $(<"$(node_pidfile "$n")"), 127.0.0.1:$(node_port "$n"), wsrep_local_state ${state:-?})")
        [[ $state == 4 ]] || rc=1
      else
        parts+=("node$n stopped")
        rc=1
      fi
    done
    joined="$(printf '%s; ' "${parts[@]}")"
    say "${joined}run dir $RUN_DIR"
    exit "$rc"
    ;;
  env)
    [[ -f $ENV_FILE ]] || die "no $ENV_FILE: run galera.sh start first"
    cat "$ENV_FILE"
    ;;
  kill-node)
    stop_node_now "$NODE_ARG" KILL "$KILL_TIMEOUT"
    say "$NODE_RESULT"
    ;;
  stop-node)
    stop_node_now "$NODE_ARG" TERM "$STOP_TIMEOUT"
    say "$NODE_RESULT"
    ;;
  start-node)
    trap cleanup_failed_start EXIT
    STARTED_HERE+=("$NODE_ARG")
    if [[ -z "$(running_nodes)" ]]; then start_node "$NODE_ARG" new; else start_node "$NODE_ARG" join; fi
    trap - EXIT
    say "$NODE_RESULT"
    ;;
esac
