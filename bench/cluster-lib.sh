# Sourced by the bench scripts that run a throw-away cluster of their own
# (bench/rls.sh, bench/import.sh). Expects PORT, DIR and the name of the
# script's cluster in TAG; sets SOCK, DATA, LOG, OUT; defines psql_b, q,
# now, elapsed, bench_cluster_start EXTRA_CONF and the EXIT trap that stops
# the cluster and wipes DIR.
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$ROOT"
export PGOPTIONS="" PGAPPNAME=pg_apikeys_bench
unset PGHOST PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE

SOCK="$DIR/sock"
DATA="$DIR/data"
LOG="$DIR/server.log"
OUT="$ROOT/target/bench"

case "$PORT" in
    28815|28817|28818|2883[0-9]|28840|28841) echo "BENCH_PORT=$PORT belongs to another cluster of this project" >&2; exit 2 ;;
esac
case "$DIR" in /tmp/pg_apikeys_bench*) ;; *) echo "BENCH_DIR must be under /tmp/pg_apikeys_bench (it is wiped)" >&2; exit 2 ;; esac
[ -f "$("$PG_CONFIG" --sharedir)/extension/pg_apikeys.control" ] || { echo "run make install first" >&2; exit 1; }
mkdir -p "$OUT"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# psql_b ROLE DB [psql args...]
psql_b() { local role="$1" db="$2"; shift 2; "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U "$role" -d "$db" "$@"; }
# q DB SQL: one value, as the superuser
q() { psql_b postgres "$1" -At -c "$2"; }
bench_cluster_stop() {
    if [ -f "$DATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true
    fi
}
bench_cluster_cleanup() {
    local s=$?
    trap - EXIT
    [ "$s" != 0 ] && [ -f "$LOG" ] && tail -20 "$LOG" >&2
    bench_cluster_stop
    rm -rf "$DIR"
    exit "$s"
}
trap bench_cluster_cleanup EXIT
trap 'exit 130' INT TERM

# bench_cluster_start "extra postgresql.conf lines": a fresh cluster in DIR
bench_cluster_start() {
    bench_cluster_stop
    rm -rf "$DIR"; mkdir -p "$DIR"; [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
    as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    as_pg mkdir -p "$SOCK"
    printf "listen_addresses = ''\nport = %s\nunix_socket_directories = '%s'\nmax_wal_size = 8GB\ncheckpoint_timeout = 30min\nlog_min_messages = warning\n%s\n" \
        "$PORT" "$SOCK" "$1" | as_pg tee -a "$DATA/postgresql.conf" >/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 120 start >/dev/null
}
