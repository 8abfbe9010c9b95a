#!/usr/bin/env bash
# Sets everything up and runs the whole test suite: build, unit/integration/e2e tests against
# throwaway MariaDB + mosquitto, an ASan+UBSan build, fuzzers, clang-format, the systemd unit check
# and a scan of the logs for leaked passwords. Exits non-zero if anything fails.
#
#   GW_SKIP_APT=1    skip apt-get (scripts/setup.sh)
#   GW_SKIP_ASAN=1   skip the sanitizer build and its tests      } quick local runs only;
#   GW_SKIP_FUZZ=1   skip the fuzzers                             } CI runs everything
#   GW_FUZZ_SECONDS  run time of each fuzzer (default 30)
#   GW_SKIP_GALERA=1 skip the Galera cluster step (CI runs it)
#   GW_GALERA_SCALE  load of the Galera step's e2e test (GW_FAULT_SCALE; default 0.2: 1,000
#                    messages; scripts/test-galera.sh runs the full 5,000)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd "$REPO_DIR"
PATH="${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin"

FUZZ_SECONDS="${GW_FUZZ_SECONDS:-30}"
[[ $FUZZ_SECONDS =~ ^[0-9]+$ ]] || {
  echo "test: GW_FUZZ_SECONDS must be a number of seconds" >&2
  exit 2
}

export GW_RUN_DIR="$REPO_DIR/.run/test"
# Not run-local's ports, so both can run at once.
export GW_DB_PORT=3317 GW_MQTT_PORT=1894 GW_MQTT_TLS_PORT=8894 GW_MQTT_CERT_PORT=8895
SERVICES="$REPO_DIR/scripts/services.sh"

STEP=0
STEPS_TOTAL=12
FAILED=()
PASSED=()
TESTS_PASSED=0
TESTS_FAILED=0

STEP_T0=$SECONDS
banner() {
  STEP=$((STEP + 1))
  STEP_T0=$SECONDS
  printf '\n==== [%d/%d] %s ====\n' "$STEP" "$STEPS_TOTAL" "$*"
}
# Each step's line in the summary says how long it took: CI has a time budget.
took() { printf '(%d:%02d)' $(((SECONDS - STEP_T0) / 60)) $(((SECONDS - STEP_T0) % 60)); }
ok() { PASSED+=("$1 $(took)"); }
failed() {
  FAILED+=("$1 $(took)")
  printf 'test: FAILED: %s\n' "$1" >&2
}

summary() {
  printf '\n==== summary ====\n'
  local s
  for s in "${PASSED[@]}"; do printf 'ok      %s\n' "$s"; done
  for s in "${FAILED[@]}"; do printf 'FAILED  %s\n' "$s"; done
  # The ctest counts of this run (both builds), as one plain line.
  printf 'tests: %d passed, %d failed\n' "$TESTS_PASSED" "$TESTS_FAILED"
}

services_started=0
galera_started=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((galera_started)); then bash scripts/galera.sh stop || true; fi
  if ((services_started)); then bash "$SERVICES" stop || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "test: interrupted" >&2; exit 130' INT TERM

# Runs ctest with the given arguments, adds its counts to the totals; returns its exit status.
run_ctest() {
  local log rc=0 line total nfail
  log="$(mktemp)"
  ctest --output-on-failure --timeout 600 --no-tests=error "$@" 2>&1 | tee "$log" || rc=$?
  # "100% tests passed, 0 tests failed out of 57"
  line="$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)"
  if [[ -n $line ]]; then
    total="$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")"
    nfail="$(sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/' <<<"$line")"
    TESTS_PASSED=$((TESTS_PASSED + total - nfail))
    TESTS_FAILED=$((TESTS_FAILED + nfail))
  fi
  rm -f "$log"
  return "$rc"
}

# ------------------------------------------------------------------------------------------------
banner "setup (apt packages)"
bash scripts/setup.sh
ok setup

banner "build build/ (RelWithDebInfo, -Werror)"
# Nothing after this makes sense without the binaries: stop here if the build fails.
if ! cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGATEWAY_WERROR=ON >/dev/null ||
  ! cmake --build build -j2; then
  failed "build build/"
  summary
  exit 1
fi
ok "build build/"

banner "services (MariaDB 127.0.0.1:$GW_DB_PORT, mosquitto 127.0.0.1:$GW_MQTT_PORT, TLS $GW_MQTT_TLS_PORT)"
# A fresh run dir: no databases, broker sessions or logs left over from an earlier run.
bash "$SERVICES" stop >/dev/null 2>&1 || true
rm -rf "$GW_RUN_DIR"
services_started=1
bash "$SERVICES" start
set -a
# shellcheck source=/dev/null
source "$GW_RUN_DIR/services.env"
set +a
# Every gateway the tests start leaves a copy of its logs here, for the password scan below.
export GW_TEST_LOG_ARCHIVE="$GW_RUN_DIR/gateway-logs"
ok services

banner "ctest build/ (all tests, serially: some restart the services)"
# The Galera tests skip without a cluster: they run in the next step.
if run_ctest --test-dir build -LE galera; then ok "ctest build/"; else failed "ctest build/"; fi

banner "Galera: 3-node cluster (scripts/galera.sh), ctest -L galera, cluster stopped"
if [[ ${GW_SKIP_GALERA:-0} == 1 ]]; then
  echo "test: GW_SKIP_GALERA=1: skipped"
  PASSED+=("galera (skipped: GW_SKIP_GALERA=1)")
else
  export GW_GALERA_DIR="$GW_RUN_DIR/galera"
  export GW_GALERA_SQL_PORT=3391 GW_GALERA_GCOMM_PORT=4671 GW_GALERA_IST_PORT=4681 \
    GW_GALERA_SST_PORT=4691
  galera_started=1
  if bash scripts/galera.sh start; then
    set -a
    # shellcheck source=/dev/null
    source "$GW_GALERA_DIR/galera.env"
    set +a
    if GW_FAULT_SCALE="${GW_GALERA_SCALE:-0.2}" run_ctest --test-dir build -L galera; then
      ok galera
    else
      failed "galera"
    fi
    # Later steps must not find a cluster that is gone.
    unset "${!GW_TEST_GALERA_@}" GW_GALERA_SCRIPT
  else
    failed "galera: cluster start"
  fi
  bash scripts/galera.sh stop || true
  galera_started=0
fi

banner "Debian package: cpack, dpkg -i, --version/--init-db/--check, dpkg --purge"
# Reuses build/: the install prefix changes no compile flag, so this only packages.
if GW_PKG_BUILD_DIR="$REPO_DIR/build" bash scripts/test-package.sh; then
  ok "package"
else
  failed "package"
fi

banner "ASan+UBSan build build-asan/ and its unit + integration tests"
if [[ ${GW_SKIP_ASAN:-0} == 1 ]]; then
  echo "test: GW_SKIP_ASAN=1: skipped"
  PASSED+=("asan (skipped: GW_SKIP_ASAN=1)")
# -O0 -g1 because it is the shortest step here: on one morning the unit_tests + integration_tests
# build took 8 min at -O0 -g1 and 12.5 at -O1 -g1 (its tests 3.7 and 2.9 min); -O2 -g compiles a
# file in twice the -O1 -g1 time. Line tables (-g1) are all a sanitizer report needs.
elif cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g1" \
  -DGATEWAY_SANITIZE=ON -DGATEWAY_WERROR=ON -DGATEWAY_BUILD_BENCH=OFF >/dev/null &&
  cmake --build build-asan -j2 --target unit_tests integration_tests; then
  if ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1" \
    LSAN_OPTIONS="suppressions=$REPO_DIR/tests/lsan.supp:print_suppressions=0" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    run_ctest --test-dir build-asan -L 'unit|integration'; then
    ok "ctest build-asan/"
  else
    failed "ctest build-asan/"
  fi
else
  failed "build build-asan/"
fi

banner "fuzzers (${FUZZ_SECONDS}s each)"
# Sources each fuzzer links, besides its own file.
fuzz_inputs() {
  case "$1" in
    payload_fuzzer) echo "src/core/payload.cpp src/core/payload_schema.cpp src/core/topic_filter.cpp" ;;
    spool_fuzzer)
      echo "src/core/spool.cpp src/core/atomic_file.cpp src/core/spool_cursor.cpp src/core/spool_format.cpp src/core/spool_reader.cpp src/core/thread_name.cpp -ldeflate -lspdlog -lfmt -DSPDLOG_SHARED_LIB -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL"
      ;;
    *) return 1 ;;
  esac
}
run_fuzzer() { # name
  local name="$1" bin="build/$1" log="build/fuzz/$1.log" corpus="build/fuzz/$1-corpus" inputs
  local -a args
  STEP_T0=$SECONDS # one summary line per fuzzer: each its own time, not the step's so far
  if ! inputs="$(fuzz_inputs "$name")"; then
    failed "fuzz $name: no build recipe in scripts/test.sh"
    return
  fi
  read -r -a args <<<"$inputs"
  mkdir -p build/fuzz "$corpus"
  if ! clang++-14 -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude "fuzz/$name.cpp" \
    "${args[@]}" -o "$bin"; then
    failed "fuzz $name: build"
    return
  fi
  local -a dirs=("$corpus")
  [[ -d fuzz/corpus/$name ]] && dirs+=("fuzz/corpus/$name")
  if "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="build/fuzz/$name-" -print_final_stats=1 "${dirs[@]}" >"$log" 2>&1; then
    printf 'fuzz %s: %s\n' "$name" "$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"
    ok "fuzz $name"
  else
    tail -n 60 "$log" >&2
    failed "fuzz $name (log: $log)"
  fi
}
if [[ ${GW_SKIP_FUZZ:-0} == 1 ]]; then
  echo "test: GW_SKIP_FUZZ=1: skipped"
  PASSED+=("fuzz (skipped: GW_SKIP_FUZZ=1)")
else
  found=0
  for src in fuzz/*.cpp; do
    [[ -s $src ]] || continue
    found=1
    run_fuzzer "$(basename "$src" .cpp)"
  done
  ((found)) || echo "test: no non-empty fuzz/*.cpp"
fi

banner "clang-format --dry-run --Werror"
mapfile -d '' format_files < <(find src include tests bench fuzz -type f \( -name '*.h' -o -name '*.cpp' \) -print0 | sort -z)
if clang-format --dry-run --Werror "${format_files[@]}"; then
  ok "clang-format (${#format_files[@]} files)"
else
  failed "clang-format (run: clang-format -i on the files above)"
fi

banner "clang-tidy (bugprone, performance, concurrency, some modernize: .clang-tidy)"
if run-clang-tidy-14 -p build -j 2 -quiet "$REPO_DIR/src/.*\.cpp" >build/clang-tidy.log 2>&1 &&
  ! grep -E '(warning|error):' build/clang-tidy.log; then
  ok "clang-tidy"
else
  grep -E -A3 '(warning|error):' build/clang-tidy.log | head -n 80 >&2 || tail -n 40 build/clang-tidy.log >&2
  failed "clang-tidy (log: build/clang-tidy.log)"
fi

banner "systemd-analyze verify systemd/mqtt-gateway.service"
# verify insists that ExecStart exists: check a copy (same file name) that runs the built binary.
unit_dir="$(mktemp -d)"
sed "s|^ExecStart=/usr/bin/mqtt-gateway |ExecStart=$REPO_DIR/build/mqtt-gateway |" \
  systemd/mqtt-gateway.service >"$unit_dir/mqtt-gateway.service"
if ! grep -q "^ExecStart=$REPO_DIR/build/mqtt-gateway " "$unit_dir/mqtt-gateway.service"; then
  failed "systemd unit: no 'ExecStart=/usr/bin/mqtt-gateway ' line to point at the build"
elif verify_out="$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify "$unit_dir/mqtt-gateway.service" 2>&1)" &&
  ! grep -F 'mqtt-gateway.service' <<<"$verify_out"; then
  [[ -z $verify_out ]] || printf '%s\n' "$verify_out"
  ok "systemd-analyze verify"
else
  printf '%s\n' "$verify_out" >&2
  failed "systemd-analyze verify"
fi
rm -rf "$unit_dir"

banner "no passwords in logs"
# Every password the tests use: the fixed one, the prefix of the endpoint URL passwords
# (secure_connections_e2e_test.cpp) and any *PASSWORD* value in services.env.
mapfile -t secrets < <({
  echo gwpass
  echo hookpw-
  sed -n 's/^[A-Z_]*PASSWORD[A-Z_]*=//p' "$GW_RUN_DIR/services.env"
} | sort -u | grep -v '^$')
log_files=()
for dir in "$GW_RUN_DIR" build/Testing build-asan/Testing; do
  [[ -d $dir ]] || continue
  # Logs only: the database files may hold passwords legitimately (e.g. mqtt_servers.password).
  while IFS= read -r -d '' f; do log_files+=("$f"); done < <(
    find "$dir" -path "$GW_RUN_DIR/mariadb/data" -prune -o -type f \
      \( -name '*.log' -o -name '*.log.[0-9]*' -o -name '*.out' -o -path '*/log/*' -o -path '*/logs/*' \) -print0
  )
done
leaks=""
if ((${#log_files[@]})); then
  grep_args=()
  for s in "${secrets[@]}"; do grep_args+=(-e "$s"); done
  leaks="$(grep -l -F "${grep_args[@]}" -- "${log_files[@]}" || true)"
fi
if [[ -n $leaks ]]; then
  printf 'a test password appears in:\n%s\n' "$leaks" >&2
  failed "passwords in logs"
else
  echo "checked ${#log_files[@]} log files for ${#secrets[@]} password(s): none found"
  ok "no passwords in logs"
fi

summary
((${#FAILED[@]} == 0))
