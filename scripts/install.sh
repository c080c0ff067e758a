#!/usr/bin/env bash
# Build pg_apikeys (release) and install it into the PostgreSQL that
# $PG_CONFIG names (PG_MAJOR picks it, see env.sh): the library, the control
# file, the install script of this version (generated from sql/*.sql), every
# upgrade script sql/pg_apikeys--A--B.sql (cargo pgrx copies those) and the
# install scripts of released versions kept in sql/ (pg_apikeys--0.1.0.sql),
# which cargo pgrx does not copy.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
say "building and installing pg_apikeys into PostgreSQL $PG_MAJOR (release)"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="--sudo"
mkdir -p target
if ! cargo pgrx install --release $SUDO --pg-config "$PG_CONFIG" > "target/install-pg$PG_MAJOR.log" 2>&1; then
    tail -40 "target/install-pg$PG_MAJOR.log"
    echo "install failed: see target/install-pg$PG_MAJOR.log" >&2
    exit 1
fi
extdir="$("$PG_CONFIG" --sharedir)/extension"
test -f "$extdir/pg_apikeys.control"
for f in sql/pg_apikeys--*.sql; do
    case "$(basename "$f")" in
        pg_apikeys--*--*.sql) ;;   # upgrade scripts: cargo pgrx copied them
        *) if [ "$(id -u)" = 0 ]; then install -m 0644 "$f" "$extdir/"; else sudo install -m 0644 "$f" "$extdir/"; fi ;;
    esac
done
