#!/usr/bin/env bash
# Docs tests (tests/docs): every sql block of README.md, docs/managing-keys.md
# and docs/postgrest.md, run in order as written, in a throw-away cluster
# per file (ports 28830-28839, like tests/ops), against the installed
# extension; output shown in the docs is compared. Ends with
# "N passed, N failed".
#   scripts/docs.sh [extra pytest arguments, e.g. -k README]
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
export PGBIN
. "$ROOT/scripts/pytest-lib.sh"
ensure_venv || exit 1
if [ ! -f "$("$PG_CONFIG" --sharedir)/extension/pg_apikeys.control" ]; then
    echo "pg_apikeys is not installed in this PostgreSQL: run make install (scripts/install.sh) first" >&2
    exit 1
fi
say "docs tests on PostgreSQL $PG_MAJOR (tests/docs: README.md, docs/managing-keys.md, docs/postgrest.md)"
run_pytest "$ROOT/target/test-docs-pg$PG_MAJOR-pytest.log" tests/docs "$@"
