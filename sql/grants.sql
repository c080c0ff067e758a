-- pg_apikeys: privileges (docs/security.md). Nothing is granted to PUBLIC;
-- apikeys.grant_to(role) grants a client role exactly what clients need.

REVOKE ALL ON SCHEMA apikeys FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA apikeys FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA apikeys FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA apikeys FROM PUBLIC;

-- A client role that was never granted meets PostgreSQL's own "permission
-- denied for schema apikeys": grant_to is what to run (README, "The two
-- commands"; docs/reference.md).
CREATE FUNCTION apikeys.grant_to(role regrole) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- regrole's text form is already a quoted identifier
    EXECUTE format('GRANT USAGE ON SCHEMA apikeys TO %s', role);
    EXECUTE format('GRANT SELECT ON apikeys.workspaces, apikeys.members, apikeys.keys,
        apikeys.public_keys, apikeys.audit_log, apikeys.invitations, apikeys.key_usage,
        apikeys.key_usage_live, apikeys.owner_limits, apikeys.suspensions, apikeys.plans TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION
        apikeys.current_principal(),
        apikeys.member_role(uuid),
        apikeys.create_workspace(text, uuid),
        apikeys.add_member(uuid, text, text, text[]),
        apikeys.remove_member(uuid, text),
        apikeys.accept_invitation(uuid),
        apikeys.create_key(uuid, text, text[], timestamptz, jsonb, text, integer, interval, bigint, bigint, interval, text),
        apikeys.verify_key(text, text[]),
        apikeys.revoke_key(uuid),
        apikeys.rotate_key(uuid, interval, timestamptz),
        apikeys.check_key(text, text[], integer),
        apikeys.update_key(uuid, text, text[], jsonb, integer, interval, bigint, bigint, interval, timestamptz),
        apikeys.suspend_key(uuid),
        apikeys.resume_key(uuid),
        apikeys.set_owner_limit(uuid, text, integer, interval),
        apikeys.import_key(uuid, text, text, text, text[], timestamptz),
        apikeys.import_keys(uuid, regclass, boolean),
        apikeys.authenticate(),
        apikeys.current_key_id(),
        apikeys.current_workspace(),
        apikeys.has_scope(text),
        apikeys.create_public_key(uuid, text[]),
        apikeys.revoke_public_key(uuid),
        apikeys.resolve_public_key(text, text),
        apikeys.stamp_created_by(),
        apikeys.applying_replicated_change(),
        apikeys.usage_mode(),
        apikeys.expiring_keys(interval),
        apikeys.checked_within(interval),
        apikeys.pending_usage(),
        apikeys.is_operator(),
        apikeys.suspend_owner(uuid, text),
        apikeys.resume_owner(uuid, text),
        apikeys.set_plan(uuid, integer, interval, bigint, bigint, interval, interval, integer)
        TO %s', role);
END
$$;
REVOKE ALL ON FUNCTION apikeys.grant_to(regrole) FROM PUBLIC;
COMMENT ON FUNCTION apikeys.grant_to(regrole) IS
    'Grant a client role what clients need: schema usage, SELECT on the RLS tables, EXECUTE on the public functions. A role without it gets "permission denied for schema apikeys"; run SELECT apikeys.grant_to(''role'') as a superuser.';

-- Importing a key for another owner (a migration) needs the role
-- apikeys_importer, never just workspace admin: the digest's token, which the
-- importer may know, would act as that owner. The role is cluster-wide (made
-- once, kept by DROP EXTENSION); a superuser grants it with grant_importer.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'apikeys_importer') THEN
        CREATE ROLE apikeys_importer NOLOGIN;
    -- a role of that name made by someone else is not adopted: it must be a
    -- plain NOLOGIN role that no one but a superuser can grant (a
    -- CREATEROLE user who made it holds ADMIN OPTION on it)
    ELSIF EXISTS (SELECT FROM pg_catalog.pg_roles r
                   WHERE r.rolname = 'apikeys_importer'
                     AND (r.rolcanlogin OR r.rolsuper OR r.rolcreaterole OR r.rolcreatedb
                          OR r.rolreplication OR r.rolbypassrls))
       OR EXISTS (SELECT FROM pg_catalog.pg_auth_members m
                    JOIN pg_catalog.pg_roles g ON g.oid = m.member
                   WHERE m.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'apikeys_importer')
                     AND m.admin_option AND NOT g.rolsuper) THEN
        RAISE EXCEPTION 'a role named apikeys_importer exists and is not the plain NOLOGIN role pg_apikeys makes'
            USING ERRCODE = '42501',
                  HINT = 'drop or rename that role (or make it NOLOGIN with no other attribute, granted WITH ADMIN OPTION to no one), then create the extension';
    END IF;
END
$$;

CREATE FUNCTION apikeys.grant_importer(role regrole) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- regrole's text form is already a quoted identifier
    EXECUTE format('GRANT apikeys_importer TO %s', role);
END
$$;
REVOKE ALL ON FUNCTION apikeys.grant_importer(regrole) FROM PUBLIC;
COMMENT ON FUNCTION apikeys.grant_importer(regrole) IS
    'Let a role import keys for other owners (import_key): grant it to a migration role only, never to a role PostgREST switches to.';

-- The operator tier: a role a superuser grants with grant_operator. Made
-- once, kept by DROP EXTENSION; a role of that name made by someone else is
-- adopted only if it is a plain NOLOGIN role no one but a superuser grants.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'apikeys_operator') THEN
        CREATE ROLE apikeys_operator NOLOGIN;
    ELSIF EXISTS (SELECT FROM pg_catalog.pg_roles r
                   WHERE r.rolname = 'apikeys_operator'
                     AND (r.rolcanlogin OR r.rolsuper OR r.rolcreaterole OR r.rolcreatedb
                          OR r.rolreplication OR r.rolbypassrls))
       OR EXISTS (SELECT FROM pg_catalog.pg_auth_members m
                    JOIN pg_catalog.pg_roles g ON g.oid = m.member
                   WHERE m.roleid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'apikeys_operator')
                     AND m.admin_option AND NOT g.rolsuper) THEN
        RAISE EXCEPTION 'a role named apikeys_operator exists and is not the plain NOLOGIN role pg_apikeys makes'
            USING ERRCODE = '42501',
                  HINT = 'drop or rename that role (or make it NOLOGIN with no other attribute, granted WITH ADMIN OPTION to no one), then create the extension';
    END IF;
END
$$;

-- The operator (apikeys.is_operator(): a superuser or a role granted
-- apikeys_operator, acting neither through an API key nor in a request
-- whose trusted claims name a caller) reads every workspace as its admins
-- do, without membership. The sub-select runs once per statement, not once per
-- row. Only roles holding apikeys_operator meet these policies (superusers
-- bypass row security), so no other role calls is_operator() in a query (a
-- role granted before 0.2.0 may not execute it yet).
CREATE POLICY workspaces_operator ON apikeys.workspaces FOR SELECT TO apikeys_operator USING ((SELECT apikeys.is_operator()));
CREATE POLICY members_operator ON apikeys.members FOR SELECT TO apikeys_operator USING ((SELECT apikeys.is_operator()));
CREATE POLICY keys_operator ON apikeys.keys FOR SELECT TO apikeys_operator USING ((SELECT apikeys.is_operator()));
CREATE POLICY public_keys_operator ON apikeys.public_keys FOR SELECT TO apikeys_operator USING ((SELECT apikeys.is_operator()));
CREATE POLICY audit_log_operator ON apikeys.audit_log FOR SELECT TO apikeys_operator USING ((SELECT apikeys.is_operator()));
CREATE POLICY invitations_operator ON apikeys.invitations FOR SELECT TO apikeys_operator USING ((SELECT apikeys.is_operator()));
CREATE POLICY key_usage_operator ON apikeys.key_usage FOR SELECT TO apikeys_operator USING ((SELECT apikeys.is_operator()));
CREATE POLICY owner_limits_operator ON apikeys.owner_limits FOR SELECT TO apikeys_operator USING ((SELECT apikeys.is_operator()));
CREATE POLICY suspensions_operator ON apikeys.suspensions FOR SELECT TO apikeys_operator USING ((SELECT apikeys.is_operator()));
CREATE POLICY plans_operator ON apikeys.plans FOR SELECT TO apikeys_operator USING ((SELECT apikeys.is_operator()));

CREATE FUNCTION apikeys.grant_operator(role regrole) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- never a role PostgREST switches to: a login in apikeys.claims_roles
    -- (the authenticator) must not be able to become it
    IF EXISTS (SELECT FROM pg_catalog.unnest(pg_catalog.string_to_array(
                   coalesce(pg_catalog.current_setting('apikeys.claims_roles', true), 'authenticator'), ',')) AS c(name)
                 JOIN pg_catalog.pg_roles r ON r.rolname = pg_catalog.btrim(c.name, ' "')
                WHERE pg_catalog.pg_has_role(r.oid, role, 'MEMBER')) THEN
        RAISE EXCEPTION 'a role the API''s login (apikeys.claims_roles) can switch to cannot be an operator'
            USING ERRCODE = '22023',
                  HINT = 'grant it to the backend''s own role, which PostgREST never switches to';
    END IF;
    -- what clients get (the operator calls the same functions), and the role
    PERFORM apikeys.grant_to(role);
    -- regrole's text form is already a quoted identifier
    EXECUTE format('GRANT apikeys_operator TO %s', role);
END
$$;
REVOKE ALL ON FUNCTION apikeys.grant_operator(regrole) FROM PUBLIC;
COMMENT ON FUNCTION apikeys.grant_operator(regrole) IS
    'Superusers only: make a role an operator (mints for any owner, rotates any key, suspends owners and workspaces, acts in every workspace as its admins); never a role PostgREST switches to.';

-- Leak reports revoke keys of every workspace: only a role granted this
-- (a secret-scanning intake, an incident responder) may send them.
CREATE FUNCTION apikeys.grant_leak_reporter(role regrole) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- regrole's text form is already a quoted identifier
    EXECUTE format('GRANT USAGE ON SCHEMA apikeys TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION apikeys.report_leaked(text[], text, text),
        apikeys.github_secret_scanning(text, text, text) TO %s', role);
END
$$;
REVOKE ALL ON FUNCTION apikeys.grant_leak_reporter(regrole) FROM PUBLIC;
COMMENT ON FUNCTION apikeys.grant_leak_reporter(regrole) IS
    'Let a role report leaked tokens (report_leaked, github_secret_scanning): not part of grant_to; for a scanning intake or an incident responder.';
