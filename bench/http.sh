#!/usr/bin/env bash
# make bench-http (part of make bench): requests per second through
# postrust-server for the same GET with an API key and with a JWT only, and
# the ratio of their costs (bench/http_bench.py). Uses the local test cluster
# (started when it is not), wrk (Debian's package) and postrust-server
# (installed on first use).
set -uo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
export PGPORT
. "$ROOT/scripts/pytest-lib.sh"
ensure_venv || exit 1
scripts/postrust.sh || exit 1
export POSTRUST="$PGX_HOME/bin/postrust"
if ! command -v wrk >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
"$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -t 5 || scripts/cluster.sh start || exit 1
say "HTTP bench: API key vs JWT through postrust-server (port 28850)"
"$VENV/bin/python" bench/http_bench.py | tee "$ROOT/target/bench-http.txt"
