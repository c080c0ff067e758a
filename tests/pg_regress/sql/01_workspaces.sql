-- Workspaces and members (design.md §2): the creator is the first admin;
-- add_member and remove_member are admin-only and never leave a workspace
-- without an admin.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT apikeys.current_principal();
SELECT regress.put('acme', apikeys.create_workspace('Acme')::text);
SELECT principal, role, scopes, removed_at IS NULL AS active
  FROM apikeys.members WHERE workspace_id = regress.id('acme');
SELECT name, created_by FROM apikeys.workspaces WHERE id = regress.id('acme');

-- a workspace with a chosen id; the same id twice is a conflict
SELECT apikeys.create_workspace('Fixed', '00000000-0000-4000-8000-000000000001');
SELECT regress.try($$SELECT apikeys.create_workspace('Again', '00000000-0000-4000-8000-000000000001')$$);

-- add members; adding an existing member updates role and scopes
SELECT apikeys.add_member(regress.id('acme'), 'bob', 'member', '{read,write}');
SELECT apikeys.add_member(regress.id('acme'), 'carol');
SELECT principal, role, scopes FROM apikeys.members
 WHERE workspace_id = regress.id('acme') AND removed_at IS NULL ORDER BY principal;
SELECT apikeys.add_member(regress.id('acme'), 'carol', 'admin', '{read}');
SELECT principal, role, scopes FROM apikeys.members
 WHERE workspace_id = regress.id('acme') AND removed_at IS NULL ORDER BY principal;

-- bad arguments: 22023
SELECT regress.try($$SELECT apikeys.add_member(regress.id('acme'), 'dave', 'owner')$$);
SELECT regress.try($$SELECT apikeys.add_member(regress.id('acme'), 'dave', 'member', '{"Bad Scope"}')$$);
SELECT regress.try($$SELECT apikeys.add_member(regress.id('acme'), 'dave', 'member', ARRAY[NULL])$$);
SELECT regress.try($$SELECT apikeys.add_member(regress.id('acme'), '')$$);
SELECT regress.try($$SELECT apikeys.add_member(regress.id('acme'), E'da\nve')$$);
SELECT regress.try($$SELECT apikeys.add_member(regress.id('acme'), NULL)$$);
SELECT regress.try($$SELECT apikeys.add_member(NULL, 'dave')$$);
SELECT regress.try($$SELECT apikeys.create_workspace('')$$);
SELECT regress.try($$SELECT apikeys.create_workspace(E'tab\there')$$);
SELECT regress.try($$SELECT apikeys.create_workspace(NULL)$$);

-- a workspace that does not exist: PT404
SELECT regress.try($$SELECT apikeys.add_member('00000000-0000-4000-8000-0000000000ff', 'dave')$$);
RESET ROLE;

-- members are not admins: 42501
SET ROLE bob;
SELECT regress.try($$SELECT apikeys.add_member(regress.id('acme'), 'mallory', 'admin')$$);
SELECT regress.try($$SELECT apikeys.remove_member(regress.id('acme'), 'alice')$$);
RESET ROLE;

-- non-members: 42501
SET ROLE mallory;
SELECT regress.try($$SELECT apikeys.add_member(regress.id('acme'), 'mallory', 'admin')$$);
RESET ROLE;

-- anonymous (JWT claims without sub): 42501, for workspace creation too
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT apikeys.current_principal() IS NULL AS anonymous;
SELECT regress.try($$SELECT apikeys.create_workspace('Anon Inc')$$);
SELECT regress.try($$SELECT apikeys.add_member(regress.id('acme'), 'x')$$);
ROLLBACK;

-- JWT callers are named by sub
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub":"user-42","role":"authenticated"}');
SELECT apikeys.current_principal();
SELECT regress.put('jwtws', apikeys.create_workspace('JWT Co')::text);
SELECT principal, role FROM apikeys.members WHERE workspace_id = regress.id('jwtws');
COMMIT;

-- never the last admin: neither by removal nor by demotion
SET ROLE alice;
SELECT regress.put('solo', apikeys.create_workspace('Solo')::text);
SELECT regress.try($$SELECT apikeys.remove_member(regress.id('solo'), 'alice')$$);
SELECT regress.try($$SELECT apikeys.add_member(regress.id('solo'), 'alice', 'member')$$);
-- with a second admin, the first may step down
SELECT apikeys.add_member(regress.id('solo'), 'bob', 'admin');
SELECT apikeys.remove_member(regress.id('solo'), 'alice');
RESET ROLE;
SET ROLE bob;
SELECT principal, role, removed_at IS NOT NULL AS removed FROM apikeys.members
 WHERE workspace_id = regress.id('solo') ORDER BY principal;
RESET ROLE;

-- remove_member: an absent member is PT404; a removed member can be added back
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.remove_member(regress.id('acme'), 'nobody-here')$$);
SELECT apikeys.add_member(regress.id('acme'), 'mallory');
SELECT apikeys.remove_member(regress.id('acme'), 'mallory');
SELECT regress.try($$SELECT apikeys.remove_member(regress.id('acme'), 'mallory')$$);
SELECT apikeys.add_member(regress.id('acme'), 'mallory');
SELECT count(*) AS mallory_rows, count(*) FILTER (WHERE removed_at IS NULL) AS active
  FROM apikeys.members WHERE workspace_id = regress.id('acme') AND principal = 'mallory';
SELECT apikeys.remove_member(regress.id('acme'), 'mallory');
RESET ROLE;
