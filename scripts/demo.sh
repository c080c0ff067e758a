#!/usr/bin/env bash
# The walk-through `make run` prints: a workspace, a key minted (shown once),
# verified, revoked, verified again (no row). Safe to run again.
set -euo pipefail
. "$(dirname "$0")/env.sh"
DB=apikeys_demo
psql_local -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
    || psql_local -d postgres -qc "CREATE DATABASE $DB"
say "walk-through in database $DB"
psql_local -d "$DB" -q <<'SQL'
\set QUIET on
CREATE EXTENSION IF NOT EXISTS pg_apikeys;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_user') THEN
        CREATE ROLE demo_user LOGIN;
    END IF;
END $$;
SELECT apikeys.grant_to('demo_user') \g /dev/null
SET ROLE demo_user;
\set QUIET off
\pset footer off
\echo
\echo '1. create a workspace (the caller becomes its admin)'
SELECT apikeys.create_workspace('Demo ' || to_char(now(), 'HH24:MI:SS')) AS workspace_id \gset
\echo '   workspace' :workspace_id
\echo
\echo '2. mint a key: the key column is shown here once, and only its SHA-256 is stored'
SELECT id AS key_id, name, prefix, key FROM apikeys.create_key(:'workspace_id', scopes => '{read,write}') \gset
\echo '   key id  ' :key_id
\echo '   name    ' :name
\echo '   prefix  ' :prefix
\echo '   KEY     ' :key
\echo
\echo '3. verify it (any role may, even anonymous callers): one row'
SELECT owner, scopes, expires_at FROM apikeys.verify_key(:'key', '{read}');
\echo '4. revoke it'
SELECT apikeys.revoke_key(:'key_id') AS revoked_at;
\echo '5. verify again: no row'
SELECT owner, scopes, expires_at FROM apikeys.verify_key(:'key', '{read}');
\echo '   what the table keeps (no secret):'
SELECT name, prefix, scopes, revoked_at IS NOT NULL AS revoked FROM apikeys.keys WHERE id = :'key_id';
SQL
echo
say "connect with:  psql -h $PGHOST_DIR -p $PGPORT -U postgres $DB"
echo "    (or: make psql; stop the cluster with: make stop)"
