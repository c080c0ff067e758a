-- how use is recorded changes what this file sees: its expected output
-- has a variant per mode (expected/14_audit.out without the preload,
-- expected/14_audit_1.out with it)
SELECT apikeys.usage_mode() AS usage_mode;
-- The audit log: append-only, written by triggers in the
-- same transaction as each change; admins read their workspace's rows.
\set SHOW_CONTEXT never
-- every row of one workspace, oldest first, with ids shown by name
CREATE FUNCTION regress.audit(ws text) RETURNS TABLE (actor text, action text, key text, detail jsonb)
    LANGUAGE sql AS $$
    SELECT a.actor, a.action,
           (SELECT v.name FROM regress.vals v WHERE v.val = a.key_id::text AND v.name NOT LIKE '%key' LIMIT 1),
           a.detail - 'expires_at' - 'revoked_at' - 'replaced_by' - 'replaces' - 'prefix' - 'from' - 'to'
      FROM apikeys.audit_log a WHERE a.workspace_id = regress.id($1) ORDER BY a.id $$;
SET ROLE alice;
SELECT regress.put('auws', apikeys.create_workspace('Audit Inc')::text);
SELECT regress.add_member(regress.id('auws'), 'bob', 'member', '{read,write}');
SELECT regress.add_member(regress.id('auws'), 'carol', 'member', '{read}');
SELECT regress.add_member(regress.id('auws'), 'bob', 'member', '{read}');
SELECT regress.put('au1', id::text), regress.put('au1_key', key)
  FROM apikeys.create_key(regress.id('auws'), 'svc', '{read}', now() + interval '10 days', '{"team":"ops"}');
SELECT regress.put('au2', id::text) FROM apikeys.rotate_key(regress.id('au1'), '1 hour');
SELECT regress.put('au3', id::text) FROM apikeys.rotate_key(regress.id('au2'));
-- a migration for bob: importing for another owner needs apikeys_importer
RESET ROLE;
SELECT apikeys.grant_importer('alice');
SET ROLE alice;
SELECT regress.put('au4', apikeys.import_key(regress.id('auws'), 'bob', 'old-bob', repeat('f', 64), '{read}')::text);
RESET ROLE;
REVOKE apikeys_importer FROM alice;
SET ROLE alice;
SELECT regress.put('aupk', id::text) FROM apikeys.create_public_key(regress.id('auws'), '{https://a.example}');
SELECT apikeys.revoke_public_key(regress.id('aupk')) IS NOT NULL AS pk_revoked;
RESET ROLE;
SET ROLE bob;
SELECT regress.put('au5', id::text), regress.put('au5_key', key) FROM apikeys.create_key(regress.id('auws'), 'bobs', '{read}');
SELECT apikeys.revoke_key(regress.id('au5')) IS NOT NULL AS revoked;
-- revoking again changes nothing and logs nothing
SELECT apikeys.revoke_key(regress.id('au5')) IS NOT NULL AS revoked_again;
RESET ROLE;
-- a JWT caller is recorded by its sub
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub":"carol"}');
SELECT regress.put('au6', id::text) FROM apikeys.create_key(regress.id('auws'), 'carols');
COMMIT;
-- an API-key caller is recorded as the key's owner
SET ROLE alice;
SELECT regress.put('au7', id::text), regress.put('au7_key', key)
  FROM apikeys.create_key(regress.id('auws'), 'ops-bot', '{apikeys:manage,read}');
RESET ROLE;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT set_config('request.headers', json_build_object('x-api-key', regress.tok('au7_key'))::text, true) IS NOT NULL;
SELECT apikeys.authenticate();
SELECT apikeys.revoke_key(regress.id('au6')) IS NOT NULL AS revoked_by_key;
COMMIT;
-- removal revokes the member's keys: both recorded, by the admin
SET ROLE alice;
SELECT regress.add_member(regress.id('auws'), 'bob', 'admin');
SELECT apikeys.remove_member(regress.id('auws'), 'bob');
RESET ROLE;
-- the superuser's direct writes are recorded too
UPDATE apikeys.keys SET expires_at = now() + interval '1 day' WHERE id = regress.id('au7');
-- verifying writes last_used_at but never an audit row
SELECT count(*) AS rows_before FROM apikeys.audit_log WHERE workspace_id = regress.id('auws') \gset
SELECT regress.ok('au7_key') AS verified;
SELECT (SELECT last_used_at IS NOT NULL FROM apikeys.keys WHERE id = regress.id('au7')) AS used,
       count(*) = :rows_before AS no_new_rows
  FROM apikeys.audit_log WHERE workspace_id = regress.id('auws');

SELECT * FROM regress.audit('auws');
-- times: every row carries its transaction's time; changes carry from/to
SELECT action, detail ? 'from' AND detail ? 'to' AS has_from_to
  FROM apikeys.audit_log WHERE workspace_id = regress.id('auws')
   AND action IN ('key.expiry_shortened', 'key.scopes_changed') ORDER BY id;
SELECT bool_and(at <= now()) AS times_set FROM apikeys.audit_log;
-- rotation rows link old and new keys
SELECT (SELECT detail->>'replaced_by' FROM apikeys.audit_log WHERE action = 'key.rotated' AND key_id = regress.id('au1'))
       = regress.tok('au2') AS rotated_points_to_new,
       (SELECT detail->>'replaces' FROM apikeys.audit_log WHERE action = 'key.created' AND key_id = regress.id('au2'))
       = regress.tok('au1') AS created_points_to_old;
-- no token and no hash anywhere in the log
SELECT count(*) AS secrets_in_log FROM apikeys.audit_log a, regress.vals v
 WHERE v.name LIKE '%key' AND length(v.val) > 20
   AND (a.detail::text LIKE '%' || v.val || '%'
        OR a.detail::text LIKE '%' || encode(sha256(convert_to(v.val, 'UTF8')), 'hex') || '%');
SELECT count(*) AS hashes_in_log FROM apikeys.audit_log a JOIN apikeys.key_hashes h
    ON a.detail::text LIKE '%' || encode(h.hash, 'hex') || '%' OR a.detail::text LIKE '%' || encode(h.hash, 'base64') || '%';

-- who reads it: admins, their workspace only
SET ROLE alice;
SELECT count(*) > 0 AS admin_reads, bool_and(workspace_id IN (SELECT id FROM apikeys.workspaces)) AS own_only
  FROM apikeys.audit_log;
RESET ROLE;
SET ROLE carol;
SELECT count(*) AS member_reads FROM apikeys.audit_log WHERE workspace_id = regress.id('auws');
RESET ROLE;
SET ROLE mallory;
SELECT count(*) AS outsider_reads FROM apikeys.audit_log WHERE workspace_id = regress.id('auws');
RESET ROLE;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT count(*) AS anonymous_reads FROM apikeys.audit_log;
ROLLBACK;
-- an admin's key sees only its own workspace's rows
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT set_config('request.headers', json_build_object('x-api-key', regress.tok('au7_key'))::text, true) IS NOT NULL;
SELECT apikeys.authenticate();
SELECT count(DISTINCT workspace_id) AS workspaces_seen_by_key FROM apikeys.audit_log;
ROLLBACK;

-- append-only for everyone, the superuser included, under any replication role
SELECT regress.try($$UPDATE apikeys.audit_log SET actor = 'mallory'$$) AS update;
SELECT regress.try($$DELETE FROM apikeys.audit_log$$) AS delete;
SELECT regress.try($$TRUNCATE apikeys.audit_log$$) AS truncate;
BEGIN;
SET LOCAL session_replication_role = replica;
SELECT regress.try($$UPDATE apikeys.audit_log SET actor = 'mallory'$$) AS replica_update;
SELECT regress.try($$DELETE FROM apikeys.audit_log$$) AS replica_delete;
ROLLBACK;
SET ROLE alice;
SELECT regress.try($$INSERT INTO apikeys.audit_log (workspace_id, action) VALUES (regress.id('auws'), 'forged')$$) AS client_insert;
SELECT regress.try($$UPDATE apikeys.audit_log SET actor = 'x'$$) AS client_update;
RESET ROLE;
SELECT count(*) AS forged FROM apikeys.audit_log
 WHERE action = 'forged' OR (workspace_id = regress.id('auws') AND actor IN ('mallory', 'x'));
-- a failed change leaves no audit row (same transaction)
SELECT count(*) AS before FROM apikeys.audit_log \gset
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('auws'), 'svc')$$) AS name_taken;
RESET ROLE;
BEGIN;
SET LOCAL ROLE alice;
SELECT count(*) AS minted FROM apikeys.create_key(regress.id('auws'), 'rolled-back');
ROLLBACK;
SELECT count(*) = :before AS nothing_logged FROM apikeys.audit_log;
