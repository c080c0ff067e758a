#!/usr/bin/env bash
# Client tests (tests/client): PostgREST's request sequence, statement for
# statement, through a real connection (psycopg 3 over TCP to
# 127.0.0.1:$PGPORT), against the installed extension in the local cluster.
#   scripts/client.sh [extra pytest arguments, e.g. -k public_key]
# Creates target/venv-client on first use (and refreshes it when
# tests/client/requirements.txt changes). Ends with "N passed, N failed" and
# exits with pytest's status.
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
export PGPORT
# keep __pycache__ and the pytest cache out of the source tree; never prompt
export PYTHONDONTWRITEBYTECODE=1 PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

venv="$ROOT/target/venv-client"
req="$ROOT/tests/client/requirements.txt"
mkdir -p "$ROOT/target"

if [ ! -x "$venv/bin/python" ]; then
    say "python venv $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        rm -rf "$venv"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            say "installing python3-venv"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv" || exit 1
        else
            echo "python3 -m venv failed: install python3-venv (Debian) and rerun" >&2
            exit 1
        fi
    fi
fi
# install only when the pinned set changed since the last successful install
if ! cmp -s "$req" "$venv/.requirements.installed"; then
    say "pip install -r tests/client/requirements.txt"
    "$venv/bin/pip" install -q -r "$req" || exit 1
    cp "$req" "$venv/.requirements.installed"
fi

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

say "client tests (tests/client, PostgREST request sequence, port $PGPORT)"
log="$ROOT/target/test-client.log"
"$venv/bin/python" -m pytest tests/client -q -rA "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# one closing line in the shape scripts/test.sh prints: "N passed, N failed"
summary=$(grep -E '^=*.*[0-9]+ (passed|failed|error|errors)( |,|$)' "$log" | tail -1)
passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || true)
failed=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || true)
errors=$(grep -oE '[0-9]+ errors?' <<<"$summary" | grep -oE '[0-9]+' || true)
passed=${passed:-0}
failed=$(( ${failed:-0} + ${errors:-0} ))
# pytest failed without counting a failure (a usage or collection error)
[ "$status" != 0 ] && [ "$failed" = 0 ] && failed=1
echo "$passed passed, $failed failed"
exit "$status"
