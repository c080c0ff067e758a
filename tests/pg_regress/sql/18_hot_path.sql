-- how use is recorded changes what this file sees: its expected output
-- has a variant per mode (expected/18_hot_path.out without the preload,
-- expected/18_hot_path_1.out with it)
SELECT apikeys.usage_mode() AS usage_mode;
-- verify_key's direct index reads (src/verify.rs, docs/performance.md): the
-- row comes straight from the keys heap tuple, so out-of-line (TOASTed)
-- values, every calling form, visibility inside one transaction and
-- statement, and the relcache invalidation of the cached table and index
-- OIDs are each checked here.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('hws', apikeys.create_workspace('Hot Path Inc')::text);
-- 16 kB of metadata (the limit), incompressible: stored out of line
SELECT regress.put('big_meta', (SELECT jsonb_build_object('blob', string_agg(md5(i::text), ''))::text
                                  FROM generate_series(1, 480) i));
SELECT length(regress.tok('big_meta')) BETWEEN 15000 AND 16384 AS near_limit;
SELECT regress.put('big', key), regress.put('big_id', id::text)
  FROM apikeys.create_key(regress.id('hws'), 'big',
                          (SELECT array_agg('scope' || i) FROM generate_series(1, 64) i),
                          NULL, regress.tok('big_meta')::jsonb);
SELECT regress.put('small', key), regress.put('small_id', id::text)
  FROM apikeys.create_key(regress.id('hws'), 'small', '{read}');
RESET ROLE;
-- the metadata went out of line, into the TOAST table
SELECT pg_relation_size(reltoastrelid) > 0 AS toast_used
  FROM pg_class WHERE oid = 'apikeys.keys'::regclass;

SET ROLE bob;
-- every column comes back whole
SELECT key_id = regress.id('big_id') AS right_key, workspace_id = regress.id('hws') AS right_ws,
       owner, cardinality(scopes) AS scopes, metadata = regress.tok('big_meta')::jsonb AS same_metadata,
       expires_at
  FROM apikeys.verify_key(regress.tok('big'));
-- the 64 scopes: any subset is held, one more is not
SELECT count(*) FROM apikeys.verify_key(regress.tok('big'), '{scope1,scope64,scope32}');
SELECT count(*) FROM apikeys.verify_key(regress.tok('big'),
                     (SELECT array_agg('scope' || i) FROM generate_series(1, 64) i));
SELECT count(*) FROM apikeys.verify_key(regress.tok('big'), '{scope1,scope65}');
-- a duplicated required scope is still held; an empty string is not
SELECT count(*) FROM apikeys.verify_key(regress.tok('small'), '{read,read}');
SELECT count(*) FROM apikeys.verify_key(regress.tok('small'), '{""}');

-- every calling form: in FROM, in the select list (as a record and column by
-- column), LATERAL over many tokens (one call per row), and inside SQL and
-- plpgsql functions
SELECT (apikeys.verify_key(regress.tok('small'))).owner;
SELECT (r).owner, (r).key_id = regress.id('small_id') AS right_key
  FROM (SELECT apikeys.verify_key(regress.tok('small')) AS r) s;
SELECT count(*) AS rows_for_bad FROM (SELECT apikeys.verify_key('sk_nope')) s;
SELECT t.n, v.owner, v.scopes
  FROM (VALUES (1, regress.tok('small')), (2, 'sk_' || repeat('A', 49)), (3, NULL),
               (4, regress.tok('big')), (5, regress.tok('small'))) AS t(n, tok)
  LEFT JOIN LATERAL (SELECT owner, cardinality(scopes) AS scopes FROM apikeys.verify_key(t.tok)) v ON true
 ORDER BY t.n;
SELECT count(*) AS verified_1000_times
  FROM generate_series(1, 1000) i, apikeys.verify_key(regress.tok('small'));
CREATE FUNCTION pg_temp.sql_owner(t text) RETURNS text LANGUAGE sql AS
    $$ SELECT owner FROM apikeys.verify_key(t) $$;
SELECT pg_temp.sql_owner(regress.tok('small'));
RESET ROLE;

-- visibility: a revoke earlier in the same transaction, and earlier in the
-- same function (plpgsql, one statement after another), is seen at once
SET ROLE alice;
SELECT regress.put('vis1', key), regress.put('vis1_id', id::text) FROM apikeys.create_key(regress.id('hws'), 'vis1');
SELECT regress.put('vis2', key), regress.put('vis2_id', id::text) FROM apikeys.create_key(regress.id('hws'), 'vis2');
BEGIN;
SELECT regress.ok('vis1') AS before_revoke;
SELECT apikeys.revoke_key(regress.id('vis1_id')) IS NOT NULL AS revoked;
SELECT regress.ok('vis1') AS after_revoke;
COMMIT;
CREATE FUNCTION pg_temp.revoke_then_verify(k text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM apikeys.revoke_key(regress.id(k || '_id'));
    RETURN regress.ok(k);
END $$;
SELECT pg_temp.revoke_then_verify('vis2') AS verified_after_revoke_in_function;
-- a rolled-back revoke leaves the key good
SELECT regress.put('vis3', key), regress.put('vis3_id', id::text) FROM apikeys.create_key(regress.id('hws'), 'vis3');
BEGIN;
SELECT apikeys.revoke_key(regress.id('vis3_id')) IS NOT NULL AS revoked;
ROLLBACK;
SELECT regress.ok('vis3') AS good_after_rollback;
RESET ROLE;

-- the cached OIDs and column numbers follow the tables (relcache
-- invalidation): a new column before verify's, new index OIDs, a rewrite,
-- and a dropped and re-created extension, all in this one session
SELECT regress.ok('small') AS warm;
BEGIN;
ALTER TABLE apikeys.keys ADD COLUMN zz_extra int DEFAULT 7;
SELECT regress.ok('small') AS with_added_column;
ROLLBACK;
REINDEX TABLE CONCURRENTLY apikeys.key_hashes;
REINDEX TABLE CONCURRENTLY apikeys.keys;
SELECT regress.ok('small') AS after_reindex_concurrently;
VACUUM FULL apikeys.keys;
VACUUM FULL apikeys.key_hashes;
SELECT regress.ok('small') AS after_vacuum_full, regress.ok('big') AS big_after_vacuum_full;
SELECT regress.ok('vis1') AS revoked_still_revoked;
-- a dropped and re-created extension: new tables, new OIDs, same session
DROP EXTENSION pg_apikeys CASCADE;
CREATE EXTENSION pg_apikeys;
SELECT apikeys.grant_to('app_user');
SET ROLE alice;
SELECT regress.put('again_ws', apikeys.create_workspace('Again')::text);
SELECT regress.put('again', key), regress.put('again_id', id::text)
  FROM apikeys.create_key(regress.id('again_ws'), 'again');
RESET ROLE;
SELECT regress.ok('again') AS new_key_verifies, regress.ok('small') AS old_key_gone;
-- and the kept last_used_at statement follows the new table too
SELECT last_used_at IS NOT NULL AS stamped FROM apikeys.keys WHERE id = regress.id('again_id');
