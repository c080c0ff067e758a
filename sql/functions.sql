-- pg_apikeys: the SQL surface (design.md §2, §3, §6).
-- The logic is Rust (src/), reached through the C symbols named here.
-- Functions that cross the privilege boundary are SECURITY DEFINER with
-- search_path pinned to pg_catalog, pg_temp (pg_temp last) and qualify every
-- extension object; inside them identity is still the caller
-- (current_principal() reads PostgreSQL's outer user id, not the definer's).
-- EXECUTE is revoked from PUBLIC in grants.sql; apikeys.grant_to() grants it.

CREATE FUNCTION apikeys.current_principal() RETURNS text
    LANGUAGE c STABLE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'apikeys_current_principal';
COMMENT ON FUNCTION apikeys.current_principal() IS
    'The caller: an authenticated API key''s owner, else the JWT sub, else the session role; NULL when anonymous.';

-- Used by the RLS policies: the caller's role in a workspace, or NULL.
CREATE FUNCTION apikeys.member_role(workspace_id uuid) RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER PARALLEL RESTRICTED
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT m.role FROM apikeys.members m
         WHERE m.workspace_id = $1
           AND m.principal = apikeys.current_principal()
           AND m.removed_at IS NULL
    $$;
COMMENT ON FUNCTION apikeys.member_role(uuid) IS
    'The caller''s role (admin or member) in a workspace, or NULL when not a member.';

CREATE FUNCTION apikeys.create_workspace(name text, id uuid DEFAULT pg_catalog.gen_random_uuid())
    RETURNS uuid
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_create_workspace';
COMMENT ON FUNCTION apikeys.create_workspace(text, uuid) IS
    'Create a workspace; the caller becomes its first admin.';

CREATE FUNCTION apikeys.add_member(workspace_id uuid, principal text,
                                   role text DEFAULT 'member', scopes text[] DEFAULT '{}')
    RETURNS void
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_add_member';
COMMENT ON FUNCTION apikeys.add_member(uuid, text, text, text[]) IS
    'Admin only: add a member, or update an existing member''s role and scopes.';

CREATE FUNCTION apikeys.remove_member(workspace_id uuid, principal text)
    RETURNS void
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_remove_member';
COMMENT ON FUNCTION apikeys.remove_member(uuid, text) IS
    'Admin only: remove a member (never the last admin); their active keys are revoked.';

CREATE FUNCTION apikeys.create_key(workspace_id uuid,
                                   name text DEFAULT NULL,
                                   scopes text[] DEFAULT '{}',
                                   expires_at timestamptz DEFAULT NULL,
                                   metadata jsonb DEFAULT '{}',
                                   prefix text DEFAULT 'sk')
    RETURNS TABLE (id uuid, name text, prefix text, key text)
    LANGUAGE c VOLATILE SECURITY DEFINER ROWS 1
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_create_key';
COMMENT ON FUNCTION apikeys.create_key(uuid, text, text[], timestamptz, jsonb, text) IS
    'Mint a secret key. The key column is shown here once and never again.';

-- The hot path. SECURITY INVOKER on purpose: it reads key_hashes by running
-- its two prepared, fully schema-qualified statements as the table owner
-- (src/keys.rs, AsOwner), which avoids the per-call setting change that a
-- SECURITY DEFINER ... SET search_path function pays on every call.
CREATE FUNCTION apikeys.verify_key(key text, required_scopes text[] DEFAULT '{}')
    RETURNS TABLE (key_id uuid, workspace_id uuid, owner text, scopes text[],
                   metadata jsonb, expires_at timestamptz)
    LANGUAGE c VOLATILE ROWS 1
    AS 'MODULE_PATHNAME', 'apikeys_verify_key';
COMMENT ON FUNCTION apikeys.verify_key(text, text[]) IS
    'One row for a good key holding the required scopes; zero rows for every failure alike.';

CREATE FUNCTION apikeys.revoke_key(key_id uuid) RETURNS timestamptz
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_revoke_key';
COMMENT ON FUNCTION apikeys.revoke_key(uuid) IS
    'Revoke a key; revoking it again returns the original time.';
