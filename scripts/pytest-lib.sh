# Shared by the scripts of the Python test layers; sourced after env.sh.
# The Python test suites run in one venv, target/venv-client, pinned by
# tests/client/requirements.txt; the npm packages of the http and browser
# layers live in tests/http/clients/node_modules, pinned by its
# package-lock.json.

# keep __pycache__ and the pytest cache out of the source tree; never prompt
export PYTHONDONTWRITEBYTECODE=1 PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
VENV="$ROOT/target/venv-client"

# Create the venv on first use (installing python3-venv as root when Python
# has none) and install the pinned set when it changed.
ensure_venv() {
    local req="$ROOT/tests/client/requirements.txt"
    mkdir -p "$ROOT/target"
    if [ ! -x "$VENV/bin/python" ]; then
        say "python venv $VENV"
        rm -rf "$VENV"
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                say "installing python3-venv"
                apt-get update -qq
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
                python3 -m venv "$VENV" || return 1
            else
                echo "python3 -m venv failed: install python3-venv (Debian) and rerun" >&2
                return 1
            fi
        fi
    fi
    # install only when the pinned set changed since the last successful install
    if ! cmp -s "$req" "$VENV/.requirements.installed"; then
        say "pip install -r tests/client/requirements.txt"
        "$VENV/bin/pip" install -q -r "$req" || return 1
        cp "$req" "$VENV/.requirements.installed"
    fi
}

# Node.js and npm (Debian's, installed as root when missing) and the npm
# packages of tests/http/clients (@supabase/postgrest-js, esbuild), installed
# with `npm ci` from the committed package-lock.json when it changed since
# the last successful install.
NODE_DIR="$ROOT/tests/http/clients"
ensure_npm() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            say "installing nodejs and npm (Debian)"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null || return 1
        else
            echo "node and npm are missing: install nodejs and npm (Debian) and rerun" >&2
            return 1
        fi
    fi
    if ! cmp -s "$NODE_DIR/package-lock.json" "$NODE_DIR/node_modules/.package-lock.installed"; then
        say "npm ci in tests/http/clients (postgrest-js, esbuild)"
        (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) || return 1
        cp "$NODE_DIR/package-lock.json" "$NODE_DIR/node_modules/.package-lock.installed"
    fi
}

# What the http and browser layers share: the venv, the npm packages,
# postrust-server (scripts/postrust.sh; $POSTRUST for the tests) and the
# local cluster, started when it is not running.
ensure_http_stack() {
    ensure_venv || return 1
    ensure_npm || return 1
    scripts/postrust.sh || return 1
    export POSTRUST="$PGX_HOME/bin/postrust"
    if ! "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -t 5; then
        scripts/cluster.sh start || return 1
    fi
}

# run_pytest LOG DIR [pytest args...]: run pytest on DIR, tee to LOG, print
# one closing line in the shape scripts/test.sh reads ("N passed, N failed")
# and return pytest's status.
run_pytest() {
    local log="$1" dir="$2" status summary passed failed errors
    shift 2
    "$VENV/bin/python" -m pytest "$dir" -q -rA "$@" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    summary=$(grep -E '^=*.*[0-9]+ (passed|failed|error|errors)( |,|$)' "$log" | tail -1)
    passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || true)
    failed=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || true)
    errors=$(grep -oE '[0-9]+ errors?' <<<"$summary" | grep -oE '[0-9]+' || true)
    passed=${passed:-0}
    failed=$(( ${failed:-0} + ${errors:-0} ))
    # pytest failed without counting a failure (a usage or collection error)
    [ "$status" != 0 ] && [ "$failed" = 0 ] && failed=1
    echo "$passed passed, $failed failed"
    return "$status"
}
