-- Who may hold a token that acts as whom (docs/security.md, "Who can hold
-- which token"). Each block is an attack found by trying, as an ordinary
-- client role granted by grant_to, to end up with a token that acts as
-- someone else, to escalate through a key, to name oneself through claims,
-- to rewrite provenance, or to break the extension with hostile input; each
-- must now fail cleanly and change nothing.
\set SHOW_CONTEXT never
-- 18_hot_path made the extension afresh, granted to app_user only
SELECT apikeys.grant_to('anon'), apikeys.grant_to('authenticated');
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'migrator') THEN
        CREATE ROLE migrator LOGIN;
    END IF;
    IF NOT pg_has_role('migrator', 'app_user', 'MEMBER') THEN
        GRANT app_user TO migrator;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN
        CREATE ROLE authenticator LOGIN NOINHERIT;
    END IF;
    IF NOT pg_has_role('authenticator', 'authenticated', 'MEMBER') THEN
        GRANT authenticated TO authenticator;
    END IF;
    -- roles outlive the database: start from no importer grant
    IF pg_has_role('migrator', 'apikeys_importer', 'MEMBER') THEN
        REVOKE apikeys_importer FROM migrator;
    END IF;
END
$$;

-- 1. Impersonation by import. mallory (a JWT user) makes a workspace,
-- invites victim without victim's consent and imports a digest of a token
-- she chose, for victim.
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub":"mallory"}');
SELECT regress.put('m_ws', apikeys.create_workspace('m-ws')::text);
SELECT apikeys.add_member(regress.id('m_ws'), 'victim', 'member', '{}');
SELECT regress.try(format('SELECT apikeys.import_key(%L, %L, %L, %L)', regress.id('m_ws'), 'victim', 'imp',
       encode(sha256('mallory-chosen-token'::bytea), 'hex'))) AS import_for_uninvited_victim;
COMMIT;
-- victim is only invited: no membership without their consent
SELECT count(*) AS victim_memberships FROM apikeys.members WHERE principal = 'victim';
-- even once victim has joined, an admin cannot import for them: that needs
-- the apikeys_importer role, never just workspace admin
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub":"victim"}');
SELECT apikeys.accept_invitation(regress.id('m_ws')) AS victim_joined_as;
COMMIT;
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub":"mallory"}');
SELECT regress.try(format('SELECT apikeys.import_key(%L, %L, %L, %L)', regress.id('m_ws'), 'victim', 'imp',
       encode(sha256('mallory-chosen-token'::bytea), 'hex'))) AS import_for_member_victim;
-- for herself it works (her own token acts as her)
SELECT apikeys.import_key(regress.id('m_ws'), 'mallory', 'own-import',
       encode(sha256('mallory-own-token'::bytea), 'hex')) IS NOT NULL AS import_for_self;
COMMIT;
-- so the chosen token authenticates nobody
BEGIN;
SELECT set_config('request.headers', '{"x-api-key":"mallory-chosen-token"}', true) IS NOT NULL AS headers;
SELECT regress.try('SELECT apikeys.authenticate()') AS authenticate_chosen_token;
ROLLBACK;
SELECT count(*) AS keys_owned_by_victim FROM apikeys.keys WHERE owner = 'victim';

-- a migration role granted apikeys_importer (by a superuser) imports for
-- members of a workspace it administers
SELECT apikeys.grant_importer('migrator');
SET ROLE alice;
SELECT regress.put('imp_ws', apikeys.create_workspace('Import Target')::text);
SELECT regress.add_member(regress.id('imp_ws'), 'bob', 'member', '{read}');
SELECT regress.add_member(regress.id('imp_ws'), 'migrator', 'admin');
RESET ROLE;
SET ROLE migrator;
SELECT apikeys.import_key(regress.id('imp_ws'), 'bob', 'migrated', encode(sha256('legacy-bob-token'::bytea), 'hex'),
       '{read}') IS NOT NULL AS migrator_imports_for_bob;
RESET ROLE;
SET ROLE bob;
SELECT owner, scopes FROM apikeys.verify_key('legacy-bob-token');
RESET ROLE;
-- but not through an API key, importer or not
SET ROLE migrator;
SELECT regress.put('mig_key', key) FROM apikeys.create_key(regress.id('imp_ws'), 'mig-key', '{read,apikeys:manage}');
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-key', regress.tok('mig_key'))::text, true) IS NOT NULL AS headers;
SELECT apikeys.authenticate();
SELECT regress.try(format('SELECT apikeys.import_key(%L, %L, %L, %L)', regress.id('imp_ws'), 'bob', 'via-key',
       encode(sha256('via-key-token'::bytea), 'hex'))) AS import_for_bob_through_key;
ROLLBACK;
RESET ROLE;

-- 1b. An admin rotating a member's key would hold a token acting as the
-- member: refused; the admin may still revoke it, the owner rotates it.
SET ROLE bob;
SELECT regress.put('bob_key_id', id::text) FROM apikeys.create_key(regress.id('imp_ws'), 'bob-key', '{read}');
RESET ROLE;
SET ROLE migrator;
SELECT regress.try(format('SELECT apikeys.rotate_key(%L)', regress.id('bob_key_id'))) AS admin_rotates_member_key;
RESET ROLE;
SET ROLE bob;
SELECT regress.put('bob_key2_id', id::text) FROM apikeys.rotate_key(regress.id('bob_key_id'), '1 hour');
SELECT owner FROM apikeys.keys WHERE id = regress.id('bob_key2_id');
RESET ROLE;
SET ROLE migrator;
SELECT apikeys.revoke_key(regress.id('bob_key_id')) IS NOT NULL AS admin_revokes_member_key;
RESET ROLE;

-- 2. Escalation through a managing key. alice's key holds
-- {read,write,apikeys:manage}; through it nobody becomes admin, nobody gets
-- scopes beyond the key's, and no admin is changed or removed.
SET ROLE alice;
SELECT regress.put('esc_ws', apikeys.create_workspace('Escalation')::text);
SELECT regress.add_member(regress.id('esc_ws'), 'carol', 'admin');
SELECT regress.put('esc_key', key)
  FROM apikeys.create_key(regress.id('esc_ws'), 'manager', '{read,write,apikeys:manage}');
RESET ROLE;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT set_config('request.headers', json_build_object('x-api-key', regress.tok('esc_key'))::text, true) IS NOT NULL AS headers;
SELECT apikeys.authenticate();
SELECT regress.try(format('SELECT apikeys.add_member(%L, %L, %L, %L)', regress.id('esc_ws'), 'mallory', 'admin',
       '{read}')) AS make_admin;
SELECT regress.try(format('SELECT apikeys.add_member(%L, %L, %L, %L)', regress.id('esc_ws'), 'mallory', 'admin',
       '{superpower,billing:admin}')) AS make_admin_with_more_scopes;
SELECT regress.try(format('SELECT apikeys.add_member(%L, %L, %L, %L)', regress.id('esc_ws'), 'mallory', 'member',
       '{superpower}')) AS scopes_beyond_key;
SELECT regress.try(format('SELECT apikeys.add_member(%L, %L, %L)', regress.id('esc_ws'), 'carol', 'member')) AS demote_admin;
SELECT regress.try(format('SELECT apikeys.remove_member(%L, %L)', regress.id('esc_ws'), 'carol')) AS remove_admin;
-- within the key's scopes, a member invitation is fine
SELECT regress.try(format('SELECT apikeys.add_member(%L, %L, %L, %L)', regress.id('esc_ws'), 'mallory', 'member',
       '{read}')) AS invite_member_within_scopes;
-- and the key cannot accept invitations for its owner elsewhere
SELECT regress.try(format('SELECT apikeys.accept_invitation(%L)', regress.id('m_ws'))) AS key_accepts;
COMMIT;
-- after the key is revoked, what it did leaves mallory nothing to escalate with
SET ROLE alice;
SELECT apikeys.revoke_key(id) IS NOT NULL AS revoked FROM apikeys.keys
 WHERE workspace_id = regress.id('esc_ws') AND name = 'manager';
RESET ROLE;
SET ROLE mallory;
SELECT apikeys.accept_invitation(regress.id('esc_ws')) AS mallory_joined_as;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L, %L)', regress.id('esc_ws'), 'persist',
       '{billing:admin,apikeys:manage,superpower}')) AS mint_beyond_own;
RESET ROLE;
SELECT principal, role, scopes FROM apikeys.members
 WHERE workspace_id = regress.id('esc_ws') AND removed_at IS NULL ORDER BY principal;

-- 3. Expiry is judged by the statement's clock, not the transaction's start
-- (revocation in older snapshots: tests/isolation/specs/revoke_snapshot.spec)
SET ROLE alice;
BEGIN;
SELECT regress.put('short', key)
  FROM apikeys.create_key(regress.id('esc_ws'), 'short-lived', '{}', clock_timestamp() + interval '3 seconds');
SELECT regress.ok('short') AS verifies_now;
SELECT pg_sleep(3.2);
SELECT regress.ok('short') AS verifies_after_expiry_same_transaction;
COMMIT;
RESET ROLE;

-- 4. Claims count only from the authenticator (apikeys.claims_roles) or a
-- superuser session. carol, logged in as herself, claims to be alice: ignored.
SELECT dblink_connect('carol', format('dbname=%s port=%s host=%s user=carol', current_database(),
       current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT * FROM dblink('carol', $$
    SELECT set_config('request.jwt.claims', '{"sub":"alice"}', false) IS NOT NULL, apikeys.current_principal()
$$) AS t(claims_set boolean, principal text);
-- nor can she widen the list: a superuser-only setting (the library is
-- loaded by now, so this is the real setting, not a placeholder)
SELECT * FROM dblink('carol', $$
    SELECT regress.try('SET apikeys.claims_roles = ''carol''')
$$) AS t(set_claims_roles text);
SELECT dblink_disconnect('carol');
-- the authenticator's sessions are trusted: that is PostgREST
SELECT dblink_connect('authn', format('dbname=%s port=%s host=%s user=authenticator', current_database(),
       current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT dblink_exec('authn', $$SET ROLE authenticated; SET request.jwt.claims = '{"sub":"alice"}'$$);
SELECT * FROM dblink('authn', 'SELECT current_user::text, apikeys.current_principal()') AS t(role text, principal text);
SELECT dblink_disconnect('authn');
-- a superuser may name another list; carol's sessions are then trusted
ALTER ROLE carol SET apikeys.claims_roles = 'carol';
SELECT dblink_connect('carol', format('dbname=%s port=%s host=%s user=carol', current_database(),
       current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT * FROM dblink('carol', $$
    SELECT set_config('request.jwt.claims', '{"sub":"alice"}', false) IS NOT NULL, apikeys.current_principal()
$$) AS t(claims_set boolean, principal text);
SELECT dblink_disconnect('carol');
ALTER ROLE carol RESET apikeys.claims_roles;
-- a sub that is no principal: 22023, never a raw index error; a key given
-- twice is read as PostgreSQL's ->> reads it (the last one)
BEGIN;
SELECT regress.as_jwt('authenticated', json_build_object('sub', repeat('s', 9600))::text);
SELECT regress.try('SELECT apikeys.current_principal()') AS long_sub;
SELECT regress.try($$SELECT apikeys.create_workspace('long sub')$$) AS long_sub_writes;
ROLLBACK;
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub":"alice","sub":"mallory"}');
SELECT apikeys.current_principal(), current_setting('request.jwt.claims')::jsonb ->> 'sub' AS postgres_reads;
ROLLBACK;

-- 5. Provenance survives row movement: an update that would move a row to
-- another partition is refused (the move would re-stamp it as an insert)
CREATE SCHEMA IF NOT EXISTS part;
GRANT USAGE ON SCHEMA part TO app_user;
CREATE TABLE part.items (id int, region text, body text, created_by text) PARTITION BY LIST (region);
CREATE TABLE part.items_eu PARTITION OF part.items FOR VALUES IN ('eu');
CREATE TABLE part.items_us PARTITION OF part.items FOR VALUES IN ('us');
CREATE TRIGGER items_created_by BEFORE INSERT OR UPDATE ON part.items
    FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('created_by');
GRANT SELECT, INSERT, UPDATE ON part.items TO app_user;
SET ROLE alice;
INSERT INTO part.items VALUES (1, 'eu', 'from alice', 'mallory');
RESET ROLE;
SET ROLE mallory;
SELECT regress.try($$UPDATE part.items SET region = 'us' WHERE id = 1$$) AS move_partition;
UPDATE part.items SET body = 'edited by mallory', created_by = 'mallory' WHERE id = 1 RETURNING region, created_by;
RESET ROLE;
SELECT tableoid::regclass AS part, region, body, created_by FROM part.items;
DROP SCHEMA part CASCADE;

-- 6. What EXPLAIN ANALYZE shows another tenant (docs/security.md, "What a
-- SQL session can learn"). Leakproof comparisons (=, <, > on ids and text)
-- run as index conditions before row-level security, so the counters show
-- whether a row with that id, display prefix, principal or public key
-- exists; values compared by anything else (metadata, scopes, names through
-- functions) are never evaluated on hidden rows, so the plan is the same
-- whatever the value. key_hashes is not readable at all.
SELECT regress.put('other_prefix', prefix) FROM apikeys.keys WHERE id = regress.id('bob_key_id');
SET ROLE mallory;
-- the plan's counters (rows found, rows removed), without the query's text
CREATE FUNCTION pg_temp.plan(q text) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE line text;
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF, BUFFERS OFF) ' || q LOOP
        RETURN NEXT coalesce(substring(line FROM '\(actual.*\)$'), substring(line FROM 'Rows Removed.*$'), '');
    END LOOP;
END $$;
SELECT (SELECT array_agg(p) FROM pg_temp.plan($$SELECT 1 FROM apikeys.keys WHERE metadata ->> 'tier' = 'gold'$$) p)
     = (SELECT array_agg(p) FROM pg_temp.plan($$SELECT 1 FROM apikeys.keys WHERE metadata ->> 'tier' = 'nothing'$$) p)
       AS metadata_values_invisible;
SELECT (SELECT array_agg(p) FROM pg_temp.plan($$SELECT 1 FROM apikeys.keys WHERE 'billing:admin' = ANY (scopes)$$) p)
     = (SELECT array_agg(p) FROM pg_temp.plan($$SELECT 1 FROM apikeys.keys WHERE 'no:such' = ANY (scopes)$$) p)
       AS scope_values_invisible;
-- the documented limit: a leakproof index condition on another tenant's
-- display prefix shows, in its counters, that such a key exists
SELECT (SELECT array_agg(p) FROM pg_temp.plan(format('SELECT 1 FROM apikeys.keys WHERE prefix = %L',
                                                      regress.tok('other_prefix'))) p)
     = (SELECT array_agg(p) FROM pg_temp.plan($$SELECT 1 FROM apikeys.keys WHERE prefix = 'sk_nosuchpx'$$) p)
       AS prefix_existence_invisible;
SELECT regress.try('EXPLAIN (ANALYZE) SELECT 1 FROM apikeys.key_hashes') AS explain_key_hashes;
RESET ROLE;

-- 7. Hostile input ends in 22023 (or 23505 with the extension's message),
-- and metadata is stored exactly as the jsonb given
SET ROLE alice;
SELECT regress.try(format('SELECT apikeys.create_key(%L, NULL, %L, NULL, %L)', regress.id('esc_ws'), '{}',
       repeat('{"a":', 130) || '1' || repeat('}', 130))) AS nested_130;
SELECT regress.put('exact', id::text) FROM apikeys.create_key(regress.id('esc_ws'), 'exact-meta', '{}', NULL,
       '{"big": 1e400, "precise": 123456789012345678901234567890.123456789, "deep": [[[[[[[[[[1]]]]]]]]]]}');
SELECT metadata = '{"big": 1e400, "precise": 123456789012345678901234567890.123456789, "deep": [[[[[[[[[[1]]]]]]]]]]}'::jsonb
       AS stored_exactly, metadata ->> 'precise' AS precise
  FROM apikeys.keys WHERE id = regress.id('exact');
-- rotation copies it exactly too
SELECT regress.put('exact2', id::text) FROM apikeys.rotate_key(regress.id('exact'), '1 hour');
SELECT metadata ->> 'precise' AS rotated_precise FROM apikeys.keys WHERE id = regress.id('exact2');
SELECT regress.put('grace_key', id::text) FROM apikeys.create_key(regress.id('esc_ws'), 'grace-key');
SELECT regress.try(format('SELECT apikeys.rotate_key(%L, %L)', regress.id('grace_key'), '170000000 years')) AS huge_grace;
SELECT regress.try(format('SELECT apikeys.rotate_key(%L, %L)', regress.id('grace_key'), '-1 second')) AS negative_grace;
SELECT regress.try(format('SELECT apikeys.import_key(%L, %L, %L, %L)', regress.id('esc_ws'), 'alice', 'dup-a',
       repeat('cd', 32))) AS first_import;
SELECT regress.try(format('SELECT apikeys.import_key(%L, %L, %L, %L)', regress.id('esc_ws'), 'alice', 'dup-b',
       repeat('CD', 32))) AS same_digest_again;
RESET ROLE;
REVOKE apikeys_importer FROM migrator;
