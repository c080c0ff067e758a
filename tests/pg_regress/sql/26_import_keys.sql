-- limits need the usage engine: this file's expected output has a variant
-- per mode (expected/26_import_keys.out without the preload, 26_import_keys_1.out with it)
-- import_keys: many legacy keys in one call from a table the caller reads
-- (a COPY-fed staging table); one result row per source row, imported or
-- the reason; bad rows roll back nothing unless all_or_nothing. Operators
-- import for any owner; an admin holding apikeys_importer for members,
-- within their scopes and the plan. Each attack below is a row the import
-- must refuse, name by name.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('iws', apikeys.create_workspace('Import')::text);
SELECT regress.add_member(regress.id('iws'), 'bob', 'member', '{read}');
SELECT name FROM apikeys.create_key(regress.id('iws'), 'taken');
RESET ROLE;
CREATE TABLE regress.legacy (n bigint, owner text, name text, digest text, scopes text[], metadata jsonb,
                             expires_at timestamptz, rate_limit integer, rate_window interval, credits bigint,
                             created_at timestamptz, last_used_at timestamptz);
GRANT SELECT ON regress.legacy TO alice, bob;
INSERT INTO regress.legacy (n, owner, name, digest, scopes, metadata, expires_at, created_at, last_used_at) VALUES
  (1, 'bob', 'ci-deploy', encode(sha256('legacy-token-1'), 'hex'), '{read}', '{"team": "ci"}', now() + interval '1 year',
      '2020-01-01', '2026-11-30'),
  (2, 'bob', 'Reporting', upper(encode(sha256('legacy-token-2'), 'hex')), '{}', NULL, NULL, NULL, NULL),
  (3, 'bob', 'b64', encode(sha256('legacy-token-3'), 'base64'), NULL, NULL, NULL, NULL, NULL),
  (4, 'bob', 'ci-deploy', encode(sha256('legacy-token-4'), 'hex'), NULL, NULL, NULL, NULL, NULL),
  (5, 'bob', 'dup-digest', encode(sha256('legacy-token-1'), 'hex'), NULL, NULL, NULL, NULL, NULL),
  (6, 'bob', 'taken', encode(sha256('legacy-token-6'), 'hex'), NULL, NULL, NULL, NULL, NULL),
  (7, 'carol', 'not-a-member', encode(sha256('legacy-token-7'), 'hex'), NULL, NULL, NULL, NULL, NULL),
  (8, 'bob', 'too-wide', encode(sha256('legacy-token-8'), 'hex'), '{admin}', NULL, NULL, NULL, NULL),
  (9, 'bob', 'bad digest', 'xyz', NULL, NULL, NULL, NULL, NULL),
  (10, 'bob', 'bad-digest', 'abc', NULL, NULL, NULL, NULL, NULL),
  (11, E'b\u200Bob', 'look-alike', encode(sha256('legacy-token-11'), 'hex'), NULL, NULL, NULL, NULL, NULL),
  (12, 'bob', 'expired', encode(sha256('legacy-token-12'), 'hex'), NULL, NULL, now() - interval '1 day', NULL, NULL),
  (13, 'bob', 'odd-meta', encode(sha256('legacy-token-13'), 'hex'), NULL, '[1, 2]', NULL, NULL, NULL),
  (14, 'bob', 'future', encode(sha256('legacy-token-14'), 'hex'), NULL, NULL, NULL, now() + interval '1 day', NULL),
  (15, 'bob', 'bad-scope', encode(sha256('legacy-token-15'), 'hex'), '{Read}', NULL, NULL, NULL, NULL),
  (16, 'bob', 'b64-unpadded-44', rpad(rtrim(encode(sha256('legacy-token-16'), 'base64'), '='), 44, 'A'), NULL, NULL, NULL, NULL, NULL),
  (17, 'bob', 'b64-no-pad', rtrim(encode(sha256('legacy-token-17'), 'base64'), '='), NULL, NULL, NULL, NULL, NULL),
  (18, 'bob', 'long-scope', encode(sha256('legacy-token-18'), 'hex'), ARRAY[repeat('a', 65)], NULL, NULL, NULL, NULL);
-- who: not a plain admin, not a member; an importer who cannot read the source neither
SET ROLE alice;
SELECT regress.try(format('SELECT count(*) FROM apikeys.import_keys(%L, %L)', regress.id('iws'), 'regress.legacy')) AS admin_without_importer;
RESET ROLE;
SELECT apikeys.grant_importer('alice');
SET ROLE bob;
SELECT regress.try(format('SELECT count(*) FROM apikeys.import_keys(%L, %L)', regress.id('iws'), 'regress.legacy')) AS member;
RESET ROLE;
REVOKE SELECT ON regress.legacy FROM alice;
SET ROLE alice;
SELECT regress.try(format('SELECT count(*) FROM apikeys.import_keys(%L, %L)', regress.id('iws'), 'regress.legacy')) AS unreadable_source;
RESET ROLE;
GRANT SELECT ON regress.legacy TO alice;
SET ROLE alice;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT regress.try(format('SELECT count(*) FROM apikeys.import_keys(%L, %L)', regress.id('iws'), 'regress.legacy')) AS repeatable_read;
ROLLBACK;
-- all or nothing: a report, nothing imported
SELECT n, status, reason FROM apikeys.import_keys(regress.id('iws'), 'regress.legacy', all_or_nothing => true) ORDER BY n LIMIT 3;
SELECT count(*) AS imported_so_far FROM apikeys.keys WHERE workspace_id = regress.id('iws') AND source = 'imported';
-- the import: good rows in, each bad row named
SELECT n, key_id IS NOT NULL AS has_id, status, reason FROM apikeys.import_keys(regress.id('iws'), 'regress.legacy') ORDER BY n;
RESET ROLE;
SELECT name, owner, scopes, metadata, created_at = '2020-01-01' AS legacy_created_at,
       last_used_at = '2026-11-30' AS legacy_last_used, source, prefix ~ '^imported:.{8}$' AS prefix_form
  FROM apikeys.keys WHERE workspace_id = regress.id('iws') AND source = 'imported' ORDER BY name;
SELECT owner, scopes FROM apikeys.verify_key('legacy-token-1');
SELECT owner FROM apikeys.verify_key('legacy-token-2');
SELECT owner FROM apikeys.verify_key('legacy-token-3');
-- one audit row for the batch, none per key
SELECT action, detail - 'source' AS detail FROM apikeys.audit_log
 WHERE workspace_id = regress.id('iws') AND action LIKE 'key%imported' ORDER BY id;
-- the per-row triggers are skipped for the batch only: a mint right after
-- is audited and follows the owner's limit as always
SET ROLE alice;
SELECT name FROM apikeys.create_key(regress.id('iws'), 'after-import');
RESET ROLE;
SELECT count(*) AS audited_mint FROM apikeys.audit_log
 WHERE workspace_id = regress.id('iws') AND action = 'key.created' AND detail->>'name' = 'after-import';
SELECT apikeys.importing() AS marked_after_the_import;
-- the source without n: rows numbered as read; a missing column is 22023
CREATE TABLE regress.legacy2 (owner text, name text, digest text);
INSERT INTO regress.legacy2 VALUES ('bob', 'second-a', encode(sha256('legacy-token-21'), 'hex')),
                                   ('bob', 'second-a', encode(sha256('legacy-token-22'), 'hex'));
CREATE TABLE regress.legacy3 (owner text, name text);
GRANT SELECT ON regress.legacy2, regress.legacy3 TO alice;
SET ROLE alice;
SELECT n, status, reason FROM apikeys.import_keys(regress.id('iws'), 'regress.legacy2') ORDER BY n;
SELECT regress.try(format('SELECT count(*) FROM apikeys.import_keys(%L, %L)', regress.id('iws'), 'regress.legacy3')) AS no_digest_column;
RESET ROLE;
-- the source is read as the function's owner: no view (its functions
-- would run with the owner's rights), no type of the caller's own (its cast
-- would), no rolled-back import leaves the per-row triggers off
CREATE FUNCTION regress.sneaky() RETURNS text LANGUAGE sql AS $$ SELECT 'bob' $$;
CREATE VIEW regress.legacy_view AS SELECT regress.sneaky() AS owner, name, digest FROM regress.legacy2;
CREATE DOMAIN regress.owner_text AS text;
CREATE TABLE regress.legacy4 (owner regress.owner_text, name text, digest text);
GRANT SELECT ON regress.legacy_view, regress.legacy4 TO alice;
GRANT EXECUTE ON FUNCTION regress.sneaky() TO alice;
SET ROLE alice;
SELECT regress.try(format('SELECT count(*) FROM apikeys.import_keys(%L, %L)', regress.id('iws'), 'regress.legacy_view')) AS view_source;
SELECT regress.try(format('SELECT count(*) FROM apikeys.import_keys(%L, %L)', regress.id('iws'), 'regress.legacy4')) AS own_type;
BEGIN;
SELECT count(*) AS in_rolled_back FROM apikeys.import_keys(regress.id('iws'), 'regress.legacy2');
ROLLBACK;
SELECT name FROM apikeys.create_key(regress.id('iws'), 'after-rollback');
RESET ROLE;
SELECT count(*) AS audited_after_rollback FROM apikeys.audit_log
 WHERE workspace_id = regress.id('iws') AND action = 'key.created' AND detail->>'name' = 'after-rollback';
-- an operator imports for identities (no membership) and any scopes
SELECT apikeys.grant_operator('backend');
SET ROLE backend;
CREATE TEMP TABLE op_legacy (owner text, name text, digest text, scopes text[], rate_limit integer, rate_window interval, credits bigint);
INSERT INTO op_legacy VALUES ('cust_7', 'cust-7-prod', encode(sha256('legacy-token-31'), 'hex'), '{admin}', 10, '1 minute', 100);
SELECT n, status, reason FROM apikeys.import_keys(regress.id('iws'), 'pg_temp.op_legacy');
RESET ROLE;
SELECT owner, scopes, rate_limit, credits FROM apikeys.keys WHERE name = 'cust-7-prod';
-- display prefixes are random: one that collides (the unique index finds
-- it) is drawn again and the batch retried; any other unique violation (a
-- name minted between the checks and the insert) ends the import and keeps
-- nothing. A superuser's trigger makes both happen.
CREATE SEQUENCE regress.collide_once;
CREATE FUNCTION regress.collide() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name = 'collide-prefix' THEN
        IF nextval('regress.collide_once') = 1 THEN
            NEW.prefix := (SELECT k.prefix FROM apikeys.keys k WHERE k.name = 'second-a' AND k.revoked_at IS NULL);
        END IF;
    ELSIF NEW.name = 'collide-name' THEN
        NEW.name := 'second-a';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER regress_collide BEFORE INSERT ON apikeys.keys FOR EACH ROW EXECUTE FUNCTION regress.collide();
CREATE TABLE regress.legacy5 (owner text, name text, digest text);
INSERT INTO regress.legacy5 VALUES ('cust_8', 'before-collide', encode(sha256('legacy-token-41'), 'hex')),
                                   ('cust_8', 'collide-prefix', encode(sha256('legacy-token-42'), 'hex'));
CREATE TABLE regress.legacy6 (owner text, name text, digest text);
INSERT INTO regress.legacy6 VALUES ('cust_8', 'fine-one', encode(sha256('legacy-token-43'), 'hex')),
                                   ('cust_8', 'collide-name', encode(sha256('legacy-token-44'), 'hex'));
GRANT SELECT ON regress.legacy5, regress.legacy6 TO backend;
SET ROLE backend;
SELECT n, status, reason FROM apikeys.import_keys(regress.id('iws'), 'regress.legacy5') ORDER BY n;
SELECT split_part(regress.try(format('SELECT count(*) FROM apikeys.import_keys(%L, %L)', regress.id('iws'), 'regress.legacy6')), ' / ', 1) AS name_taken_meanwhile;
RESET ROLE;
SELECT last_value AS attempts FROM regress.collide_once;
SELECT k.prefix <> c.prefix AS prefix_drawn_again FROM apikeys.keys k, apikeys.keys c
 WHERE k.name = 'collide-prefix' AND c.name = 'second-a' AND c.revoked_at IS NULL;
SELECT detail->>'imported' AS imported, detail->>'source' AS source FROM apikeys.audit_log
 WHERE workspace_id = regress.id('iws') AND action = 'keys.imported' AND detail->>'source' IN ('regress.legacy5', 'regress.legacy6') ORDER BY at;
SELECT count(*) AS kept_after_name_taken FROM apikeys.keys WHERE name IN ('fine-one', 'collide-name');
DROP TRIGGER regress_collide ON apikeys.keys;
-- what alice cannot read she cannot import: a table under row security
-- (read as the function's owner, it would give her the rows its policies
-- hide) and a table in a schema she may not use
CREATE TABLE regress.shared_staging (tenant text, owner text, name text, digest text);
ALTER TABLE regress.shared_staging ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON regress.shared_staging FOR SELECT USING (tenant = current_user);
INSERT INTO regress.shared_staging VALUES ('carol', 'bob', 'not-alices', encode(sha256('hidden-token-1'), 'hex'));
GRANT SELECT ON regress.shared_staging TO alice;
CREATE SCHEMA regress_hidden;
CREATE TABLE regress_hidden.t (owner text, name text, digest text);
INSERT INTO regress_hidden.t VALUES ('bob', 'hidden-schema', encode(sha256('hidden-token-2'), 'hex'));
GRANT SELECT ON regress_hidden.t TO alice;
SELECT regress.put('hidden_oid', 'regress_hidden.t'::regclass::oid::text);
SET ROLE alice;
SELECT regress.try(format('SELECT count(*) FROM apikeys.import_keys(%L, %L)', regress.id('iws'), 'regress.shared_staging')) AS row_security_source;
SELECT regress.try(format('SELECT count(*) FROM apikeys.import_keys(%L, %s)', regress.id('iws'), regress.tok('hidden_oid'))) AS schema_not_usable;
RESET ROLE;
SELECT count(*) AS hidden_rows_imported FROM apikeys.keys WHERE name IN ('not-alices', 'hidden-schema');
DROP TABLE regress.shared_staging, regress_hidden.t;
DROP SCHEMA regress_hidden;
-- every rule create_key applies, on each row: metadata by its text
-- (compressed or not) and its depth, a refill of '30 days' (equal to
-- '1 month' as an interval, not a refill create_key takes), scopes of one
-- dimension from 1, finite legacy times; without created_at a key is taken
-- as created at its last use; two rows without n are each refused
CREATE TABLE regress.legacy7 (n bigint, owner text, name text, digest text, scopes text[], metadata jsonb,
                              credits bigint, refill_amount bigint, refill_interval interval,
                              created_at timestamptz, last_used_at timestamptz);
INSERT INTO regress.legacy7 (n, owner, name, digest, scopes, metadata, credits, refill_amount, refill_interval, created_at, last_used_at) VALUES
  (1, 'bob', 'meta-big', encode(sha256('legacy-token-51'), 'hex'), NULL, jsonb_build_object('a', repeat('x', 200000)), NULL, NULL, NULL, NULL, NULL),
  (2, 'bob', 'meta-deep', encode(sha256('legacy-token-52'), 'hex'), NULL, (repeat('{"a":', 70) || '1' || repeat('}', 70))::jsonb, NULL, NULL, NULL, NULL, NULL),
  (3, 'bob', 'refill-30-days', encode(sha256('legacy-token-53'), 'hex'), NULL, NULL, 10, 5, '30 days', NULL, NULL),
  (4, 'bob', 'refill-24-hours', encode(sha256('legacy-token-54'), 'hex'), NULL, NULL, 10, 5, '24 hours', NULL, NULL),
  (5, 'bob', 'scopes-2d', encode(sha256('legacy-token-55'), 'hex'), '{{read}}', NULL, NULL, NULL, NULL, NULL, NULL),
  (6, 'bob', 'scopes-offset', encode(sha256('legacy-token-56'), 'hex'), '[5:5]={read}', NULL, NULL, NULL, NULL, NULL, NULL),
  (7, 'bob', 'infinite-created', encode(sha256('legacy-token-57'), 'hex'), NULL, NULL, NULL, NULL, NULL, '-infinity', NULL),
  (8, 'bob', 'last-use-only', encode(sha256('legacy-token-58'), 'hex'), NULL, '{"a": {"b": 1}}', NULL, NULL, NULL, NULL, '2026-01-01');
CREATE TABLE regress.legacy8 (n bigint, owner text, name text, digest text);
INSERT INTO regress.legacy8 VALUES (NULL, 'bob', 'no-n-1', encode(sha256('legacy-token-59'), 'hex')),
                                   (NULL, 'bob', 'no-n-2', encode(sha256('legacy-token-60'), 'hex'));
GRANT SELECT ON regress.legacy7, regress.legacy8 TO alice;
SET ROLE alice;
SELECT n, status, reason FROM apikeys.import_keys(regress.id('iws'), 'regress.legacy7') ORDER BY n;
SELECT n, status, reason FROM apikeys.import_keys(regress.id('iws'), 'regress.legacy8') ORDER BY n;
RESET ROLE;
SELECT name, created_at = '2026-01-01' AS created_at_its_last_use FROM apikeys.keys WHERE name = 'last-use-only';
REVOKE apikeys_importer FROM alice;
REVOKE apikeys_operator FROM backend;
-- a plan's credits come with its refill for an importer's key, as for a
-- mint (limits need the usage engine: without it the plan is refused)
SELECT regress.try(format('SELECT apikeys.set_plan(%L, credits => 100, refill_amount => 100, refill_interval => %L)',
                          regress.id('iws'), '1 day')) AS plan_set;
CREATE TABLE regress.legacy9 (owner text, name text, digest text);
INSERT INTO regress.legacy9 VALUES ('bob', 'plan-refill', encode(sha256('legacy-token-61'), 'hex'));
GRANT SELECT ON regress.legacy9 TO alice;
GRANT apikeys_importer TO alice;
SET ROLE alice;
SELECT n, status, reason FROM apikeys.import_keys(regress.id('iws'), 'regress.legacy9');
RESET ROLE;
REVOKE apikeys_importer FROM alice;
SELECT credits, refill_amount, refill_interval FROM apikeys.keys WHERE name = 'plan-refill';
SELECT regress.try(format('SELECT apikeys.set_plan(%L)', regress.id('iws'))) AS plan_lifted;

