#!/usr/bin/env bash
# make bench-forward: what a hot standby's forwarded usage costs the
# primary. See bench/README.md, "Standby usage".
#
# One database with N keys (100 000 by default, imported), then batches of
# usage as a standby's engine sends them (one row per key and hour, every
# outcome, a last use), applied with apikeys.apply_forwarded_usage as the
# forwarding role: the first batch inserts a key_usage row per key, the
# second adds to them (what every later interval does). Reported: seconds
# per batch, rows/s, WAL per row.
#
# Settings (environment): BENCH_FORWARD_KEYS=100000  BENCH_PORT=28845
#                         BENCH_DIR=/tmp/pg_apikeys_bench_forward
set -euo pipefail
PORT="${BENCH_PORT:-28845}"
DIR="${BENCH_DIR:-/tmp/pg_apikeys_bench_forward}"
N="${BENCH_FORWARD_KEYS:-100000}"
. "$(dirname "$0")/cluster-lib.sh"
CSV="$OUT/forward.csv"

bench_cluster_start "shared_preload_libraries = 'pg_apikeys'
shared_buffers = 1GB"
echo "keys,batch,seconds,rows_per_s,wal_bytes_per_row" >"$CSV"
psql_b postgres postgres -c "CREATE DATABASE fw" -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'usage_forward') THEN CREATE ROLE usage_forward LOGIN; END IF; END \$\$"
psql_b postgres fw <<SQL >/dev/null
CREATE EXTENSION pg_apikeys;
SELECT apikeys.grant_forwarder('usage_forward');
CREATE TABLE staging AS
SELECT 'cust_' || (i % 5000) AS owner, 'key-' || i AS name,
       encode(sha256(('legacy-token-' || i)::bytea), 'hex') AS digest
  FROM generate_series(1, $N) i;
SQL
ws=$(q fw "SELECT apikeys.create_workspace('fw')")
q fw "SELECT count(*) FROM apikeys.import_keys('$ws', 'staging')" >/dev/null
# the batch, as the standby's engine writes it
q fw "COPY (SELECT json_agg(json_build_object('k', id, 'h', extract(epoch FROM date_trunc('hour', now()))::bigint,
                'v', 7, 'r', 3, 'rl', 1, 'ue', 0, 'sc', 1, 'rf', 1,
                'u', (extract(epoch FROM now()) * 1000000)::bigint)) FROM apikeys.keys) TO '$DIR/batch.json'" >/dev/null
chmod a+r "$DIR/batch.json"
psql_b postgres fw -c "CREATE TABLE batch AS SELECT pg_read_file('$DIR/batch.json') AS b" -c "GRANT SELECT ON batch TO usage_forward" -c "CHECKPOINT"
for b in 1 2 3; do
    w0=$(q fw "SELECT pg_current_wal_lsn()")
    t0=$(now)
    psql_b usage_forward fw -At -c "SELECT apikeys.apply_forwarded_usage(7, $b, (SELECT b FROM batch))" >/dev/null
    t=$(elapsed "$t0")
    wal=$(q fw "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$w0')")
    awk -v n="$N" -v b="$b" -v t="$t" -v w="$wal" 'BEGIN { printf "%d,%d,%.2f,%.0f,%.0f\n", n, b, t, n / t, w / n }' >>"$CSV"
done
rows=$(q fw "SELECT count(*) || ' rows, ' || sum(verified) || ' verified' FROM apikeys.key_usage")
awk -F, -v rows="$rows" 'NR > 1 { printf "batch %d of %d keys: %.2f s (%.0f rows/s), %.0f B of WAL a row\n", $2, $1, $3, $4, $5 }
                         END { print "key_usage: " rows }' "$CSV" | tee "$OUT/forward.txt"
