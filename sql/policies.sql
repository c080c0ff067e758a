-- pg_apikeys: row-level security (docs/security.md). Enabled and forced on every
-- table. Clients only ever SELECT; there are no write policies, so a direct
-- INSERT/UPDATE/DELETE is refused (it is not granted either).
--
-- The caller's workspaces are looked up once per query, not once per row:
-- each policy compares workspace_id with ARRAY(SELECT ... FROM members ...),
-- an uncorrelated sub-select the planner runs once (an InitPlan), and
-- reads the caller through (SELECT apikeys.current_principal()). The
-- look-up reads members under members' own policy; current_principal() and
-- current_workspace() are LEAKPROOF, so its `principal = ...` condition
-- runs first, on the index, and members' policy sees only the caller's own
-- rows. The same rule as apikeys.member_role(): a membership that is not
-- removed, and with an API key only the key's workspace.

ALTER TABLE apikeys.workspaces ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.workspaces FORCE ROW LEVEL SECURITY;
ALTER TABLE apikeys.members    ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.members    FORCE ROW LEVEL SECURITY;
ALTER TABLE apikeys.keys       ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.keys       FORCE ROW LEVEL SECURITY;
ALTER TABLE apikeys.key_hashes ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.key_hashes FORCE ROW LEVEL SECURITY;
ALTER TABLE apikeys.public_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.public_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE apikeys.audit_log  ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.audit_log  FORCE ROW LEVEL SECURITY;
ALTER TABLE apikeys.invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.invitations FORCE ROW LEVEL SECURITY;
ALTER TABLE apikeys.scanning_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.scanning_keys FORCE ROW LEVEL SECURITY;
-- scanning_keys has no policy either: only its owner (a superuser) uses it.
-- key_hashes has no policy at all: no row is visible to any role subject to RLS.

-- Members see the workspaces they belong to.
CREATE POLICY workspaces_visible ON apikeys.workspaces FOR SELECT
    USING (id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));

-- Admins see every membership (with history) of their workspaces; everyone
-- sees their own (an API-key request: in the key's workspace only).
CREATE POLICY members_visible ON apikeys.members FOR SELECT
    USING ((principal = apikeys.current_principal()
            AND workspace_id = coalesce(apikeys.current_workspace(), workspace_id))
           OR apikeys.member_role(workspace_id) = 'admin');

-- Admins see every key of their workspaces; members see their own keys.
CREATE POLICY keys_visible ON apikeys.keys FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id)))
           OR (owner = (SELECT apikeys.current_principal())
               AND workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id)))));

-- Admins see their workspaces' public keys (resolve_public_key is the way
-- everyone else uses them).
CREATE POLICY public_keys_visible ON apikeys.public_keys FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));

-- Admins read their workspaces' audit trail; nobody else reads any of it.
CREATE POLICY audit_log_visible ON apikeys.audit_log FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));

-- Invitees see their own invitations (to accept them; an API-key request,
-- which acts in its key's workspace only, sees none); admins see their
-- workspaces' invitations.
CREATE POLICY invitations_visible ON apikeys.invitations FOR SELECT
    USING ((principal = (SELECT apikeys.current_principal()) AND (SELECT apikeys.current_key_id()) IS NULL)
           OR workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));

-- Usage counts, like keys: admins see their workspaces', members their own
-- keys' (the keys subquery runs under keys' own policy).
ALTER TABLE apikeys.key_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.key_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY key_usage_visible ON apikeys.key_usage FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id)))
           OR (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id)))
               AND EXISTS (SELECT FROM apikeys.keys k
                            WHERE k.id = key_usage.key_id
                              AND k.owner = (SELECT apikeys.current_principal()))));

-- Owner limits: admins see their workspaces', everyone their own.
ALTER TABLE apikeys.owner_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.owner_limits FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_limits_visible ON apikeys.owner_limits FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id)))
           OR (owner = (SELECT apikeys.current_principal()) AND workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id)))));

-- The usage engine's rounds: no client reads or writes them (no policy;
-- the engine's worker is the bootstrap superuser).
ALTER TABLE apikeys.usage_rounds ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.usage_rounds FORCE ROW LEVEL SECURITY;

-- Standbys' forwarded batches: no client reads or writes them (no policy;
-- apply_forwarded_usage is the only writer).
ALTER TABLE apikeys.usage_sources ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.usage_sources FORCE ROW LEVEL SECURITY;

-- Suspensions: admins see their workspaces'.
ALTER TABLE apikeys.suspensions ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.suspensions FORCE ROW LEVEL SECURITY;
CREATE POLICY suspensions_visible ON apikeys.suspensions FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));

-- Plans: every member of the workspace sees its plan.
ALTER TABLE apikeys.plans ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.plans FORCE ROW LEVEL SECURITY;
CREATE POLICY plans_visible ON apikeys.plans FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));
