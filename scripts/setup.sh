#!/usr/bin/env bash
# Installs everything mqtt-gateway needs to build, run and test on Debian 12, as root, with apt.
# Idempotent. GW_SKIP_APT=1 skips it (for quick local reruns on a machine that has it all).
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential g++ cmake pkg-config git ca-certificates dpkg-dev file
  # servers and their clients (started privately by scripts/services.sh, never as system services)
  mariadb-server mariadb-client mosquitto mosquitto-clients openssl procps
  # the 3-node Galera test cluster (scripts/galera.sh): provider, rsync state transfers
  galera-4 rsync socat
  # libraries (libpaho-mqttpp-dev needs libpaho-mqtt-dev and libssl-dev but does not depend on them)
  libpaho-mqttpp-dev libpaho-mqtt-dev libssl-dev libmysqlcppconn-dev nlohmann-json3-dev
  libcurl4-openssl-dev libspdlog-dev libfmt-dev libdeflate-dev zlib1g-dev libcli11-dev libsystemd-dev
  libcpp-httplib-dev libjemalloc-dev
  # tests, fuzzing, formatting, static analysis
  libgtest-dev libgmock-dev clang-14 libclang-rt-14-dev clang-format clang-tidy python3
  # only for `systemd-analyze verify` of the unit file; no systemd runs here
  systemd
)

say() { printf 'setup: %s\n' "$*"; }

if [[ ${GW_SKIP_APT:-0} == 1 ]]; then
  say "GW_SKIP_APT=1: apt step skipped"
  exit 0
fi
if [[ $EUID -ne 0 ]]; then
  printf 'setup: ERROR: run as root (apt-get install)\n' >&2
  exit 1
fi
if ! grep -qs '^VERSION_ID="12"' /etc/os-release; then
  say "warning: written for Debian 12; this is $(sed -n 's/^PRETTY_NAME=//p' /etc/os-release | tr -d '"')"
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)

# Installing mariadb-server or mosquitto would start system instances (on 3306/1883, with
# /run/mysqld) through invoke-rc.d. A policy-rc.d that says "no" (101) keeps them from starting;
# ours is removed again, and one that was there already is left alone.
POLICY=/usr/sbin/policy-rc.d
own_policy=0
cleanup() { if ((own_policy)); then rm -f "$POLICY"; fi; }
trap cleanup EXIT
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\n# Temporary, from mqtt-gateway scripts/setup.sh\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  own_policy=1
fi

start=$SECONDS
for attempt in 1 2 3; do
  if apt-get "${APT_OPTS[@]}" update -q >/dev/null; then break; fi
  if ((attempt == 3)); then
    printf 'setup: ERROR: apt-get update failed 3 times\n' >&2
    exit 1
  fi
  say "apt-get update failed (attempt $attempt), retrying in 10 s"
  sleep 10
done
apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${PACKAGES[@]}" >/tmp/gw-setup-apt.log 2>&1 || {
  tail -n 40 /tmp/gw-setup-apt.log >&2
  printf 'setup: ERROR: apt-get install failed (full log: /tmp/gw-setup-apt.log)\n' >&2
  exit 1
}
say "${#PACKAGES[@]} packages present ($((SECONDS - start)) s)"
