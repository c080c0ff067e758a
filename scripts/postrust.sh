#!/usr/bin/env bash
# Install postrust-server (a PostgREST-compatible HTTP server, crates.io, MIT)
# with cargo when it is missing: about 6 minutes once, then cached in
# ~/.cargo/bin. Used by scripts/http.sh (make test's http layer) and
# bench/http.sh. Prints nothing when it is there.
set -uo pipefail
. "$(dirname "$0")/env.sh"
POSTRUST_VERSION=3.1.0
if cargo install --list 2>/dev/null | grep -q "^postrust-server v$POSTRUST_VERSION:"; then
    exit 0
fi
say "installing postrust-server $POSTRUST_VERSION (cargo install, about 6 minutes, once)"
mkdir -p "$ROOT/target"
# no --locked: its lock file pins a crate version crates.io no longer serves
if ! cargo install postrust-server --version "$POSTRUST_VERSION" > "$ROOT/target/postrust-install.log" 2>&1; then
    tail -30 "$ROOT/target/postrust-install.log"
    echo "cargo install postrust-server failed: see target/postrust-install.log" >&2
    exit 1
fi
