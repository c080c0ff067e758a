#!/usr/bin/env bash
# The walk-through `make run` prints: a workspace, a key minted (shown once),
# verified, rotated, revoked, verified again (no row), and the audit trail.
# Safe to run again.
set -euo pipefail
. "$(dirname "$0")/env.sh"
DB=apikeys_demo
# a demo database made by an older build of this (unreleased) version lacks
# newer objects: start it afresh
if psql_local -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
   && psql_local -d "$DB" -tAc "SELECT 1 FROM pg_extension WHERE extname = 'pg_apikeys'" | grep -q 1 \
   && ! psql_local -d "$DB" -tAc "SELECT to_regclass('apikeys.audit_log') IS NOT NULL" | grep -q t; then
    psql_local -d postgres -qc "DROP DATABASE $DB"
fi
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
\echo '3. verify it (any role given grant_to may, anonymous requests included): one row'
SELECT owner, scopes, expires_at FROM apikeys.verify_key(:'key', '{read}');
\echo '4. rotate it with a 1-hour grace period: same name and scopes, new secret; both verify for now'
SELECT id AS new_id, name, prefix, key AS new_key FROM apikeys.rotate_key(:'key_id', interval '1 hour') \gset
\echo '   new key ' :new_key
SELECT (SELECT count(*) FROM apikeys.verify_key(:'key')) AS old_verifies,
       (SELECT count(*) FROM apikeys.verify_key(:'new_key')) AS new_verifies;
\echo '5. revoke the old one now'
SELECT apikeys.revoke_key(:'key_id') AS revoked_at;
\echo '6. verify the old one again: no row'
SELECT owner, scopes, expires_at FROM apikeys.verify_key(:'key', '{read}');
\echo '   what the table keeps (no secret):'
SELECT name, prefix, scopes, revoked_at IS NOT NULL AS revoked, replaced_by IS NOT NULL AS replaced
  FROM apikeys.keys WHERE id IN (:'key_id', :'new_id') ORDER BY created_at;
\echo '7. the audit trail (admins only)'
SELECT actor, action, detail->>'name' AS name FROM apikeys.audit_log
 WHERE workspace_id = :'workspace_id' ORDER BY id;
SQL
echo
say "connect with:  psql -h $PGHOST_DIR -p $PGPORT -U postgres $DB"
echo "    (or: make psql; stop the cluster with: make stop)"
