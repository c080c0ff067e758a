# Shared settings for the scripts; sourced, never run.
# Override any of them from the environment.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR="${PG_MAJOR:-15}"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config}"
PGBIN="${PGBIN:-/usr/lib/postgresql/${PG_MAJOR}/bin}"
PGPORT="${PGPORT:-28815}"
# target/pg may be a link to a directory the postgres user can reach (see
# cluster.sh); every path below is the resolved one
PG_ROOT="$(readlink -f "$ROOT/target/pg" 2>/dev/null || echo "$ROOT/target/pg")"
PGHOST_DIR="$PG_ROOT/sock"
PGDATA_DIR="$PG_ROOT/data"
PGLOG="$PG_ROOT/server.log"
PGX_HOME="${CARGO_HOME:-$HOME/.cargo}"
export PATH="$PGX_HOME/bin:$PATH"

# Run a command as the cluster's owner: `postgres` when we are root
# (initdb and postgres refuse to run as root), ourselves otherwise.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# psql against the local cluster as a superuser
psql_local() {
    "$PGBIN/psql" -X -v ON_ERROR_STOP=1 -h "$PGHOST_DIR" -p "$PGPORT" -U postgres "$@"
}
