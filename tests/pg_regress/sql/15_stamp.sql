-- apikeys.stamp_created_by(column): provenance for an
-- application's own tables, from whichever identity made the request.
\set SHOW_CONTEXT never
CREATE SCHEMA app;
CREATE TABLE app.notes (id int PRIMARY KEY, body text, created_by text);
CREATE TRIGGER notes_stamp BEFORE INSERT OR UPDATE ON app.notes
    FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('created_by');
GRANT USAGE ON SCHEMA app TO app_user, anon, authenticated;
GRANT SELECT, INSERT, UPDATE ON app.notes TO app_user, anon, authenticated;
SET ROLE alice;
SELECT regress.put('stws', apikeys.create_workspace('Stamp Inc')::text);
SELECT regress.add_member(regress.id('stws'), 'bob', 'member', '{read}');
RESET ROLE;
SET ROLE bob;
SELECT regress.put('st_key', key) FROM apikeys.create_key(regress.id('stws'), 'writer', '{read}');
RESET ROLE;

-- a database role: its name, whatever the client sent
SET ROLE alice;
INSERT INTO app.notes VALUES (1, 'from psql', 'mallory') RETURNING id, created_by;
INSERT INTO app.notes (id, body) VALUES (2, 'no value sent') RETURNING id, created_by;
RESET ROLE;
-- a JWT request: its sub
BEGIN;
SELECT regress.as_jwt('authenticated', '{"role":"authenticated","sub":"user-42"}');
INSERT INTO app.notes VALUES (3, 'from PostgREST', 'admin') RETURNING id, created_by;
COMMIT;
-- an API-key request: the key's owner
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT set_config('request.headers', json_build_object('x-api-key', regress.tok('st_key'))::text, true) IS NOT NULL;
SELECT apikeys.authenticate();
INSERT INTO app.notes VALUES (4, 'from a key', NULL) RETURNING id, created_by;
COMMIT;
-- no principal (anonymous claims): the write is refused
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.try($$INSERT INTO app.notes VALUES (5, 'anonymous', 'anyone')$$) AS anonymous;
ROLLBACK;
-- UPDATE keeps the original value, whoever updates and whatever they send
SET ROLE bob;
UPDATE app.notes SET body = body || ' (edited)', created_by = 'bob' WHERE id = 1 RETURNING id, body, created_by;
UPDATE app.notes SET created_by = NULL WHERE id = 3 RETURNING id, created_by;
RESET ROLE;
INSERT INTO app.notes VALUES (4, 'upsert', 'x') ON CONFLICT (id) DO UPDATE SET body = 'upserted', created_by = 'x'
    RETURNING id, body, created_by;
SELECT id, created_by FROM app.notes ORDER BY id;

-- wrong set-ups give a clear 22023 when the trigger fires
CREATE TABLE app.bad (id int, created_by int, author varchar(40), label text);
CREATE TRIGGER bad_missing BEFORE INSERT ON app.bad FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('nope');
SELECT regress.try($$INSERT INTO app.bad (id) VALUES (1)$$) AS missing_column;
DROP TRIGGER bad_missing ON app.bad;
CREATE TRIGGER bad_type BEFORE INSERT ON app.bad FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('created_by');
SELECT regress.try($$INSERT INTO app.bad (id) VALUES (1)$$) AS wrong_type;
DROP TRIGGER bad_type ON app.bad;
CREATE TRIGGER bad_args BEFORE INSERT ON app.bad FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by();
SELECT regress.try($$INSERT INTO app.bad (id) VALUES (1)$$) AS no_argument;
DROP TRIGGER bad_args ON app.bad;
CREATE TRIGGER bad_args2 BEFORE INSERT ON app.bad FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('author', 'label');
SELECT regress.try($$INSERT INTO app.bad (id) VALUES (1)$$) AS two_arguments;
DROP TRIGGER bad_args2 ON app.bad;
CREATE TRIGGER bad_after AFTER INSERT ON app.bad FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('author');
SELECT regress.try($$INSERT INTO app.bad (id) VALUES (1)$$) AS after_trigger;
DROP TRIGGER bad_after ON app.bad;
CREATE TRIGGER bad_stmt BEFORE INSERT ON app.bad FOR EACH STATEMENT EXECUTE FUNCTION apikeys.stamp_created_by('author');
SELECT regress.try($$INSERT INTO app.bad (id) VALUES (1)$$) AS statement_trigger;
DROP TRIGGER bad_stmt ON app.bad;
CREATE TRIGGER bad_delete BEFORE DELETE ON app.bad FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('author');
INSERT INTO app.bad (id) VALUES (9);
SELECT regress.try($$DELETE FROM app.bad$$) AS delete_trigger;
DROP TRIGGER bad_delete ON app.bad;
-- varchar columns and quoted names work
CREATE TABLE app."Odd Table" ("Made By" varchar(40), n int);
CREATE TRIGGER odd BEFORE INSERT ON app."Odd Table" FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('Made By');
INSERT INTO app."Odd Table" (n) VALUES (1) RETURNING "Made By", n;
-- nothing written by the failures
SELECT count(*) AS bad_rows FROM app.bad WHERE id = 1;
-- a search_path trap changes nothing: the function pins its own
CREATE FUNCTION public.current_principal() RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked' $$;
CREATE FUNCTION public.jsonb_build_object(text, text) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{"created_by":"hijacked"}'::jsonb $$;
GRANT EXECUTE ON FUNCTION public.current_principal(), public.jsonb_build_object(text, text) TO PUBLIC;
SET search_path = public, app, pg_catalog;
SET ROLE carol;
INSERT INTO app.notes VALUES (6, 'trap', 'x') RETURNING id, created_by;
RESET ROLE;
RESET search_path;
DROP FUNCTION public.current_principal();
DROP FUNCTION public.jsonb_build_object(text, text);
