#!/usr/bin/env bash
# Install what building and testing pg_apikeys needs, skipping what is there:
# Debian packages (and python3-venv for the client tests), cargo-pgrx 0.18.1,
# and `cargo pgrx init` for PostgreSQL 15.
set -euo pipefail
. "$(dirname "$0")/env.sh"

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

pkgs=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# the client test suite (tests/client) runs in a Python venv
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.1"; then
    say "installing cargo-pgrx 0.18.1 (takes about 6 minutes)"
    cargo install cargo-pgrx --version 0.18.1 --locked
fi

if ! grep -q "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
    say "cargo pgrx init --pg$PG_MAJOR"
    cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
fi
