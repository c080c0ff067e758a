#!/usr/bin/env bash
# make bench-import: import_keys at scale, beside a bare COPY. See
# bench/README.md, "Migrations at scale".
#
# One database per size N (1 000 000 by default): a staging table of N
# legacy keys (owner among 5 000 customers, name, SHA-256 hex digest,
# scopes, metadata, legacy created_at and last_used_at), with one row in
# 50 000 carrying a bad digest and one in 50 000 a repeated name. Then:
#   import  SELECT ... FROM apikeys.import_keys(ws, 'staging') as an operator
#   bare    COPY of the same N keys and digests, from files, into plain tables
#           shaped like keys and key_hashes (same columns, defaults, checks,
#           indexes and foreign keys; no triggers, no RLS)
# Reported: seconds, keys/s, rows refused against rows made bad, and the
# ratio import / bare. Target: 1 M keys in under 60 s.
#
# Settings (environment):
#   BENCH_IMPORT_SIZES="1000000"   BENCH_PORT=28843  BENCH_DIR=/tmp/pg_apikeys_bench_import
set -euo pipefail
PORT="${BENCH_PORT:-28843}"
DIR="${BENCH_DIR:-/tmp/pg_apikeys_bench_import}"
SIZES="${BENCH_IMPORT_SIZES:-1000000}"
. "$(dirname "$0")/cluster-lib.sh"
CSV="$OUT/import.csv"

bench_cluster_start "shared_buffers = 1GB
temp_buffers = 512MB
work_mem = 64MB
maintenance_work_mem = 512MB"
echo "size,phase,seconds,rows,refused,expected_refused" >"$CSV"

for n in $SIZES; do
    db="import_$n"
    say "$n keys: staging table"
    psql_b postgres postgres -c "CREATE DATABASE $db"
    psql_b postgres "$db" <<SQL >/dev/null
CREATE EXTENSION pg_apikeys;
CREATE TABLE staging (n bigint, owner text, name text, digest text, scopes text[], metadata jsonb,
                      created_at timestamptz, last_used_at timestamptz);
INSERT INTO staging
SELECT i, 'cust_' || (i % 5000), 'key-' || i, encode(sha256(('legacy-token-' || i)::bytea), 'hex'),
       '{read}', jsonb_build_object('plan', 'pro'), now() - interval '400 days', now() - interval '3 days'
  FROM generate_series(1, $n) i;
-- the sprinkling of bad rows
UPDATE staging SET digest = 'not-a-digest' WHERE n % 50000 = 7;
UPDATE staging SET name = 'key-1' WHERE n % 50000 = 9;
-- the bare floor: tables shaped like keys and key_hashes, no triggers, no RLS
CREATE TABLE bare_keys (LIKE apikeys.keys INCLUDING ALL);
ALTER TABLE bare_keys ADD FOREIGN KEY (workspace_id) REFERENCES apikeys.workspaces (id);
CREATE TABLE bare_hashes (LIKE apikeys.key_hashes INCLUDING ALL);
ALTER TABLE bare_hashes ADD FOREIGN KEY (key_id) REFERENCES bare_keys (id);
VACUUM ANALYZE staging;
SQL
    ws=$(q "$db" "SELECT apikeys.create_workspace('big')")
    bad=$(q "$db" "SELECT count(*) FROM staging WHERE n % 50000 IN (7, 9) AND n > 1")
    # the bare floor's input: the same rows as files, made before the clock starts
    q "$db" "COPY (SELECT gen_random_uuid(), '$ws', owner, name, 'imported:' || lpad(n::text, 8, '0'), scopes, metadata,
                          created_at, last_used_at, 'imported' FROM staging WHERE digest ~ '^[0-9a-f]{64}$' AND name <> 'key-1' OR n = 1)
              TO '$DIR/keys.csv' (FORMAT csv)" >/dev/null
    psql_b postgres "$db" -c "CHECKPOINT"
    say "$n keys: bare COPY into tables of the same shape"
    t0=$(now)
    psql_b postgres "$db" -c "COPY bare_keys (id, workspace_id, owner, name, prefix, scopes, metadata, created_at, last_used_at, source)
                      FROM '$DIR/keys.csv' (FORMAT csv)" \
        -c "COPY (SELECT id, sha256(convert_to(name, 'UTF8')) FROM bare_keys) TO '$DIR/hashes.csv' (FORMAT csv)"
    t_copy_keys=$(elapsed "$t0")
    t1=$(now)
    psql_b postgres "$db" -c "COPY bare_hashes (key_id, hash) FROM '$DIR/hashes.csv' (FORMAT csv)"
    t_bare=$(awk -v a="$t_copy_keys" -v b="$(elapsed "$t1")" 'BEGIN { printf "%.1f", a + b }')
    bare_rows=$(q "$db" "SELECT count(*) FROM bare_keys")
    echo "$n,bare,$t_bare,$bare_rows,0,0" >>"$CSV"
    psql_b postgres "$db" -c "CHECKPOINT"
    say "$n keys: import_keys"
    t0=$(now)
    read -r imported refused <<<"$(q "$db" "SELECT count(*) FILTER (WHERE status = 'imported') || ' ' || count(*) FILTER (WHERE status = 'refused')
                                              FROM apikeys.import_keys('$ws', 'staging')")"
    t_import=$(elapsed "$t0")
    echo "$n,import,$t_import,$imported,$refused,$bad" >>"$CSV"
    verified=$(q "$db" "SELECT count(*) FROM apikeys.verify_key('legacy-token-2')")
    awk -v n="$n" -v ti="$t_import" -v tb="$t_bare" -v im="$imported" -v rf="$refused" -v bad="$bad" -v br="$bare_rows" -v ok="$verified" 'BEGIN {
        printf "%s keys: import_keys %.1f s (%.0f keys/s), %d imported, %d refused of %d rows made bad%s; bare COPY of %d keys and digests %.1f s; import / bare %.2f; target 1 M keys in 60 s (16 667 keys/s): %s; an imported token verifies: %s\n",
            n, ti, im / ti, im, rf, bad, (rf == bad ? " (exactly)" : " (NOT the same)"), br, tb, ti / tb, (im / ti >= 1000000 / 60 && rf == bad) ? "met" : "NOT met", (ok == 1 ? "yes" : "NO")
    }' | tee -a "$OUT/import.txt"
    psql_b postgres postgres -c "DROP DATABASE $db"
done
