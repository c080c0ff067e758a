#!/usr/bin/env bash
# make bench-sustained: the usage engine at sustained load with its default
# settings. See bench/README.md, "Sustained load".
#
# N keys (100 000 by default) drawn at random by 2 clients: the floor (a)
# and verify_key (b) alternate, ROUNDS x SECS each, in one run. Every
# engine setting is its default (apikeys.usage_flush_interval 10 s,
# apikeys.last_used_interval 60 s, apikeys.usage_slots, workspace share),
# unless BENCH_SUSTAINED_CONF adds lines (the sizing docs/operations.md
# recommends for 1 M keys). Reported per size: verify/floor, WAL bytes per
# verify during the runs, fallbacks and unrecorded verifies, key rows
# updated, and the write of the hour (flush_usage() at the end: its time and
# WAL, and that WAL spread over an hour of verifies at the measured rate).
#
# Settings (environment):
#   BENCH_SUSTAINED_SIZES="100000"   key counts, one database each
#   BENCH_SECONDS=30  BENCH_ROUNDS=3  BENCH_CLIENTS=2
#   BENCH_SUSTAINED_CONF="apikeys.usage_slots = 4194304"   extra postgresql.conf lines
#   BENCH_SUSTAINED_OFF=1   then the same rounds with the engine off (no preload,
#                           apikeys.last_used_interval = -1): the engine's own cost
#   BENCH_PORT=28841  BENCH_DIR=/tmp/pg_apikeys_bench_sustained
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
export PGOPTIONS="" PGAPPNAME=pg_apikeys_bench
unset PGHOST PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE

PORT="${BENCH_PORT:-28841}"
DIR="${BENCH_DIR:-/tmp/pg_apikeys_bench_sustained}"
SIZES="${BENCH_SUSTAINED_SIZES:-100000}"
SECS="${BENCH_SECONDS:-30}"
ROUNDS="${BENCH_ROUNDS:-3}"
CLIENTS="${BENCH_CLIENTS:-2}"
EXTRA="${BENCH_SUSTAINED_CONF:-}"
BATCH=50000
SOCK="$DIR/sock"
DATA="$DIR/data"
LOG="$DIR/server.log"
SRC="$ROOT/bench"
OUT="$ROOT/target/bench"
CSV="$OUT/sustained.csv"

case "$PORT" in
    28815|28817|2883[0-9]|28840) echo "BENCH_PORT=$PORT belongs to the dev, test or main bench clusters" >&2; exit 2 ;;
esac
case "$DIR" in /tmp/pg_apikeys_bench*) ;; *) echo "BENCH_DIR must be under /tmp/pg_apikeys_bench (it is wiped)" >&2; exit 2 ;; esac
[ -f "$("$PG_CONFIG" --sharedir)/extension/pg_apikeys.control" ] || { echo "run make install first" >&2; exit 1; }
mkdir -p "$OUT"

now() { date +%s.%N; }
psql_b() { local role="$1" db="$2"; shift 2; "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U "$role" -d "$db" "$@"; }
q() { psql_b postgres "$1" -At -c "$2"; }
stop() {
    if [ -f "$DATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true
    fi
}
cleanup() { local s=$?; trap - EXIT; [ "$s" != 0 ] && [ -f "$LOG" ] && tail -20 "$LOG" >&2; stop; rm -rf "$DIR"; exit "$s"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

max_n=$(tr ' ' '\n' <<<"$SIZES" | grep . | sort -n | tail -1)
sb_mb=$(( max_n * 12 / 10 / 1024 + 512 )); [ "$sb_mb" -lt 1024 ] && sb_mb=1024
stop; rm -rf "$DIR"; mkdir -p "$DIR"; [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
as_pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
as_pg mkdir -p "$SOCK"
as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$SOCK'
max_connections = 30
shared_buffers = ${sb_mb}MB
max_wal_size = 8GB
checkpoint_timeout = 30min
log_min_messages = warning
# the usage engine with every apikeys.* setting at its default
shared_preload_libraries = 'pg_apikeys'
$EXTRA
CONF
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 120 start >/dev/null
psql_b postgres postgres -f "$SRC/roles.sql" >/dev/null
echo "size,round,script,seconds,txns,tps,wal_bytes,fallbacks,unrecorded,key_updates,hour_crossed" >"$CSV"

for n in $SIZES; do
    db="sustained_$n"
    say "$n keys: minting"
    psql_b postgres postgres -c "CREATE DATABASE $db"
    psql_b postgres "$db" -v n="$n" -f "$SRC/setup.sql" >/dev/null
    ws=$(q "$db" "SELECT id FROM apikeys.workspaces WHERE name = 'bench'")
    # two sessions, each its own batches
    for j in 0 1; do
        (for ((a = 1 + j * BATCH; a <= n; a += 2 * BATCH)); do
            e=$((a + BATCH - 1)); [ "$e" -gt "$n" ] && e=$n
            q "$db" "INSERT INTO bench.tokens SELECT i, (r).key FROM (SELECT i, apikeys.create_key('$ws') AS r FROM generate_series($a, $e) i OFFSET 0) s" >/dev/null
        done) &
    done
    wait
    [ "$(q "$db" "SELECT count(*) FROM bench.tokens")" = "$n" ] || { echo "minting lost keys" >&2; exit 1; }
    say "$n keys: each verified once, written, vacuumed, checkpointed"
    for j in 0 1; do
        (for ((a = 1 + j * BATCH; a <= n; a += 2 * BATCH)); do
            e=$((a + BATCH - 1)); [ "$e" -gt "$n" ] && e=$n
            psql_b bench_client "$db" -c "SELECT count(*) FROM bench.tokens t, apikeys.verify_key(t.token) WHERE t.i BETWEEN $a AND $e" >/dev/null
        done) &
    done
    wait
    [ "$(q "$db" "SELECT apikeys.flush_usage(600000)")" = t ]
    psql_b postgres "$db" -c "VACUUM (ANALYZE)" -c "CHECKPOINT"
    psql_b postgres "$db" -At -f "$SRC/prewarm.sql" >/dev/null
    for s in floor verify; do # warm-up
        (cd "$SRC" && "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -h "$SOCK" -p "$PORT" \
            -U "$([ $s = floor ] && echo postgres || echo bench_client)" -f "$s.sql" -D n="$n" -T 2 "$db" >/dev/null 2>&1)
    done
    say "$n keys: $ROUNDS rounds x ${SECS} s of (a) floor and (b) verify_key, $CLIENTS clients, keys at random"
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then order="floor verify"; else order="verify floor"; fi
        for s in $order; do
            role=$([ $s = floor ] && echo postgres || echo bench_client)
            read -r f0 u0 <<<"$(q "$db" "SELECT fallbacks || ' ' || unrecorded FROM apikeys.usage_stats()")"
            upd0=$(q "$db" "SELECT pg_stat_clear_snapshot(); SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'apikeys.keys'::regclass" | tail -1)
            lsn0=$(q "$db" "SELECT pg_current_wal_insert_lsn()")
            t0=$(now)
            h0=$(date -u +%Y%m%d%H)
            out=$(cd "$SRC" && "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -h "$SOCK" -p "$PORT" \
                -U "$role" -f "$s.sql" -D n="$n" -T "$SECS" "$db" 2>&1)
            crossed=$([ "$(date -u +%Y%m%d%H)" = "$h0" ] && echo 0 || echo 1)
            secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
            lsn1=$(q "$db" "SELECT pg_current_wal_insert_lsn()")
            sleep 1
            upd1=$(q "$db" "SELECT pg_stat_clear_snapshot(); SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'apikeys.keys'::regclass" | tail -1)
            read -r f1 u1 <<<"$(q "$db" "SELECT fallbacks || ' ' || unrecorded FROM apikeys.usage_stats()")"
            wal=$(q "$db" "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')::bigint")
            tps=$(sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\).*/\1/p' <<<"$out")
            txns=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$out")
            echo "$n,$round,$s,$secs,$txns,$tps,$wal,$((f1 - f0)),$((u1 - u0)),$((upd1 - upd0)),$crossed" >>"$CSV"
            printf '  %-8s r%s %-7s %9.0f tps %10s txns %8.2f WAL B/txn %6s fallbacks %6s key updates%s\n' \
                "$n" "$round" "$s" "$tps" "$txns" "$(awk -v w="$wal" -v t="$txns" 'BEGIN { print (t > 0 ? w / t : 0) }')" \
                "$((f1 - f0))" "$((upd1 - upd0))" "$([ "$crossed" = 1 ] && echo ' (the hour ended in this run: not in the ratio)')"
        done
    done
    in_use=$(q "$db" "SELECT slots_in_use FROM apikeys.usage_stats()")
    saved=$(as_pg stat -c %s "$DATA/pg_apikeys_usage.pending" 2>/dev/null || echo 0)
    lsn0=$(q "$db" "SELECT pg_current_wal_insert_lsn()")
    t0=$(now)
    [ "$(q "$db" "SELECT apikeys.flush_usage(600000)")" = t ]
    fsecs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
    fwal=$(q "$db" "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$lsn0')::bigint")
    echo "$n,hour,flush,$fsecs,$in_use,0,$fwal,0,0,0" >>"$CSV"
    awk -F, -v n="$n" -v fwal="$fwal" -v fsecs="$fsecs" -v in_use="$in_use" -v saved="$saved" '
        function median(a, k,   i, j, t) {
            for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
        }
        $1 == n && $3 == "floor" { ftps[$2] = $6; if ($11 == 1) cross[$2] = 1 }
        $1 == n && $3 == "verify" { vtps[$2] = $6; vw += $7; vx += $5; fb += $8; un += $9; up += $10; if ($11 == 1) cross[$2] = 1 }
        END {
            for (r in vtps) {
                if (cross[r]) { skipped++; continue }
                ft += ftps[r]; vt += vtps[r]; k++; ratio[k] = vtps[r] / ftps[r]
            }
            f = ft / k; v = vt / k
            printf "%s keys: verify/floor %.3f (%.0f / %.0f tps; median of %d rounds %.3f%s); WAL during the runs %.2f B/verify; %d fallbacks, %d unrecorded, %d key row updates\n", n, v / f, v, f, k, median(ratio, k), skipped ? sprintf(", %d round(s) where the hour ended left out", skipped) : "", vw / vx, fb, un, up
            printf "%s keys: the write of the hour: %d entries, %.2f s, %d B of WAL = %.2f B/verify over an hour at %.0f verifies/s; saved copy %d B\n", n, in_use, fsecs, fwal, fwal / (v * 3600), v, saved
        }' "$CSV" | tee -a "$OUT/sustained.txt"
    if [ "${BENCH_SUSTAINED_OFF:-}" = 1 ]; then
        # the same rounds with the engine off and no last_used_at writes at
        # all: what the engine itself costs, against a floor of this phase
        say "$n keys: the same rounds without the usage engine (no preload, apikeys.last_used_interval = -1)"
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 120 \
            -o "-c shared_preload_libraries= -c apikeys.last_used_interval=-1" start >/dev/null
        psql_b postgres "$db" -At -f "$SRC/prewarm.sql" >/dev/null
        for round in $(seq 1 "$ROUNDS"); do
            if [ $((round % 2)) = 1 ]; then order="floor verify"; else order="verify floor"; fi
            for s in $order; do
                role=$([ $s = floor ] && echo postgres || echo bench_client)
                out=$(cd "$SRC" && "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -h "$SOCK" -p "$PORT" \
                    -U "$role" -f "$s.sql" -D n="$n" -T "$SECS" "$db" 2>&1)
                tps=$(sed -nE 's/^tps = ([0-9.]+) \(without initial connection time\).*/\1/p' <<<"$out")
                txns=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$out")
                echo "$n,$round,$s-off,$SECS,$txns,$tps,0,0,0,0,0" >>"$CSV"
                printf '  %-8s r%s %-11s %9.0f tps %10s txns\n' "$n" "$round" "$s-off" "$tps" "$txns"
            done
        done
        awk -F, -v n="$n" '
            function median(a, k,   i, j, t) {
                for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
                return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
            }
            $1 == n && $3 == "floor" { f[$2] = $6; if ($11 == 1) cross[$2] = 1 }
            $1 == n && $3 == "verify" { v[$2] = $6; if ($11 == 1) cross[$2] = 1 }
            $1 == n && $3 == "floor-off" { g[$2] = $6 }
            $1 == n && $3 == "verify-off" { w[$2] = $6 }
            END {
                for (r in v) if (!cross[r]) { ft += f[r]; vt += v[r]; k++; on[k] = v[r] / f[r] }
                for (r in w) { gt += g[r]; wt += w[r]; m++; off[m] = w[r] / g[r] }
                a = vt / ft; b = wt / gt
                printf "%s keys: engine on %.3f of the floor (median %.3f), engine off %.3f (median %.3f): the engine costs %.1f %% of the floor (%.1f %% by the medians)\n", n, a, median(on, k), b, median(off, m), 100 * (b - a), 100 * (median(off, m) - median(on, k))
            }' "$CSV" | tee -a "$OUT/sustained.txt"
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 120 start >/dev/null
    fi
    psql_b postgres postgres -c "DROP DATABASE $db"
done
