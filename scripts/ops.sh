#!/usr/bin/env bash
# Ops tests (tests/ops): dump and restore, crash recovery (kill -9 under
# load), hot standby, logical replication (a 15 publisher, PG15_BIN), each
# in throw-away clusters of its own under
# /tmp/pg_apikeys_ops on ports 28830-28839, against the installed extension.
# Never touches the local cluster on $PGPORT.
#   scripts/ops.sh [ops|upgrade] [extra pytest arguments, e.g. -k standby]
# `ops` (the default) runs every module but test_upgrade.py; `upgrade` runs
# test_upgrade.py alone (make test shows it as a layer of its own).
# Runs as root (the clusters then belong to `postgres`) or as a normal user.
# Shares target/venv-client with scripts/client.sh (created on first use,
# refreshed when tests/client/requirements.txt changes). Ends with
# "N passed, N failed" and exits with pytest's status.
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
export PGBIN
# the logical replication test's publisher is PostgreSQL 15 on every layer
export PG15_BIN="${PG15_BIN:-/usr/lib/postgresql/15/bin}"
. "$ROOT/scripts/pytest-lib.sh"
ensure_venv || exit 1

# the extension must be installed (make install); no running cluster needed
if [ ! -f "$("$PG_CONFIG" --sharedir)/extension/pg_apikeys.control" ]; then
    echo "pg_apikeys is not installed in this PostgreSQL: run make install (scripts/install.sh) first" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "running as root needs the postgres user (initdb refuses root)" >&2
    exit 1
fi

case "${1:-ops}" in
    upgrade) shift; what=upgrade; sel=(tests/ops/test_upgrade.py) ;;
    ops) [ "$#" -gt 0 ] && shift; what=ops; sel=(tests/ops --ignore=tests/ops/test_upgrade.py) ;;
    *) what=ops; sel=(tests/ops) ;;   # bare pytest arguments: every module
esac
say "$what tests on PostgreSQL $PG_MAJOR (tests/ops; ports 28830-28839)"
run_pytest "$ROOT/target/test-$what-pg$PG_MAJOR-pytest.log" "${sel[@]}" "$@"
