#!/usr/bin/env bash
# Run tests/pg_regress against the local cluster with PGXS's pg_regress (as
# installcheck does): it drops and recreates the test database and compares
# each tests/pg_regress/sql/X.sql run with expected/X.out (or a variant
# X_1.out: files whose output depends on how use is recorded have one per
# mode, and print apikeys.usage_mode() first, so neither variant passes in
# the other mode).
#   scripts/regress.sh            the schedule twice: the cluster restarted
#                                 without the preload (in_transaction), then
#                                 with it (shared_memory); results in
#                                 target/regress-<mode>/
#   scripts/regress.sh test ...   those tests, in the running cluster's mode,
#                                 results in target/regress/
# Ends with pg_regress's own summary line for all runs together.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
PG_REGRESS="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress"

run() {
    local out="$1"; shift
    rm -rf "$out"; mkdir -p "$out"
    "$PG_REGRESS" --host="$PGHOST_DIR" --port="$PGPORT" --user=postgres --dbname=apikeys_regress \
        --inputdir=tests/pg_regress --outputdir="$out" --bindir="$PGBIN" "$@"
}

if [ "$#" -gt 0 ]; then
    run "$ROOT/target/regress" "$@"
    exit
fi

. "$ROOT/scripts/modes-lib.sh"
in_both_modes regress tests/pg_regress/schedule "${REGRESS_MODES:-in_transaction shared_memory}"
