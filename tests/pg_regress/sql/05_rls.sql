-- Row-level security: enabled and forced everywhere; admins
-- see every key of their workspace, members their own, other workspaces
-- nothing, anonymous callers nothing; key_hashes is readable by no client.
\set SHOW_CONTEXT never
SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class
 WHERE relnamespace = 'apikeys'::regnamespace AND relkind = 'r' ORDER BY relname;

SET ROLE alice;
SELECT regress.put('sws', apikeys.create_workspace('See Inc')::text);
SELECT regress.add_member(regress.id('sws'), 'bob', 'member', '{read}');
SELECT regress.add_member(regress.id('sws'), 'carol', 'member', '{read}');
SELECT name FROM apikeys.create_key(regress.id('sws'), 'alice-1');
RESET ROLE;
SET ROLE bob;
SELECT name FROM apikeys.create_key(regress.id('sws'), 'bob-1');
RESET ROLE;
SET ROLE carol;
SELECT name FROM apikeys.create_key(regress.id('sws'), 'carol-1');
RESET ROLE;
SET ROLE mallory;
SELECT regress.put('mws2', apikeys.create_workspace('Mallory Two')::text);
SELECT name FROM apikeys.create_key(regress.id('mws2'), 'mallory-1');
RESET ROLE;

-- admin: every key of the workspace
SET ROLE alice;
SELECT owner, name FROM apikeys.keys WHERE workspace_id = regress.id('sws') ORDER BY name;
SELECT principal FROM apikeys.members WHERE workspace_id = regress.id('sws') ORDER BY principal;
RESET ROLE;
-- member: own keys only, own membership only
SET ROLE bob;
SELECT owner, name FROM apikeys.keys WHERE workspace_id = regress.id('sws') ORDER BY name;
SELECT principal FROM apikeys.members WHERE workspace_id = regress.id('sws') ORDER BY principal;
SELECT name FROM apikeys.workspaces WHERE id = regress.id('sws');
RESET ROLE;
-- another tenant: nothing of this workspace
SET ROLE mallory;
SELECT count(*) AS keys FROM apikeys.keys WHERE workspace_id = regress.id('sws');
SELECT count(*) AS members FROM apikeys.members WHERE workspace_id = regress.id('sws');
SELECT count(*) AS workspaces FROM apikeys.workspaces WHERE id = regress.id('sws');
SELECT DISTINCT owner FROM apikeys.keys ORDER BY owner;
RESET ROLE;
-- anonymous: nothing at all
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT (SELECT count(*) FROM apikeys.keys) AS keys, (SELECT count(*) FROM apikeys.members) AS members,
       (SELECT count(*) FROM apikeys.workspaces) AS workspaces;
ROLLBACK;
-- a JWT caller sees what its sub may see
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub":"bob"}');
SELECT owner, name FROM apikeys.keys WHERE workspace_id = regress.id('sws') ORDER BY name;
ROLLBACK;

-- key_hashes: no client reads it, with or without RLS
SET ROLE alice;
SELECT regress.try($$SELECT * FROM apikeys.key_hashes$$);
RESET ROLE;
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub":"alice"}');
SELECT regress.try($$SELECT count(*) FROM apikeys.key_hashes$$);
ROLLBACK;

-- clients never write the tables directly
SET ROLE alice;
SELECT regress.try($$UPDATE apikeys.keys SET revoked_at = NULL$$);
SELECT regress.try($$UPDATE apikeys.keys SET scopes = '{admin}'$$);
SELECT regress.try($$DELETE FROM apikeys.keys$$);
SELECT regress.try($$INSERT INTO apikeys.members (workspace_id, principal, role)
                     VALUES (regress.id('mws2'), 'alice', 'admin')$$);
SELECT regress.try($$INSERT INTO apikeys.key_hashes VALUES (gen_random_uuid(), sha256('x'))$$);
RESET ROLE;

-- a role never granted anything cannot even reach the schema
SET ROLE nobody;
SELECT regress.try($$SELECT * FROM apikeys.keys$$);
SELECT regress.try($$SELECT * FROM apikeys.verify_key('x')$$);
RESET ROLE;
