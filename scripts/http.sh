#!/usr/bin/env bash
# HTTP tests (tests/http): the PostgREST flow through postrust-server, a
# PostgREST-compatible server, against the installed extension in the local
# cluster ($PGPORT), sent with plain HTTP requests and through the client
# libraries postgrest-js (Node.js) and postgrest-py (test_clients.py); the
# server listens on 127.0.0.1:28850 (28853 for PostgreSQL 18). Installs
# postrust-server 3.1.0 with cargo on first use (about 6 minutes, then
# cached in ~/.cargo/bin) and the npm packages of tests/http/clients with
# `npm ci`. Ends with "N passed, N failed".
#   scripts/http.sh [extra pytest arguments, e.g. -k widget]
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
export PGPORT
. "$ROOT/scripts/pytest-lib.sh"
ensure_http_stack || { echo "0 passed, 1 failed"; exit 1; }
say "http tests on PostgreSQL $PG_MAJOR (tests/http: postrust-server, PostgREST's flow)"
run_pytest "$ROOT/target/test-http-pg$PG_MAJOR-pytest.log" tests/http "$@"
