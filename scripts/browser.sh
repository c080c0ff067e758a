#!/usr/bin/env bash
# Browser tests (tests/browser): the public-key widget in headless Chromium
# (Debian's chromium and chromium-driver), its page served from two local
# origins, postgrest-js bundled from the npm package, against postrust-server
# and the installed extension in the local cluster ($PGPORT). Installs the
# two Debian packages when missing and we are root (scripts/bootstrap.sh
# does too); where they cannot be installed, the layer is skipped with a
# message. Ends with "N passed, N failed".
#   scripts/browser.sh [extra pytest arguments, e.g. -k revoked]
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
export PGPORT PG_MAJOR
. "$ROOT/scripts/pytest-lib.sh"

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing chromium and chromium-driver (Debian)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        say "browser layer skipped: Debian's chromium and chromium-driver are not installed and cannot be installed here (not root, or no apt-get); install them and rerun"
        echo "0 passed, 0 failed"
        exit 0
    fi
fi

ensure_http_stack || { echo "0 passed, 1 failed"; exit 1; }
say "browser tests on PostgreSQL $PG_MAJOR (tests/browser: $(/usr/bin/chromium --version 2>/dev/null | head -1), headless)"
run_pytest "$ROOT/target/test-browser-pg$PG_MAJOR-pytest.log" tests/browser "$@"
