-- rotate_key and the shrink-only expires_at latch.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('rtws', apikeys.create_workspace('Rotate Inc')::text);
SELECT regress.add_member(regress.id('rtws'), 'bob', 'member', '{read,write}');
SELECT regress.put('r1', id::text), regress.put('r1_key', key)
  FROM apikeys.create_key(regress.id('rtws'), 'billing', '{read}', now() + interval '30 days',
                          '{"env":"prod"}', 'sk_live');
RESET ROLE;
SET ROLE bob;
SELECT regress.put('rb', id::text), regress.put('rb_key', key)
  FROM apikeys.create_key(regress.id('rtws'), 'bob-svc', '{read,write}');
RESET ROLE;
SET ROLE mallory;
SELECT regress.put('rmws', apikeys.create_workspace('Mallory Rotate')::text);
SELECT regress.put('rm', id::text) FROM apikeys.create_key(regress.id('rmws'), 'mine');
RESET ROLE;

-- with a grace period: same name, owner, scopes, metadata, token prefix and
-- expiry; the old key keeps working until now() + grace
SET ROLE alice;
SELECT regress.put('r2', id::text), regress.put('r2_key', key), name, prefix LIKE 'sk\_live\_%' AS same_prefix,
       key LIKE 'sk\_live\_%' AS token_prefix
  FROM apikeys.rotate_key(regress.id('r1'), '1 hour');
RESET ROLE;
SELECT n.name = o.name AS same_name, n.owner = o.owner AS same_owner, n.scopes = o.scopes AS same_scopes,
       n.metadata = o.metadata AS same_metadata,
       n.workspace_id = o.workspace_id AS same_workspace, n.prefix <> o.prefix AS new_display_prefix,
       o.replaced_by = n.id AS old_points_to_new, o.revoked_at IS NULL AS old_not_revoked,
       o.expires_at BETWEEN now() + interval '59 minutes' AND now() + interval '61 minutes' AS old_expires_in_grace,
       n.expires_at > now() + interval '29 days' AS new_keeps_expiry
  FROM apikeys.keys o, apikeys.keys n WHERE o.id = regress.id('r1') AND n.id = regress.id('r2');
SELECT regress.ok('r1_key') AS old_verifies_in_grace, regress.ok('r2_key') AS new_verifies;
-- one active key holds the name: the new one
SELECT count(*) AS holders FROM apikeys.keys
 WHERE workspace_id = regress.id('rtws') AND name = 'billing' AND revoked_at IS NULL AND replaced_by IS NULL;
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('rtws'), 'billing')$$) AS name_still_taken;
-- a rotated key cannot be rotated again (rotate its replacement)
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('r1'), '1 hour')$$) AS rotate_old_again;
-- grace zero (the default): the old key is revoked at once
SELECT regress.put('r3', id::text), regress.put('r3_key', key) FROM apikeys.rotate_key(regress.id('r2'));
RESET ROLE;
SELECT regress.ok('r2_key') AS r2_verifies, regress.ok('r3_key') AS r3_verifies,
       (SELECT revoked_at IS NOT NULL FROM apikeys.keys WHERE id = regress.id('r2')) AS r2_revoked;
-- grace never extends: a key expiring in 1 minute keeps that expiry
SET ROLE alice;
SELECT regress.put('soon', id::text) FROM apikeys.create_key(regress.id('rtws'), 'soon', '{}', now() + interval '1 minute');
SELECT regress.put('soon2', id::text) FROM apikeys.rotate_key(regress.id('soon'), '7 days');
RESET ROLE;
SELECT o.expires_at <= now() + interval '1 minute' AS not_extended, n.expires_at = o.expires_at AS new_same_expiry
  FROM apikeys.keys o, apikeys.keys n WHERE o.id = regress.id('soon') AND n.id = regress.id('soon2');

-- refused: revoked, expired, negative or null grace, absent, not yours
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('r2'))$$) AS revoked;
SELECT regress.put('dead', id::text) FROM apikeys.create_key(regress.id('rtws'), 'dead', '{}', now() + interval '1 day');
RESET ROLE;
UPDATE apikeys.keys SET expires_at = now() - interval '1 second' WHERE id = regress.id('dead');
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('dead'))$$) AS expired;
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('r3'), '-1 second')$$) AS negative_grace;
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('r3'), NULL)$$) AS null_grace;
SELECT regress.try($$SELECT apikeys.rotate_key(NULL)$$) AS null_key;
SELECT regress.try($$SELECT apikeys.rotate_key('00000000-0000-4000-8000-0000000000aa')$$) AS absent;
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('rm'))$$) AS other_tenant;
RESET ROLE;
SELECT revoked_at IS NULL AND replaced_by IS NULL AS r3_untouched FROM apikeys.keys WHERE id = regress.id('r3');

-- only a key's owner rotates it: the new token acts as the owner, so an
-- admin rotating a member's key is refused (the admin may revoke it)
SET ROLE bob;
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('r3'))$$) AS member_rotates_admins;
SELECT regress.put('rb2', id::text), regress.put('rb2_key', key), name
  FROM apikeys.rotate_key(regress.id('rb'), '5 minutes');
RESET ROLE;
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('rb2'))$$) AS admin_rotates_members;
RESET ROLE;
SET ROLE bob;
SELECT regress.put('rb3', id::text) FROM apikeys.rotate_key(regress.id('rb2'));
RESET ROLE;
-- the owner's rotation keeps bob as the owner
SELECT owner, name, scopes FROM apikeys.keys WHERE id = regress.id('rb3');
-- anonymous callers cannot rotate
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('r3'))$$) AS anonymous;
ROLLBACK;
-- an API key with apikeys:manage rotates inside its workspace, never beyond its own scopes
SET ROLE alice;
SELECT regress.put('rk', id::text), regress.put('rk_key', key)
  FROM apikeys.create_key(regress.id('rtws'), 'rotator', '{apikeys:manage}');
RESET ROLE;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT set_config('request.headers', json_build_object('x-api-key', regress.tok('rk_key'))::text, true) IS NOT NULL;
SELECT apikeys.authenticate();
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('r3'))$$) AS beyond_key_scopes;
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('rm'))$$) AS other_workspace;
SELECT name FROM apikeys.rotate_key(regress.id('soon2'), '1 minute');
ROLLBACK;

-- the expires_at latch holds for every writer, the superuser included
SELECT regress.try($$UPDATE apikeys.keys SET expires_at = expires_at + interval '1 day' WHERE id = regress.id('r3')$$) AS extend;
SELECT regress.try($$UPDATE apikeys.keys SET expires_at = NULL WHERE id = regress.id('r3')$$) AS clear;
SELECT regress.try($$UPDATE apikeys.keys SET expires_at = expires_at - interval '1 day' WHERE id = regress.id('r3')$$) AS shorten;
SELECT regress.try($$UPDATE apikeys.keys SET expires_at = now() + interval '1 day' WHERE id = regress.id('rb3')$$) AS set_from_null;
SELECT regress.try($$INSERT INTO apikeys.keys (id, workspace_id, owner, name, prefix)
                     SELECT id, workspace_id, owner, name, prefix FROM apikeys.keys WHERE id = regress.id('r3')
                     ON CONFLICT (id) DO UPDATE SET expires_at = NULL$$) AS upsert_clear;
BEGIN;
SET LOCAL session_replication_role = replica;
SELECT regress.try($$UPDATE apikeys.keys SET expires_at = NULL WHERE id = regress.id('r3')$$) AS replica_clear;
ROLLBACK;
-- the rotated-key latch: replaced_by is set once
SELECT regress.try($$UPDATE apikeys.keys SET replaced_by = NULL WHERE id = regress.id('r1')$$) AS unrotate;
SELECT regress.try($$UPDATE apikeys.keys SET replaced_by = gen_random_uuid() WHERE id = regress.id('r1')$$) AS repoint;
SELECT regress.try($$UPDATE apikeys.keys SET source = 'imported' WHERE id = regress.id('r3')$$) AS source;
