#!/usr/bin/env bash
# Client tests (tests/client): PostgREST's request sequence, statement for
# statement, through a real connection (psycopg 3 over TCP to
# 127.0.0.1:$PGPORT), against the installed extension in the local cluster.
#   scripts/client.sh [extra pytest arguments, e.g. -k public_key]
# With no arguments the suite runs twice: the cluster restarted without the
# preload (usage recorded in transaction), then with it (the usage engine);
# a test about one mode skips itself in the other. With arguments, once, in
# the running cluster's mode.
# Creates target/venv-client on first use (and refreshes it when
# tests/client/requirements.txt changes). Ends with "N passed, N failed" and
# exits with pytest's status.
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
export PGPORT
. "$ROOT/scripts/pytest-lib.sh"
ensure_venv || exit 1

# the cluster must answer on 127.0.0.1:$PGPORT (started here when it is not)
# and have the extension installed (make install)
if ! "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -t 5; then
    scripts/cluster.sh start || exit 1
fi
if ! "$PGBIN/psql" -X -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -Atc \
        "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_apikeys'" | grep -q 1; then
    echo "pg_apikeys is not installed in this PostgreSQL: run make install (scripts/install.sh) first" >&2
    exit 1
fi

if [ "$#" -gt 0 ]; then
    say "client tests on PostgreSQL $PG_MAJOR (tests/client, PostgREST request sequence, port $PGPORT)"
    run_pytest "$ROOT/target/test-client-pg$PG_MAJOR-pytest.log" tests/client "$@"
    exit
fi
tp=0; tf=0; status=0
for mode in in_transaction shared_memory; do
    preload=1; [ "$mode" = in_transaction ] && preload=0
    APIKEYS_PRELOAD=$preload scripts/cluster.sh restart >/dev/null || exit 1
    say "client tests on PostgreSQL $PG_MAJOR, usage recorded $mode (tests/client, port $PGPORT)"
    line=$(run_pytest "$ROOT/target/test-client-pg$PG_MAJOR-$mode-pytest.log" tests/client | tee /dev/stderr | tail -1) || status=1
    read -r p _ f _ <<<"$line"
    tp=$((tp + ${p:-0})); tf=$((tf + ${f:-1}))
done
scripts/cluster.sh restart >/dev/null
echo "$tp passed, $tf failed"
[ "$tf" = 0 ] || status=1
exit "$status"
