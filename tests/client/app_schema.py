"""The application schema the client and HTTP suites share: PostgREST's
roles (authenticator, anon, authenticated, api_key_user) and an `api`
schema with a table whose row-level security follows the request's API key,
a public-key widget entry point and a who-am-I function.
"""

SETUP_ROLES = """
DO $$
BEGIN
    -- roles are cluster-wide and shared with other test layers: create what
    -- is missing, never drop
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'api_key_user') THEN
        CREATE ROLE api_key_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticator') THEN
        CREATE ROLE authenticator LOGIN NOINHERIT;
    END IF;
EXCEPTION WHEN duplicate_object THEN
    NULL;  -- created concurrently by another job: fine
END
$$;
ALTER ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, api_key_user TO authenticator;
"""

SETUP_DATABASE = """
CREATE EXTENSION pg_apikeys;
SELECT apikeys.grant_to('anon'), apikeys.grant_to('authenticated'), apikeys.grant_to('api_key_user');

-- the application's exposed schema (PostgREST db-schemas = "api, apikeys")
CREATE SCHEMA api;
GRANT USAGE ON SCHEMA api TO anon, authenticated, api_key_user;
CREATE TABLE api.projects (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id uuid NOT NULL,
    name         text NOT NULL,
    created_by   text
);
ALTER TABLE api.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE api.projects FORCE ROW LEVEL SECURITY;
-- an API-key request sees its key's workspace; nobody else sees anything
CREATE POLICY projects_read ON api.projects FOR SELECT
    USING (workspace_id = apikeys.current_workspace());
-- and writes there only with scope projects:write
CREATE POLICY projects_write ON api.projects FOR INSERT
    WITH CHECK (workspace_id = apikeys.current_workspace() AND apikeys.has_scope('projects:write'));
CREATE TRIGGER projects_created_by BEFORE INSERT OR UPDATE ON api.projects
    FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('created_by');
GRANT SELECT, INSERT ON api.projects TO anon, authenticated, api_key_user;

-- a browser widget's entry point: resolve a public key with the request's
-- Origin header, which the caller cannot choose as a parameter
CREATE FUNCTION api.widget_workspace(public_key text) RETURNS TABLE (workspace_id uuid)
    LANGUAGE sql STABLE
    AS $$ SELECT r.workspace_id
            FROM apikeys.resolve_public_key(
                     $1, current_setting('request.headers', true)::json ->> 'origin') r $$;
REVOKE ALL ON FUNCTION api.widget_workspace(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.widget_workspace(text) TO anon, authenticated, api_key_user;

-- who the database thinks is calling (VOLATILE: PostgREST runs a POST to it
-- read-write, a GET read-only)
CREATE FUNCTION api.whoami()
    RETURNS TABLE (principal text, key_id uuid, workspace_id uuid, db_role text, can_read boolean)
    LANGUAGE sql VOLATILE
    AS $$ SELECT apikeys.current_principal(), apikeys.current_key_id(), apikeys.current_workspace(),
                 current_user::text, apikeys.has_scope('read') $$;
REVOKE ALL ON FUNCTION api.whoami() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.whoami() TO anon, authenticated, api_key_user;
"""
