-- grant_to: what it grants and to whom; the search_path pin
-- in definer code; verify_key's owner cache.
\set SHOW_CONTEXT never
-- the privilege snapshot of every extension object is 16_privileges

-- a client cannot grant itself anything
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.grant_to('alice')$$);
RESET ROLE;
-- grant_to is idempotent and takes quoted role names
CREATE ROLE "Odd Role" NOLOGIN;
SELECT apikeys.grant_to('"Odd Role"');
SELECT apikeys.grant_to('"Odd Role"');
SELECT has_function_privilege('Odd Role', 'apikeys.verify_key(text, text[])', 'EXECUTE') AS granted;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA apikeys FROM "Odd Role";
REVOKE ALL ON ALL TABLES IN SCHEMA apikeys FROM "Odd Role";
REVOKE ALL ON SCHEMA apikeys FROM "Odd Role";
DROP ROLE "Odd Role";

-- a planted pg_temp table or public function changes nothing inside the definer code
SET ROLE alice;
SELECT regress.put('hws', apikeys.create_workspace('Hijack Inc')::text);
SELECT regress.put('hk', key) FROM apikeys.create_key(regress.id('hws'), 'hk');
CREATE TEMP TABLE keys (id uuid, revoked_at timestamptz);
CREATE TEMP TABLE members (workspace_id uuid, principal text, role text);
SET search_path = pg_temp, public, apikeys;
SELECT count(*) AS verifies FROM apikeys.verify_key(regress.tok('hk'));
SELECT name FROM apikeys.create_key(regress.id('hws'), 'after-hijack');
RESET search_path;
DROP TABLE pg_temp.keys, pg_temp.members;
RESET ROLE;

-- verify_key runs its two statements as the owner of key_hashes, cached per
-- backend and forgotten when that table changes. A fresh second session
-- (dblink) caches a non-superuser owner; ownership then moves back and that
-- role is dropped: the second session must notice, not act as a dropped role.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keeper') THEN
        CREATE ROLE keeper NOLOGIN BYPASSRLS;
    END IF;
END $$;
GRANT USAGE ON SCHEMA apikeys TO keeper;
GRANT SELECT, UPDATE ON apikeys.keys TO keeper;
ALTER TABLE apikeys.key_hashes OWNER TO keeper;
SELECT dblink_connect('second', format('dbname=%s port=%s host=%s user=postgres', current_database(),
       current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT dblink_exec('second', 'SET ROLE alice');
SELECT * FROM dblink('second', format('SELECT count(*) FROM apikeys.verify_key(%L)', regress.tok('hk')))
    AS t(verifies_as_keeper bigint);
ALTER TABLE apikeys.key_hashes OWNER TO postgres;
REVOKE ALL ON apikeys.keys FROM keeper;
REVOKE ALL ON SCHEMA apikeys FROM keeper;
DROP ROLE keeper;
SELECT * FROM dblink('second', format('SELECT count(*) FROM apikeys.verify_key(%L)', regress.tok('hk')))
    AS t(verifies_after_owner_change bigint);
SELECT dblink_disconnect('second');
