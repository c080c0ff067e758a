-- how use is recorded changes what this file sees: its expected output
-- has a variant per mode (expected/10_authenticate.out without the preload,
-- expected/10_authenticate_1.out with it)
SELECT apikeys.usage_mode() AS usage_mode;
-- authenticate(): PostgREST's db-pre-request hook, and the
-- helpers an application's own policies use. Requests are replayed the way
-- PostgREST makes them: role, claims and headers set local to a transaction.
\set SHOW_CONTEXT never
CREATE FUNCTION regress.headers(h text) RETURNS void LANGUAGE sql AS
    $$ SELECT set_config('request.headers', $1, true) $$;
-- a request carrying the named token in x-api-key
CREATE FUNCTION regress.with_key(name text) RETURNS void LANGUAGE sql AS
    $$ SELECT set_config('request.headers',
                         json_build_object('accept', '*/*', 'x-api-key', regress.tok($1))::text, true) $$;
-- the token with its last character changed (a typo the checksum catches)
CREATE FUNCTION regress.typo(t text) RETURNS text LANGUAGE sql IMMUTABLE AS
    $$ SELECT left($1, -1) || CASE WHEN right($1, 1) = 'Z' THEN 'Y' ELSE 'Z' END $$;
CREATE FUNCTION regress.who() RETURNS TABLE (principal text, key_id_is text, workspace_is text, role text)
    LANGUAGE sql AS $$
    SELECT apikeys.current_principal(),
           (SELECT v.name FROM regress.vals v WHERE v.val = apikeys.current_key_id()::text AND v.name NOT LIKE '%key'),
           (SELECT v.name FROM regress.vals v WHERE v.val = apikeys.current_workspace()::text),
           current_user::text $$;

SET ROLE alice;
SELECT regress.put('aws', apikeys.create_workspace('Auth Inc')::text);
SELECT regress.put('aws2', apikeys.create_workspace('Auth Two')::text);
SELECT regress.add_member(regress.id('aws'), 'bob', 'member', '{read,write}');
SELECT regress.add_member(regress.id('aws'), 'carol', 'member', '{read}');
SELECT regress.put('adm', id::text), regress.put('adm_key', key)
  FROM apikeys.create_key(regress.id('aws'), 'admin-key', '{apikeys:manage,read}');
SELECT regress.put('plain', id::text), regress.put('plain_key', key)
  FROM apikeys.create_key(regress.id('aws'), 'plain', '{read}');
SELECT regress.put('gone', id::text), regress.put('gone_key', key)
  FROM apikeys.create_key(regress.id('aws'), 'gone');
SELECT regress.put('old', id::text), regress.put('old_key', key)
  FROM apikeys.create_key(regress.id('aws'), 'old', '{}', now() + interval '1 day');
SELECT regress.put('other', id::text) FROM apikeys.create_key(regress.id('aws2'), 'other');
SELECT apikeys.revoke_key(regress.id('gone')) IS NOT NULL AS revoked;
RESET ROLE;
SET ROLE bob;
SELECT regress.put('bobk', id::text), regress.put('bobk_key', key)
  FROM apikeys.create_key(regress.id('aws'), 'bob-key', '{read}');
RESET ROLE;
SET ROLE carol;
SELECT regress.put('carolk', id::text), regress.put('carolk_key', key)
  FROM apikeys.create_key(regress.id('aws'), 'carol-key', '{read}');
RESET ROLE;
-- expired: expires_at may move earlier, so the superuser can expire it now
UPDATE apikeys.keys SET expires_at = now() - interval '1 second' WHERE id = regress.id('old');
-- a key of a removed member
SET ROLE alice;
SELECT apikeys.remove_member(regress.id('aws'), 'carol');
RESET ROLE;
-- a well-formed token nobody holds: minted in a transaction that rolls back
-- (kept in a psql variable, which pg_regress does not echo expanded)
BEGIN;
SET LOCAL ROLE alice;
SELECT key AS ghost FROM apikeys.create_key(regress.id('aws'), 'ghost') \gset
ROLLBACK;
SELECT regress.put('ghost_key', :'ghost');
SELECT count(*) AS ghost_rows FROM apikeys.keys WHERE name = 'ghost';

-- no x-api-key header: nothing happens, the anonymous flow goes on
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.headers('{"accept":"*/*","user-agent":"curl/8"}');
SELECT apikeys.authenticate();
SELECT * FROM regress.who();
SELECT count(*) AS keys_seen FROM apikeys.keys;
COMMIT;
-- ...and the JWT flow too
BEGIN;
SELECT regress.as_jwt('authenticated', '{"role":"authenticated","sub":"bob"}');
SELECT regress.headers('{}');
SELECT apikeys.authenticate();
SELECT * FROM regress.who();
COMMIT;

-- a good key: its owner is the principal for this transaction
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.with_key('bobk_key');
SELECT apikeys.authenticate();
SELECT * FROM regress.who();
SELECT apikeys.has_scope('read') AS read, apikeys.has_scope('write') AS write,
       apikeys.has_scope(NULL) AS null_scope, apikeys.has_scope('') AS empty;
-- RLS follows: bob's own keys only
SELECT name FROM apikeys.keys ORDER BY name;
-- claims set later do not override the key
SELECT set_config('request.jwt.claims', '{"sub":"alice"}', true) IS NOT NULL AS claims_set;
SELECT apikeys.current_principal();
COMMIT;
-- the binding ended with the transaction
SELECT * FROM regress.who();
-- header names are matched without regard to case
BEGIN;
SELECT regress.headers(json_build_object('X-Api-Key', regress.tok('bobk_key'))::text);
SELECT apikeys.authenticate();
SELECT principal FROM regress.who();
ROLLBACK;
SELECT principal FROM regress.who();
-- a subtransaction that authenticated and rolled back takes the binding with it
BEGIN;
SELECT regress.with_key('bobk_key');
SAVEPOINT s;
SELECT apikeys.authenticate();
SELECT principal FROM regress.who();
ROLLBACK TO SAVEPOINT s;
SELECT principal FROM regress.who();
SAVEPOINT t;
SELECT apikeys.authenticate();
RELEASE SAVEPOINT t;
SELECT principal FROM regress.who();
COMMIT;

-- every failure is PT401 with one message, and the request goes no further
CREATE TABLE regress.auth_cases (name text, headers text);
INSERT INTO regress.auth_cases VALUES
    ('malformed', '{"x-api-key":"sk_live_not-a-key"}'),
    ('bad checksum', json_build_object('x-api-key', regress.typo(regress.tok('bobk_key')))::text),
    ('unknown', json_build_object('x-api-key', regress.tok('ghost_key'))::text),
    ('revoked', json_build_object('x-api-key', regress.tok('gone_key'))::text),
    ('expired', json_build_object('x-api-key', regress.tok('old_key'))::text),
    ('owner removed', json_build_object('x-api-key', regress.tok('carolk_key'))::text),
    ('empty value', '{"x-api-key":""}'),
    ('1 MB value', json_build_object('x-api-key', repeat('k', 1024 * 1024))::text),
    ('number', '{"x-api-key":42}'),
    ('null', '{"x-api-key":null}'),
    ('array value', '{"x-api-key":["a"]}'),
    ('headers missing', NULL),
    ('headers empty', ''),
    ('not JSON', 'x-api-key: sk_123'),
    ('JSON array', '[{"x-api-key":"sk_123"}]'),
    ('JSON string', '"x-api-key"'),
    ('JSON null', 'null');
GRANT SELECT ON regress.auth_cases TO PUBLIC;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT name, regress.try(format('SELECT set_config(''request.headers'', %L, true), apikeys.authenticate()',
                                coalesce(headers, ''))) AS result
  FROM regress.auth_cases ORDER BY name;
-- nothing was bound
SELECT * FROM regress.who();
COMMIT;
SELECT count(DISTINCT regress.try(format('SELECT set_config(''request.headers'', %L, true), apikeys.authenticate()',
                                         coalesce(headers, '')))) AS distinct_errors
  FROM regress.auth_cases;
-- nothing was written: no last_used_at on the rejected keys, no audit rows
SELECT name, last_used_at IS NULL AS untouched FROM apikeys.keys
 WHERE id IN (regress.id('gone'), regress.id('old'), regress.id('carolk')) ORDER BY name;

-- read-only transactions (PostgREST's GET) authenticate without writing
BEGIN READ ONLY;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.with_key('plain_key');
SELECT apikeys.authenticate();
SELECT principal, key_id_is FROM regress.who();
COMMIT;
SELECT last_used_at IS NULL AS not_written_by_get FROM apikeys.keys WHERE id = regress.id('plain');
-- a read-write request records the use
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.with_key('plain_key');
SELECT apikeys.authenticate();
COMMIT;
SELECT last_used_at IS NOT NULL AS written_by_post FROM apikeys.keys WHERE id = regress.id('plain');

-- a key acts only inside its workspace, and manages only with apikeys:manage
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.with_key('adm_key');
SELECT apikeys.authenticate();
SELECT name, prefix LIKE 'sk\_%' AS prefixed FROM apikeys.create_key(regress.id('aws'), 'minted-by-key', '{read}');
SELECT regress.try($$SELECT apikeys.create_key(regress.id('aws'), 'too-wide', '{write}')$$) AS beyond_key;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('aws2'), 'elsewhere')$$) AS other_workspace;
SELECT regress.try($$SELECT apikeys.revoke_key(regress.id('other'))$$) AS other_workspace_key;
SELECT regress.try($$SELECT apikeys.create_workspace('By Key')$$) AS new_workspace;
SELECT regress.try($$SELECT apikeys.add_member(regress.id('aws'), 'dave')$$) AS add_member;
SELECT count(*) AS keys_seen_only_here FROM apikeys.keys WHERE workspace_id <> regress.id('aws');
ROLLBACK;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.with_key('bobk_key');
SELECT apikeys.authenticate();
SELECT regress.try($$SELECT apikeys.create_key(regress.id('aws'), 'nope')$$) AS mint_without_manage;
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('bobk'))$$) AS rotate_without_manage;
SELECT regress.try($$SELECT apikeys.create_public_key(regress.id('aws'))$$) AS public_key_without_manage;
-- but a key may always revoke itself
SELECT apikeys.revoke_key(regress.id('bobk')) IS NOT NULL AS revoked_itself;
COMMIT;

-- apikeys.key_role: switch roles after a good key (superuser setting)
SET apikeys.key_role = 'authenticated';
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.with_key('adm_key');
SELECT apikeys.authenticate();
SELECT principal, role FROM regress.who();
COMMIT;
SELECT current_user AS role_after_commit;
-- no header: the role stays
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.headers('{}');
SELECT apikeys.authenticate();
SELECT principal, role FROM regress.who();
COMMIT;
RESET apikeys.key_role;
-- apikeys.header: another header name
SET apikeys.header = 'x-service-key';
BEGIN;
SELECT regress.headers(json_build_object('x-service-key', regress.tok('adm_key'), 'x-api-key', 'junk')::text);
SELECT apikeys.authenticate();
SELECT principal, key_id_is FROM regress.who();
COMMIT;
RESET apikeys.header;
-- clients cannot change either setting
SET ROLE bob;
SELECT regress.try($$SET apikeys.key_role = 'postgres'$$) AS key_role;
SELECT regress.try($$SELECT set_config('apikeys.header', 'x-other', true)$$) AS header;
RESET ROLE;
