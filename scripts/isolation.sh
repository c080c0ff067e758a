#!/usr/bin/env bash
# Run tests/isolation against the running local cluster with PGXS's
# pg_isolation_regress (as installcheck does for isolation specs): it
# recreates the database apikeys_isolation, loads tests/isolation/setup.sql
# (roles and helpers every spec shares), runs each
# tests/isolation/specs/X.spec through isolationtester and compares the output
# with tests/isolation/expected/X.out. Results land in target/isolation
# (results/X.out, regression.diffs).
#   scripts/isolation.sh [spec ...]   (default: every spec in schedule order)
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
PG_ISOLATION_REGRESS="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/isolation/pg_isolation_regress"
if [ ! -x "$PG_ISOLATION_REGRESS" ]; then
    echo "pg_isolation_regress not found at $PG_ISOLATION_REGRESS (install postgresql-server-dev-$PG_MAJOR)" >&2
    exit 2
fi
out="$ROOT/target/isolation"
rm -rf "$out"; mkdir -p "$out"
# a fresh database with the roles and helpers every spec shares
psql_local -q -d postgres -c 'DROP DATABASE IF EXISTS apikeys_isolation' -c 'CREATE DATABASE apikeys_isolation'
psql_local -q -d apikeys_isolation -f tests/isolation/setup.sql >/dev/null
args=(--host="$PGHOST_DIR" --port="$PGPORT" --user=postgres --dbname=apikeys_isolation --use-existing
      --inputdir=tests/isolation --outputdir="$out" --bindir="$PGBIN")
if [ "$#" -gt 0 ]; then
    "$PG_ISOLATION_REGRESS" "${args[@]}" "$@"
else
    "$PG_ISOLATION_REGRESS" "${args[@]}" --schedule=tests/isolation/schedule
fi
