#!/usr/bin/env bash
# make bench: pgbench harness for pg_apikeys. See bench/README.md.
#
# Runs against a throw-away cluster of its own (port $BENCH_PORT, Unix socket
# only, data under $BENCH_DIR), never the development cluster (28815), the
# test clusters (28817, 28830-28839). The cluster is stopped and removed at
# the end unless BENCH_KEEP=1. Works as root (the cluster then belongs to
# `postgres`) and as a normal user. Needs the extension installed.
#
# Settings (environment):
#   BENCH_SIZES="10000 1000000"  key counts, one database each (10000000 on request)
#   BENCH_SECONDS=15             length of one pgbench run of (a), (b), (c)
#   BENCH_ROUNDS=3               alternating rounds of (a) (b) (c), and of (d)
#   BENCH_MINT_SECONDS=10        length of one (d) run
#   BENCH_CLIENTS=2              pgbench -c (and -j, unless BENCH_JOBS)
#   BENCH_COLD_KEYS=5000         keys per cold set (at most a quarter of the size)
#   BENCH_MEM_VERIFIES=1000000   verifies in one backend for the memory check (0: skip)
#   BENCH_LOAD_JOBS=2            parallel psql sessions minting / warming keys
#   BENCH_BATCH=50000            keys per minting transaction
#   BENCH_USAGE_SLOTS=1048576    apikeys.usage_slots of the bench cluster (at 1 M keys
#                                drawn at random, one flush interval sees ~300 000 distinct keys)
#   BENCH_FLUSH_KEYS=100000      distinct keys in the measured usage flush (at most what is left)
#   BENCH_LIMIT_KEYS=100000      keys given a rate limit and credits for (e) check_key
#   BENCH_HOT_LIMIT=1000         rate limit per second of the one hot key
#   BENCH_SHARED_BUFFERS         default: enough for the largest size
#   BENCH_PUBLISH=1              copy the chart to docs/performance.png
#   BENCH_KEEP=1                 leave the cluster running (and its data) at the end
#   BENCH_PORT=28840  BENCH_DIR=/tmp/pg_apikeys_bench
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
export PGOPTIONS="" PGAPPNAME=pg_apikeys_bench
unset PGHOST PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE

PORT="${BENCH_PORT:-28840}"
DIR="${BENCH_DIR:-/tmp/pg_apikeys_bench}"
SIZES="${BENCH_SIZES:-10000 1000000}"
SECS="${BENCH_SECONDS:-15}"
ROUNDS="${BENCH_ROUNDS:-3}"
MINT_SECS="${BENCH_MINT_SECONDS:-10}"
CLIENTS="${BENCH_CLIENTS:-2}"
JOBS="${BENCH_JOBS:-$CLIENTS}"
COLD="${BENCH_COLD_KEYS:-5000}"
MEM_N="${BENCH_MEM_VERIFIES:-1000000}"
LOAD_JOBS="${BENCH_LOAD_JOBS:-2}"
BATCH="${BENCH_BATCH:-50000}"
USAGE_SLOTS="${BENCH_USAGE_SLOTS:-1048576}"
FLUSH_KEYS="${BENCH_FLUSH_KEYS:-100000}"
LIMIT_KEYS="${BENCH_LIMIT_KEYS:-100000}"
HOT_LIMIT="${BENCH_HOT_LIMIT:-1000}"
WARMUP_SECS=2
OUT="$ROOT/target/bench"
SOCK="$DIR/sock"
DATA="$DIR/data"
LOG="$DIR/server.log"
BENCH_SRC="$ROOT/bench"

case "$PORT" in
    28815|28817|2883[0-9]) echo "BENCH_PORT=$PORT belongs to the dev or test clusters" >&2; exit 2 ;;
esac
case "$DIR" in
    /tmp/pg_apikeys_bench*) ;;
    *) [ "${BENCH_DIR_OK:-}" = 1 ] || { echo "BENCH_DIR must be under /tmp/pg_apikeys_bench (it is wiped)" >&2; exit 2; } ;;
esac
for n in $SIZES; do
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 100 ] || { echo "BENCH_SIZES: '$n' is not a count >= 100" >&2; exit 2; }
done
SIZES=$(tr ' ' '\n' <<<"$SIZES" | grep . | sort -n | uniq | tr '\n' ' ')
MAX_N=$(tr ' ' '\n' <<<"$SIZES" | grep . | tail -1)

if [ ! -f "$("$PG_CONFIG" --sharedir)/extension/pg_apikeys.control" ]; then
    echo "pg_apikeys is not installed in this PostgreSQL: run make install first" >&2
    exit 1
fi
for b in initdb pg_ctl psql pgbench; do
    [ -x "$PGBIN/$b" ] || { echo "$PGBIN/$b is missing" >&2; exit 1; }
done
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "running as root needs the postgres user (initdb refuses root)" >&2
    exit 1
fi

# shared_buffers: the verify path (keys, key_hashes, bench.tokens and their
# indexes) takes about 0.8 kB a key; allow 1.2 kB a key + 512 MB, at least
# 1 GB, at most half the machine's memory
mem_mb=$(awk '/^MemTotal/ {print int($2/1024)}' /proc/meminfo)
sb_mb=$(( MAX_N * 12 / 10 / 1024 + 512 ))
[ "$sb_mb" -lt 1024 ] && sb_mb=1024
[ "$sb_mb" -gt $((mem_mb / 2)) ] && sb_mb=$((mem_mb / 2))
SHARED_BUFFERS="${BENCH_SHARED_BUFFERS:-${sb_mb}MB}"

mkdir -p "$OUT"
RUNS="$OUT/runs.csv"
FACTS="$OUT/facts.csv"
PGB_LOG="$OUT/pgbench.log"
echo "size,phase,round,script,role,clients,seconds,txns,tps,failed,wal_bytes,writes,lock_waits" >"$RUNS"
echo "size,key,value" >"$FACTS"
: >"$PGB_LOG"

fact() { echo "$1,$2,$3" >>"$FACTS"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- cluster
psql_b() { # psql_b ROLE DB [args...]
    local role="$1" db="$2"
    shift 2
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U "$role" -d "$db" "$@"
}
q() { # q DB SQL: one value, as the superuser
    psql_b postgres "$1" -At -c "$2"
}

cluster_stop() {
    if [ -f "$DATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true
    fi
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$status" != 0 ] && [ -f "$LOG" ]; then
        echo "--- bench failed; last lines of $LOG:" >&2
        tail -20 "$LOG" >&2 || true
    fi
    if [ "${BENCH_KEEP:-}" = 1 ]; then
        say "BENCH_KEEP=1: cluster left running: psql -h $SOCK -p $PORT -U postgres"
    else
        cluster_stop
        rm -rf "$DIR"
    fi
    exit "$status"
}

cluster_start() {
    cluster_stop
    rm -rf "$DIR"
    mkdir -p "$DIR"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR"; fi
    say "initdb $DATA (shared_buffers $SHARED_BUFFERS)"
    as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    as_pg mkdir -p "$SOCK"
    as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<CONF
# pg_apikeys bench (bench/run.sh): a throw-away cluster, Unix socket only
listen_addresses = ''
port = $PORT
unix_socket_directories = '$SOCK'
max_connections = 30
shared_buffers = $SHARED_BUFFERS
# durability as shipped: fsync on, synchronous_commit on, full_page_writes on
fsync = on
synchronous_commit = on
max_wal_size = 8GB
checkpoint_timeout = 30min
# minimal logging; lock waits longer than 1 ms are logged and counted
log_min_messages = warning
log_checkpoints = off
log_lock_waits = on
deadlock_timeout = 1ms
log_line_prefix = '%m [%p] %q%u@%d '
# steady state = every key used within the interval: the bench warms every
# key once, then runs for less than an hour
apikeys.last_used_interval = 3600
# the usage engine (its cold phase runs once without it too: cluster_mode)
shared_preload_libraries = 'pg_apikeys'
apikeys.usage_slots = $USAGE_SLOTS
apikeys.limit_slots = 262144
CONF
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 120 start >/dev/null
}

# cluster_mode shared_memory|in_transaction: restart the cluster with or
# without the preload (the same data, a cold cache: callers prewarm if needed)
cluster_mode() {
    local opts=()
    [ "$1" = in_transaction ] && opts=(-o "-c shared_preload_libraries=")
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 120 "${opts[@]}" start >/dev/null
}

# flush_usage DB: the usage engine writes what is pending; prints "seconds wal_bytes"
flush_usage() {
    local lsn0 lsn1 t0
    lsn0=$(q "$1" "SELECT pg_current_wal_insert_lsn()")
    t0=$(now)
    [ "$(q "$1" "SELECT apikeys.flush_usage(600000)")" = t ] || { echo "flush_usage timed out" >&2; return 1; }
    local secs; secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
    lsn1=$(q "$1" "SELECT pg_current_wal_insert_lsn()")
    echo "$secs $(q "$1" "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")"
}

# ---------------------------------------------------------------- pgbench
# run_pgbench SIZE PHASE ROUND SCRIPT ROLE DB [pgbench args...]: one run,
# recorded in runs.csv with its WAL bytes, keys.n_tup_upd delta and lock waits
run_pgbench() {
    local size="$1" phase="$2" round="$3" script="$4" role="$5" db="$6"
    shift 6
    local lsn0 lsn1 upd0 upd1 log0 out tps txns failed wal writes waits secs t0
    lsn0=$(q "$db" "SELECT pg_current_wal_insert_lsn()")
    upd0=$(q "$db" "SELECT pg_stat_clear_snapshot(); SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'apikeys.keys'::regclass" | tail -1)
    log0=$(wc -c <"$LOG")
    t0=$(now)
    echo "### $size $phase $round $script: pgbench -n -M prepared -c $CLIENTS -j $JOBS $* -U $role $db" >>"$PGB_LOG"
    if ! out=$(cd "$BENCH_SRC" && "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$JOBS" \
            -h "$SOCK" -p "$PORT" -U "$role" -f "$script.sql" "$@" "$db" 2>&1); then
        echo "$out" >>"$PGB_LOG"
        echo "$out" | tail -15 >&2
        echo "pgbench failed ($script, $size keys)" >&2
        return 1
    fi
    secs=$(elapsed "$t0")
    lsn1=$(q "$db" "SELECT pg_current_wal_insert_lsn()")
    echo "$out" >>"$PGB_LOG"
    echo "WAL $lsn0 .. $lsn1" >>"$PGB_LOG"
    sleep 1 # backends flush their table statistics when they exit
    upd1=$(q "$db" "SELECT pg_stat_clear_snapshot(); SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'apikeys.keys'::regclass" | tail -1)
    wal=$(q "$db" "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
    tps=$(sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\).*/\1/p' <<<"$out")
    txns=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$out")
    failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' <<<"$out")
    waits=$(tail -c +"$((log0 + 1))" "$LOG" | grep -c 'still waiting for' || true)
    writes=$((upd1 - upd0))
    [ -n "$tps" ] && [ -n "$txns" ] || { echo "$out" | tail -15 >&2; echo "cannot read pgbench's output" >&2; return 1; }
    echo "$size,$phase,$round,$script,$role,$CLIENTS,$secs,$txns,$tps,${failed:-0},$wal,$writes,$waits" >>"$RUNS"
    printf '  %-8s %-6s r%-2s %-12s %10.0f tps  %9s txns  %8.2f WAL B/txn  %6s writes  %s lock waits\n' \
        "$size" "$phase" "$round" "$script" "$tps" "$txns" "$(awk -v w="$wal" -v t="$txns" 'BEGIN { print (t > 0 ? w / t : 0) }')" \
        "$writes" "$waits"
}

# ---------------------------------------------------------------- one size
# keys of a token range [a, b] with last_used_at set
used_keys() {
    q "$1" "SELECT count(k.last_used_at) FROM bench.tokens t
              JOIN apikeys.key_hashes h ON h.hash = sha256(convert_to(t.token, 'UTF8'))
              JOIN apikeys.keys k ON k.id = h.key_id
             WHERE t.i BETWEEN $2 AND $3"
}

# parallel JOBS sessions, each running its share of the statements on stdin
# (one per line), as ROLE; fails if any session fails
parallel_sql() {
    local role="$1" db="$2" jobs="$3" tmp pids=() j status=0
    tmp=$(mktemp -d)
    awk -v jobs="$jobs" -v dir="$tmp" '{ print > (dir "/" ((NR - 1) % jobs) ".sql") }'
    for f in "$tmp"/*.sql; do
        psql_b "$role" "$db" -f "$f" >/dev/null &
        pids+=($!)
    done
    for j in "${pids[@]}"; do wait "$j" || status=1; done
    rm -rf "$tmp"
    return "$status"
}

bench_size() {
    local n="$1" db="bench_$1" t0 ws mint_ws cold c2 order round s
    say "$n keys: database $db"
    psql_b postgres postgres -c "CREATE DATABASE $db"
    psql_b postgres "$db" -v n="$n" -f "$BENCH_SRC/setup.sql" >/dev/null
    ws=$(q "$db" "SELECT id FROM apikeys.workspaces WHERE name = 'bench'")
    mint_ws=$(q "$db" "SELECT id FROM apikeys.workspaces WHERE name = 'bench-mint'")

    # -- load: N keys through create_key, in batches, LOAD_JOBS sessions
    say "$n keys: minting through apikeys.create_key ($LOAD_JOBS sessions, $BATCH per transaction)"
    t0=$(now)
    awk -v n="$n" -v b="$BATCH" -v ws="$ws" 'BEGIN {
        for (a = 1; a <= n; a += b) {
            e = a + b - 1; if (e > n) e = n
            printf "INSERT INTO bench.tokens SELECT i, (r).key FROM (SELECT i, apikeys.create_key('\''%s'\'') AS r FROM generate_series(%d, %d) i OFFSET 0) s;\n", ws, a, e
        }
    }' </dev/null | parallel_sql postgres "$db" "$LOAD_JOBS"
    local load_s
    load_s=$(elapsed "$t0")
    [ "$(q "$db" "SELECT count(*) FROM bench.tokens")" = "$n" ] || { echo "minting lost keys" >&2; return 1; }
    fact "$n" load_s "$load_s"
    fact "$n" load_keys_per_s "$(awk -v n="$n" -v s="$load_s" 'BEGIN { printf "%.0f", n / s }')"
    say "$n keys minted in ${load_s} s ($(awk -v n="$n" -v s="$load_s" 'BEGIN { printf "%.0f", n / s }') keys/s)"
    # (d)'s bare tables start as large as keys / key_hashes, so both inserts
    # go into indexes of the same size
    t0=$(now)
    psql_b postgres "$db" -c "INSERT INTO bench.bare_keys SELECT * FROM apikeys.keys" \
        -c "INSERT INTO bench.bare_hashes SELECT * FROM apikeys.key_hashes"
    fact "$n" bare_copy_s "$(elapsed "$t0")"
    t0=$(now)
    psql_b postgres "$db" -c "VACUUM (ANALYZE) apikeys.keys, apikeys.key_hashes, apikeys.audit_log, bench.tokens, bench.bare_keys, bench.bare_hashes"
    fact "$n" vacuum_after_load_s "$(elapsed "$t0")"

    # -- cold: sets of never-used keys, each verified through pgbench
    cold=$COLD
    [ "$cold" -gt $((n / 4)) ] && cold=$((n / 4))
    cold=$((cold / CLIENTS * CLIENTS))
    c2=$((2 * cold))
    fact "$n" cold_keys "$cold"
    say "$n keys: cold verifies ($cold never-used keys per set), usage engine"
    psql_b postgres "$db" -At -f "$BENCH_SRC/prewarm.sql" >/dev/null
    local fl
    # spread: each key once, the clients on different keys; then the flush
    # that writes their use (time and WAL, amortised per verify)
    run_pgbench "$n" cold 5 cold_floor postgres "$db" -t $((cold / CLIENTS)) -D k=0 -D base=0 -D stride="$CLIENTS" -D spread=1
    run_pgbench "$n" cold 1 cold bench_client "$db" -t $((cold / CLIENTS)) -D k=0 -D base=0 -D stride="$CLIENTS" -D spread=1
    read -r -a fl <<<"$(flush_usage "$db")"
    fact "$n" cold_spread_flush_s "${fl[0]}"
    fact "$n" cold_spread_flush_wal "${fl[1]}"
    fact "$n" cold_spread_used_keys "$(used_keys "$db" 1 "$cold")"
    # contended: every client verifies the same keys in the same order
    run_pgbench "$n" cold 2 cold bench_client "$db" -t "$cold" -D k=0 -D base="$cold" -D stride=1 -D spread=0
    read -r -a fl <<<"$(flush_usage "$db")"
    fact "$n" cold_contended_flush_wal "${fl[1]}"
    fact "$n" cold_contended_used_keys "$(used_keys "$db" $((cold + 1)) "$c2")"
    # again, within the interval: no writes expected
    run_pgbench "$n" cold 3 cold bench_client "$db" -t $((cold / CLIENTS)) -D k=0 -D base=0 -D stride="$CLIENTS" -D spread=1
    read -r -a fl <<<"$(flush_usage "$db")"
    fact "$n" cold_again_flush_wal "${fl[1]}"
    # the same spread, one more set of never-used keys, without the preload:
    # use recorded in each verify's transaction (the mode of old)
    say "$n keys: cold verifies without the preload (usage recorded in transaction)"
    cluster_mode in_transaction
    psql_b postgres "$db" -At -f "$BENCH_SRC/prewarm.sql" >/dev/null
    run_pgbench "$n" cold 6 cold_floor postgres "$db" -t $((cold / CLIENTS)) -D k=0 -D base="$c2" -D stride="$CLIENTS" -D spread=1
    run_pgbench "$n" cold 4 cold bench_client "$db" -t $((cold / CLIENTS)) -D k=0 -D base="$c2" -D stride="$CLIENTS" -D spread=1
    fact "$n" cold_tx_used_keys "$(used_keys "$db" $((c2 + 1)) $((c2 + cold)))"
    cluster_mode shared_memory
    fact "$n" usage_mode_after "\"$(q "$db" "SELECT apikeys.usage_mode()")\""

    # -- one flush of many distinct keys: FLUSH_KEYS keys verified in big
    # statements (nothing written meanwhile: flush interval one hour), then
    # the flush that writes key_usage rows and last_used_at for all of them
    # (apikeys.last_used_interval 0 for it: every key is stamped)
    local fk=$FLUSH_KEYS from=$((c2 + cold + 1))
    [ "$fk" -gt $((n - from + 1)) ] && fk=$((n - from + 1))
    if [ "$fk" -gt 0 ]; then
        say "$n keys: one usage flush of $fk distinct keys"
        psql_b postgres "$db" -c "ALTER SYSTEM SET apikeys.usage_flush_interval = 3600" \
            -c "ALTER SYSTEM SET apikeys.last_used_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null
        sleep 1
        flush_usage "$db" >/dev/null
        psql_b bench_client "$db" -c "SELECT count(*) FROM bench.tokens t, apikeys.verify_key(t.token)
                                       WHERE t.i BETWEEN $from AND $((from + fk - 1))" >/dev/null
        fact "$n" flush_keys "$fk"
        fact "$n" flush_pending "$(q "$db" "SELECT slots_in_use FROM apikeys.usage_stats()")"
        read -r -a fl <<<"$(flush_usage "$db")"
        fact "$n" flush_s "${fl[0]}"
        fact "$n" flush_wal "${fl[1]}"
        fact "$n" flush_rows "$(q "$db" "SELECT count(*) FROM apikeys.key_usage")"
        psql_b postgres "$db" -c "ALTER SYSTEM RESET apikeys.usage_flush_interval" \
            -c "ALTER SYSTEM RESET apikeys.last_used_interval" -c "SELECT pg_reload_conf()" >/dev/null
    fi
    fact "$n" usage_shmem_bytes "$(q "$db" "SELECT size FROM pg_shmem_allocations WHERE name = 'pg_apikeys usage table'")"
    fact "$n" usage_slots "$(q "$db" "SELECT slots FROM apikeys.usage_stats()")"

    # -- warm every other key once (steady state: every key used within the
    # interval), in big statements, as the client role
    say "$n keys: warming the other $((n - c2)) keys (one verify each)"
    local log0
    log0=$(wc -c <"$LOG")
    t0=$(now)
    awk -v from=$((c2 + 1)) -v n="$n" -v b="$BATCH" 'BEGIN {
        for (a = from; a <= n; a += b) {
            e = a + b - 1; if (e > n) e = n
            printf "SELECT count(*) FROM bench.tokens t, apikeys.verify_key(t.token) WHERE t.i BETWEEN %d AND %d;\n", a, e
        }
    }' </dev/null | parallel_sql bench_client "$db" "$LOAD_JOBS"
    fact "$n" warm_s "$(elapsed "$t0")"
    # lock waits over 1 ms while warming (logged by log_lock_waits), all and
    # those on extending a relation (not a row lock: SKIP LOCKED cannot skip it)
    fact "$n" warm_lock_waits "$(tail -c +"$((log0 + 1))" "$LOG" | grep -c 'still waiting for' || true)"
    fact "$n" warm_lock_waits_extension "$(tail -c +"$((log0 + 1))" "$LOG" | grep 'still waiting for' | grep -c 'on extension of relation' || true)"
    # the usage engine writes last_used_at: let it write what is pending
    flush_usage "$db" >/dev/null
    fact "$n" warm_fallbacks "$(q "$db" "SELECT fallbacks FROM apikeys.usage_stats()")"
    local unused
    unused=$((n - $(used_keys "$db" 1 "$n")))
    fact "$n" unused_after_warm "$unused"
    [ "$unused" = 0 ] || { echo "$unused keys were not warmed" >&2; return 1; }
    t0=$(now)
    # the whole database, catalogs included, so autovacuum has nothing left to
    # do (and no WAL of its own to add) during the measured runs
    psql_b postgres "$db" -c "VACUUM (ANALYZE)" -c "CHECKPOINT"
    psql_b postgres "$db" -At -f "$BENCH_SRC/prewarm.sql" >/dev/null
    fact "$n" vacuum_prewarm_s "$(elapsed "$t0")"
    fact "$n" db_bytes "$(q "$db" "SELECT pg_database_size(current_database())")"
    fact "$n" hot_bytes "$(q "$db" "SELECT sum(pg_total_relation_size(r))::bigint FROM unnest(array['apikeys.keys','apikeys.key_hashes','bench.tokens']::regclass[]) r")"

    # -- steady state: (a) (b) (c), alternating, the order rotated each round
    say "$n keys: steady state, $ROUNDS rounds x ${SECS} s of (a) floor, (b) verify_key, (c) PostgREST request"
    for s in floor verify postgrest; do # warm-up, not recorded
        (cd "$BENCH_SRC" && "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$JOBS" -h "$SOCK" -p "$PORT" \
            -U "$(role_of "$s")" -f "$s.sql" -D n="$n" -T "$WARMUP_SECS" "$db" >/dev/null 2>&1)
    done
    for round in $(seq 1 "$ROUNDS"); do
        case $(( (round - 1) % 3 )) in
            0) order="floor verify postgrest" ;;
            1) order="verify postgrest floor" ;;
            2) order="postgrest floor verify" ;;
        esac
        for s in $order; do
            run_pgbench "$n" steady "$round" "$s" "$(role_of "$s")" "$db" -T "$SECS" -D n="$n"
        done
    done

    # -- limits: check_key on keys with a rate limit and credits (never
    # reached), against the floor over the same keys; then one hot key
    local m=$LIMIT_KEYS
    [ "$m" -gt "$n" ] && m=$n
    say "$n keys: limits on $m keys; $ROUNDS rounds x ${SECS} s of (a) floor and (e) check_key over them"
    psql_b postgres "$db" -c "UPDATE apikeys.keys k SET rate_limit = 1000000000, rate_window = '1 day',
                                     credits = 1000000000000, credits_refilled_at = now()
                                FROM apikeys.key_hashes h, bench.tokens t
                               WHERE h.key_id = k.id AND h.hash = sha256(convert_to(t.token, 'UTF8')) AND t.i <= $m" >/dev/null
    psql_b postgres "$db" -c "VACUUM (ANALYZE) apikeys.keys, apikeys.audit_log" >/dev/null
    for s in floor check; do # warm-up: every limited key gets its entry
        (cd "$BENCH_SRC" && "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$JOBS" -h "$SOCK" -p "$PORT" \
            -U "$(role_of "$s")" -f "$s.sql" -D n="$m" -T "$WARMUP_SECS" "$db" >/dev/null 2>&1)
    done
    psql_b bench_client "$db" -c "SELECT count(*) FROM bench.tokens t, apikeys.check_key(t.token) c WHERE t.i <= $m" >/dev/null
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then order="floor check"; else order="check floor"; fi
        for s in $order; do
            run_pgbench "$n" limits "$round" "$s" "$(role_of "$s")" "$db" -T "$SECS" -D n="$m"
        done
    done
    fact "$n" limit_keys "$m"
    fact "$n" limits_shmem_bytes "$(q "$db" "SELECT size FROM pg_shmem_allocations WHERE name = 'pg_apikeys limits table'")"
    fact "$n" limit_slots "$(q "$db" "SHOW apikeys.limit_slots")"
    # one hot key: HOT_LIMIT per second, every client on it
    psql_b postgres "$db" -c "UPDATE apikeys.keys k SET rate_limit = $HOT_LIMIT, rate_window = '1 second', credits = NULL
                                FROM apikeys.key_hashes h, bench.tokens t
                               WHERE h.key_id = k.id AND h.hash = sha256(convert_to(t.token, 'UTF8')) AND t.i = 1" >/dev/null
    local v0 r0 v1 r1 t0 t1
    read -r v0 r0 <<<"$(q "$db" "SELECT verified || ' ' || rejected FROM apikeys.usage_stats()")"
    t0=$(now)
    run_pgbench "$n" hot 1 hot bench_client "$db" -T "$SECS"
    t1=$(now)
    read -r v1 r1 <<<"$(q "$db" "SELECT verified || ' ' || rejected FROM apikeys.usage_stats()")"
    fact "$n" hot_limit "$HOT_LIMIT"
    fact "$n" hot_accepted "$((v1 - v0))"
    fact "$n" hot_refused "$((r1 - r0))"
    fact "$n" hot_seconds "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"

    # -- minting: create_key vs the bare two-row insert, alternating
    say "$n keys: minting, $ROUNDS rounds x ${MINT_SECS} s of (d) create_key and the bare insert"
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then order="create_key bare_insert"; else order="bare_insert create_key"; fi
        for s in $order; do
            run_pgbench "$n" mint "$round" "$s" bench_admin "$db" -T "$MINT_SECS" -D ws="$mint_ws"
        done
    done

    # -- memory: one backend, MEM_N verifies (on the largest size only)
    if [ "$n" = "$MAX_N" ] && [ "$MEM_N" -gt 0 ]; then
        say "$n keys: memory, $MEM_N verifies in one backend"
        rm -f "$OUT"/mem-*.txt
        t0=$(now)
        psql_b bench_client "$db" -v n="$n" -v verifies="$MEM_N" -v out="$OUT" -f "$BENCH_SRC/memory.sql" >/dev/null
        fact "$n" mem_session_s "$(elapsed "$t0")"
        fact "$n" mem_verifies "$MEM_N"
        for w in before after; do
            for k in VmRSS RssAnon RssShmem VmHWM; do
                fact "$n" "mem_${w}_${k}_kB" "$(awk -v k="$k:" '$1 == k { print $2 }' "$OUT/mem-$w.txt")"
            done
        done
        fact "$n" mem_loop_s "$(cat "$OUT/mem-loop-seconds.txt")"
    fi

    if [ "${BENCH_KEEP:-}" != 1 ]; then
        psql_b postgres postgres -c "DROP DATABASE $db"
    fi
}

# target/venv-bench with the pinned matplotlib (bench/requirements.txt)
ensure_bench_venv() {
    local venv="$ROOT/target/venv-bench" req="$BENCH_SRC/requirements.txt"
    if [ ! -x "$venv/bin/python" ]; then
        say "python venv $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; return 1; }
    fi
    if ! cmp -s "$req" "$venv/.requirements.installed"; then
        say "pip install -r bench/requirements.txt"
        "$venv/bin/pip" install -q -r "$req" || return 1
        cp "$req" "$venv/.requirements.installed"
    fi
}

role_of() {
    case "$1" in
        floor) echo postgres ;;
        verify) echo bench_client ;;
        postgrest) echo bench_authenticator ;;
        check|hot) echo bench_client ;;
        *) echo bench_admin ;;
    esac
}

# ---------------------------------------------------------------- main
# (one function, read whole before it runs: editing this file during a run is safe)
main() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    T_ALL=$(now)
    say "pg_apikeys bench: sizes $SIZES; $ROUNDS rounds x ${SECS} s; $CLIENTS clients; port $PORT; $DIR"
    cluster_start
    psql_b postgres postgres -f "$BENCH_SRC/roles.sql" >/dev/null
    fact 0 pg_version "\"$(q postgres "SHOW server_version")\""
    fact 0 extension_version "$(q postgres "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_apikeys'")"
    fact 0 cpus "$(nproc)"
    fact 0 cpu_model "\"$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo | tr -d ',"')\""
    fact 0 mem_total_mb "$mem_mb"
    fact 0 load_avg_at_start "$(cut -d' ' -f1 /proc/loadavg)"
    fact 0 shared_buffers "$SHARED_BUFFERS"
    fact 0 clients "$CLIENTS"
    fact 0 jobs "$JOBS"
    fact 0 seconds "$SECS"
    fact 0 mint_seconds "$MINT_SECS"
    fact 0 rounds "$ROUNDS"
    fact 0 last_used_interval "$(q postgres "SELECT current_setting('apikeys.last_used_interval', true)")"

    for n in $SIZES; do
        bench_size "$n"
    done
    fact 0 load_avg_at_end "$(cut -d' ' -f1 /proc/loadavg)"
    fact 0 total_s "$(elapsed "$T_ALL")"

    # ---------------------------------------------------------------- report
    say "report"
    export PYTHONDONTWRITEBYTECODE=1 PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
    PY=python3
    if ensure_bench_venv; then
        PY="$ROOT/target/venv-bench/bin/python"
    else
        echo "no venv with matplotlib (python3-venv missing?): summary without a chart" >&2
    fi
    chart_args=(--chart "$OUT/performance.png")
    [ "${BENCH_PUBLISH:-}" = 1 ] && chart_args+=(--publish "$ROOT/docs/performance.png")
    "$PY" "$BENCH_SRC/report.py" --runs "$RUNS" --facts "$FACTS" --json "$OUT/results.json" "${chart_args[@]}" \
        | tee "$OUT/summary.txt"
}

main "$@"; exit $?
