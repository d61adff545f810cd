#!/usr/bin/env bash
# Make sure the system packages the integration tests need are installed:
#
#   redis-server  redis-server binary (tests/servers.py RedisServer)
#   postgresql    initdb / pg_ctl / postgres (tests/servers.py PostgresServer)
#   chromium      headless browser tests (chromium-driver is NOT needed)
#
# Idempotent and silent when everything is present.  Missing packages are
# installed with apt-get when running as root on Debian/Ubuntu; otherwise the
# script names the packages to install and exits 1.
#
# The overrides honoured by tests/servers.py count as "present":
# REDIS_SERVER_BIN, POSTGRES_BINDIR, CHROMIUM_BIN.
#
# Usage: scripts/system-deps.sh [--check]
#   --check   only report; never install (exit 1 if something is missing)
set -euo pipefail

check_only=0
case "${1:-}" in
    "") ;;
    --check) check_only=1 ;;
    -h | --help)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [--check]" >&2
        exit 2
        ;;
esac

is_exe() { [ -n "${1:-}" ] && [ -f "$1" ] && [ -x "$1" ]; }

have_redis() {
    is_exe "${REDIS_SERVER_BIN:-}" || is_exe /usr/bin/redis-server ||
        command -v redis-server >/dev/null 2>&1
}

have_postgres() {
    local dir
    for dir in "${POSTGRES_BINDIR:-/nonexistent}" /usr/lib/postgresql/*/bin; do
        if is_exe "$dir/initdb" && is_exe "$dir/pg_ctl" && is_exe "$dir/postgres"; then
            return 0
        fi
    done
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 &&
        command -v postgres >/dev/null 2>&1
}

have_chromium() {
    is_exe "${CHROMIUM_BIN:-}" || is_exe /usr/bin/chromium ||
        is_exe /usr/bin/chromium-browser ||
        command -v chromium >/dev/null 2>&1 ||
        command -v chromium-browser >/dev/null 2>&1
}

missing_packages() {
    local missing=()
    have_redis || missing+=(redis-server)
    have_postgres || missing+=(postgresql)
    have_chromium || missing+=(chromium)
    echo "${missing[@]+"${missing[@]}"}"
}

read -r -a missing <<<"$(missing_packages)"
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

can_apt=0
if [ "$(id -u)" -eq 0 ] && [ -r /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
    can_apt=1
fi

if [ "$check_only" -eq 1 ] || [ "$can_apt" -eq 0 ]; then
    {
        echo "system-deps: missing system packages: ${missing[*]}"
        echo "  install them with (Debian/Ubuntu, as root):"
        echo "    apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
        if [ "$check_only" -eq 0 ]; then
            echo "  (or re-run $0 as root on Debian/Ubuntu to install them automatically)"
        fi
    } >&2
    exit 1
fi

echo "system-deps: installing ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
# Wait (instead of failing) if another apt/dpkg run holds the lock.
apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
apt-get "${apt_opts[@]}" -qq update
apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}"

read -r -a still_missing <<<"$(missing_packages)"
if [ "${#still_missing[@]}" -ne 0 ]; then
    echo "system-deps: still missing after apt-get install: ${still_missing[*]}" >&2
    exit 1
fi
echo "system-deps: installed ${missing[*]}" >&2
