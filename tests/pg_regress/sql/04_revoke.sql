-- revoke_key: idempotent; admins revoke any key of their
-- workspace, members their own; absent and not-yours are one error.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('rws', apikeys.create_workspace('Revoke Inc')::text);
SELECT regress.add_member(regress.id('rws'), 'bob', 'member', '{read}');
SELECT regress.add_member(regress.id('rws'), 'carol', 'member', '{read}');
SELECT regress.put('a1', id::text) FROM apikeys.create_key(regress.id('rws'), 'a1');
RESET ROLE;
SET ROLE bob;
SELECT regress.put('b1', id::text), regress.put('b1_key', key) FROM apikeys.create_key(regress.id('rws'), 'b1');
SELECT regress.put('b2', id::text) FROM apikeys.create_key(regress.id('rws'), 'b2');
RESET ROLE;
SET ROLE mallory;
SELECT regress.put('mws', apikeys.create_workspace('Mallory Ltd')::text);
SELECT regress.put('m1', id::text) FROM apikeys.create_key(regress.id('mws'), 'm1');
RESET ROLE;

-- a member revokes their own key; again returns the original time
SET ROLE bob;
SELECT regress.put('b1_at', apikeys.revoke_key(regress.id('b1'))::text);
SELECT apikeys.revoke_key(regress.id('b1'))::text = regress.tok('b1_at') AS same_time;
SELECT revoked_at::text = regress.tok('b1_at') AS stored FROM apikeys.keys WHERE id = regress.id('b1');
SELECT regress.ok('b1_key') AS verifies;
-- ...but not another member's or an admin's: PT404, as for an absent key
SELECT regress.try($$SELECT apikeys.revoke_key(regress.id('a1'))$$);
RESET ROLE;
SET ROLE carol;
SELECT regress.try($$SELECT apikeys.revoke_key(regress.id('b2'))$$);
RESET ROLE;

-- absent and other-tenant keys give byte-identical errors
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.revoke_key('00000000-0000-4000-8000-0000000000aa')$$) AS absent;
SELECT regress.try($$SELECT apikeys.revoke_key(regress.id('m1'))$$) AS other_tenant;
SELECT regress.try($$SELECT apikeys.revoke_key('00000000-0000-4000-8000-0000000000aa')$$)
     = regress.try($$SELECT apikeys.revoke_key(regress.id('m1'))$$) AS identical;
-- the admin revokes any key of the workspace
SELECT apikeys.revoke_key(regress.id('b2')) IS NOT NULL AS admin_revoked;
SELECT regress.try($$SELECT apikeys.revoke_key(NULL)$$);
RESET ROLE;

-- mallory's key is untouched
SELECT revoked_at IS NULL AS untouched FROM apikeys.keys WHERE id = regress.id('m1');

-- anonymous: 42501
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.try($$SELECT apikeys.revoke_key(regress.id('a1'))$$);
ROLLBACK;

-- a JWT caller revokes by sub
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub":"alice"}');
SELECT apikeys.revoke_key(regress.id('a1')) IS NOT NULL AS revoked_via_jwt;
COMMIT;
