-- how use is recorded changes what this file sees: its expected output
-- has a variant per mode (expected/08_errors.out without the preload,
-- expected/08_errors_1.out with it)
SELECT apikeys.usage_mode() AS usage_mode;
-- Errors: PostgreSQL errors raised inside the extension's own
-- statements reach the client with their SQLSTATE and message and nothing
-- added (no Rust backtrace, no token); the extension's own errors carry only
-- fixed text.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('ews', apikeys.create_workspace('Errors Inc')::text);
RESET ROLE;
-- a trigger planted by the superuser fails every insert into keys
CREATE FUNCTION regress.refuse() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'refused by a test trigger' USING ERRCODE = 'check_violation'; END $$;
CREATE TRIGGER refuse BEFORE INSERT ON apikeys.keys FOR EACH ROW EXECUTE FUNCTION regress.refuse();
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ews'), 'blocked')$$);
RESET ROLE;
DROP TRIGGER refuse ON apikeys.keys;
-- nothing was written by the failed mint
SELECT count(*) AS keys FROM apikeys.keys WHERE workspace_id = regress.id('ews');
SELECT count(*) AS orphan_hashes FROM apikeys.key_hashes h
 WHERE NOT EXISTS (SELECT FROM apikeys.keys k WHERE k.id = h.key_id);

-- verify_key's privileged statement (the last_used_at stamp, written when
-- the verifying transaction commits) under a planted trigger that fails it:
-- the stamp is given up, never the caller's commit
SET ROLE alice;
SELECT regress.put('ek', key) FROM apikeys.create_key(regress.id('ews'), 'ek');
RESET ROLE;
CREATE TRIGGER refuse BEFORE UPDATE ON apikeys.keys FOR EACH ROW EXECUTE FUNCTION regress.refuse();
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.verify_key(regress.tok('ek'))$$);
-- and verify_key restored the caller's identity afterwards
SELECT current_user, apikeys.current_principal();
RESET ROLE;
SELECT apikeys.usage_mode() = 'shared_memory' OR last_used_at IS NULL AS stamp_given_up
  FROM apikeys.keys WHERE workspace_id = regress.id('ews') AND name = 'ek';
DROP TRIGGER refuse ON apikeys.keys;

-- errors never echo what the caller sent: a token passed where a name goes
SET ROLE alice;
SELECT strpos(regress.try(format('SELECT apikeys.create_key(regress.id(%L), %L)', 'ews', regress.tok('ek'))),
              regress.tok('ek')) = 0 AS not_echoed;
SELECT strpos(regress.try(format('SELECT apikeys.create_key(regress.id(%L), NULL, ARRAY[%L])', 'ews', regress.tok('ek'))),
              regress.tok('ek')) = 0 AS not_echoed;
SELECT strpos(regress.try(format('SELECT apikeys.add_member(regress.id(%L), %L, %L)', 'ews', 'x', regress.tok('ek'))),
              regress.tok('ek')) = 0 AS not_echoed;
RESET ROLE;

-- every function that writes refuses a READ ONLY transaction up front with
-- PostgreSQL's 25006 (the same check answers on a hot standby, where SPI
-- would otherwise fail with XX000; tests/ops/test_hot_standby.py), while
-- verify_key and resolve_public_key keep working
SET ROLE alice;
BEGIN READ ONLY;
SELECT f, regress.try(q) AS result FROM (VALUES
    ('create_workspace', $$SELECT apikeys.create_workspace('ro')$$),
    ('add_member', $$SELECT apikeys.add_member(regress.id('ews'), 'carol')$$),
    ('remove_member', $$SELECT apikeys.remove_member(regress.id('ews'), 'carol')$$),
    ('create_key', $$SELECT apikeys.create_key(regress.id('ews'), 'ro')$$),
    ('revoke_key', $$SELECT apikeys.revoke_key('00000000-0000-4000-8000-000000000000')$$),
    ('rotate_key', $$SELECT apikeys.rotate_key('00000000-0000-4000-8000-000000000000')$$),
    ('import_key', $$SELECT apikeys.import_key(regress.id('ews'), 'alice', 'ro', repeat('a', 64))$$),
    ('create_public_key', $$SELECT apikeys.create_public_key(regress.id('ews'))$$),
    ('revoke_public_key', $$SELECT apikeys.revoke_public_key('00000000-0000-4000-8000-000000000000')$$)) AS t(f, q);
SELECT count(*) AS still_verifies FROM apikeys.verify_key(regress.tok('ek'));
COMMIT;
RESET ROLE;
