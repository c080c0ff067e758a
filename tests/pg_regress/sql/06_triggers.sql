-- Invariants: the revoke latch, shrink-only expiry, write-once
-- columns, no DELETE and no TRUNCATE. They hold for the superuser, under
-- session_replication_role = replica, and through INSERT ... ON CONFLICT.
\set SHOW_CONTEXT never
SELECT tgrelid::regclass AS table, tgname, tgenabled FROM pg_trigger
 WHERE tgrelid::regclass::text LIKE 'apikeys.%' AND NOT tgisinternal ORDER BY 1, 2;

SET ROLE alice;
SELECT regress.put('tws', apikeys.create_workspace('Trigger Inc')::text);
SELECT regress.put('t1', id::text) FROM apikeys.create_key(regress.id('tws'), 't1', '{}', now() + interval '10 days');
SELECT regress.put('t2', id::text) FROM apikeys.create_key(regress.id('tws'), 't2');
SELECT apikeys.revoke_key(regress.id('t1')) IS NOT NULL AS revoked;
RESET ROLE;

-- we are the superuser here
SELECT rolsuper FROM pg_roles WHERE rolname = current_user;

-- revoke latch: 23514
SELECT regress.try($$UPDATE apikeys.keys SET revoked_at = NULL WHERE id = regress.id('t1')$$);
SELECT regress.try($$UPDATE apikeys.keys SET revoked_at = revoked_at + interval '1 day' WHERE id = regress.id('t1')$$);
SELECT regress.try($$UPDATE apikeys.keys SET revoked_at = revoked_at - interval '1 day' WHERE id = regress.id('t1')$$);
SELECT regress.try($$INSERT INTO apikeys.keys (id, workspace_id, owner, name, prefix)
                     SELECT id, workspace_id, owner, name, prefix FROM apikeys.keys WHERE id = regress.id('t1')
                     ON CONFLICT (id) DO UPDATE SET revoked_at = NULL$$);
BEGIN;
SET LOCAL session_replication_role = replica;
SELECT regress.try($$UPDATE apikeys.keys SET revoked_at = NULL WHERE id = regress.id('t1')$$);
ROLLBACK;
-- a trigger sorting later cannot undo it either (BEFORE triggers run by name)
CREATE FUNCTION regress.unrevoke() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.revoked_at := NULL; RETURN NEW; END $$;
CREATE TRIGGER zz_unrevoke BEFORE UPDATE ON apikeys.keys FOR EACH ROW EXECUTE FUNCTION regress.unrevoke();
SELECT regress.try($$UPDATE apikeys.keys SET name = 'renamed' WHERE id = regress.id('t1')$$);
CREATE TRIGGER aa_unrevoke BEFORE UPDATE ON apikeys.keys FOR EACH ROW EXECUTE FUNCTION regress.unrevoke();
SELECT regress.try($$UPDATE apikeys.keys SET name = 'renamed' WHERE id = regress.id('t1')$$);
DROP TRIGGER zz_unrevoke ON apikeys.keys;
DROP TRIGGER aa_unrevoke ON apikeys.keys;
SELECT name, revoked_at IS NOT NULL AS still_revoked FROM apikeys.keys WHERE id = regress.id('t1');
-- setting it the first time is allowed, once
SELECT regress.try($$UPDATE apikeys.keys SET revoked_at = now() WHERE id = regress.id('t2')$$);
SELECT revoked_at IS NOT NULL AS revoked FROM apikeys.keys WHERE id = regress.id('t2');

-- expires_at only moves earlier
SELECT regress.try($$UPDATE apikeys.keys SET expires_at = expires_at + interval '1 day' WHERE id = regress.id('t1')$$);
SELECT regress.try($$UPDATE apikeys.keys SET expires_at = NULL WHERE id = regress.id('t1')$$);
SELECT regress.try($$UPDATE apikeys.keys SET expires_at = expires_at - interval '1 day' WHERE id = regress.id('t1')$$);

-- write-once columns
SELECT regress.try(format('UPDATE apikeys.keys SET %s WHERE id = regress.id(%L)', s, 't1')) AS refused
  FROM unnest(ARRAY['owner = ''mallory''', 'workspace_id = gen_random_uuid()', 'id = gen_random_uuid()',
                    'prefix = ''sk_other00''', 'created_at = now() - interval ''1 year''']) AS s;
SELECT regress.try($$UPDATE apikeys.key_hashes SET hash = sha256('x') WHERE key_id = regress.id('t1')$$);
SELECT regress.try($$UPDATE apikeys.members SET principal = 'mallory' WHERE workspace_id = regress.id('tws')$$);
SELECT regress.try($$UPDATE apikeys.workspaces SET id = gen_random_uuid() WHERE id = regress.id('tws')$$);

-- no DELETE, no TRUNCATE (42501; 0A000 where PostgreSQL's foreign-key check refuses first)
SELECT t, regress.try(format('DELETE FROM apikeys.%I', t)) AS delete,
          regress.try(format('TRUNCATE apikeys.%I', t)) AS truncate
  FROM unnest(ARRAY['key_hashes', 'keys', 'members', 'workspaces', 'public_keys', 'audit_log', 'invitations']) AS t;
SELECT regress.try($$TRUNCATE apikeys.key_hashes, apikeys.keys, apikeys.members, apikeys.workspaces,
                              apikeys.public_keys, apikeys.audit_log, apikeys.invitations$$);
BEGIN;
SET LOCAL session_replication_role = replica;
SELECT regress.try($$DELETE FROM apikeys.keys$$);
SELECT regress.try($$TRUNCATE apikeys.key_hashes$$);
ROLLBACK;
SELECT count(*) > 0 AS rows_kept FROM apikeys.keys;
