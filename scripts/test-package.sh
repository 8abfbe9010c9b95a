#!/usr/bin/env bash
# Builds the Debian package (cpack -G DEB), installs it with dpkg -i, checks what it installed and
# runs the installed binary as the service user: --version, --init-db and --check against a
# throwaway database on the test MariaDB. Then removes and purges the package and checks that it
# is gone. Run as root on Debian 12, with the test services running (scripts/services.sh start).
#
#   GW_TEST_DB_*      the test database server (as services.env has them); when unset, read from
#                     $GW_TEST_RUN_DIR/services.env or <repo>/.run/test/services.env
#   GW_PKG_BUILD_DIR  build directory, configured with -DCMAKE_INSTALL_PREFIX=/usr (default
#                     <repo>/build-package; the prefix changes no compile flag, so pointing this
#                     at an existing build directory only relinks nothing and packages)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd "$REPO_DIR"
PATH="${PATH:-/usr/bin:/bin}:/usr/sbin:/sbin"
BUILD_DIR="${GW_PKG_BUILD_DIR:-$REPO_DIR/build-package}"
PACKAGE=mqtt-gateway
USER_NAME=mqtt-gateway
CONFFILE=/etc/mqtt-gateway/mqtt-gateway.env
PASSWORD_FILE=/etc/mqtt-gateway/db_password

say() { printf 'test-package: %s\n' "$*"; }
die() {
  printf 'test-package: FAILED: %s\n' "$*" >&2
  exit 1
}
[[ $EUID -eq 0 ]] || die "run as root (dpkg -i)"

if [[ -z ${GW_TEST_DB_HOST:-} ]]; then
  env_file="${GW_TEST_RUN_DIR:-$REPO_DIR/.run/test}/services.env"
  [[ -f $env_file ]] || die "no GW_TEST_DB_* in the environment and no $env_file (scripts/services.sh start)"
  set -a
  # shellcheck source=/dev/null
  source "$env_file"
  set +a
fi
: "${GW_TEST_DB_HOST:?}" "${GW_TEST_DB_PORT:?}" "${GW_TEST_DB_USER:?}" "${GW_TEST_DB_PASSWORD?}"

# Never replace a gateway someone installed on purpose.
if dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -q 'installed'; then
  die "$PACKAGE is already installed here; remove it first (dpkg -P $PACKAGE)"
fi

DB_NAME="gw_test_pkg_$$"
sql() {
  MYSQL_PWD="$GW_TEST_DB_PASSWORD" mariadb --protocol=tcp -h "$GW_TEST_DB_HOST" -P "$GW_TEST_DB_PORT" \
    -u "$GW_TEST_DB_USER" --batch --skip-column-names "$@"
}
installed=0
CREDENTIALS=""
cleanup() {
  local rc=$?
  trap - EXIT
  if [[ -n $CREDENTIALS ]]; then rm -rf "$CREDENTIALS"; fi
  if ((installed)); then dpkg -P "$PACKAGE" >/dev/null 2>&1 || true; fi
  sql -e "DROP DATABASE IF EXISTS \`$DB_NAME\`" >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT

# ---- build ----------------------------------------------------------------------------------------
say "building in $BUILD_DIR"
cmake -S . -B "$BUILD_DIR" -DCMAKE_INSTALL_PREFIX=/usr >/dev/null
cmake --build "$BUILD_DIR" -j2 --target mqtt-gateway
rm -f "$BUILD_DIR"/mqtt-gateway_*.deb
(cd "$BUILD_DIR" && cpack -G DEB >/dev/null) || die "cpack -G DEB"
deb="$(ls "$BUILD_DIR"/mqtt-gateway_*.deb)"
say "built $(basename "$deb")"
dpkg-deb -f "$deb" Package Version Architecture Depends | sed 's/^/  /'
version="$(dpkg-deb -f "$deb" Version)"
contents="$(dpkg-deb -c "$deb")"
has() { grep -Eq "$1" <<<"$contents" || die "the package has no $2"; }
has ' \./usr/bin/mqtt-gateway$' /usr/bin/mqtt-gateway
has ' \./usr/lib/systemd/system/mqtt-gateway\.service$' "systemd unit"
has ' \./usr/share/mqtt-gateway/schema\.sql$' schema.sql
has ' \./usr/share/mqtt-gateway/\.env\.example$' .env.example
has "^-rw-r----- root/root .* \\.$CONFFILE\$" "$CONFFILE (0640)"
[[ "$(dpkg-deb -I "$deb" conffiles)" == "$CONFFILE" ]] || die "conffiles is not exactly $CONFFILE"
# At-least-once needs Paho C 1.3.10 or newer (the PUBACK after the message callback).
dpkg-deb -f "$deb" Depends | grep -qF 'libpaho-mqtt1.3 (>= 1.3.10)' || die "Depends does not pin libpaho-mqtt1.3 (>= 1.3.10)"
dpkg-deb -f "$deb" Depends | grep -qF 'libjemalloc2' || die "Depends lacks libjemalloc2 (the daemon links jemalloc)"

# ---- install ------------------------------------------------------------------------------------
installed=1
dpkg -i "$deb" || die "dpkg -i $deb"
[[ "$(dpkg-query -W -f='${Status}' "$PACKAGE")" == "install ok installed" ]] || die "not installed"
getent passwd "$USER_NAME" >/dev/null || die "postinst made no user $USER_NAME"
[[ "$(getent passwd "$USER_NAME" | cut -d: -f7)" == /usr/sbin/nologin ]] || die "$USER_NAME has a login shell"
for d in /var/lib/mqtt-gateway /var/lib/mqtt-gateway/spool /var/log/mqtt-gateway; do
  [[ "$(stat -c '%U:%G %a' "$d")" == "$USER_NAME:$USER_NAME 750" ]] || die "$d: $(stat -c '%U:%G %a' "$d")"
done
[[ "$(stat -c '%U:%G %a' "$CONFFILE")" == "root:$USER_NAME 640" ]] || die "$CONFFILE: $(stat -c '%U:%G %a' "$CONFFILE")"
[[ "$(stat -c '%U:%G %a %s' "$PASSWORD_FILE")" == "root:root 600 0" ]] || die "$PASSWORD_FILE: $(stat -c '%U:%G %a %s' "$PASSWORD_FILE" 2>&1)"
say "installed: user, directories, $CONFFILE (root:$USER_NAME 0640) and an empty $PASSWORD_FILE (root:root 0600) in place"

out="$(/usr/bin/mqtt-gateway --version)"
[[ $out == "mqtt-gateway $version" ]] || die "--version said '$out', the package is $version"
say "--version: $out"

# The installed binary, as the service user, with the packaged settings file; the environment
# (which wins over the file) points it at a throwaway database.
gateway() {
  runuser -u "$USER_NAME" -- env -C /var/lib/mqtt-gateway DB_HOST="$GW_TEST_DB_HOST" \
    DB_PORT="$GW_TEST_DB_PORT" DB_NAME="$DB_NAME" DB_USER="$GW_TEST_DB_USER" \
    DB_PASSWORD="$GW_TEST_DB_PASSWORD" /usr/bin/mqtt-gateway --env-file "$CONFFILE" "$@"
}
sql -e "CREATE DATABASE \`$DB_NAME\`"
rc=0
out="$(gateway --check 2>&1)" || rc=$?
[[ $rc -eq 1 && $out == *"schema: missing tables"* ]] || die "--check on an empty database: status $rc: $out"
gateway --init-db || die "--init-db"
sql "$DB_NAME" -e "INSERT INTO mqtt_servers (host, port, enabled, is_default) VALUES ('127.0.0.1', 1883, 1, 1);
  INSERT INTO flows (code, topic, action) VALUES ('pkg_flow', 'pkg/+/data', 'STORE_DB')"
out="$(gateway --check 2>&1)" || die "--check: $out"
printf '%s\n' "$out"
[[ $out == *"pkg_flow  pkg/+/data  STORE_DB"* ]] || die "--check did not list the flow"
say "--init-db and --check from the installed binary: ok"

# The password as systemd passes it (LoadCredential=): no DB_PASSWORD anywhere, the file in
# $CREDENTIALS_DIRECTORY (systemd makes a private copy readable by the service user; this
# machine may have no systemd, so the copy is made here).
printf '%s\n' "$GW_TEST_DB_PASSWORD" >"$PASSWORD_FILE"
CREDENTIALS="$(mktemp -d)"
install -o "$USER_NAME" -m 0400 "$PASSWORD_FILE" "$CREDENTIALS/db_password"
chown "$USER_NAME" "$CREDENTIALS"
out="$(runuser -u "$USER_NAME" -- env -C /var/lib/mqtt-gateway DB_HOST="$GW_TEST_DB_HOST" \
  DB_PORT="$GW_TEST_DB_PORT" DB_NAME="$DB_NAME" DB_USER="$GW_TEST_DB_USER" \
  CREDENTIALS_DIRECTORY="$CREDENTIALS" /usr/bin/mqtt-gateway --env-file "$CONFFILE" --check 2>&1)" ||
  die "--check with the password from \$CREDENTIALS_DIRECTORY/db_password: $out"
say "--check with the password as a systemd credential: ok"

unit=/usr/lib/systemd/system/mqtt-gateway.service
# The gateway alone reads the settings file (--env-file): systemd must not (its parser differs on
# quoting, and the password would be in /proc/PID/environ); no core dumps with the password.
grep -q "^ExecStart=/usr/bin/mqtt-gateway --env-file $CONFFILE\$" "$unit" || die "the unit does not pass --env-file $CONFFILE"
! grep -q '^EnvironmentFile=' "$unit" || die "the unit has EnvironmentFile="
grep -q '^LimitCORE=0$' "$unit" || die "the unit has no LimitCORE=0"
grep -q "^LoadCredential=db_password:$PASSWORD_FILE\$" "$unit" || die "the unit does not load $PASSWORD_FILE as the credential db_password"
workdir="$(sed -n 's/^WorkingDirectory=//p' "$unit")"
[[ -n $workdir && "$(stat -c %U "$workdir")" == "$USER_NAME" ]] || die "WorkingDirectory '$workdir' is not the service user's"
say "unit: --env-file only, LimitCORE=0, LoadCredential=db_password, WorkingDirectory=$workdir"

if command -v systemd-analyze >/dev/null; then
  verify="$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify "$unit" 2>&1)" || die "systemd-analyze verify: $verify"
  if grep -F mqtt-gateway.service <<<"$verify"; then die "systemd-analyze verify complained"; fi
  say "systemd-analyze verify $unit: ok"
fi

# ---- remove, purge ------------------------------------------------------------------------------
dpkg -r "$PACKAGE" || die "dpkg -r"
[[ ! -e /usr/bin/mqtt-gateway ]] || die "/usr/bin/mqtt-gateway left after dpkg -r"
[[ -f $CONFFILE ]] || die "dpkg -r deleted the conffile (only purge may)"
[[ -s $PASSWORD_FILE ]] || die "dpkg -r deleted or emptied $PASSWORD_FILE (only purge may)"
dpkg -P "$PACKAGE" || die "dpkg -P"
installed=0
for f in "$CONFFILE" "$PASSWORD_FILE" /etc/mqtt-gateway /var/lib/mqtt-gateway /var/log/mqtt-gateway \
  /usr/lib/systemd/system/mqtt-gateway.service /usr/share/mqtt-gateway; do
  [[ ! -e $f ]] || die "$f left after dpkg -P"
done
if dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -q 'installed'; then die "still installed"; fi
say "removed and purged: nothing left"
say "ok"
