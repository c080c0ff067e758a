-- pg_apikeys: privileges (design.md §6, §8). Nothing is granted to PUBLIC;
-- apikeys.grant_to(role) grants a client role exactly what clients need.

REVOKE ALL ON SCHEMA apikeys FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA apikeys FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA apikeys FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA apikeys FROM PUBLIC;

CREATE FUNCTION apikeys.grant_to(role regrole) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- regrole's text form is already a quoted identifier
    EXECUTE format('GRANT USAGE ON SCHEMA apikeys TO %s', role);
    EXECUTE format('GRANT SELECT ON apikeys.workspaces, apikeys.members, apikeys.keys,
        apikeys.public_keys, apikeys.audit_log TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION
        apikeys.current_principal(),
        apikeys.member_role(uuid),
        apikeys.create_workspace(text, uuid),
        apikeys.add_member(uuid, text, text, text[]),
        apikeys.remove_member(uuid, text),
        apikeys.create_key(uuid, text, text[], timestamptz, jsonb, text),
        apikeys.verify_key(text, text[]),
        apikeys.revoke_key(uuid),
        apikeys.rotate_key(uuid, interval),
        apikeys.import_key(uuid, text, text, text, text[], timestamptz),
        apikeys.authenticate(),
        apikeys.current_key_id(),
        apikeys.current_workspace(),
        apikeys.has_scope(text),
        apikeys.create_public_key(uuid, text[]),
        apikeys.revoke_public_key(uuid),
        apikeys.resolve_public_key(text, text),
        apikeys.stamp_created_by()
        TO %s', role);
END
$$;
REVOKE ALL ON FUNCTION apikeys.grant_to(regrole) FROM PUBLIC;
COMMENT ON FUNCTION apikeys.grant_to(regrole) IS
    'Grant a client role what clients need: schema usage, SELECT on the RLS tables, EXECUTE on the public functions.';
