#!/usr/bin/env bash
# Run tests/isolation against the running local cluster with PGXS's
# pg_isolation_regress (as installcheck does for isolation specs): it
# recreates the database apikeys_isolation, loads tests/isolation/setup.sql
# (roles and helpers every spec shares), runs each
# tests/isolation/specs/X.spec through isolationtester and compares the output
# with tests/isolation/expected/X.out. Results land in target/isolation
# (results/X.out, regression.diffs).
# Specs whose output depends on how use is recorded have a variant per mode
# (X.out without the preload, X_1.out with it) and print usage_mode().
#   scripts/isolation.sh              the schedule twice: the cluster
#                                     restarted without the preload, then with
#                                     it (target/isolation-<mode>)
#   scripts/isolation.sh spec ...     those specs in the running cluster's mode
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
PG_ISOLATION_REGRESS="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/isolation/pg_isolation_regress"
if [ ! -x "$PG_ISOLATION_REGRESS" ]; then
    echo "pg_isolation_regress not found at $PG_ISOLATION_REGRESS (install postgresql-server-dev-$PG_MAJOR)" >&2
    exit 2
fi
run() {
    local out="$1"; shift
    rm -rf "$out"; mkdir -p "$out"
    # a fresh database with the roles and helpers every spec shares
    psql_local -q -d postgres -c 'DROP DATABASE IF EXISTS apikeys_isolation' -c 'CREATE DATABASE apikeys_isolation'
    psql_local -q -d apikeys_isolation -f tests/isolation/setup.sql >/dev/null
    "$PG_ISOLATION_REGRESS" --host="$PGHOST_DIR" --port="$PGPORT" --user=postgres \
        --dbname=apikeys_isolation --use-existing \
        --inputdir=tests/isolation --outputdir="$out" --bindir="$PGBIN" "$@"
}
if [ "$#" -gt 0 ]; then
    run "$ROOT/target/isolation" "$@"
    exit
fi
. "$ROOT/scripts/modes-lib.sh"
in_both_modes isolation tests/isolation/schedule "${ISOLATION_MODES:-in_transaction shared_memory}"
