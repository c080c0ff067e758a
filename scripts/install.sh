#!/usr/bin/env bash
# Build pg_apikeys (release) and install it into the PostgreSQL that
# $PG_CONFIG names.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
say "building and installing pg_apikeys into PostgreSQL $PG_MAJOR (release)"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="--sudo"
mkdir -p target
if ! cargo pgrx install --release $SUDO --pg-config "$PG_CONFIG" > target/install.log 2>&1; then
    tail -40 target/install.log
    echo "install failed: see target/install.log" >&2
    exit 1
fi
test -f "$("$PG_CONFIG" --sharedir)/extension/pg_apikeys.control"
