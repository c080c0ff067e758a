-- Hostile callers: a caller who plants objects on
-- the search_path, leaks rows through a cheap function, probes unique
-- violations, tries to lift the latch without owning the tables, or sends
-- giant, malformed and unicode input. Each attack changes no result, sees
-- nothing of another tenant and ends in an error of docs/reference.md's table or zero rows.
\set SHOW_CONTEXT never
-- bounded time: any path that got slow (hashing 100 MB, a scan per byte)
-- would fail here with 57014 instead of passing slowly
SET statement_timeout = '20s';
-- zero-width and direction-override characters shown as <U+XXXX>: psql's
-- column widths for them differ between PostgreSQL versions
CREATE FUNCTION regress.visible(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(CASE WHEN c ~ '[\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]'
                           THEN format('<U+%s>', upper(to_hex(ascii(c)))) ELSE c END, '' ORDER BY i)
      FROM unnest(string_to_array(t, NULL)) WITH ORDINALITY AS s(c, i)
$$;

-- two tenants: Acme (alice admin, bob member) and Blue (carol admin)
SET ROLE alice;
SELECT regress.put('hws_a', apikeys.create_workspace('Acme Hostile')::text);
SELECT regress.add_member(regress.id('hws_a'), 'bob', 'member', '{read}');
SELECT regress.put('ha1', key), regress.put('ha1_id', id::text)
  FROM apikeys.create_key(regress.id('hws_a'), 'acme-key', '{read,write}', NULL, '{"tier": "gold"}');
SELECT regress.put('ha_rev', key), regress.put('ha_rev_id', id::text)
  FROM apikeys.create_key(regress.id('hws_a'), 'acme-revoked');
SELECT apikeys.revoke_key(regress.id('ha_rev_id')) IS NOT NULL AS revoked;
SELECT regress.put('hpk', public_key) FROM apikeys.create_public_key(regress.id('hws_a'), '{https://acme.test}');
SET ROLE carol;
SELECT regress.put('hws_b', apikeys.create_workspace('Blue Secret Project')::text);
SELECT regress.put('hb1', key), regress.put('hb1_id', id::text)
  FROM apikeys.create_key(regress.id('hws_b'), 'blue-secret-name', '{read}');
SELECT apikeys.import_key(regress.id('hws_b'), 'carol', 'blue-legacy', repeat('9', 64)) IS NOT NULL AS imported;
SET ROLE bob;
SELECT regress.put('hbob', key), regress.put('hbob_id', id::text)
  FROM apikeys.create_key(regress.id('hws_a'), 'bob-key', '{read}');
RESET ROLE;

-- The honest answers, recorded before any attack.
CREATE TABLE regress.honest AS
SELECT t.n, t.name, t.scopes,
       (SELECT row(v.key_id, v.workspace_id, v.owner, v.scopes, v.metadata, v.expires_at)::text
          FROM apikeys.verify_key(regress.tok(t.name), t.scopes) v) AS verdict
  FROM (VALUES (1, 'ha1', '{}'::text[]), (2, 'ha1', '{read,write}'), (3, 'ha1', '{admin}'), (4, 'ha_rev', '{}'),
               (5, 'hb1', '{}'), (6, 'hbob', '{read}')) AS t(n, name, scopes);
GRANT SELECT ON regress.honest TO PUBLIC;
SELECT n, name, scopes, verdict IS NOT NULL AS verifies FROM regress.honest ORDER BY n;

---------------------------------------------------------------------------
-- 1. search_path hijack: mallory plants tables in pg_temp and functions and
-- operators in her own schema, named like everything the extension uses,
-- puts them ahead of pg_catalog, and calls every entry point. Each planted
-- function says so (NOTICE) when it runs and gives a lying answer; no NOTICE
-- may appear below and every answer must equal the honest one.
---------------------------------------------------------------------------
CREATE SCHEMA evil AUTHORIZATION mallory;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
SET ROLE mallory;
CREATE FUNCTION evil.said(what text) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN RAISE NOTICE 'HIJACKED: %', what; RETURN true; END $$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('now') THEN '2000-01-01'::timestamptz END $$;
CREATE FUNCTION evil.statement_timestamp() RETURNS timestamptz LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('statement_timestamp') THEN '2000-01-01'::timestamptz END $$;
CREATE FUNCTION evil.current_principal() RETURNS text LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('current_principal') THEN 'alice' END $$;
CREATE FUNCTION evil.member_role(uuid) RETURNS text LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('member_role') THEN 'admin' END $$;
CREATE FUNCTION evil.current_setting(text) RETURNS text LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('current_setting') THEN '{"sub": "alice"}' END $$;
CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('current_setting/2') THEN '{"sub": "alice"}' END $$;
CREATE FUNCTION evil.sha256(bytea) RETURNS bytea LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('sha256') THEN '\x00'::bytea END $$;
CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('gen_random_uuid') THEN '00000000-0000-4000-8000-000000000001'::uuid END $$;
CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('lower') THEN 'x' END $$;
CREATE FUNCTION evil.set_config(text, text, boolean) RETURNS text LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('set_config') THEN $2 END $$;
CREATE FUNCTION evil.array_length(anyarray, integer) RETURNS integer LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('array_length') THEN 0 END $$;
CREATE FUNCTION evil.cardinality(anyarray) RETURNS integer LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('cardinality') THEN 0 END $$;
CREATE FUNCTION evil.jsonb_build_object(text, text) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT CASE WHEN evil.said('jsonb_build_object') THEN '{}'::jsonb END $$;
CREATE FUNCTION evil.t_uuid(uuid, uuid) RETURNS boolean LANGUAGE sql AS $$ SELECT evil.said('uuid =') $$;
CREATE FUNCTION evil.t_text(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT evil.said('text =') $$;
CREATE FUNCTION evil.t_bytea(bytea, bytea) RETURNS boolean LANGUAGE sql AS $$ SELECT evil.said('bytea =') $$;
CREATE FUNCTION evil.t_ts(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql AS $$ SELECT evil.said('timestamptz >') $$;
CREATE FUNCTION evil.f_ts(timestamptz, timestamptz) RETURNS boolean LANGUAGE sql AS
    $$ SELECT NOT evil.said('timestamptz <') $$;
CREATE FUNCTION evil.t_arr(text[], text[]) RETURNS boolean LANGUAGE sql AS $$ SELECT evil.said('text[] @>') $$;
CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.t_uuid);
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.t_text);
CREATE OPERATOR evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = evil.t_bytea);
CREATE OPERATOR evil.> (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.t_ts);
CREATE OPERATOR evil.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.f_ts);
CREATE OPERATOR evil.@> (LEFTARG = text[], RIGHTARG = text[], FUNCTION = evil.t_arr);
CREATE OPERATOR evil.<@ (LEFTARG = text[], RIGHTARG = text[], FUNCTION = evil.t_arr);
-- the planted objects work: they answer for unqualified names
SET search_path = pg_temp, evil, pg_catalog;
SELECT now() = '2000-01-01' AS planted_now_answers;
RESET search_path;
-- tables in pg_temp with the extension's table names, full of lies
CREATE TEMP TABLE keys AS SELECT regress.id('ha_rev_id') AS id, regress.id('hws_a') AS workspace_id,
    'mallory'::text AS owner, 'acme-revoked'::text AS name, 'sk'::text AS prefix, '{admin}'::text[] AS scopes,
    '{}'::jsonb AS metadata, NULL::timestamptz AS expires_at, NULL::timestamptz AS revoked_at,
    NULL::uuid AS replaced_by, NULL::timestamptz AS last_used_at, now() AS created_at;
CREATE TEMP TABLE key_hashes AS SELECT regress.id('ha_rev_id') AS key_id, '\x00'::bytea AS hash;
CREATE TEMP TABLE members AS SELECT regress.id('hws_a') AS workspace_id, 'mallory'::text AS principal,
    'admin'::text AS role, '{admin}'::text[] AS scopes, NULL::timestamptz AS removed_at;
CREATE TEMP TABLE workspaces AS SELECT regress.id('hws_a') AS id, 'Owned'::text AS name;
CREATE TEMP TABLE public_keys AS SELECT regress.id('hws_a') AS workspace_id, regress.tok('hpk') AS public_key,
    '{}'::text[] AS allowed_origins, NULL::timestamptz AS revoked_at;

SET search_path = pg_temp, evil, pg_catalog, apikeys;
-- every verdict equals the honest one (the revoked key stays dead)
-- (this statement names pg_catalog's = itself, so nothing planted runs for it)
SELECT h.n, h.name, h.scopes, coalesce(h.verdict, 'none') OPERATOR(pg_catalog.=) coalesce(
       (SELECT row(v.key_id, v.workspace_id, v.owner, v.scopes, v.metadata, v.expires_at)::text
          FROM apikeys.verify_key(regress.tok(h.name), h.scopes) v), 'none') AS same_verdict
  FROM regress.honest h ORDER BY h.n;
-- identity and membership are not forged
SELECT apikeys.current_principal() AS principal, apikeys.member_role(regress.id('hws_a')) AS role_in_acme;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('hws_a'), 'planted')$$) AS mint_in_acme;
SELECT regress.try($$SELECT apikeys.revoke_key(regress.id('ha1_id'))$$) AS revoke_acme_key;
SELECT regress.try($$SELECT apikeys.rotate_key(regress.id('ha1_id'))$$) AS rotate_acme_key;
SELECT regress.try($$SELECT apikeys.add_member(regress.id('hws_a'), 'mallory', 'admin')$$) AS join_acme;
SELECT regress.try($$SELECT apikeys.create_public_key(regress.id('hws_a'))$$) AS acme_public_key;
-- RLS still filters the real tables
SELECT (SELECT count(*) FROM apikeys.keys WHERE workspace_id OPERATOR(pg_catalog.=) regress.id('hws_a')) AS acme_keys,
       (SELECT count(*) FROM apikeys.members WHERE workspace_id OPERATOR(pg_catalog.=) regress.id('hws_a')) AS acme_members,
       (SELECT count(*) FROM apikeys.workspaces WHERE id OPERATOR(pg_catalog.=) regress.id('hws_a')) AS acme_workspace,
       (SELECT count(*) FROM apikeys.public_keys WHERE workspace_id OPERATOR(pg_catalog.=) regress.id('hws_a')) AS acme_public_keys,
       (SELECT count(*) FROM apikeys.audit_log WHERE workspace_id OPERATOR(pg_catalog.=) regress.id('hws_a')) AS acme_audit;
-- public keys resolve as before: the allowed origin only
SELECT (SELECT count(*) FROM apikeys.resolve_public_key(regress.tok('hpk'), 'https://acme.test')) AS allowed,
       (SELECT count(*) FROM apikeys.resolve_public_key(regress.tok('hpk'), 'https://evil.test')) AS other_origin;
-- authenticate: the revoked key is refused, the good key binds its own workspace
BEGIN;
SELECT pg_catalog.set_config('request.headers', json_build_object('x-api-key', regress.tok('ha_rev'))::text, true) IS NOT NULL AS set;
SELECT regress.try('SELECT apikeys.authenticate()') AS revoked_header;
SELECT pg_catalog.set_config('request.headers', json_build_object('x-api-key', regress.tok('hbob'))::text, true) IS NOT NULL AS set;
SELECT apikeys.authenticate();
SELECT apikeys.current_key_id() OPERATOR(pg_catalog.=) regress.id('hbob_id') AS bound_bob_key,
       apikeys.current_workspace() OPERATOR(pg_catalog.=) regress.id('hws_a') AS bound_acme,
       apikeys.current_principal() AS principal, apikeys.has_scope('read') AS read, apikeys.has_scope('admin') AS admin;
ROLLBACK;
RESET search_path;
RESET ROLE;
-- alice, under the same hijacked path, gets her own honest results
SET ROLE alice;
SET search_path = pg_temp, evil, pg_catalog, apikeys;
SELECT name, left(prefix, 3) AS prefix_start FROM apikeys.create_key(regress.id('hws_a'), 'made-while-hijacked', '{read}');
SELECT k.name, k.owner, k.revoked_at IS NULL AS active FROM apikeys.keys k
 WHERE k.name OPERATOR(pg_catalog.=) 'made-while-hijacked';
SELECT count(*) AS acme_keys_alice_sees FROM apikeys.keys
 WHERE workspace_id OPERATOR(pg_catalog.=) regress.id('hws_a');
RESET search_path;
RESET ROLE;
DROP TABLE pg_temp.keys, pg_temp.key_hashes, pg_temp.members, pg_temp.workspaces, pg_temp.public_keys;
-- nothing the extension ran came from the planted objects (no NOTICE above),
-- and the database still holds the honest state
SELECT name, revoked_at IS NOT NULL AS revoked FROM apikeys.keys
 WHERE workspace_id = regress.id('hws_a') ORDER BY name;
DROP SCHEMA evil CASCADE;

---------------------------------------------------------------------------
-- 2. A leaky, very cheap function in WHERE over every RLS table. It records
-- every value it is shown; a planner that ran it before the policy would
-- show it other tenants' rows.
---------------------------------------------------------------------------
CREATE TABLE regress.seen (tbl text, val text);
GRANT INSERT, SELECT ON regress.seen TO PUBLIC;
CREATE FUNCTION regress.leak(tbl text, val text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS
    $$ BEGIN INSERT INTO regress.seen VALUES (tbl, val); RETURN true; END $$;
-- erin: admin of Acme Hostile and of nothing else, so everything she may
-- see is Acme's; Blue has keys, a public key and audit rows she must not
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'erin') THEN CREATE ROLE erin LOGIN; END IF;
    IF NOT pg_has_role('erin', 'app_user', 'MEMBER') THEN GRANT app_user TO erin; END IF;
END $$;
SET ROLE alice;
SELECT regress.add_member(regress.id('hws_a'), 'erin', 'admin');
SET ROLE carol;
SELECT count(*) AS blue_public_keys FROM apikeys.create_public_key(regress.id('hws_b'), '{https://blue.test}');
SET ROLE erin;
SELECT count(*) FROM apikeys.workspaces WHERE regress.leak('workspaces', name);
SELECT count(*) FROM apikeys.members WHERE regress.leak('members', principal);
SELECT count(*) FROM apikeys.keys WHERE regress.leak('keys', name);
SELECT count(*) FROM apikeys.public_keys WHERE regress.leak('public_keys', allowed_origins::text);
SELECT count(*) FROM apikeys.audit_log WHERE regress.leak('audit_log', action || ' ' || coalesce(detail->>'name', detail->>'principal', ''));
-- the same through a join and a subquery the planner could flatten
SELECT count(*) FROM apikeys.keys k JOIN apikeys.workspaces w ON w.id = k.workspace_id
 WHERE regress.leak('join', w.name || '/' || k.name);
SELECT count(*) FROM (SELECT * FROM apikeys.keys) k WHERE regress.leak('subquery', k.name);
RESET ROLE;
-- erin saw Acme's rows only
SELECT tbl, val FROM regress.seen GROUP BY tbl, val ORDER BY tbl, val;
SELECT count(*) AS leaked_from_blue FROM regress.seen
 WHERE val ILIKE '%blue%' OR val = regress.tok('hws_b') OR val = 'carol';

---------------------------------------------------------------------------
-- 3. Unique violations reveal nothing of another workspace.
---------------------------------------------------------------------------
SET ROLE alice;
-- a name Blue uses is free in Acme (names are per workspace) ...
SELECT name FROM apikeys.create_key(regress.id('hws_a'), 'blue-secret-name');
-- ... and taken once it is Acme's own: the message names only what alice sent
SELECT regress.try($$SELECT apikeys.create_key(regress.id('hws_a'), 'blue-secret-name')$$) AS taken;
-- Blue's workspace id: a collision message without Blue's name
SELECT regress.try(format('SELECT apikeys.create_workspace(%L, %L)', 'Mine', regress.id('hws_b'))) AS taken_id;
-- a digest Blue imported: refused without naming Blue or its key
SELECT regress.try($$SELECT apikeys.import_key(regress.id('hws_a'), 'alice', 'copy', repeat('9', 64))$$) AS taken_digest;
RESET ROLE;

---------------------------------------------------------------------------
-- 4. Lifting the latch without owning the tables.
---------------------------------------------------------------------------
SET ROLE alice;
SELECT regress.try('SET session_replication_role = replica') AS replica_mode;
SELECT regress.try('ALTER TABLE apikeys.keys DISABLE TRIGGER ALL') AS disable_all;
SELECT regress.try('ALTER TABLE apikeys.keys DISABLE TRIGGER keys_guard') AS disable_guard;
SELECT regress.try('ALTER TABLE apikeys.keys DISABLE TRIGGER USER') AS disable_user;
SELECT regress.try('DROP TRIGGER keys_guard ON apikeys.keys') AS drop_guard;
SELECT regress.try('ALTER TABLE apikeys.keys NO FORCE ROW LEVEL SECURITY') AS no_force_rls;
SELECT regress.try('ALTER TABLE apikeys.keys DISABLE ROW LEVEL SECURITY') AS disable_rls;
SELECT regress.try('CREATE POLICY open ON apikeys.keys USING (true)') AS add_policy;
SELECT regress.try('ALTER TABLE apikeys.keys OWNER TO alice') AS take_ownership;
SELECT regress.try('CREATE TRIGGER unrevoke BEFORE UPDATE ON apikeys.keys FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete()') AS add_trigger;
SELECT regress.try($$UPDATE apikeys.keys SET revoked_at = NULL WHERE id = regress.id('ha_rev_id')$$) AS unrevoke;
SELECT regress.try('SELECT apikeys.keys_guard()') AS call_guard;
RESET ROLE;
-- the same as a PostgREST request role
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub": "alice"}');
SELECT regress.try('SET LOCAL session_replication_role = replica') AS replica_mode_jwt;
SELECT regress.try('ALTER TABLE apikeys.keys DISABLE TRIGGER ALL') AS disable_all_jwt;
ROLLBACK;
-- the key is still revoked, and every trigger still fires ALWAYS
SELECT count(*) AS revoked_key_verifies FROM apikeys.verify_key(regress.tok('ha_rev'));
SELECT count(*) FILTER (WHERE tgenabled <> 'A') AS not_always, count(*) AS triggers
  FROM pg_trigger WHERE tgrelid = 'apikeys.keys'::regclass AND NOT tgisinternal;

---------------------------------------------------------------------------
-- 5. Giant, malformed, unicode and control-character input: an error of the table or
-- zero rows, and within the statement_timeout above.
---------------------------------------------------------------------------
SET ROLE alice;
-- tokens of 1 MB and 100 MB: zero rows, no hashing
SELECT count(*) AS one_mb FROM apikeys.verify_key(repeat('a', 1024 * 1024));
SELECT count(*) AS hundred_mb FROM apikeys.verify_key(repeat('a', 100 * 1024 * 1024));
SELECT count(*) AS hundred_mb_own_prefix FROM apikeys.verify_key('sk_' || repeat('A', 100 * 1024 * 1024));
SELECT count(*) AS hundred_mb_public FROM apikeys.resolve_public_key('pk_' || repeat('A', 100 * 1024 * 1024), 'https://acme.test');
SELECT count(*) AS hundred_mb_origin FROM apikeys.resolve_public_key(regress.tok('hpk'), 'https://' || repeat('a', 100 * 1024 * 1024));
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-key', repeat('k', 100 * 1024 * 1024))::text, true) IS NOT NULL AS set;
SELECT regress.try('SELECT apikeys.authenticate()') AS hundred_mb_header;
ROLLBACK;
-- a good token with anything around it does not verify
SELECT t.label, (SELECT count(*) FROM apikeys.verify_key(t.tok)) AS verifies
  FROM (VALUES ('trailing NUL-like \x01', regress.tok('ha1') || E'\x01'),
               ('leading space',          ' ' || regress.tok('ha1')),
               ('trailing newline',       regress.tok('ha1') || E'\n'),
               ('zero-width space',       regress.tok('ha1') || U&'\200B'),
               ('RTL override',           U&'\202E' || regress.tok('ha1')),
               ('fullwidth prefix',       U&'\FF53\FF4B' || substr(regress.tok('ha1'), 3)),
               ('upper-cased',            upper(regress.tok('ha1'))),
               ('doubled',                regress.tok('ha1') || regress.tok('ha1')),
               ('emoji',                  'sk_' || repeat(U&'\+01F511', 49)),
               ('control chars',          'sk_' || repeat(E'\x07', 49))) AS t(label, tok);
-- invalid prefixes
SELECT regress.visible(left(p, 12)) AS prefix, regress.try(format('SELECT apikeys.create_key(%L, NULL, %L, NULL, %L, %L)',
                                       regress.id('hws_a'), '{}', '{}', p)) AS result
  FROM unnest(ARRAY['', 'SK', 'pk', 'pk_live', 's', 'sk_', 'sk__live', 'sk-live', '1sk', 'sk_live_x',
                    'ѕk', 'sk' || U&'\200B', E'sk\n', repeat('s', 17)]) AS p;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('hws_a'), NULL, '{}', NULL, '{}', repeat('s', 100 * 1024 * 1024))$$) AS hundred_mb_prefix;
-- names: unicode, control characters, giant
SELECT regress.visible(left(n, 24)) AS name, length(n) AS len,
       regress.try(format('SELECT apikeys.create_key(%L, %L)', regress.id('hws_a'), n)) AS result
  FROM unnest(ARRAY['ключ', 'caf' || U&'\00E9', U&'key\200Bname', U&'\202Ekey', E'tab\tname', E'bell\x07',
                    U&'\+01F511', repeat('b', 65)]) AS n;
SELECT left(n, 24) AS workspace_name, length(n) AS len,
       regress.try(format('SELECT apikeys.create_workspace(%L)', n)) AS result
  FROM unnest(ARRAY[E'new\nline', E'nul-ish\x01', E'\x7f', '   ', repeat('w', 129)]) AS n;
SELECT left(p, 24) AS principal, regress.try(format('SELECT apikeys.add_member(%L, %L)', regress.id('hws_a'), p)) AS result
  FROM unnest(ARRAY[E'eve\n', ' eve', E'e\x1bve', repeat('e', 257)]) AS p;
-- the same fields at 100 MB
SELECT regress.try($$SELECT apikeys.create_key(regress.id('hws_a'), repeat('b', 100 * 1024 * 1024))$$) AS hundred_mb_name;
SELECT regress.try($$SELECT apikeys.create_workspace(repeat('w', 100 * 1024 * 1024))$$) AS hundred_mb_workspace;
SELECT regress.try($$SELECT apikeys.add_member(regress.id('hws_a'), repeat('e', 100 * 1024 * 1024))$$) AS hundred_mb_principal;
-- scopes: unicode, control characters, a hundred thousand of them
SELECT regress.try(format('SELECT apikeys.create_key(%L, NULL, %L)', regress.id('hws_a'), ARRAY[s])) AS scope_result
  FROM unnest(ARRAY[U&'r\00E9ad', E'read\n', 'READ', U&'read\200B']) AS s;
SELECT regress.try(format('SELECT apikeys.create_key(%L, NULL, %L)', regress.id('hws_a'),
       (SELECT array_agg('s' || i) FROM generate_series(1, 100000) i))) AS hundred_thousand_scopes;
-- metadata: unicode and escaped control characters are data (kept exactly);
-- giant objects are refused; a NUL escape is refused by jsonb itself
SELECT regress.put('hmeta', id::text) FROM apikeys.create_key(regress.id('hws_a'), 'unicode-meta', '{}', NULL,
       jsonb_build_object('name', U&'caf\00E9 \+01F511', 'ctl', E'\x01\x1f', 'rtl', U&'\202E'));
SELECT regress.visible(metadata::text) AS metadata,
       metadata = jsonb_build_object('name', U&'caf\00E9 \+01F511', 'ctl', E'\x01\x1f', 'rtl', U&'\202E') AS exact
  FROM apikeys.keys WHERE id = regress.id('hmeta');
SELECT regress.try($$SELECT apikeys.create_key(regress.id('hws_a'), NULL, '{}', NULL,
       jsonb_build_object('big', repeat('x', 100 * 1024 * 1024)))$$) AS hundred_mb_metadata;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('hws_a'), NULL, '{}', NULL, '{"nul": "\u0000"}')$$) AS nul_escape;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('hws_a'), NULL, '{}', NULL, '[1, 2]')$$) AS not_an_object;
-- origins
SELECT left(o, 30) AS origin, regress.try(format('SELECT apikeys.create_public_key(%L, %L)', regress.id('hws_a'), ARRAY[o])) AS result
  FROM unnest(ARRAY[U&'https://b\00FCcher.test', E'https://acme.test\n', 'https://acme.test/path',
                    'javascript:alert(1)', 'https://' || repeat('a', 300)]) AS o;
SELECT regress.try($$SELECT apikeys.create_public_key(regress.id('hws_a'), ARRAY['https://' || repeat('a', 100 * 1024 * 1024)])$$) AS hundred_mb_origin;
SELECT count(*) AS control_char_origin FROM apikeys.resolve_public_key(regress.tok('hpk'), E'https://acme.test\r\n');
SELECT count(*) AS unicode_origin FROM apikeys.resolve_public_key(regress.tok('hpk'), U&'https://acm\0435.test');
RESET ROLE;
-- none of this wrote anything but the keys named above
SELECT name FROM apikeys.keys WHERE workspace_id = regress.id('hws_a') ORDER BY name;
RESET statement_timeout;
