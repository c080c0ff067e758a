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

total=0; failed=0; status=0
for mode in ${REGRESS_MODES:-in_transaction shared_memory}; do
    preload=1; [ "$mode" = in_transaction ] && preload=0
    APIKEYS_PRELOAD=$preload scripts/cluster.sh restart >/dev/null
    say "pg_regress, usage recorded $mode"
    log="$ROOT/target/regress-$mode.log"
    run "$ROOT/target/regress-$mode" --schedule=tests/pg_regress/schedule 2>&1 | tee "$log" || status=1
    # pg_regress's closing line: "All N tests passed." or "F of N tests failed."
    line=$(grep -E 'tests (passed|failed)' "$log" | tail -1)
    if [[ "$line" =~ All\ ([0-9]+)\ tests\ passed ]]; then
        total=$((total + BASH_REMATCH[1]))
    elif [[ "$line" =~ ([0-9]+)\ of\ ([0-9]+)\ tests\ failed ]]; then
        total=$((total + BASH_REMATCH[2])); failed=$((failed + BASH_REMATCH[1]))
    else
        failed=$((failed + 1)); total=$((total + 1))
    fi
done
# leave the cluster as make run starts it
scripts/cluster.sh restart >/dev/null
echo
if [ "$failed" = 0 ] && [ "$status" = 0 ]; then
    echo "# All $total tests passed."
else
    echo "# $failed of $total tests failed."
    exit 1
fi
