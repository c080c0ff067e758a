#!/usr/bin/env bash
# Run tests/pg_regress against the running local cluster with PGXS's
# pg_regress (as installcheck does): it drops and recreates the test database
# and compares each tests/pg_regress/sql/X.sql run with expected/X.out.
#   scripts/regress.sh [test ...]     (default: every test in schedule order)
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
PG_REGRESS="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress"
out="$ROOT/target/regress"
rm -rf "$out"; mkdir -p "$out"
args=(--host="$PGHOST_DIR" --port="$PGPORT" --user=postgres --dbname=apikeys_regress
      --inputdir=tests/pg_regress --outputdir="$out" --bindir="$PGBIN")
if [ "$#" -gt 0 ]; then
    "$PG_REGRESS" "${args[@]}" "$@"
else
    "$PG_REGRESS" "${args[@]}" --schedule=tests/pg_regress/schedule
fi
