-- import_key: admin-only migration of SHA-256 digests from another
-- keystore. Imported keys verify by the SHA-256 of the raw token, whatever
-- its shape; this extension's own tokens keep the checksum path.
\set SHOW_CONTEXT never
-- alice runs the migration: importing for other owners also needs the
-- apikeys_importer role (19_security shows the refusal without it)
SELECT apikeys.grant_importer('alice');
SET ROLE alice;
SELECT regress.put('iws', apikeys.create_workspace('Import Inc')::text);
SELECT regress.add_member(regress.id('iws'), 'bob', 'member', '{read,write}');
SELECT regress.add_member(regress.id('iws'), 'carol', 'member', '{read}');
-- the other keystore held sha256(token) as hex: any case is accepted
SELECT regress.put('i1', apikeys.import_key(regress.id('iws'), 'bob', 'Legacy-Bob',
                                            upper(encode(sha256('ghp_legacyTokenForBob0001'), 'hex')), '{read}')::text);
SELECT regress.put('i2', apikeys.import_key(regress.id('iws'), 'carol', 'legacy-carol',
                                            encode(sha256('old key with spaces & ünïcödé'), 'hex'),
                                            '{read}', now() + interval '1 day')::text);
RESET ROLE;
SELECT owner, name, scopes, source, prefix ~ '^imported:[0-9A-Za-z]{8}$' AS display_prefix, expires_at IS NOT NULL AS expires
  FROM apikeys.keys WHERE id IN (regress.id('i1'), regress.id('i2')) ORDER BY name;
-- they verify by the raw token, whatever its shape
SELECT key_id = regress.id('i1') AS is_i1, owner, scopes FROM apikeys.verify_key('ghp_legacyTokenForBob0001');
SELECT count(*) AS verifies FROM apikeys.verify_key('old key with spaces & ünïcödé');
SELECT count(*) AS needs_scope FROM apikeys.verify_key('ghp_legacyTokenForBob0001', '{write}');
SELECT count(*) AS near_miss FROM apikeys.verify_key('ghp_legacyTokenForBob0002');
-- revoked imported keys stop verifying, like any key
SET ROLE alice;
SELECT apikeys.revoke_key(regress.id('i2')) IS NOT NULL AS revoked;
RESET ROLE;
SELECT count(*) AS revoked_verifies FROM apikeys.verify_key('old key with spaces & ünïcödé');
-- authenticate() accepts them too
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT set_config('request.headers', '{"x-api-key":"ghp_legacyTokenForBob0001"}', true) IS NOT NULL AS set;
SELECT apikeys.authenticate();
SELECT apikeys.current_principal(), apikeys.current_key_id() = regress.id('i1') AS bound;
COMMIT;
-- rotating an imported key (by its owner) mints a key in this extension's format
SET ROLE bob;
SELECT regress.put('i1r', id::text), regress.put('i1r_key', key), name, key ~ '^sk_[0-9A-Za-z]{49}$' AS own_format
  FROM apikeys.rotate_key(regress.id('i1'));
RESET ROLE;
SELECT count(*) AS old_token_verifies FROM apikeys.verify_key('ghp_legacyTokenForBob0001');
SELECT regress.ok('i1r_key') AS new_token_verifies,
       (SELECT owner || ' ' || source FROM apikeys.keys WHERE id = regress.id('i1r')) AS new_key;

-- bad digests, names, owners, scopes, times: 22023 (and nothing stored)
SET ROLE alice;
SELECT d AS digest, regress.try(format('SELECT apikeys.import_key(regress.id(''iws''), ''bob'', ''x'', %L)', d)) AS result
  FROM unnest(ARRAY[repeat('a', 63), repeat('a', 65), repeat('g', 64), '', ' ' || repeat('a', 63),
                    'sha256:' || repeat('a', 57), repeat('é', 32)]) AS d;
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', 'x', NULL)$$) AS null_digest;
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', 'Not A Name', repeat('b', 64))$$) AS bad_name;
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', NULL, repeat('b', 64))$$) AS null_name;
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'dave', 'x', repeat('b', 64))$$) AS not_a_member;
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', 'x', repeat('b', 64), '{admin}')$$) AS beyond_owner;
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', 'x', repeat('b', 64), '{"Bad Scope"}')$$) AS bad_scope;
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', 'x', repeat('b', 64), '{}', now() - interval '1 day')$$) AS past;
-- an admin owner may hold any scope
SELECT apikeys.import_key(regress.id('iws'), 'alice', 'admin-legacy', repeat('c', 64), '{anything}') IS NOT NULL AS admin_owner;
-- a digest stored already, and a name taken: 23505
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', 'again', upper(repeat('C', 64)))$$) AS same_digest;
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', 'legacy-bob', repeat('d', 64))$$) AS name_taken;
RESET ROLE;
SELECT count(*) AS stored_by_failures FROM apikeys.keys
 WHERE workspace_id = regress.id('iws') AND name IN ('x', 'again');

-- only admins import; outsiders cannot tell the workspace
SET ROLE bob;
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', 'mine', repeat('e', 64))$$) AS member;
RESET ROLE;
SET ROLE mallory;
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', 'mine', repeat('e', 64))$$) AS outsider;
SELECT regress.try($$SELECT apikeys.import_key('00000000-0000-4000-8000-0000000000aa', 'bob', 'mine', repeat('e', 64))$$) AS absent;
RESET ROLE;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.try($$SELECT apikeys.import_key(regress.id('iws'), 'bob', 'mine', repeat('e', 64))$$) AS anonymous;
ROLLBACK;

-- this extension's own tokens never reach a table when mistyped, and
-- over-long strings are not even hashed: even with their digests imported,
-- they do not verify
SET ROLE alice;
SELECT apikeys.import_key(regress.id('iws'), 'alice', 'shadow-typo',
                          encode(sha256(convert_to(regress.typo(regress.tok('i1r_key')), 'UTF8')), 'hex')) IS NOT NULL AS imported,
       apikeys.import_key(regress.id('iws'), 'alice', 'shadow-long',
                          encode(sha256(convert_to(repeat('x', 1025), 'UTF8')), 'hex')) IS NOT NULL AS imported,
       apikeys.import_key(regress.id('iws'), 'alice', 'shadow-ok-long',
                          encode(sha256(convert_to(repeat('x', 1024), 'UTF8')), 'hex')) IS NOT NULL AS imported;
RESET ROLE;
SELECT count(*) AS mistyped FROM apikeys.verify_key(regress.typo(regress.tok('i1r_key')));
SELECT count(*) AS too_long FROM apikeys.verify_key(repeat('x', 1025));
SELECT count(*) AS longest_foreign FROM apikeys.verify_key(repeat('x', 1024));
REVOKE apikeys_importer FROM alice;
