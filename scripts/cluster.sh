#!/usr/bin/env bash
# Start, stop or wipe the local PostgreSQL cluster under target/pg.
#   scripts/cluster.sh start|stop|restart|wipe|status
# PG_MAJOR picks the cluster (scripts/env.sh): 15 in target/pg on port 28815,
# 18 in target/pg18 on port 28818. The cluster runs as `postgres` when we are root, listens on a Unix socket in
# target/pg/sock and on 127.0.0.1:$PGPORT, and trusts local connections
# (a development cluster: never expose it).
# The cluster preloads the library (shared_preload_libraries = 'pg_apikeys',
# the usage engine). APIKEYS_PRELOAD=0 starts it without: usage is then
# recorded in each verify's transaction (apikeys.usage_mode() says which).
# The mode is a start option, so `restart` switches it.
set -euo pipefail
. "$(dirname "$0")/env.sh"

start() {
    mkdir -p "$ROOT/target"
    if [ "$(id -u)" = 0 ] && [ ! -e "$PG_LINK" ] && ! runuser -u postgres -- test -x "$ROOT/target"; then
        # the postgres user cannot traverse this checkout (say, under /root):
        # keep the cluster in /tmp and link it as target/pg (or target/pg18)
        local alt="/tmp/pg_apikeys-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)-$PG_MAJOR"
        mkdir -p "$alt"
        ln -sfn "$alt" "$PG_LINK"
        . "$(dirname "$0")/env.sh"
    fi
    mkdir -p "$PG_ROOT"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$PG_ROOT"
        if ! runuser -u postgres -- test -w "$PG_ROOT"; then
            echo "the postgres user cannot write $PG_ROOT" >&2
            exit 1
        fi
    fi
    if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
        say "initdb $PGDATA_DIR"
        as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
        cat >> "$PGDATA_DIR/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGHOST_DIR'
max_connections = 100
shared_buffers = 256MB
fsync = on
wal_level = replica
max_wal_senders = 4
hot_standby = on
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
CONF
        echo "host replication all 127.0.0.1/32 trust" >> "$PGDATA_DIR/pg_hba.conf"
    fi
    as_pg mkdir -p "$PGHOST_DIR"
    if as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
        return 0
    fi
    # revocations are announced on NOTIFY apikeys_revoked (off unless named)
    local opts=(-o "-c apikeys.notify_channel=apikeys_revoked")
    if [ "${APIKEYS_PRELOAD:-1}" = 1 ]; then
        opts=(-o "-c shared_preload_libraries=pg_apikeys -c apikeys.notify_channel=apikeys_revoked")
        say "starting PostgreSQL $PG_MAJOR on port $PGPORT (pg_apikeys preloaded: usage engine)"
    else
        say "starting PostgreSQL $PG_MAJOR on port $PGPORT (no preload: usage recorded in transaction)"
    fi
    # a port held by another cluster (another checkout's, say): name it
    local pidfile holder
    for pidfile in $(ps -eo args= | sed -nE 's/^[^ ]*postgres -D ([^ ]+).*/\1/p' | sed 's|$|/postmaster.pid|'); do
        if [ -r "$pidfile" ] && [ "$(sed -n 4p "$pidfile" 2>/dev/null)" = "$PGPORT" ] \
            && [ "$(dirname "$pidfile")" != "$(cd "$PGDATA_DIR" && pwd -P)" ]; then
            holder=$(dirname "$pidfile")
            echo "port $PGPORT is held by the PostgreSQL of data directory $holder (another checkout's?); stop it with: runuser -u postgres -- $PGBIN/pg_ctl -D $holder stop" >&2
            exit 1
        fi
    done
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -t 60 "${opts[@]}" start >/dev/null
}

stop() {
    if [ -f "$PGDATA_DIR/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
        say "stopping PostgreSQL"
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    wipe) stop; rm -rf "$PG_ROOT" "$PG_LINK" ;;
    status) as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status ;;
    *) echo "usage: $0 start|stop|restart|wipe|status" >&2; exit 2 ;;
esac
