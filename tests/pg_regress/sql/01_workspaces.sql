-- Workspaces and members: the creator is the first admin; add_member and
-- remove_member are admin-only and never leave a workspace without an admin;
-- nobody becomes a member without accepting an invitation as themself.
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

-- add members: add_member invites; nobody is a member until they accept
SELECT apikeys.add_member(regress.id('acme'), 'bob', 'member', '{read}');
SELECT apikeys.add_member(regress.id('acme'), 'carol');
-- inviting again renews the open invitation with the new role and scopes
SELECT apikeys.add_member(regress.id('acme'), 'bob', 'member', '{read,write}');
SELECT principal, role, scopes FROM apikeys.members
 WHERE workspace_id = regress.id('acme') AND removed_at IS NULL ORDER BY principal;
SELECT principal, role, scopes, invited_by, accepted_at IS NULL AND withdrawn_at IS NULL AS open
  FROM apikeys.invitations WHERE workspace_id = regress.id('acme') ORDER BY principal;
RESET ROLE;
-- the invitee sees their invitation, and accepts it as themself
SET ROLE bob;
SELECT principal, role, scopes FROM apikeys.invitations WHERE workspace_id = regress.id('acme');
SELECT apikeys.accept_invitation(regress.id('acme')) AS joined_as;
-- once only; and nobody accepts an invitation that is not theirs
SELECT regress.try($$SELECT apikeys.accept_invitation(regress.id('acme'))$$);
SELECT regress.try($$SELECT apikeys.accept_invitation('00000000-0000-4000-8000-0000000000ff')$$);
SELECT regress.try($$SELECT apikeys.accept_invitation(NULL)$$);
RESET ROLE;
SET ROLE mallory;
SELECT regress.try($$SELECT apikeys.accept_invitation(regress.id('acme'))$$);
SELECT count(*) AS invitations_mallory_sees FROM apikeys.invitations;
RESET ROLE;
SET ROLE carol;
SELECT apikeys.accept_invitation(regress.id('acme')) AS joined_as;
RESET ROLE;
SET ROLE alice;
-- adding an existing member updates role and scopes (no invitation)
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
-- with a second admin (who accepted), the first may step down
SELECT regress.add_member(regress.id('solo'), 'bob', 'admin');
SELECT apikeys.remove_member(regress.id('solo'), 'alice');
RESET ROLE;
SET ROLE bob;
SELECT principal, role, removed_at IS NOT NULL AS removed FROM apikeys.members
 WHERE workspace_id = regress.id('solo') ORDER BY principal;
RESET ROLE;

-- remove_member: an absent member is PT404; an open invitation is
-- withdrawn (and can no longer be accepted); a removed member can be added back
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.remove_member(regress.id('acme'), 'nobody-here')$$);
SELECT apikeys.add_member(regress.id('acme'), 'mallory');
SELECT apikeys.remove_member(regress.id('acme'), 'mallory');
SELECT regress.try($$SELECT apikeys.remove_member(regress.id('acme'), 'mallory')$$);
RESET ROLE;
SET ROLE mallory;
SELECT regress.try($$SELECT apikeys.accept_invitation(regress.id('acme'))$$) AS withdrawn;
RESET ROLE;
SET ROLE alice;
SELECT regress.add_member(regress.id('acme'), 'mallory');
SELECT apikeys.remove_member(regress.id('acme'), 'mallory');
SELECT regress.add_member(regress.id('acme'), 'mallory');
SELECT count(*) AS mallory_rows, count(*) FILTER (WHERE removed_at IS NULL) AS active
  FROM apikeys.members WHERE workspace_id = regress.id('acme') AND principal = 'mallory';
SELECT principal, role, accepted_at IS NOT NULL AS accepted, withdrawn_at IS NOT NULL AS withdrawn
  FROM apikeys.invitations WHERE workspace_id = regress.id('acme') AND principal = 'mallory' ORDER BY id;
SELECT apikeys.remove_member(regress.id('acme'), 'mallory');
RESET ROLE;
-- history: accepted and withdrawn invitations never change, none is deleted
SELECT regress.try($$UPDATE apikeys.invitations SET role = 'admin' WHERE principal = 'mallory'$$);
SELECT regress.try($$DELETE FROM apikeys.invitations WHERE principal = 'mallory'$$);
SELECT regress.try($$TRUNCATE apikeys.invitations$$);
