#!/usr/bin/env bash
# make bench-rls: what row security costs an admin reading a large
# workspace. See bench/README.md, "Row security at scale".
#
# Per size N (50 000 and 1 000 000 by default), one database: workspace
# "big" with N keys and workspace "other" with 10 000 keys (so the policies
# have rows to keep out). Keys are inserted as the superuser straight into
# apikeys.keys (every trigger fires; no tokens are needed to read rows).
# Each query runs 7 times per role and the best execution time (EXPLAIN
# ANALYZE) is kept:
#   count   SELECT count(*), max(name) FROM apikeys.keys [WHERE workspace_id = big]
#   recent  SELECT id, name, created_at FROM apikeys.keys [WHERE ...] ORDER BY created_at DESC LIMIT 50
#   mine    a member's own keys (100 of them) in "big"
# as the superuser (with the WHERE: the same rows, no policy), as an admin
# of "big" (as a dashboard sends it, without the WHERE, and with it), and as
# a member. Target: admin within 2x of the superuser.
#
# Settings (environment):
#   BENCH_RLS_SIZES="50000 1000000"   BENCH_PORT=28842  BENCH_DIR=/tmp/pg_apikeys_bench_rls
set -euo pipefail
PORT="${BENCH_PORT:-28842}"
DIR="${BENCH_DIR:-/tmp/pg_apikeys_bench_rls}"
SIZES="${BENCH_RLS_SIZES:-50000 1000000}"
. "$(dirname "$0")/cluster-lib.sh"
CSV="$OUT/rls.csv"

bench_cluster_start "shared_buffers = 1GB"
psql_b postgres postgres -c "CREATE ROLE rls_admin LOGIN" -c "CREATE ROLE rls_member LOGIN"
echo "size,query,role,form,best_ms,rows" >"$CSV"

# best ROLE DB SQL: the best execution time of 7 runs (ms), and the rows
best() {
    local role="$1" db="$2" sql="$3" i ms rows
    for i in 1 2 3 4 5 6 7; do
        psql_b "$role" "$db" -At -c "EXPLAIN (ANALYZE, FORMAT JSON) $sql" |
            python3 -c 'import json, sys; p = json.load(sys.stdin)[0]; print(p["Execution Time"], p["Plan"].get("Actual Rows", 0))'
    done | sort -n | head -1
}

for n in $SIZES; do
    db="rls_$n"
    say "$n keys: database $db"
    psql_b postgres postgres -c "CREATE DATABASE $db"
    psql_b postgres "$db" <<SQL >/dev/null
CREATE EXTENSION pg_apikeys;
SELECT apikeys.grant_to('rls_admin'), apikeys.grant_to('rls_member');
SELECT apikeys.create_workspace('big') AS big \gset
SELECT apikeys.create_workspace('other') AS other \gset
SELECT apikeys.add_member(:'big', 'rls_admin', 'admin'), apikeys.add_member(:'big', 'rls_member', 'member');
SET ROLE rls_admin;
SELECT apikeys.accept_invitation(:'big');
SET ROLE rls_member;
SELECT apikeys.accept_invitation(:'big');
RESET ROLE;
INSERT INTO apikeys.keys (workspace_id, owner, name, prefix, created_at)
SELECT :'big', CASE WHEN i <= 100 THEN 'rls_member' ELSE 'cust_' || (i % 5000) END, 'k-' || i,
       'sk_big' || lpad(i::text, 8, '0'), now() - (i || ' seconds')::interval
  FROM generate_series(1, $n) i;
INSERT INTO apikeys.keys (workspace_id, owner, name, prefix)
SELECT :'other', 'postgres', 'o-' || i, 'sk_oth' || lpad(i::text, 8, '0') FROM generate_series(1, 10000) i;
VACUUM (ANALYZE);
SQL
    ws=$(q "$db" "SELECT id FROM apikeys.workspaces WHERE name = 'big'")
    w="workspace_id = '$ws'"
    count="SELECT count(*), max(name) FROM apikeys.keys"
    recent="SELECT id, name, created_at FROM apikeys.keys"
    order="ORDER BY created_at DESC LIMIT 50"
    mine="SELECT id, name FROM apikeys.keys WHERE owner = 'rls_member' AND $w"
    while IFS='|' read -r query role form sql; do
        read -r ms rows <<<"$(best "$role" "$db" "$sql")"
        echo "$n,$query,$role,$form,$ms,$rows" >>"$CSV"
        printf '  %-8s %-7s %-11s %-10s %9.2f ms  %8s rows\n' "$n" "$query" "$role" "$form" "$ms" "$rows"
    done <<EOF
count|postgres|where|$count WHERE $w
count|rls_admin|dashboard|$count
count|rls_admin|where|$count WHERE $w
recent|postgres|where|$recent WHERE $w $order
recent|rls_admin|dashboard|$recent $order
recent|rls_admin|where|$recent WHERE $w $order
mine|postgres|where|$mine
mine|rls_member|where|$mine
EOF
    awk -F, -v n="$n" '
        $1 == n { t[$2 "," $3 "," $4] = $5 }
        END {
            c = t["count,rls_admin,dashboard"] / t["count,postgres,where"]
            r = t["recent,rls_admin,dashboard"] / t["recent,postgres,where"]
            m = t["mine,rls_member,where"] / t["mine,postgres,where"]
            printf "%s keys: admin / superuser: count %.2fx, recent 50 %.2fx (with the WHERE: %.2fx, %.2fx); member / superuser, own keys: %.2fx; target 2x: %s\n",
                n, c, r, t["count,rls_admin,where"] / t["count,postgres,where"], t["recent,rls_admin,where"] / t["recent,postgres,where"], m,
                (c <= 2 && r <= 2) ? "met" : "NOT met"
        }' "$CSV" | tee -a "$OUT/rls.txt"
    psql_b postgres postgres -c "DROP DATABASE $db"
done
