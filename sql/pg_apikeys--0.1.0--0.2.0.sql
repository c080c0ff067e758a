-- pg_apikeys 0.1.0 -> 0.2.0, run by ALTER EXTENSION pg_apikeys UPDATE.
--
-- Every change 0.2.0 makes to a table, function, trigger, policy, grant or
-- comment is written here as well as in sql/schema.sql, functions.sql,
-- triggers.sql, policies.sql or grants.sql (the fresh install). The upgrade
-- test (tests/ops/test_upgrade.py) installs 0.1.0 with data, runs this script
-- and compares the schema with a fresh 0.2.0 install, so a change made in one
-- place only fails `make test`.
--
-- Rules for this file (docs/reference.md, "Upgrading"):
-- * hand-written against the SQL files, never a copy of the install script;
-- * nothing here drops or rewrites user data: no DROP TABLE, no TRUNCATE, no
--   DELETE, no column type change that rewrites keys, key_hashes or
--   audit_log, unless a comment line starting "-- rewrite:" right above the
--   statement says why (the upgrade test enforces this);
-- * new columns go at the end of their table, in the fresh install too;
-- * nothing is granted to client roles here (a GRANT in an extension script
--   becomes an initial privilege that pg_dump omits): the operator runs
--   grant_to(role) again after the update, and the script says so.

\echo Use "ALTER EXTENSION pg_apikeys UPDATE TO '0.2.0'" to load this file. \quit

-- The 0.2.0 library still exports every C symbol 0.1.0's functions name, so
-- a database keeps working between the library's install and this update.

-- 1. Invitations: membership needs the member's consent.
CREATE TABLE apikeys.invitations (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id  uuid        NOT NULL REFERENCES apikeys.workspaces (id),
    principal     text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('admin', 'member')),
    scopes        text[]      NOT NULL DEFAULT '{}',
    invited_by    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    accepted_at   timestamptz,
    withdrawn_at  timestamptz,
    CHECK (accepted_at IS NULL OR withdrawn_at IS NULL)
);
CREATE UNIQUE INDEX invitations_open
    ON apikeys.invitations (workspace_id, principal) WHERE accepted_at IS NULL AND withdrawn_at IS NULL;
CREATE INDEX invitations_principal
    ON apikeys.invitations (principal) WHERE accepted_at IS NULL AND withdrawn_at IS NULL;
COMMENT ON TABLE apikeys.invitations IS
    'Membership invitations: a principal joins a workspace only by accepting one as themself.';
SELECT pg_catalog.pg_extension_config_dump('apikeys.invitations', '');
SELECT pg_catalog.pg_extension_config_dump('apikeys.invitations_id_seq', '');

-- 2. One test for rows that arrive with their own history (the audit
-- triggers used to repeat it), used by every audit trigger below.
CREATE FUNCTION apikeys.arrives_with_history(created_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT $1 < pg_catalog.now() $$;

CREATE FUNCTION apikeys.invitations_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF (OLD.accepted_at IS NOT NULL OR OLD.withdrawn_at IS NOT NULL) AND NEW IS DISTINCT FROM OLD THEN
        RAISE EXCEPTION 'an accepted or withdrawn invitation is history and cannot change'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id
       OR NEW.principal IS DISTINCT FROM OLD.principal
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'id, workspace_id, principal and created_at of an invitation are write-once'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;  -- ignored when fired AFTER
END
$$;

CREATE FUNCTION apikeys.audit_invitations() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.role IS DISTINCT FROM OLD.role OR NEW.scopes IS DISTINCT FROM OLD.scopes THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (NEW.workspace_id, apikeys.current_principal(), 'member.invited',
                jsonb_build_object('principal', NEW.principal, 'role', NEW.role, 'scopes', NEW.scopes));
    ELSIF NEW.withdrawn_at IS DISTINCT FROM OLD.withdrawn_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (NEW.workspace_id, apikeys.current_principal(), 'invitation.withdrawn',
                jsonb_build_object('principal', NEW.principal));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER invitations_guard BEFORE UPDATE ON apikeys.invitations
    FOR EACH ROW EXECUTE FUNCTION apikeys.invitations_guard();
CREATE TRIGGER invitations_guard_final AFTER UPDATE ON apikeys.invitations
    FOR EACH ROW EXECUTE FUNCTION apikeys.invitations_guard();
CREATE TRIGGER invitations_audit AFTER INSERT OR UPDATE ON apikeys.invitations
    FOR EACH ROW EXECUTE FUNCTION apikeys.audit_invitations();
CREATE TRIGGER invitations_no_delete BEFORE DELETE ON apikeys.invitations
    FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER invitations_no_truncate BEFORE TRUNCATE ON apikeys.invitations
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys.forbid_delete();
ALTER TABLE apikeys.invitations ENABLE ALWAYS TRIGGER invitations_guard;
ALTER TABLE apikeys.invitations ENABLE ALWAYS TRIGGER invitations_guard_final;
ALTER TABLE apikeys.invitations ENABLE ALWAYS TRIGGER invitations_audit;
ALTER TABLE apikeys.invitations ENABLE ALWAYS TRIGGER invitations_no_delete;
ALTER TABLE apikeys.invitations ENABLE ALWAYS TRIGGER invitations_no_truncate;

ALTER TABLE apikeys.invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY invitations_visible ON apikeys.invitations FOR SELECT
    USING ((principal = (SELECT apikeys.current_principal()) AND (SELECT apikeys.current_key_id()) IS NULL)
           OR workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));

CREATE FUNCTION apikeys.accept_invitation(workspace_id uuid)
    RETURNS text
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_accept_invitation';
COMMENT ON FUNCTION apikeys.accept_invitation(uuid) IS
    'Join a workspace you were invited to (add_member), with the invitation''s role and scopes; returns the role.';

-- 3. Audit triggers: the shared history test; key.imported leaves out
-- NULL fields as key.created does. DELETE/TRUNCATE hints fit each table.
CREATE OR REPLACE FUNCTION apikeys.audit_keys() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    who text := apikeys.current_principal();
    replaces uuid;
BEGIN
    IF TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.source = 'imported' THEN
            INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
            VALUES (NEW.workspace_id, who, 'key.imported', NEW.id,
                    jsonb_strip_nulls(jsonb_build_object(
                        'name', NEW.name, 'owner', NEW.owner, 'prefix', NEW.prefix,
                        'scopes', NEW.scopes, 'expires_at', NEW.expires_at)));
        ELSE
            SELECT k.id INTO replaces FROM apikeys.keys k WHERE k.replaced_by = NEW.id;
            INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
            VALUES (NEW.workspace_id, who, 'key.created', NEW.id,
                    jsonb_strip_nulls(jsonb_build_object(
                        'name', NEW.name, 'owner', NEW.owner, 'prefix', NEW.prefix,
                        'scopes', NEW.scopes, 'expires_at', NEW.expires_at, 'replaces', replaces)));
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.replaced_by IS DISTINCT FROM OLD.replaced_by THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.rotated', NEW.id,
                jsonb_build_object('name', NEW.name, 'replaced_by', NEW.replaced_by));
    END IF;
    IF NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.revoked', NEW.id,
                jsonb_build_object('name', NEW.name, 'owner', NEW.owner, 'revoked_at', NEW.revoked_at));
        -- for applications that cache verifications: delivered at commit,
        -- never for a rolled-back revoke (docs/managing-keys.md)
        PERFORM pg_catalog.pg_notify('apikeys_revoked', NEW.id::text);
    END IF;
    IF NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.expiry_shortened', NEW.id,
                jsonb_build_object('name', NEW.name, 'from', OLD.expires_at, 'to', NEW.expires_at));
    END IF;
    IF NEW.scopes IS DISTINCT FROM OLD.scopes THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.scopes_changed', NEW.id,
                jsonb_build_object('name', NEW.name, 'from', OLD.scopes, 'to', NEW.scopes));
    END IF;
    IF NEW.name IS DISTINCT FROM OLD.name OR NEW.metadata IS DISTINCT FROM OLD.metadata THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.updated', NEW.id,
                jsonb_build_object('name', jsonb_build_object('from', OLD.name, 'to', NEW.name),
                                   'metadata_changed', NEW.metadata IS DISTINCT FROM OLD.metadata));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.audit_members() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    who text := apikeys.current_principal();
BEGIN
    IF TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (NEW.workspace_id, who, 'member.added',
                jsonb_build_object('principal', NEW.principal, 'role', NEW.role, 'scopes', NEW.scopes));
    ELSIF NEW.removed_at IS DISTINCT FROM OLD.removed_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (NEW.workspace_id, who, 'member.removed',
                jsonb_build_object('principal', NEW.principal, 'role', NEW.role));
    ELSIF NEW.role IS DISTINCT FROM OLD.role OR NEW.scopes IS DISTINCT FROM OLD.scopes THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (NEW.workspace_id, who, 'member.changed',
                jsonb_build_object('principal', NEW.principal,
                                   'role', jsonb_build_object('from', OLD.role, 'to', NEW.role),
                                   'scopes', jsonb_build_object('from', OLD.scopes, 'to', NEW.scopes)));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.audit_workspaces() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at) THEN
        RETURN NULL;
    END IF;
    INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
    VALUES (NEW.id, apikeys.current_principal(), 'workspace.created',
            jsonb_build_object('name', NEW.name));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.audit_public_keys() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, apikeys.current_principal(), 'public_key.created', NEW.id,
                jsonb_build_object('allowed_origins', NEW.allowed_origins));
    ELSIF NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, apikeys.current_principal(), 'public_key.revoked', NEW.id,
                jsonb_build_object('revoked_at', NEW.revoked_at));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.forbid_delete() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RAISE EXCEPTION '% on apikeys.% is not allowed: rows are kept for audit', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = CASE TG_TABLE_NAME
                  WHEN 'keys' THEN 'revoke keys instead (apikeys.revoke_key)'
                  WHEN 'key_hashes' THEN 'revoke the key instead (apikeys.revoke_key); its hash stays'
                  WHEN 'members' THEN 'remove members instead (apikeys.remove_member)'
                  WHEN 'invitations' THEN 'withdraw an open invitation instead (apikeys.remove_member)'
                  WHEN 'public_keys' THEN 'revoke public keys instead (apikeys.revoke_public_key)'
                  WHEN 'workspaces' THEN 'workspaces are kept with their history; remove their members instead'
                  ELSE 'the audit log is kept for good (DROP EXTENSION removes it with everything else)'
              END;
END
$$;

-- 4. Descriptions: add_member, remove_member, rotate_key, import_key,
-- grant_to; every internal trigger function says it is internal.
COMMENT ON FUNCTION apikeys.add_member(uuid, text, text, text[]) IS
    'Admin only: invite a principal (who joins with accept_invitation), or update an existing member''s role and scopes.';
COMMENT ON FUNCTION apikeys.remove_member(uuid, text) IS
    'Admin only: remove a member (never the last admin; their active keys are revoked), or withdraw an open invitation.';
COMMENT ON FUNCTION apikeys.rotate_key(uuid, interval) IS
    'Owner only: replace a key by a new one with the same name and settings; the old one expires after grace (revoked at once when zero).';
COMMENT ON FUNCTION apikeys.import_key(uuid, text, text, text, text[], timestamptz) IS
    'Admin only: import a key from another keystore by the SHA-256 of its token; for another owner only with the apikeys_importer role.';
COMMENT ON FUNCTION apikeys.grant_to(regrole) IS
    'Grant a client role what clients need: schema usage, SELECT on the RLS tables, EXECUTE on the public functions. A role without it gets "permission denied for schema apikeys"; run SELECT apikeys.grant_to(''role'') as a superuser.';
COMMENT ON FUNCTION apikeys.forbid_delete() IS 'Internal trigger function (refuses DELETE and TRUNCATE on the extension''s tables); not for calling.';
COMMENT ON FUNCTION apikeys.keys_guard() IS 'Internal trigger function (the revoke and rotation latches, shrink-only expiry and write-once columns of keys); not for calling.';
COMMENT ON FUNCTION apikeys.key_hashes_guard() IS 'Internal trigger function (a stored hash never changes); not for calling.';
COMMENT ON FUNCTION apikeys.members_guard() IS 'Internal trigger function (a removed membership never changes; write-once columns of members); not for calling.';
COMMENT ON FUNCTION apikeys.members_follow() IS 'Internal trigger function (revokes a removed member''s keys, narrows a narrowed member''s keys); not for calling.';
COMMENT ON FUNCTION apikeys.workspaces_guard() IS 'Internal trigger function (write-once columns of workspaces); not for calling.';
COMMENT ON FUNCTION apikeys.public_keys_guard() IS 'Internal trigger function (the revoke latch and write-once columns of public keys); not for calling.';
COMMENT ON FUNCTION apikeys.audit_log_guard() IS 'Internal trigger function (audit rows never change); not for calling.';
COMMENT ON FUNCTION apikeys.invitations_guard() IS 'Internal trigger function (an accepted or withdrawn invitation never changes; write-once columns); not for calling.';
COMMENT ON FUNCTION apikeys.audit_keys() IS 'Internal trigger function (writes the audit rows of keys); not for calling.';
COMMENT ON FUNCTION apikeys.audit_members() IS 'Internal trigger function (writes the audit rows of members); not for calling.';
COMMENT ON FUNCTION apikeys.audit_workspaces() IS 'Internal trigger function (writes the audit rows of workspaces); not for calling.';
COMMENT ON FUNCTION apikeys.audit_public_keys() IS 'Internal trigger function (writes the audit rows of public keys); not for calling.';
COMMENT ON FUNCTION apikeys.audit_invitations() IS 'Internal trigger function (writes the audit rows of invitations); not for calling.';
COMMENT ON FUNCTION apikeys.arrives_with_history(timestamptz) IS 'Internal: whether an inserted row is restored history (created before this transaction); used by the audit triggers.';

-- 5. stamp_created_by refuses an update that moves a row to another partition.
CREATE OR REPLACE FUNCTION apikeys.stamp_created_by() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    col   text;
    typ   oid;
    who   text;
    stays boolean;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_WHEN <> 'BEFORE' OR TG_OP NOT IN ('INSERT', 'UPDATE') THEN
        RAISE EXCEPTION 'apikeys.stamp_created_by must be a BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger (on %)',
                        TG_TABLE_NAME
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF TG_NARGS <> 1 THEN
        RAISE EXCEPTION 'apikeys.stamp_created_by takes one argument, the column name (trigger % on %)',
                        TG_NAME, TG_TABLE_NAME
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    col := TG_ARGV[0];
    SELECT a.atttypid INTO typ
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = TG_RELID AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'apikeys.stamp_created_by: table % has no column %', TG_TABLE_NAME, pg_catalog.quote_ident(col)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF typ NOT IN ('pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.varchar'::pg_catalog.regtype) THEN
        RAISE EXCEPTION 'apikeys.stamp_created_by: column %.% must be of type text, not %',
                        TG_TABLE_NAME, pg_catalog.quote_ident(col), pg_catalog.format_type(typ, NULL)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF TG_OP = 'INSERT' THEN
        who := apikeys.current_principal();
        IF who IS NULL THEN
            RAISE EXCEPTION 'no principal: this write needs a database role, JWT claims with a sub, or an API key'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        NEW := pg_catalog.jsonb_populate_record(NEW, pg_catalog.jsonb_build_object(col, who));
    ELSE
        IF (SELECT c.relispartition FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID) THEN
            -- the partition's own constraint (its ancestors' included), on NEW
            EXECUTE pg_catalog.format('SELECT (%s) IS NOT FALSE FROM (SELECT ($1).*) s',
                                      coalesce(pg_catalog.pg_get_partition_constraintdef(TG_RELID), 'true'))
               INTO stays USING NEW;
            IF NOT stays THEN
                RAISE EXCEPTION 'apikeys.stamp_created_by: this update would move the row out of partition %, and the move would stamp it anew',
                                TG_TABLE_NAME
                    USING ERRCODE = 'check_violation',
                          HINT = 'insert a new row and keep the old one, or move it as the table owner with the trigger disabled';
            END IF;
        END IF;
        NEW := pg_catalog.jsonb_populate_record(NEW,
                   pg_catalog.jsonb_build_object(col, pg_catalog.to_jsonb(OLD) OPERATOR(pg_catalog.->) col));
    END IF;
    RETURN NEW;
END
$$;

-- 6. grant_to grants the invitations table and accept_invitation too.
CREATE OR REPLACE FUNCTION apikeys.grant_to(role regrole) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- regrole's text form is already a quoted identifier
    EXECUTE format('GRANT USAGE ON SCHEMA apikeys TO %s', role);
    EXECUTE format('GRANT SELECT ON apikeys.workspaces, apikeys.members, apikeys.keys,
        apikeys.public_keys, apikeys.audit_log, apikeys.invitations TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION
        apikeys.current_principal(),
        apikeys.member_role(uuid),
        apikeys.create_workspace(text, uuid),
        apikeys.add_member(uuid, text, text, text[]),
        apikeys.remove_member(uuid, text),
        apikeys.accept_invitation(uuid),
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
        apikeys.stamp_created_by(),
        apikeys.expiring_keys(interval)
        TO %s', role);
END
$$;

-- 7. Importing for another owner needs the apikeys_importer role.
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

-- 8. Leak reports (report_leaked, GitHub's signed intake and its keys),
-- keys about to expire, revocation notices (audit_keys above sends
-- NOTIFY apikeys_revoked).
CREATE FUNCTION apikeys.report_leaked(tokens text[], source text DEFAULT NULL, url text DEFAULT NULL)
    RETURNS TABLE (token_hash text, label text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t      text;
    digest bytea;
    k      record;
BEGIN
    IF tokens IS NULL OR pg_catalog.array_position(tokens, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'tokens must not be null nor hold a null'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.cardinality(tokens) > 1000 THEN
        RAISE EXCEPTION 'too many tokens: at most 1000 per report'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.length(source) > 256 OR pg_catalog.length(url) > 2048 THEN
        RAISE EXCEPTION 'invalid source or url: at most 256 and 2048 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH t IN ARRAY tokens LOOP
        -- the bytes verify_key hashes: the text in the database's encoding
        digest := pg_catalog.sha256(pg_catalog.convert_to(t, pg_catalog.getdatabaseencoding()));
        token_hash := pg_catalog.encode(digest, 'hex');
        SELECT kk.id, kk.workspace_id, kk.name, kk.revoked_at INTO k
          FROM apikeys.key_hashes h JOIN apikeys.keys kk ON kk.id = h.key_id
         WHERE h.hash = digest
           FOR UPDATE OF kk;
        IF NOT FOUND THEN
            label := 'false_positive';       -- malformed, mistyped or unknown: not ours
        ELSE
            label := 'true_positive';        -- ours, revoked now or already
            IF k.revoked_at IS NULL THEN
                UPDATE apikeys.keys SET revoked_at = pg_catalog.now() WHERE id = k.id;
                INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
                VALUES (k.workspace_id, apikeys.current_principal(), 'key.leaked', k.id,
                        pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                            'name', k.name, 'source', source, 'url', url)));
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION apikeys.report_leaked(text[], text, text) IS
    'Revoke every key whose token is in the list (a leak report); one row per token: its SHA-256 and true_positive or false_positive. For roles granted by grant_leak_reporter only.';

CREATE FUNCTION apikeys.checked_within(within interval) RETURNS interval
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'apikeys_checked_within';
COMMENT ON FUNCTION apikeys.checked_within(interval) IS
    'Internal: expiring_keys'' interval as given, or 22023 when it has a negative part or exceeds 100 years.';

CREATE FUNCTION apikeys.expiring_keys(within interval DEFAULT '7 days')
    RETURNS TABLE (id uuid, workspace_id uuid, owner text, name text, prefix text, expires_at timestamptz)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT k.id, k.workspace_id, k.owner, k.name, k.prefix, k.expires_at
          FROM apikeys.checked_within($1) AS c(w)
         CROSS JOIN LATERAL (
               SELECT * FROM apikeys.keys k
                WHERE k.revoked_at IS NULL AND k.replaced_by IS NULL
                  AND k.expires_at > pg_catalog.now() AND k.expires_at <= pg_catalog.now() + c.w) k
         ORDER BY k.expires_at, k.id
    $$;
COMMENT ON FUNCTION apikeys.expiring_keys(interval) IS
    'Active keys the caller can see that expire within the interval (default 7 days), soonest first.';

CREATE TABLE apikeys.scanning_keys (
    key_identifier  text    PRIMARY KEY,
    public_key_pem  text    NOT NULL,
    is_current      boolean NOT NULL DEFAULT true
);
COMMENT ON TABLE apikeys.scanning_keys IS
    'Public keys that sign secret-scanning reports (GitHub''s), loaded by an administrator.';
SELECT pg_catalog.pg_extension_config_dump('apikeys.scanning_keys', '');
ALTER TABLE apikeys.scanning_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.scanning_keys FORCE ROW LEVEL SECURITY;

CREATE FUNCTION apikeys.github_secret_scanning(body text, key_identifier text, signature text)
    RETURNS json
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_github_secret_scanning';
COMMENT ON FUNCTION apikeys.github_secret_scanning(text, text, text) IS
    'GitHub secret scanning: verify the signed report, revoke every token of ours in it, return the feedback array.';

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

-- 9. Logical replication: the triggers recognise a change a subscription is
-- applying (applying_replicated_change) and write nothing it already
-- carries: no audit rows, no cascaded revokes, no re-stamped provenance; a
-- replicated revoke still notifies listeners. Replicated ids move their
-- sequence on (follow_replicated_id), so a switched-over subscriber never
-- reuses one. grant_to grants applying_replicated_change, which
-- stamp_created_by calls as the writer.
CREATE FUNCTION apikeys.applying_replicated_change() RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'apikeys_applying_replicated_change';

CREATE FUNCTION apikeys.follow_replicated_id() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    seq regclass;
BEGIN
    IF apikeys.applying_replicated_change() THEN
        seq := pg_catalog.pg_get_serial_sequence(pg_catalog.format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), 'id');
        IF NEW.id > coalesce(pg_catalog.pg_sequence_last_value(seq), 0) THEN
            PERFORM pg_catalog.setval(seq, NEW.id);
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.members_follow() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- a replicated removal brings the revokes its publisher made
    IF apikeys.applying_replicated_change() THEN
        RETURN NULL;
    END IF;
    IF NEW.removed_at IS NOT NULL AND OLD.removed_at IS NULL THEN
        UPDATE apikeys.keys k
           SET revoked_at = pg_catalog.now()
         WHERE k.workspace_id = NEW.workspace_id
           AND k.owner = NEW.principal
           AND k.revoked_at IS NULL;
    ELSIF NEW.role = 'member' THEN
        UPDATE apikeys.keys k
           SET scopes = ARRAY(SELECT s FROM pg_catalog.unnest(k.scopes) WITH ORDINALITY AS u(s, o)
                               WHERE s = ANY (NEW.scopes) ORDER BY o)
         WHERE k.workspace_id = NEW.workspace_id
           AND k.owner = NEW.principal
           AND k.revoked_at IS NULL
           AND NOT (k.scopes <@ NEW.scopes);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.audit_keys() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    who text := apikeys.current_principal();
    replaces uuid;
BEGIN
    IF apikeys.applying_replicated_change() THEN
        -- the publisher's audit rows arrive on their own; applications
        -- listening here still hear of the revoke, at the apply's commit
        IF TG_OP = 'UPDATE' AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
            PERFORM pg_catalog.pg_notify('apikeys_revoked', NEW.id::text);
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.source = 'imported' THEN
            INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
            VALUES (NEW.workspace_id, who, 'key.imported', NEW.id,
                    jsonb_strip_nulls(jsonb_build_object(
                        'name', NEW.name, 'owner', NEW.owner, 'prefix', NEW.prefix,
                        'scopes', NEW.scopes, 'expires_at', NEW.expires_at)));
        ELSE
            SELECT k.id INTO replaces FROM apikeys.keys k WHERE k.replaced_by = NEW.id;
            INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
            VALUES (NEW.workspace_id, who, 'key.created', NEW.id,
                    jsonb_strip_nulls(jsonb_build_object(
                        'name', NEW.name, 'owner', NEW.owner, 'prefix', NEW.prefix,
                        'scopes', NEW.scopes, 'expires_at', NEW.expires_at, 'replaces', replaces)));
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.replaced_by IS DISTINCT FROM OLD.replaced_by THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.rotated', NEW.id,
                jsonb_build_object('name', NEW.name, 'replaced_by', NEW.replaced_by));
    END IF;
    IF NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.revoked', NEW.id,
                jsonb_build_object('name', NEW.name, 'owner', NEW.owner, 'revoked_at', NEW.revoked_at));
        -- for applications that cache verifications: delivered at commit,
        -- never for a rolled-back revoke (docs/managing-keys.md)
        PERFORM pg_catalog.pg_notify('apikeys_revoked', NEW.id::text);
    END IF;
    IF NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.expiry_shortened', NEW.id,
                jsonb_build_object('name', NEW.name, 'from', OLD.expires_at, 'to', NEW.expires_at));
    END IF;
    IF NEW.scopes IS DISTINCT FROM OLD.scopes THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.scopes_changed', NEW.id,
                jsonb_build_object('name', NEW.name, 'from', OLD.scopes, 'to', NEW.scopes));
    END IF;
    IF NEW.name IS DISTINCT FROM OLD.name OR NEW.metadata IS DISTINCT FROM OLD.metadata THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.updated', NEW.id,
                jsonb_build_object('name', jsonb_build_object('from', OLD.name, 'to', NEW.name),
                                   'metadata_changed', NEW.metadata IS DISTINCT FROM OLD.metadata));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.audit_members() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    who text := apikeys.current_principal();
BEGIN
    IF apikeys.applying_replicated_change()
       OR (TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at)) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (NEW.workspace_id, who, 'member.added',
                jsonb_build_object('principal', NEW.principal, 'role', NEW.role, 'scopes', NEW.scopes));
    ELSIF NEW.removed_at IS DISTINCT FROM OLD.removed_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (NEW.workspace_id, who, 'member.removed',
                jsonb_build_object('principal', NEW.principal, 'role', NEW.role));
    ELSIF NEW.role IS DISTINCT FROM OLD.role OR NEW.scopes IS DISTINCT FROM OLD.scopes THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (NEW.workspace_id, who, 'member.changed',
                jsonb_build_object('principal', NEW.principal,
                                   'role', jsonb_build_object('from', OLD.role, 'to', NEW.role),
                                   'scopes', jsonb_build_object('from', OLD.scopes, 'to', NEW.scopes)));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.audit_workspaces() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF apikeys.applying_replicated_change()
       OR (TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at)) THEN
        RETURN NULL;
    END IF;
    INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
    VALUES (NEW.id, apikeys.current_principal(), 'workspace.created',
            jsonb_build_object('name', NEW.name));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.audit_public_keys() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF apikeys.applying_replicated_change()
       OR (TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at)) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, apikeys.current_principal(), 'public_key.created', NEW.id,
                jsonb_build_object('allowed_origins', NEW.allowed_origins));
    ELSIF NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, apikeys.current_principal(), 'public_key.revoked', NEW.id,
                jsonb_build_object('revoked_at', NEW.revoked_at));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.audit_invitations() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF apikeys.applying_replicated_change()
       OR (TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at)) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.role IS DISTINCT FROM OLD.role OR NEW.scopes IS DISTINCT FROM OLD.scopes THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (NEW.workspace_id, apikeys.current_principal(), 'member.invited',
                jsonb_build_object('principal', NEW.principal, 'role', NEW.role, 'scopes', NEW.scopes));
    ELSIF NEW.withdrawn_at IS DISTINCT FROM OLD.withdrawn_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (NEW.workspace_id, apikeys.current_principal(), 'invitation.withdrawn',
                jsonb_build_object('principal', NEW.principal));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.stamp_created_by() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    col   text;
    typ   oid;
    who   text;
    stays boolean;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_WHEN <> 'BEFORE' OR TG_OP NOT IN ('INSERT', 'UPDATE') THEN
        RAISE EXCEPTION 'apikeys.stamp_created_by must be a BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger (on %)',
                        TG_TABLE_NAME
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF TG_NARGS <> 1 THEN
        RAISE EXCEPTION 'apikeys.stamp_created_by takes one argument, the column name (trigger % on %)',
                        TG_NAME, TG_TABLE_NAME
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    col := TG_ARGV[0];
    SELECT a.atttypid INTO typ
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = TG_RELID AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'apikeys.stamp_created_by: table % has no column %', TG_TABLE_NAME, pg_catalog.quote_ident(col)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF typ NOT IN ('pg_catalog.text'::pg_catalog.regtype, 'pg_catalog.varchar'::pg_catalog.regtype) THEN
        RAISE EXCEPTION 'apikeys.stamp_created_by: column %.% must be of type text, not %',
                        TG_TABLE_NAME, pg_catalog.quote_ident(col), pg_catalog.format_type(typ, NULL)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- a replicated row keeps the provenance its publisher stamped
    IF apikeys.applying_replicated_change() THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        who := apikeys.current_principal();
        IF who IS NULL THEN
            RAISE EXCEPTION 'no principal: this write needs a database role, JWT claims with a sub, or an API key'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        NEW := pg_catalog.jsonb_populate_record(NEW, pg_catalog.jsonb_build_object(col, who));
    ELSE
        IF (SELECT c.relispartition FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID) THEN
            -- the partition's own constraint (its ancestors' included), on NEW
            EXECUTE pg_catalog.format('SELECT (%s) IS NOT FALSE FROM (SELECT ($1).*) s',
                                      coalesce(pg_catalog.pg_get_partition_constraintdef(TG_RELID), 'true'))
               INTO stays USING NEW;
            IF NOT stays THEN
                RAISE EXCEPTION 'apikeys.stamp_created_by: this update would move the row out of partition %, and the move would stamp it anew',
                                TG_TABLE_NAME
                    USING ERRCODE = 'check_violation',
                          HINT = 'insert a new row and keep the old one, or move it as the table owner with the trigger disabled';
            END IF;
        END IF;
        NEW := pg_catalog.jsonb_populate_record(NEW,
                   pg_catalog.jsonb_build_object(col, pg_catalog.to_jsonb(OLD) OPERATOR(pg_catalog.->) col));
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION apikeys.grant_to(role regrole) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- regrole's text form is already a quoted identifier
    EXECUTE format('GRANT USAGE ON SCHEMA apikeys TO %s', role);
    EXECUTE format('GRANT SELECT ON apikeys.workspaces, apikeys.members, apikeys.keys,
        apikeys.public_keys, apikeys.audit_log, apikeys.invitations TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION
        apikeys.current_principal(),
        apikeys.member_role(uuid),
        apikeys.create_workspace(text, uuid),
        apikeys.add_member(uuid, text, text, text[]),
        apikeys.remove_member(uuid, text),
        apikeys.accept_invitation(uuid),
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
        apikeys.stamp_created_by(),
        apikeys.applying_replicated_change(),
        apikeys.expiring_keys(interval)
        TO %s', role);
END
$$;

CREATE TRIGGER members_follow_replicated_id BEFORE INSERT ON apikeys.members
    FOR EACH ROW EXECUTE FUNCTION apikeys.follow_replicated_id();

CREATE TRIGGER invitations_follow_replicated_id BEFORE INSERT ON apikeys.invitations
    FOR EACH ROW EXECUTE FUNCTION apikeys.follow_replicated_id();

CREATE TRIGGER audit_log_follow_replicated_id BEFORE INSERT ON apikeys.audit_log
    FOR EACH ROW EXECUTE FUNCTION apikeys.follow_replicated_id();

ALTER TABLE apikeys.members ENABLE ALWAYS TRIGGER members_follow_replicated_id;

ALTER TABLE apikeys.invitations ENABLE ALWAYS TRIGGER invitations_follow_replicated_id;

ALTER TABLE apikeys.audit_log ENABLE ALWAYS TRIGGER audit_log_follow_replicated_id;

COMMENT ON FUNCTION apikeys.applying_replicated_change() IS 'Internal: whether this backend is a logical replication worker applying a subscription''s changes; used by the triggers.';

COMMENT ON FUNCTION apikeys.follow_replicated_id() IS 'Internal trigger function (moves an id sequence past a replicated row''s id); not for calling.';
REVOKE ALL ON FUNCTION apikeys.applying_replicated_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.follow_replicated_id() FROM PUBLIC;

-- 10. The usage engine: per-key hourly counts (key_usage, written by the
-- background worker when the library is preloaded, RLS like keys, counts
-- only grow), usage_mode, usage_stats and flush_usage; grant_to grants
-- SELECT on key_usage and usage_mode.
CREATE TABLE apikeys.key_usage (
    key_id        uuid        NOT NULL,
    workspace_id  uuid        NOT NULL,
    hour          timestamptz NOT NULL,
    verified      bigint      NOT NULL DEFAULT 0 CHECK (verified >= 0),
    rejected      bigint      NOT NULL DEFAULT 0 CHECK (rejected >= 0),
    -- the rejected checks by outcome (they add up to rejected)
    rate_limited        bigint NOT NULL DEFAULT 0 CHECK (rate_limited >= 0),
    usage_exceeded      bigint NOT NULL DEFAULT 0 CHECK (usage_exceeded >= 0),
    insufficient_scope  bigint NOT NULL DEFAULT 0 CHECK (insufficient_scope >= 0),
    refused             bigint NOT NULL DEFAULT 0 CHECK (refused >= 0),
    PRIMARY KEY (key_id, hour)
)
-- room on each page for the flush's increments to stay HOT (no index write)
WITH (fillfactor = 70);

CREATE INDEX key_usage_workspace ON apikeys.key_usage (workspace_id, hour);

COMMENT ON TABLE apikeys.key_usage IS
    'Checks per key and hour by outcome (verified; rejected, split into rate_limited, usage_exceeded, insufficient_scope and refused), written by the usage engine; readable under RLS like keys.';

SELECT pg_catalog.pg_extension_config_dump('apikeys.key_usage', '');

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

CREATE OR REPLACE FUNCTION apikeys.forbid_delete() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RAISE EXCEPTION '% on apikeys.% is not allowed: rows are kept for audit', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = CASE TG_TABLE_NAME
                  WHEN 'keys' THEN 'revoke keys instead (apikeys.revoke_key)'
                  WHEN 'key_hashes' THEN 'revoke the key instead (apikeys.revoke_key); its hash stays'
                  WHEN 'members' THEN 'remove members instead (apikeys.remove_member)'
                  WHEN 'invitations' THEN 'withdraw an open invitation instead (apikeys.remove_member)'
                  WHEN 'public_keys' THEN 'revoke public keys instead (apikeys.revoke_public_key)'
                  WHEN 'key_usage' THEN 'usage rows are history; they are only added and incremented'
                  WHEN 'suspensions' THEN 'suspensions are history; the operator ends one with apikeys.resume_owner'
                  WHEN 'workspaces' THEN 'workspaces are kept with their history; remove their members instead'
                  ELSE 'the audit log is kept for good (DROP EXTENSION removes it with everything else)'
              END;
END
$$;

CREATE FUNCTION apikeys.key_usage_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF NEW.key_id IS DISTINCT FROM OLD.key_id OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id
       OR NEW.hour IS DISTINCT FROM OLD.hour THEN
        RAISE EXCEPTION 'key_id, workspace_id and hour of a usage row are write-once'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.verified < OLD.verified OR NEW.rejected < OLD.rejected OR NEW.rate_limited < OLD.rate_limited
       OR NEW.usage_exceeded < OLD.usage_exceeded OR NEW.insufficient_scope < OLD.insufficient_scope
       OR NEW.refused < OLD.refused THEN
        RAISE EXCEPTION 'usage counts only grow'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;  -- ignored when fired AFTER
END
$$;

-- the usage flush updates many rows at once: the guard's function runs only
-- for an update that breaks a rule (the WHEN clause is its own test)
CREATE TRIGGER key_usage_guard BEFORE UPDATE ON apikeys.key_usage
    FOR EACH ROW
    WHEN (NEW.key_id IS DISTINCT FROM OLD.key_id OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id
          OR NEW.hour IS DISTINCT FROM OLD.hour OR NEW.verified < OLD.verified OR NEW.rejected < OLD.rejected
          OR NEW.rate_limited < OLD.rate_limited OR NEW.usage_exceeded < OLD.usage_exceeded
          OR NEW.insufficient_scope < OLD.insufficient_scope OR NEW.refused < OLD.refused)
    EXECUTE FUNCTION apikeys.key_usage_guard();

CREATE TRIGGER key_usage_guard_final AFTER UPDATE ON apikeys.key_usage
    FOR EACH ROW
    WHEN (NEW.key_id IS DISTINCT FROM OLD.key_id OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id
          OR NEW.hour IS DISTINCT FROM OLD.hour OR NEW.verified < OLD.verified OR NEW.rejected < OLD.rejected
          OR NEW.rate_limited < OLD.rate_limited OR NEW.usage_exceeded < OLD.usage_exceeded
          OR NEW.insufficient_scope < OLD.insufficient_scope OR NEW.refused < OLD.refused)
    EXECUTE FUNCTION apikeys.key_usage_guard();

CREATE TRIGGER key_usage_no_delete BEFORE DELETE ON apikeys.key_usage
    FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete();

CREATE TRIGGER key_usage_no_truncate BEFORE TRUNCATE ON apikeys.key_usage
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys.forbid_delete();

ALTER TABLE apikeys.key_usage ENABLE ALWAYS TRIGGER key_usage_guard;

ALTER TABLE apikeys.key_usage ENABLE ALWAYS TRIGGER key_usage_guard_final;

ALTER TABLE apikeys.key_usage ENABLE ALWAYS TRIGGER key_usage_no_delete;

ALTER TABLE apikeys.key_usage ENABLE ALWAYS TRIGGER key_usage_no_truncate;

COMMENT ON FUNCTION apikeys.key_usage_guard() IS 'Internal trigger function (usage counts only grow; write-once columns of key_usage); not for calling.';

-- The usage engine's record of its own write rounds (src/save.rs): which
-- copy of the shared-memory table on disk each round followed and which
-- hours it wrote, and which recovered copies were written here, so that
-- after a crash no count is written twice. Not history: rows older than a
-- week are removed, it is not dumped, and no client reads it.
CREATE TABLE apikeys.usage_rounds (
    snapshot     bigint      NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('written', 'resolved')),
    -- the nil uuid: every workspace
    workspace_id uuid        NOT NULL,
    before_hour  timestamptz,
    at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (snapshot, kind, workspace_id)
);
COMMENT ON TABLE apikeys.usage_rounds IS
    'The usage engine''s write rounds (internal: no client reads it); rows are kept a week.';

ALTER TABLE apikeys.usage_rounds ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.usage_rounds FORCE ROW LEVEL SECURITY;
REVOKE ALL ON apikeys.usage_rounds FROM PUBLIC;

CREATE FUNCTION apikeys.pending_usage(
        OUT key_id uuid, OUT workspace_id uuid, OUT hour timestamptz,
        OUT verified bigint, OUT rejected bigint, OUT rate_limited bigint, OUT usage_exceeded bigint,
        OUT insufficient_scope bigint, OUT refused bigint, OUT last_used_at timestamptz)
    RETURNS SETOF record
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apikeys_pending_usage';
COMMENT ON FUNCTION apikeys.pending_usage() IS
    'Counts and last uses the usage engine holds in shared memory and has not written yet (the current hour''s, mostly), of the keys the caller can see; empty without the engine.';

-- key_usage with what the engine has not written yet: as the caller, so
-- key_usage's and keys' row security both apply.
CREATE VIEW apikeys.key_usage_live WITH (security_invoker = true) AS
SELECT u.key_id, u.workspace_id, u.hour,
       pg_catalog.sum(u.verified)::bigint AS verified,
       pg_catalog.sum(u.rejected)::bigint AS rejected,
       pg_catalog.sum(u.rate_limited)::bigint AS rate_limited,
       pg_catalog.sum(u.usage_exceeded)::bigint AS usage_exceeded,
       pg_catalog.sum(u.insufficient_scope)::bigint AS insufficient_scope,
       pg_catalog.sum(u.refused)::bigint AS refused
  FROM (SELECT ku.key_id, ku.workspace_id, ku.hour, ku.verified, ku.rejected, ku.rate_limited, ku.usage_exceeded,
               ku.insufficient_scope, ku.refused FROM apikeys.key_usage ku
        UNION ALL
        SELECT p.key_id, p.workspace_id, p.hour, p.verified, p.rejected, p.rate_limited, p.usage_exceeded,
               p.insufficient_scope, p.refused FROM apikeys.pending_usage() p) u
 GROUP BY u.key_id, u.workspace_id, u.hour;
COMMENT ON VIEW apikeys.key_usage_live IS
    'key_usage plus the counts the usage engine holds in memory (the current hour is written after it ends): per key and hour, under the same row security.';
REVOKE ALL ON FUNCTION apikeys.pending_usage() FROM PUBLIC;
REVOKE ALL ON apikeys.key_usage_live FROM PUBLIC;

CREATE FUNCTION apikeys.usage_mode() RETURNS text
    LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'apikeys_usage_mode';

CREATE FUNCTION apikeys.usage_stats(
        OUT mode text, OUT slots bigint, OUT slots_in_use bigint,
        OUT verified bigint, OUT rejected bigint, OUT unknown bigint, OUT malformed bigint,
        OUT pending bigint, OUT flushes bigint, OUT flushed bigint,
        OUT fallbacks bigint, OUT unrecorded bigint, OUT discarded bigint,
        OUT last_flush timestamptz, OUT deferred bigint, OUT limits_full bigint,
        OUT credits_held bigint, OUT rate_limited bigint, OUT usage_exceeded bigint,
        OUT insufficient_scope bigint, OUT refused bigint, OUT forwarded bigint)
    RETURNS SETOF record
    LANGUAGE c VOLATILE ROWS 1
    AS 'MODULE_PATHNAME', 'apikeys_usage_stats';

CREATE FUNCTION apikeys.flush_usage(timeout_ms integer DEFAULT 30000) RETURNS boolean
    LANGUAGE c VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'apikeys_flush_usage';

COMMENT ON FUNCTION apikeys.usage_mode() IS
    'How use is recorded: shared_memory (the library is preloaded; a worker writes usage) or in_transaction (verify writes last_used_at itself).';

COMMENT ON FUNCTION apikeys.usage_stats() IS
    'The usage engine''s cluster-wide counters since start: verifies by outcome (unknown and malformed tokens included), pending entries, flushes, fallbacks, discarded, writes deferred past a client''s row lock, checks refused for a full limits table or unwritten credit debits.';

COMMENT ON FUNCTION apikeys.flush_usage(integer) IS
    'Ask the usage engine''s worker to write all pending usage now and wait for it (false after timeout_ms); true at once without the engine.';

CREATE OR REPLACE FUNCTION apikeys.grant_to(role regrole) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- regrole's text form is already a quoted identifier
    EXECUTE format('GRANT USAGE ON SCHEMA apikeys TO %s', role);
    EXECUTE format('GRANT SELECT ON apikeys.workspaces, apikeys.members, apikeys.keys,
        apikeys.public_keys, apikeys.audit_log, apikeys.invitations, apikeys.key_usage TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION
        apikeys.current_principal(),
        apikeys.member_role(uuid),
        apikeys.create_workspace(text, uuid),
        apikeys.add_member(uuid, text, text, text[]),
        apikeys.remove_member(uuid, text),
        apikeys.accept_invitation(uuid),
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
        apikeys.stamp_created_by(),
        apikeys.applying_replicated_change(),
        apikeys.usage_mode(),
        apikeys.expiring_keys(interval)
        TO %s', role);
END
$$;
REVOKE ALL ON apikeys.key_usage FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.key_usage_guard() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.usage_mode() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.usage_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.flush_usage(integer) FROM PUBLIC;

-- 11. Rate limits, credits, suspension, updates and renewal: new columns of
-- keys (at the end), the owner_limits table, check_key, update_key,
-- suspend_key, resume_key, set_owner_limit; create_key gains the limit
-- arguments and rotate_key an expires_at (each dropped and created again:
-- a new argument list is a new function; grant_to grants them again).


ALTER TABLE apikeys.keys
    ADD COLUMN rate_limit          integer     CHECK (rate_limit > 0),
    ADD COLUMN rate_window         interval    CHECK (rate_window >= interval '1 second' AND rate_window <= interval '1 day'),
    ADD COLUMN credits             bigint      CHECK (credits >= 0),
    ADD COLUMN refill_amount       bigint      CHECK (refill_amount > 0),
    ADD COLUMN refill_interval     interval    CHECK (refill_interval IS NULL OR (date_part('year', refill_interval) = 0
                                        AND date_part('hour', refill_interval) = 0
                                        AND date_part('minute', refill_interval) = 0
                                        AND date_part('second', refill_interval) = 0
                                        AND ((date_part('month', refill_interval) = 1 AND date_part('day', refill_interval) = 0)
                                             OR (date_part('month', refill_interval) = 0 AND date_part('day', refill_interval) = 1)))),
    ADD COLUMN credits_refilled_at timestamptz,
    ADD COLUMN suspended_at        timestamptz,
    ADD COLUMN suspended_by        text        CHECK (suspended_by IN ('member', 'admin', 'operator')),
    ADD COLUMN owner_rate_limit    integer,
    ADD COLUMN owner_rate_window   interval,
    ADD COLUMN owner_suspended     boolean,
    ADD COLUMN held_suspended_at   timestamptz,
    ADD COLUMN held_suspended_by   text        CHECK (held_suspended_by IN ('member', 'admin', 'operator')),
    ADD CONSTRAINT keys_rate_pair CHECK ((rate_limit IS NULL) = (rate_window IS NULL)),
    ADD CONSTRAINT keys_refill_pair CHECK ((refill_amount IS NULL) = (refill_interval IS NULL)),
    ADD CONSTRAINT keys_refill_needs_credits CHECK (refill_amount IS NULL OR credits IS NOT NULL),
    ADD CONSTRAINT keys_suspended_by CHECK (suspended_by IS NULL OR suspended_at IS NOT NULL);

CREATE TABLE apikeys.owner_limits (
    workspace_id  uuid        NOT NULL,
    owner         text        NOT NULL,
    rate_limit    integer     NOT NULL CHECK (rate_limit > 0),
    rate_window   interval    NOT NULL CHECK (rate_window >= interval '1 second' AND rate_window <= interval '1 day'),
    PRIMARY KEY (workspace_id, owner)
);

COMMENT ON TABLE apikeys.owner_limits IS
    'Rate limits shared by all keys of one owner in a workspace; readable under RLS like keys.';

SELECT pg_catalog.pg_extension_config_dump('apikeys.owner_limits', '');

ALTER TABLE apikeys.owner_limits ENABLE ROW LEVEL SECURITY;

ALTER TABLE apikeys.owner_limits FORCE ROW LEVEL SECURITY;

CREATE POLICY owner_limits_visible ON apikeys.owner_limits FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id)))
           OR (owner = (SELECT apikeys.current_principal()) AND workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id)))));

CREATE OR REPLACE FUNCTION apikeys.keys_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'a revoked key stays revoked: revoked_at cannot be cleared or moved'
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.expires_at IS NOT NULL
       AND (NEW.expires_at IS NULL OR NEW.expires_at > OLD.expires_at) THEN
        RAISE EXCEPTION 'expires_at may only move earlier'
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.replaced_by IS NOT NULL AND NEW.replaced_by IS DISTINCT FROM OLD.replaced_by THEN
        RAISE EXCEPTION 'a rotated key stays rotated: replaced_by cannot be cleared or moved'
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.revoked_at IS NOT NULL AND NEW.suspended_at IS DISTINCT FROM OLD.suspended_at THEN
        RAISE EXCEPTION 'a revoked key stays revoked: it cannot be suspended or resumed'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id
       OR NEW.owner IS DISTINCT FROM OLD.owner
       OR NEW.prefix IS DISTINCT FROM OLD.prefix
       OR NEW.created_at IS DISTINCT FROM OLD.created_at
       OR NEW.source IS DISTINCT FROM OLD.source THEN
        RAISE EXCEPTION 'id, workspace_id, owner, prefix, source and created_at of a key are write-once'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;  -- ignored when fired AFTER
END
$$;
DROP TRIGGER keys_guard ON apikeys.keys;
DROP TRIGGER keys_guard_final ON apikeys.keys;
-- keys_guard's WHEN lists every column the function checks, so the writes
-- of last_used_at and of credits (every verify's bookkeeping) call nothing
CREATE TRIGGER keys_guard BEFORE UPDATE ON apikeys.keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.replaced_by IS DISTINCT FROM NEW.replaced_by
          OR OLD.suspended_at IS DISTINCT FROM NEW.suspended_at
          OR OLD.id IS DISTINCT FROM NEW.id
          OR OLD.workspace_id IS DISTINCT FROM NEW.workspace_id
          OR OLD.owner IS DISTINCT FROM NEW.owner
          OR OLD.prefix IS DISTINCT FROM NEW.prefix
          OR OLD.created_at IS DISTINCT FROM NEW.created_at
          OR OLD.source IS DISTINCT FROM NEW.source)
    EXECUTE FUNCTION apikeys.keys_guard();
CREATE TRIGGER keys_guard_final AFTER UPDATE ON apikeys.keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.replaced_by IS DISTINCT FROM NEW.replaced_by
          OR OLD.suspended_at IS DISTINCT FROM NEW.suspended_at
          OR OLD.id IS DISTINCT FROM NEW.id
          OR OLD.workspace_id IS DISTINCT FROM NEW.workspace_id
          OR OLD.owner IS DISTINCT FROM NEW.owner
          OR OLD.prefix IS DISTINCT FROM NEW.prefix
          OR OLD.created_at IS DISTINCT FROM NEW.created_at
          OR OLD.source IS DISTINCT FROM NEW.source)
    EXECUTE FUNCTION apikeys.keys_guard();
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_guard;
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_guard_final;

CREATE OR REPLACE FUNCTION apikeys.audit_keys() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    who text := apikeys.current_principal();
    replaces uuid;
BEGIN
    IF apikeys.applying_replicated_change() THEN
        -- the publisher's audit rows arrive on their own; applications
        -- listening here still hear of the revoke, at the apply's commit
        IF TG_OP = 'UPDATE' AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
            PERFORM pg_catalog.pg_notify(c, NEW.id::text) FROM (SELECT pg_catalog.current_setting('apikeys.notify_channel', true) AS c) s WHERE s.c <> '';
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' AND apikeys.arrives_with_history(NEW.created_at) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.source = 'imported' THEN
            INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
            VALUES (NEW.workspace_id, who, 'key.imported', NEW.id,
                    jsonb_strip_nulls(jsonb_build_object(
                        'name', NEW.name, 'owner', NEW.owner, 'prefix', NEW.prefix,
                        'scopes', NEW.scopes, 'expires_at', NEW.expires_at)));
        ELSE
            SELECT k.id INTO replaces FROM apikeys.keys k WHERE k.replaced_by = NEW.id;
            INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
            VALUES (NEW.workspace_id, who, 'key.created', NEW.id,
                    jsonb_strip_nulls(jsonb_build_object(
                        'name', NEW.name, 'owner', NEW.owner, 'prefix', NEW.prefix,
                        'scopes', NEW.scopes, 'expires_at', NEW.expires_at, 'replaces', replaces)));
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.replaced_by IS DISTINCT FROM OLD.replaced_by THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.rotated', NEW.id,
                jsonb_build_object('name', NEW.name, 'replaced_by', NEW.replaced_by));
    END IF;
    IF NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.revoked', NEW.id,
                jsonb_build_object('name', NEW.name, 'owner', NEW.owner, 'revoked_at', NEW.revoked_at));
        -- for applications that cache verifications: delivered at commit,
        -- never for a rolled-back revoke (docs/managing-keys.md)
        PERFORM pg_catalog.pg_notify(c, NEW.id::text) FROM (SELECT pg_catalog.current_setting('apikeys.notify_channel', true) AS c) s WHERE s.c <> '';
    END IF;
    IF NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.expiry_shortened', NEW.id,
                jsonb_build_object('name', NEW.name, 'from', OLD.expires_at, 'to', NEW.expires_at));
    END IF;
    IF NEW.scopes IS DISTINCT FROM OLD.scopes THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.scopes_changed', NEW.id,
                jsonb_build_object('name', NEW.name, 'from', OLD.scopes, 'to', NEW.scopes));
    END IF;
    IF NEW.name IS DISTINCT FROM OLD.name OR NEW.metadata IS DISTINCT FROM OLD.metadata THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.updated', NEW.id,
                jsonb_build_object('name', jsonb_build_object('from', OLD.name, 'to', NEW.name),
                                   'metadata_changed', NEW.metadata IS DISTINCT FROM OLD.metadata)
                || CASE WHEN NEW.metadata IS DISTINCT FROM OLD.metadata
                        THEN jsonb_build_object('metadata', jsonb_build_object('from', OLD.metadata, 'to', NEW.metadata))
                        ELSE '{}' END);
    END IF;
    IF NEW.suspended_at IS DISTINCT FROM OLD.suspended_at THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, CASE WHEN NEW.suspended_at IS NULL THEN 'key.resumed' ELSE 'key.suspended' END,
                NEW.id, jsonb_strip_nulls(jsonb_build_object('name', NEW.name, 'suspended_at', coalesce(NEW.suspended_at, OLD.suspended_at),
                                                'by', coalesce(NEW.suspended_by, OLD.suspended_by))));
        IF NEW.suspended_at IS NOT NULL THEN
            -- caches drop a suspended key as they drop a revoked one
            PERFORM pg_catalog.pg_notify(c, NEW.id::text) FROM (SELECT pg_catalog.current_setting('apikeys.notify_channel', true) AS c) s WHERE s.c <> '';
        END IF;
    END IF;
    IF NEW.rate_limit IS DISTINCT FROM OLD.rate_limit OR NEW.rate_window IS DISTINCT FROM OLD.rate_window
       OR NEW.refill_amount IS DISTINCT FROM OLD.refill_amount
       OR NEW.refill_interval IS DISTINCT FROM OLD.refill_interval
       OR (NEW.credits IS DISTINCT FROM OLD.credits AND NOT apikeys.in_usage_worker()) THEN
        -- the usage engine's own debits and refills are usage, not changes
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, key_id, detail)
        VALUES (NEW.workspace_id, who, 'key.limits_changed', NEW.id,
                jsonb_build_object('name', NEW.name,
                    'from', jsonb_strip_nulls(jsonb_build_object('rate_limit', OLD.rate_limit, 'rate_window', OLD.rate_window,
                        'credits', OLD.credits, 'refill_amount', OLD.refill_amount, 'refill_interval', OLD.refill_interval)),
                    'to', jsonb_strip_nulls(jsonb_build_object('rate_limit', NEW.rate_limit, 'rate_window', NEW.rate_window,
                        'credits', NEW.credits, 'refill_amount', NEW.refill_amount, 'refill_interval', NEW.refill_interval))));
    END IF;
    RETURN NULL;
END
$$;

-- (import_keys, further below, marks its insert; the per-row triggers of
-- keys skip its rows)
CREATE FUNCTION apikeys.importing() RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'apikeys_importing';
COMMENT ON FUNCTION apikeys.importing() IS
    'Internal: whether the current subtransaction is import_keys'' insert (the per-row triggers of keys skip their work).';

CREATE FUNCTION apikeys.keys_owner_limit() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF NEW.owner_rate_limit IS NULL AND NOT apikeys.applying_replicated_change() THEN
        -- a set_owner_limit in flight for this owner (it takes the lock
        -- exclusively) commits first, and its limit is read here; mints of
        -- one owner never wait for each other
        PERFORM pg_catalog.pg_advisory_xact_lock_shared(1634757497,
                    pg_catalog.hashtext(NEW.workspace_id::text OPERATOR(pg_catalog.||) NEW.owner));
        SELECT l.rate_limit, l.rate_window INTO NEW.owner_rate_limit, NEW.owner_rate_window
          FROM apikeys.owner_limits l
         WHERE l.workspace_id = NEW.workspace_id AND l.owner = NEW.owner;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER keys_owner_limit BEFORE INSERT ON apikeys.keys
    FOR EACH ROW WHEN (NOT apikeys.importing()) EXECUTE FUNCTION apikeys.keys_owner_limit();

ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_owner_limit;

COMMENT ON FUNCTION apikeys.keys_owner_limit() IS 'Internal trigger function (a new key carries its owner''s shared rate limit); not for calling.';

DROP FUNCTION apikeys.create_key(uuid, text, text[], timestamptz, jsonb, text);

CREATE FUNCTION apikeys.create_key(workspace_id uuid,
                                   name text DEFAULT NULL,
                                   scopes text[] DEFAULT '{}',
                                   expires_at timestamptz DEFAULT NULL,
                                   metadata jsonb DEFAULT '{}',
                                   prefix text DEFAULT 'sk',
                                   rate_limit integer DEFAULT NULL,
                                   rate_window interval DEFAULT NULL,
                                   credits bigint DEFAULT NULL,
                                   refill_amount bigint DEFAULT NULL,
                                   refill_interval interval DEFAULT NULL,
                                   owner text DEFAULT NULL)
    RETURNS TABLE (id uuid, name text, prefix text, key text)
    LANGUAGE c VOLATILE SECURITY DEFINER ROWS 1
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_create_key_limited';

COMMENT ON FUNCTION apikeys.create_key(uuid, text, text[], timestamptz, jsonb, text, integer, interval, bigint, bigint, interval, text) IS
    'Mint a secret key. The key column is shown here once and never again.';

DROP FUNCTION apikeys.rotate_key(uuid, interval);

CREATE FUNCTION apikeys.rotate_key(key_id uuid, grace interval DEFAULT '0', expires_at timestamptz DEFAULT NULL)
    RETURNS TABLE (id uuid, name text, prefix text, key text)
    LANGUAGE c VOLATILE SECURITY DEFINER ROWS 1
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_rotate_key_renew';

COMMENT ON FUNCTION apikeys.rotate_key(uuid, interval, timestamptz) IS
    'Owner only: replace a key by a new one with the same name and settings; the old one expires after grace (revoked at once when zero).';

CREATE FUNCTION apikeys.check_key(key text, required_scopes text[] DEFAULT NULL, cost integer DEFAULT 1)
    RETURNS TABLE (valid boolean, code text, key_id uuid, workspace_id uuid, owner text, scopes text[],
                   metadata jsonb, expires_at timestamptz, credits_remaining bigint, rate_limit integer,
                   rate_remaining integer, rate_reset timestamptz)
    LANGUAGE c VOLATILE ROWS 1
    AS 'MODULE_PATHNAME', 'apikeys_check_key';

CREATE FUNCTION apikeys.update_key(key_id uuid,
                                   name text DEFAULT NULL,
                                   scopes text[] DEFAULT NULL,
                                   metadata jsonb DEFAULT NULL,
                                   rate_limit integer DEFAULT NULL,
                                   rate_window interval DEFAULT NULL,
                                   credits bigint DEFAULT NULL,
                                   refill_amount bigint DEFAULT NULL,
                                   refill_interval interval DEFAULT NULL,
                                   expires_at timestamptz DEFAULT NULL)
    RETURNS boolean
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_update_key';

CREATE FUNCTION apikeys.suspend_key(key_id uuid) RETURNS boolean
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_suspend_key';

CREATE FUNCTION apikeys.resume_key(key_id uuid) RETURNS boolean
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_resume_key';

CREATE FUNCTION apikeys.set_owner_limit(workspace_id uuid, owner text, rate_limit integer, rate_window interval)
    RETURNS boolean
    LANGUAGE c VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'apikeys_set_owner_limit';

CREATE FUNCTION apikeys.in_usage_worker() RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'apikeys_in_usage_worker';

COMMENT ON FUNCTION apikeys.check_key(text, text[], integer) IS
    'Check a key and consume cost from its rate limit and credits: always one row, code valid, invalid, insufficient_scope, rate_limited or usage_exceeded.';

COMMENT ON FUNCTION apikeys.update_key(uuid, text, text[], jsonb, integer, interval, bigint, bigint, interval, timestamptz) IS
    'Change a key: NULL leaves a field alone; rate_limit 0 removes the rate limit, credits -1 the credits, refill_amount 0 the refill; expiry only moves earlier.';

COMMENT ON FUNCTION apikeys.suspend_key(uuid) IS
    'Pause a key (it verifies as invalid until resumed); true when it was active. A revoked key cannot be suspended.';

COMMENT ON FUNCTION apikeys.resume_key(uuid) IS
    'End a key''s suspension; true when it was suspended. A revoked key can never be resumed.';

COMMENT ON FUNCTION apikeys.set_owner_limit(uuid, text, integer, interval) IS
    'Admins: a rate limit shared by all of an owner''s keys in the workspace; NULL, NULL removes it.';

COMMENT ON FUNCTION apikeys.in_usage_worker() IS
    'Internal: whether this backend is the usage engine''s flusher (its credit debits are not audited).';

CREATE OR REPLACE FUNCTION apikeys.grant_to(role regrole) RETURNS void
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
-- the audit of changes now also sees suspension, limits and credits
DROP TRIGGER keys_audit_change ON apikeys.keys;
CREATE TRIGGER keys_audit_change AFTER UPDATE ON apikeys.keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.replaced_by IS DISTINCT FROM NEW.replaced_by
          OR OLD.scopes IS DISTINCT FROM NEW.scopes
          OR OLD.name IS DISTINCT FROM NEW.name
          OR OLD.metadata IS DISTINCT FROM NEW.metadata
          OR OLD.suspended_at IS DISTINCT FROM NEW.suspended_at
          OR OLD.rate_limit IS DISTINCT FROM NEW.rate_limit
          OR OLD.rate_window IS DISTINCT FROM NEW.rate_window
          OR (OLD.credits IS DISTINCT FROM NEW.credits AND NOT apikeys.in_usage_worker())
          OR OLD.refill_amount IS DISTINCT FROM NEW.refill_amount
          OR OLD.refill_interval IS DISTINCT FROM NEW.refill_interval)
    EXECUTE FUNCTION apikeys.audit_keys();
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_audit_change;
REVOKE ALL ON apikeys.owner_limits FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.keys_owner_limit() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.create_key(uuid, text, text[], timestamptz, jsonb, text, integer, interval, bigint, bigint, interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.rotate_key(uuid, interval, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.check_key(text, text[], integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.update_key(uuid, text, text[], jsonb, integer, interval, bigint, bigint, interval, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.suspend_key(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.resume_key(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.set_owner_limit(uuid, text, integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.in_usage_worker() FROM PUBLIC;

-- 11b. The operator tier: suspensions of owners and workspaces, the operator role.
-- Suspensions an operator made of an owner, or of a whole workspace (owner
-- NULL): every key of theirs is suspended meanwhile and nothing is minted
-- for them. History: a resumed suspension keeps its row.
CREATE TABLE apikeys.suspensions (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id  uuid        NOT NULL,
    owner         text,
    suspended_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    suspended_by  text        NOT NULL,
    resumed_at    timestamptz,
    resumed_by    text
);
CREATE UNIQUE INDEX suspensions_active ON apikeys.suspensions (workspace_id, (coalesce(owner, '')))
    WHERE resumed_at IS NULL;
COMMENT ON TABLE apikeys.suspensions IS
    'Owners (or whole workspaces, owner NULL) an operator suspended: their keys answer invalid and nothing is minted for them until resume_owner.';
SELECT pg_catalog.pg_extension_config_dump('apikeys.suspensions', '');
SELECT pg_catalog.pg_extension_config_dump('apikeys.suspensions_id_seq', '');
ALTER TABLE apikeys.suspensions ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.suspensions FORCE ROW LEVEL SECURITY;
CREATE POLICY suspensions_visible ON apikeys.suspensions FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));

-- The operator tier (docs/reference.md, "Operators"): a role granted
-- apikeys_operator (grant_operator), or a superuser, acting as itself.
CREATE FUNCTION apikeys.is_operator() RETURNS boolean
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'apikeys_is_operator';
COMMENT ON FUNCTION apikeys.is_operator() IS
    'Whether the caller is an operator now: a superuser or a holder of apikeys_operator, acting as itself (never through an API key or in a request with trusted claims).';

-- The prologue of every operator control (suspend_owner, resume_owner,
-- set_plan): operators only; the workspace (and the owner, when one is
-- named) checked; READ COMMITTED only (an older snapshot would miss keys
-- minted or changed since it was taken: they would escape the suspension
-- or the plan); then a no-op update of the workspace's row, so a mint in
-- flight there (which holds the row FOR SHARE) is waited for, and one that
-- starts now waits for the control to commit (or, under REPEATABLE READ,
-- fails with 40001). Called by those SECURITY DEFINER functions only.
CREATE FUNCTION apikeys.operator_control(ws uuid, who text) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF NOT apikeys.is_operator() THEN
        RAISE EXCEPTION 'permission denied: operators only'
            USING ERRCODE = '42501', HINT = 'a superuser grants it with apikeys.grant_operator()';
    END IF;
    IF ws IS NULL THEN
        RAISE EXCEPTION 'workspace_id must not be null' USING ERRCODE = '22023';
    END IF;
    -- an owner is checked as create_key(owner => ...) checks it: a typo
    -- must not suspend no one in silence
    IF who IS NOT NULL AND NOT apikeys.valid_principal(who) THEN
        RAISE EXCEPTION 'invalid principal: use 1-256 characters, no control or invisible characters or surrounding spaces'
            USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'the operator''s controls run in READ COMMITTED only' USING ERRCODE = '0A000',
            HINT = 'run it in a READ COMMITTED transaction (the default): an older snapshot would miss keys minted or changed meanwhile';
    END IF;
    UPDATE apikeys.workspaces w SET name = w.name WHERE w.id = ws;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workspace not found' USING ERRCODE = 'PT404';
    END IF;
END
$$;
COMMENT ON FUNCTION apikeys.operator_control(uuid, text) IS
    'Internal: the checks and the workspace-row update every operator control (suspend_owner, resume_owner, set_plan) starts with.';

CREATE FUNCTION apikeys.suspend_owner(workspace_id uuid, owner text DEFAULT NULL) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    ws uuid := suspend_owner.workspace_id;
    who text := suspend_owner.owner;
    made int;
BEGIN
    PERFORM apikeys.operator_control(ws, who);
    INSERT INTO apikeys.suspensions (workspace_id, owner, suspended_by)
    VALUES (ws, who, apikeys.current_principal())
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS made = ROW_COUNT;
    -- every live key of theirs is held by the operator from now on; a key
    -- suspended already (by its owner, an admin or the operator's own
    -- suspend_key) keeps that suspension aside for resume_owner to give back
    UPDATE apikeys.keys k
       SET held_suspended_at = k.suspended_at, held_suspended_by = k.suspended_by,
           suspended_at = coalesce(k.suspended_at, pg_catalog.now()), suspended_by = 'operator',
           owner_suspended = true
     WHERE k.workspace_id = ws AND (who IS NULL OR k.owner = who) AND k.revoked_at IS NULL
       AND k.owner_suspended IS NOT TRUE;
    IF made > 0 THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (ws, apikeys.current_principal(), 'owner.suspended',
                pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('owner', who)));
    END IF;
    RETURN made > 0;
END
$$;
COMMENT ON FUNCTION apikeys.suspend_owner(uuid, text) IS
    'Operators only: suspend every key of an owner (or, owner NULL, of the whole workspace) and refuse new ones until resume_owner. True when it was not suspended.';

CREATE FUNCTION apikeys.resume_owner(workspace_id uuid, owner text DEFAULT NULL) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    ws uuid := resume_owner.workspace_id;
    who text := resume_owner.owner;
    ended int;
BEGIN
    PERFORM apikeys.operator_control(ws, who);
    UPDATE apikeys.suspensions s SET resumed_at = pg_catalog.now(), resumed_by = apikeys.current_principal()
     WHERE s.workspace_id = ws AND s.owner IS NOT DISTINCT FROM who AND s.resumed_at IS NULL;
    GET DIAGNOSTICS ended = ROW_COUNT;
    -- the keys this held go back to what they were (live, or their own
    -- suspension), unless another suspension (the whole workspace, or the
    -- owner) still holds them
    UPDATE apikeys.keys k
       SET suspended_at = k.held_suspended_at, suspended_by = k.held_suspended_by,
           held_suspended_at = NULL, held_suspended_by = NULL, owner_suspended = NULL
     WHERE k.workspace_id = ws AND (who IS NULL OR k.owner = who) AND k.revoked_at IS NULL
       AND k.owner_suspended
       AND NOT EXISTS (SELECT FROM apikeys.suspensions s
                        WHERE s.workspace_id = ws AND s.resumed_at IS NULL
                          AND (s.owner IS NULL OR s.owner = k.owner));
    IF ended > 0 THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (ws, apikeys.current_principal(), 'owner.resumed',
                pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('owner', who)));
    END IF;
    RETURN ended > 0;
END
$$;
COMMENT ON FUNCTION apikeys.resume_owner(uuid, text) IS
    'Operators only: end a suspend_owner (of an owner, or of the whole workspace with owner NULL); the keys it suspended verify again unless another suspension still holds. True when one ended.';

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
CREATE TRIGGER suspensions_no_delete BEFORE DELETE ON apikeys.suspensions
    FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER suspensions_no_truncate BEFORE TRUNCATE ON apikeys.suspensions
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys.forbid_delete();
ALTER TABLE apikeys.suspensions ENABLE ALWAYS TRIGGER suspensions_no_delete;
ALTER TABLE apikeys.suspensions ENABLE ALWAYS TRIGGER suspensions_no_truncate;
-- Plans: ceilings an operator sets for a workspace (set_plan). Admins and
-- members never exceed them; new keys get the plan's limits by default.
CREATE TABLE apikeys.plans (
    workspace_id     uuid        PRIMARY KEY,
    rate_limit       integer     CHECK (rate_limit > 0),
    rate_window      interval,
    credits          bigint      CHECK (credits >= 0),
    refill_amount    bigint      CHECK (refill_amount > 0),
    refill_interval  interval,
    key_lifetime     interval,
    active_keys      integer     CHECK (active_keys >= 0),
    set_by           text        NOT NULL,
    set_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT plans_rate_pair CHECK ((rate_limit IS NULL) = (rate_window IS NULL)),
    CONSTRAINT plans_refill_pair CHECK ((refill_amount IS NULL) = (refill_interval IS NULL))
);
COMMENT ON TABLE apikeys.plans IS
    'Ceilings an operator set for a workspace (set_plan): rate limit and credits per key, refill, longest key lifetime, most active keys.';
SELECT pg_catalog.pg_extension_config_dump('apikeys.plans', '');
-- Plans: every member of the workspace sees its plan.
ALTER TABLE apikeys.plans ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.plans FORCE ROW LEVEL SECURITY;
CREATE POLICY plans_visible ON apikeys.plans FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));

CREATE FUNCTION apikeys.set_plan(workspace_id uuid,
                                 rate_limit integer DEFAULT NULL,
                                 rate_window interval DEFAULT NULL,
                                 credits bigint DEFAULT NULL,
                                 refill_amount bigint DEFAULT NULL,
                                 refill_interval interval DEFAULT NULL,
                                 key_lifetime interval DEFAULT NULL,
                                 active_keys integer DEFAULT NULL)
    RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    ws uuid := set_plan.workspace_id;
    pl_rate integer := set_plan.rate_limit;
    pl_window interval := set_plan.rate_window;
    pl_credits bigint := set_plan.credits;
    pl_refill bigint := set_plan.refill_amount;
    pl_refill_every interval := set_plan.refill_interval;
    pl_life interval := set_plan.key_lifetime;
    pl_active integer := set_plan.active_keys;
BEGIN
    PERFORM apikeys.operator_control(ws, NULL);
    -- every interval checked part by part: no month or negative part in a
    -- window, a refill of exactly one day or one month, a lifetime of
    -- 1 minute to 100 years with no negative part
    IF (pl_rate IS NULL) <> (pl_window IS NULL) OR pl_rate <= 0
       OR (pl_window IS NOT NULL
           AND (pg_catalog.date_part('year', pl_window) <> 0 OR pg_catalog.date_part('month', pl_window) <> 0
                OR pg_catalog.date_part('day', pl_window) < 0 OR pl_window < interval '1 second'
                OR pl_window > interval '1 day'
                OR pg_catalog.date_part('hour', pl_window) < 0 OR pg_catalog.date_part('minute', pl_window) < 0
                OR pg_catalog.date_part('second', pl_window) < 0)) THEN
        RAISE EXCEPTION 'invalid rate limit: a positive limit with a window of 1 second to 1 day' USING ERRCODE = '22023';
    END IF;
    IF pl_credits < 0 OR (pl_refill IS NULL) <> (pl_refill_every IS NULL) OR pl_refill <= 0
       OR (pl_refill_every IS NOT NULL
           AND NOT (pg_catalog.date_part('year', pl_refill_every) = 0
                    AND pg_catalog.date_part('hour', pl_refill_every) = 0
                    AND pg_catalog.date_part('minute', pl_refill_every) = 0
                    AND pg_catalog.date_part('second', pl_refill_every) = 0
                    AND ((pg_catalog.date_part('month', pl_refill_every) = 1 AND pg_catalog.date_part('day', pl_refill_every) = 0)
                         OR (pg_catalog.date_part('month', pl_refill_every) = 0 AND pg_catalog.date_part('day', pl_refill_every) = 1)))) THEN
        RAISE EXCEPTION 'invalid credits or refill: credits of 0 or more, a positive refill every 1 day or 1 month' USING ERRCODE = '22023';
    END IF;
    IF (pl_life IS NOT NULL
        AND (pg_catalog.date_part('year', pl_life) < 0 OR pg_catalog.date_part('month', pl_life) < 0
             OR pg_catalog.date_part('day', pl_life) < 0 OR pg_catalog.date_part('hour', pl_life) < 0
             OR pg_catalog.date_part('minute', pl_life) < 0 OR pg_catalog.date_part('second', pl_life) < 0
             OR pl_life < interval '1 minute' OR pl_life > interval '100 years'))
       OR pl_active < 0 THEN
        RAISE EXCEPTION 'invalid key lifetime or active keys: a lifetime of 1 minute to 100 years with no negative part, active keys of 0 or more' USING ERRCODE = '22023';
    END IF;
    IF (pl_rate IS NOT NULL OR pl_credits IS NOT NULL) AND apikeys.usage_mode() <> 'shared_memory' THEN
        RAISE EXCEPTION 'rate limits and credits need the usage engine' USING ERRCODE = '0A000',
            HINT = 'add pg_apikeys to shared_preload_libraries in postgresql.conf and restart the server';
    END IF;
    INSERT INTO apikeys.plans AS p (workspace_id, rate_limit, rate_window, credits, refill_amount, refill_interval,
                                    key_lifetime, active_keys, set_by)
    VALUES (ws, pl_rate, pl_window, pl_credits, pl_refill, pl_refill_every, pl_life, pl_active,
            apikeys.current_principal())
    ON CONFLICT ON CONSTRAINT plans_pkey DO UPDATE
       SET rate_limit = excluded.rate_limit, rate_window = excluded.rate_window, credits = excluded.credits,
           refill_amount = excluded.refill_amount, refill_interval = excluded.refill_interval,
           key_lifetime = excluded.key_lifetime, active_keys = excluded.active_keys,
           set_by = excluded.set_by, set_at = pg_catalog.now();
    -- the workspace's live keys come within the ceilings at once, each
    -- judged as it is when updated (a key an admin changes meanwhile is
    -- waited for and judged again)
    UPDATE apikeys.keys k
       SET rate_limit = CASE WHEN NOT apikeys.rate_within(k.rate_limit, k.rate_window, pl_rate, pl_window)
                             THEN pl_rate ELSE k.rate_limit END,
           rate_window = CASE WHEN NOT apikeys.rate_within(k.rate_limit, k.rate_window, pl_rate, pl_window)
                              THEN pl_window ELSE k.rate_window END,
           credits = CASE WHEN pl_credits IS NOT NULL AND (k.credits IS NULL OR k.credits > pl_credits)
                          THEN pl_credits ELSE k.credits END,
           credits_refilled_at = CASE WHEN pl_credits IS NOT NULL AND (k.credits IS NULL OR k.credits > pl_credits)
                                      THEN pg_catalog.statement_timestamp() ELSE k.credits_refilled_at END,
           refill_amount = CASE WHEN pl_credits IS NOT NULL AND pl_refill IS NULL THEN NULL
                                WHEN pl_refill IS NOT NULL AND k.refill_amount > pl_refill THEN pl_refill
                                ELSE k.refill_amount END,
           refill_interval = CASE WHEN pl_credits IS NOT NULL AND pl_refill IS NULL THEN NULL
                                  ELSE k.refill_interval END,
           expires_at = CASE WHEN pl_life IS NOT NULL AND (k.expires_at IS NULL OR k.expires_at > pg_catalog.now() + pl_life)
                             THEN pg_catalog.now() + pl_life ELSE k.expires_at END
     WHERE k.workspace_id = ws AND k.revoked_at IS NULL
       AND (k.expires_at IS NULL OR k.expires_at > pg_catalog.now())
       AND (NOT apikeys.rate_within(k.rate_limit, k.rate_window, pl_rate, pl_window)
            OR (pl_credits IS NOT NULL AND (k.credits IS NULL OR k.credits > pl_credits))
            OR (pl_credits IS NOT NULL AND pl_refill IS NULL AND k.refill_amount IS NOT NULL)
            OR (pl_refill IS NOT NULL AND k.refill_amount > pl_refill)
            OR (pl_life IS NOT NULL AND (k.expires_at IS NULL OR k.expires_at > pg_catalog.now() + pl_life)));
    INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
    VALUES (ws, apikeys.current_principal(), 'plan.set',
            pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                'rate_limit', pl_rate, 'rate_window', pl_window, 'credits', pl_credits,
                'refill_amount', pl_refill, 'refill_interval', pl_refill_every,
                'key_lifetime', pl_life, 'active_keys', pl_active)));
    RETURN true;
END
$$;
COMMENT ON FUNCTION apikeys.set_plan(uuid, integer, interval, bigint, bigint, interval, interval, integer) IS
    'Operators only: the ceilings of a workspace (rate limit and credits per key, refill, longest key lifetime, most active keys; NULL: none). Live keys are brought within them at once; admins and members never exceed them.';

-- Keys within their workspace's plan: a key minted or changed by anyone
-- but an operator gets the plan's limits and lifetime when it has none, and
-- may not exceed them.
-- Whether a text is a valid principal, as the Rust rules check one
-- (src/rules.rs, principal and invisible): 1-256 characters, no control
-- characters, no invisible or non-ASCII space characters, no surrounding
-- spaces.
CREATE FUNCTION apikeys.valid_principal(p text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    -- (no SET search_path, so that the planner inlines it into import_keys'
    -- one pass over the source; every operator and function is qualified)
    AS $$
        SELECT $1 IS NOT NULL AND $1 OPERATOR(pg_catalog.<>) ''
           AND pg_catalog.char_length($1) OPERATOR(pg_catalog.<=) 256
           AND $1 OPERATOR(pg_catalog.=) pg_catalog.btrim($1, ' ')
           AND $1 OPERATOR(pg_catalog.!~) E'[\\x01-\\x1f\\x7f-\\x9f\\u00a0\\u00ad\\u034f\\u061c\\u115f\\u1160\\u1680\\u17b4\\u17b5\\u180b-\\u180f\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u2800\\u3000\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufffb\\U000110bd\\U000110cd\\U00013430-\\U0001343f\\U0001bca0-\\U0001bca3\\U0001d173-\\U0001d17a\\U000e0000-\\U000e007f\\U000e0100-\\U000e01ef\\t\\n\\v\\f\\r\\u0085]'
    $$;
COMMENT ON FUNCTION apikeys.valid_principal(text) IS
    'Internal: whether a text is a valid principal (the rules create_key(owner => ...) applies).';

-- Whether a rate limit (rate per win) stays within a ceiling (cap per
-- cap_win) in every window of the ceiling, not only on average (windows are
-- fixed and aligned to the epoch, as the usage engine keeps them): a longer
-- window holds at most the ceiling when it is a whole multiple of the
-- ceiling's window, else at most half of it (two of its windows may meet in
-- one of the ceiling's); a shorter one has every window that meets one of
-- the ceiling's full (cap_win / win of them when it divides it, else one
-- more than that rounded up). No ceiling: true; no limit under one: false.
-- The same rule as src/key_admin.rs (rate_within).
CREATE FUNCTION apikeys.rate_within(rate integer, win interval, cap integer, cap_win interval) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT CASE WHEN $3 IS NULL THEN true
                    WHEN $1 IS NULL OR $2 IS NULL OR $4 IS NULL THEN false
                    ELSE $1::numeric * (
                        WITH w(k, c) AS (SELECT EXTRACT(epoch FROM $2) * 1000000, EXTRACT(epoch FROM $4) * 1000000)
                        SELECT CASE WHEN w.k <= 0 THEN NULL
                                    WHEN w.k >= w.c THEN CASE WHEN w.k % w.c = 0 THEN 1 ELSE 2 END
                                    WHEN w.c % w.k = 0 THEN w.c / w.k
                                    ELSE pg_catalog.floor(w.c / w.k) + 2 END
                          FROM w) <= $3
               END
    $$;
COMMENT ON FUNCTION apikeys.rate_within(integer, interval, integer, interval) IS
    'Internal: whether a rate limit stays within a ceiling in every window of the ceiling''s length (a plan, or a member''s own earlier limit).';

CREATE FUNCTION apikeys.keys_plan() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    p apikeys.plans;
    active bigint;
BEGIN
    IF apikeys.applying_replicated_change() OR apikeys.in_usage_worker() THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' OR NOT apikeys.is_operator() THEN
        -- an operator's suspend_owner or set_plan in flight in this
        -- workspace (each updates the workspace's row) is waited for, so
        -- what is read below is what it committed, and one that starts now
        -- waits for this key's transaction and then sees it (in READ
        -- COMMITTED; a REPEATABLE READ or SERIALIZABLE write that raced
        -- one fails with 40001 instead, and its retry reads it)
        PERFORM FROM apikeys.workspaces w WHERE w.id = NEW.workspace_id FOR SHARE;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.revoked_at IS NULL AND NEW.suspended_at IS NULL
           AND EXISTS (SELECT FROM apikeys.suspensions s
                        WHERE s.workspace_id = NEW.workspace_id AND s.resumed_at IS NULL
                          AND (s.owner IS NULL OR s.owner = NEW.owner)) THEN
            RAISE EXCEPTION 'permission denied: the owner or its workspace is suspended'
                USING ERRCODE = '42501', HINT = 'the operator lifts it with apikeys.resume_owner()';
        END IF;
    END IF;
    SELECT * INTO p FROM apikeys.plans pl WHERE pl.workspace_id = NEW.workspace_id;
    IF NOT FOUND OR apikeys.is_operator() THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF p.rate_limit IS NOT NULL AND NEW.rate_limit IS NULL THEN
            NEW.rate_limit := p.rate_limit;
            NEW.rate_window := p.rate_window;
        END IF;
        IF p.credits IS NOT NULL AND NEW.credits IS NULL THEN
            NEW.credits := p.credits;
            NEW.credits_refilled_at := pg_catalog.statement_timestamp();
            IF p.refill_amount IS NOT NULL AND NEW.refill_amount IS NULL THEN
                NEW.refill_amount := p.refill_amount;
                NEW.refill_interval := p.refill_interval;
            END IF;
        END IF;
        IF p.key_lifetime IS NOT NULL AND NEW.expires_at IS NULL THEN
            NEW.expires_at := pg_catalog.now() + p.key_lifetime;
        END IF;
        IF p.active_keys IS NOT NULL THEN
            -- mints of the workspace take turns on its plan's row, so each
            -- counts the keys of those before it (a no-op update: under
            -- REPEATABLE READ a mint that raced another fails with 40001)
            UPDATE apikeys.plans pl SET set_at = pl.set_at
             WHERE pl.workspace_id = NEW.workspace_id
            RETURNING pl.* INTO p;
            SELECT count(*) INTO active FROM apikeys.keys k
             WHERE k.workspace_id = NEW.workspace_id AND k.revoked_at IS NULL AND k.replaced_by IS NULL
               AND (k.expires_at IS NULL OR k.expires_at > pg_catalog.now());
            IF active >= p.active_keys THEN
                RAISE EXCEPTION 'permission denied: the workspace''s plan allows at most % active keys', p.active_keys
                    USING ERRCODE = '42501', HINT = 'revoke a key, or ask the operator for a larger plan';
            END IF;
        END IF;
    END IF;
    IF NOT apikeys.rate_within(NEW.rate_limit, NEW.rate_window, p.rate_limit, p.rate_window)
       OR (p.credits IS NOT NULL AND (NEW.credits IS NULL OR NEW.credits > p.credits))
       -- under a plan's credits only the operator adds credits: no top-up
       -- of a balance, no refill the plan does not give
       OR (p.credits IS NOT NULL AND TG_OP = 'UPDATE' AND NEW.credits > OLD.credits)
       OR (p.credits IS NOT NULL AND p.refill_amount IS NULL AND NEW.refill_amount IS NOT NULL
           AND (TG_OP = 'INSERT' OR NEW.refill_amount IS DISTINCT FROM OLD.refill_amount
                OR NEW.refill_interval IS DISTINCT FROM OLD.refill_interval))
       OR (p.refill_amount IS NOT NULL AND NEW.refill_amount IS NOT NULL
           AND NEW.refill_amount::numeric * (CASE WHEN p.refill_interval = interval '1 month' THEN 30 ELSE 1 END)
               > p.refill_amount::numeric * (CASE WHEN NEW.refill_interval = interval '1 month' THEN 30 ELSE 1 END))
       OR (p.key_lifetime IS NOT NULL
           AND (NEW.expires_at IS NULL OR NEW.expires_at > pg_catalog.now() + p.key_lifetime + interval '1 second')) THEN
        RAISE EXCEPTION 'permission denied: beyond the workspace''s plan'
            USING ERRCODE = '42501', HINT = 'stay within apikeys.plans for this workspace, or ask the operator';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION apikeys.keys_plan() IS 'Internal trigger function (keys within their workspace''s plan); not for calling.';

CREATE TRIGGER keys_plan BEFORE INSERT ON apikeys.keys
    FOR EACH ROW WHEN (NOT apikeys.importing()) EXECUTE FUNCTION apikeys.keys_plan();
CREATE TRIGGER keys_plan_update BEFORE UPDATE ON apikeys.keys
    FOR EACH ROW
    WHEN (NEW.rate_limit IS DISTINCT FROM OLD.rate_limit OR NEW.rate_window IS DISTINCT FROM OLD.rate_window
          OR NEW.credits > OLD.credits OR (NEW.credits IS NULL AND OLD.credits IS NOT NULL)
          OR NEW.refill_amount IS DISTINCT FROM OLD.refill_amount
          OR NEW.refill_interval IS DISTINCT FROM OLD.refill_interval
          OR NEW.expires_at IS DISTINCT FROM OLD.expires_at)
    EXECUTE FUNCTION apikeys.keys_plan();
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_plan;
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_plan_update;
REVOKE ALL ON apikeys.plans FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.set_plan(uuid, integer, interval, bigint, bigint, interval, interval, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.keys_plan() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.rate_within(integer, interval, integer, interval) FROM PUBLIC;
REVOKE ALL ON apikeys.suspensions FROM PUBLIC;
REVOKE ALL ON SEQUENCE apikeys.suspensions_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.is_operator() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.suspend_owner(uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.operator_control(uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.resume_owner(uuid, text) FROM PUBLIC;

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

-- Row security: the caller's workspaces looked up once per query, not once
-- per row (policies.sql): the policies of 0.1.0's tables are made again in
-- that form, and the two functions the look-up calls are LEAKPROOF (they
-- take no argument and reveal nothing of a row), so its condition on
-- members.principal runs first, on the index.
ALTER FUNCTION apikeys.current_principal() LEAKPROOF;
ALTER FUNCTION apikeys.current_workspace() LEAKPROOF;
DROP POLICY workspaces_visible ON apikeys.workspaces;
CREATE POLICY workspaces_visible ON apikeys.workspaces FOR SELECT
    USING (id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));
DROP POLICY keys_visible ON apikeys.keys;
CREATE POLICY keys_visible ON apikeys.keys FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id)))
           OR (owner = (SELECT apikeys.current_principal())
               AND workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id)))));
DROP POLICY public_keys_visible ON apikeys.public_keys;
CREATE POLICY public_keys_visible ON apikeys.public_keys FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));
DROP POLICY audit_log_visible ON apikeys.audit_log;
CREATE POLICY audit_log_visible ON apikeys.audit_log FOR SELECT
    USING (workspace_id = ANY (ARRAY(SELECT m.workspace_id FROM apikeys.members m
                WHERE m.principal = apikeys.current_principal() AND m.removed_at IS NULL AND m.role = 'admin'
                  AND m.workspace_id = coalesce(apikeys.current_workspace(), m.workspace_id))));

-- Migrations at scale: import_keys (docs/managing-keys.md, "Migrating keys
-- from another system"; docs/reference.md). The checks and the inserts are
-- set-based; the per-row triggers of keys skip their work for its rows
-- (WHEN NOT apikeys.importing()), because it does that work for the batch.
CREATE FUNCTION apikeys.import_mark() RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'apikeys_import_mark';
COMMENT ON FUNCTION apikeys.import_mark() IS
    'Internal: marks the current subtransaction as import_keys'' insert; granted to no one.';
CREATE FUNCTION apikeys.metadata_ok(text) RETURNS boolean
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'apikeys_metadata_ok';
COMMENT ON FUNCTION apikeys.metadata_ok(text) IS
    'Internal: whether a jsonb''s text form is metadata create_key takes (at most 16 KiB, nested at most 64 levels).';
CREATE FUNCTION apikeys.import_keys_caller(workspace_id uuid, source regclass) RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'apikeys_import_keys_caller';
COMMENT ON FUNCTION apikeys.import_keys_caller(uuid, regclass) IS
    'Internal: who may import_keys (true: an operator; false: an importer and admin) and whether the caller reads the source.';

CREATE FUNCTION apikeys.import_keys(workspace_id uuid, source regclass, all_or_nothing boolean DEFAULT false)
    RETURNS TABLE (n bigint, key_id uuid, status text, reason text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    ws uuid := import_keys.workspace_id;
    operator boolean;
    cols text := '';
    c record;
    bad bigint;
    done bigint;
    p apikeys.plans;
    active bigint;
    engine boolean := apikeys.usage_mode() = 'shared_memory';
    con text;
BEGIN
    -- who: an operator (any owner), or an admin holding apikeys_importer
    -- (owners who are members, within their scopes and the plan); the
    -- caller, not this function's owner, must be able to read the source
    operator := apikeys.import_keys_caller(ws, source);
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'import_keys runs in READ COMMITTED only' USING ERRCODE = '0A000',
            HINT = 'an older snapshot would miss keys and suspensions committed meanwhile';
    END IF;
    -- an operator's suspend_owner or set_plan in flight is waited for
    PERFORM FROM apikeys.workspaces w WHERE w.id = ws FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workspace not found' USING ERRCODE = 'PT404';
    END IF;

    -- the source is read as this function's owner: a plain table only (a
    -- view, a foreign table or a parent of others could run the caller's
    -- code with the owner's rights)
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class r
                    WHERE r.oid = source AND r.relkind = 'r' AND NOT r.relhassubclass) THEN
        RAISE EXCEPTION 'the source must be a plain table' USING ERRCODE = '22023',
            HINT = 'stage the keys in a table (CREATE TABLE ... or CREATE TEMP TABLE ..., then COPY or INSERT)';
    END IF;
    -- (read as the owner, a table under row security would give the caller
    -- rows its policies hide from it)
    IF EXISTS (SELECT FROM pg_catalog.pg_class r WHERE r.oid = source AND r.relrowsecurity) THEN
        RAISE EXCEPTION 'the source has row security' USING ERRCODE = '22023',
            HINT = 'stage the keys in a table without row security (a temporary table of your own, for one)';
    END IF;
    -- the source's columns, by name: owner, name and digest are needed;
    -- the others are taken when present
    FOR c IN
        SELECT x.col, x.typ, a.attname IS NOT NULL AS present, a.atttypid
          FROM (VALUES (1, 'n', 'bigint'), (2, 'owner', 'text'), (3, 'name', 'text'), (4, 'digest', 'text'),
                       (5, 'scopes', 'text[]'), (6, 'metadata', 'jsonb'), (7, 'expires_at', 'timestamptz'),
                       (8, 'rate_limit', 'integer'), (9, 'rate_window', 'interval'), (10, 'credits', 'bigint'),
                       (11, 'refill_amount', 'bigint'), (12, 'refill_interval', 'interval'),
                       (13, 'created_at', 'timestamptz'), (14, 'last_used_at', 'timestamptz')) AS x(i, col, typ)
          LEFT JOIN pg_catalog.pg_attribute a
                 ON a.attrelid = source AND a.attname = x.col AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY x.i
    LOOP
        -- a column of a type of its own (a domain, an enum, a type with a
        -- cast of its own) could run the caller's code as this function's
        -- owner when read and cast: built-in types only
        IF c.present AND c.atttypid >= 16384 THEN
            RAISE EXCEPTION 'the source''s column % has a type of its own', c.col USING ERRCODE = '22023',
                HINT = 'stage the keys in columns of built-in types (text, text[], jsonb, timestamptz, integer, bigint, interval)';
        END IF;
        IF NOT c.present AND c.col IN ('owner', 'name', 'digest') THEN
            RAISE EXCEPTION 'the source has no column %', c.col USING ERRCODE = '22023',
                HINT = 'import_keys reads owner, name and digest, and optionally n, scopes, metadata, expires_at, rate_limit, rate_window, credits, refill_amount, refill_interval, created_at, last_used_at';
        END IF;
        cols := cols || CASE WHEN cols = '' THEN '' ELSE ', ' END
             || CASE WHEN c.col = 'n' AND NOT c.present THEN 'pg_catalog.row_number() OVER ()'
                     WHEN c.present THEN pg_catalog.format('s.%I::%s', c.col, c.typ)
                     ELSE pg_catalog.format('NULL::%s', c.typ) END
             || pg_catalog.format(' AS %I', c.col);
    END LOOP;
    IF pg_catalog.to_regclass('pg_temp.apikeys_import') IS NOT NULL THEN
        -- an earlier call's working table (this session's, not user data)
        -- rewrite: made again for this call
        DROP TABLE pg_temp.apikeys_import;
    END IF;
    CREATE TEMP TABLE apikeys_import (
        n bigint, owner text, name text, digest text, scopes text[], metadata jsonb, expires_at timestamptz,
        rate_limit integer, rate_window interval, credits bigint, refill_amount bigint, refill_interval interval,
        created_at timestamptz, last_used_at timestamptz,
        hash bytea, id uuid, prefix text, reason text
    ) ON COMMIT DROP;
    -- the source read once: each row's checks, every rule create_key and
    -- import_key apply, the first broken one named; its digest, id and
    -- display prefix (imported: and 8 random base62-like characters:
    -- nothing of the token is known)
    EXECUTE pg_catalog.format($q$INSERT INTO pg_temp.apikeys_import (n, owner, name, digest, scopes, metadata, expires_at,
            rate_limit, rate_window, credits, refill_amount, refill_interval, created_at, last_used_at,
            hash, id, prefix, reason)
        SELECT r.n, r.owner, pg_catalog.lower(r.name), r.digest,
               -- (repeated scopes dropped, the first place kept, as create_key does)
               CASE WHEN r.scopes IS NULL THEN '{}'
                    WHEN pg_catalog.cardinality(r.scopes) <= 1 THEN r.scopes
                    ELSE ARRAY(SELECT u.x FROM pg_catalog.unnest(r.scopes) WITH ORDINALITY AS u(x, o)
                                GROUP BY u.x ORDER BY pg_catalog.min(u.o)) END,
               coalesce(r.metadata, '{}'), r.expires_at, r.rate_limit, r.rate_window, r.credits,
               r.refill_amount, r.refill_interval, r.created_at, r.last_used_at,
               -- (lengths and classes checked apart: a bounded repetition
               -- such as {64} costs PostgreSQL's regex engine far more)
               CASE WHEN pg_catalog.length(r.digest) = 64 AND r.digest !~ '[^0-9A-Fa-f]'
                    THEN pg_catalog.decode(pg_catalog.lower(r.digest), 'hex')
                    WHEN (pg_catalog.length(r.digest) = 44 AND r.digest ~ '^[A-Za-z0-9+/]+=$')
                         OR (pg_catalog.length(r.digest) = 43 AND r.digest ~ '^[A-Za-z0-9+/]+$')
                    THEN pg_catalog.decode(pg_catalog.rpad(r.digest, 44, '='), 'base64') END,
               pg_catalog.gen_random_uuid(),
               'imported:' || pg_catalog.substr(pg_catalog.translate(pg_catalog.encode(
                    pg_catalog.uuid_send(pg_catalog.gen_random_uuid()), 'base64'), '+/=', 'xyz'), 1, 8),
               CASE
            WHEN r.n IS NULL THEN 'n: missing'
            WHEN NOT apikeys.valid_principal(r.owner)
                THEN 'owner: not a valid principal (1-256 characters, no control or invisible characters or surrounding spaces)'
            WHEN r.name IS NULL OR pg_catalog.lower(r.name) !~ '^[a-z0-9]+(-[a-z0-9]+)*$' OR pg_catalog.length(r.name) > 64
                THEN 'name: not a key name (1-64 of a-z, 0-9 and single hyphens inside)'
            WHEN r.digest IS NULL OR NOT ((pg_catalog.length(r.digest) = 64 AND r.digest !~ '[^0-9A-Fa-f]')
                                          OR (pg_catalog.length(r.digest) = 44 AND r.digest ~ '^[A-Za-z0-9+/]+=$')
                                          OR (pg_catalog.length(r.digest) = 43 AND r.digest ~ '^[A-Za-z0-9+/]+$'))
                THEN 'digest: not a SHA-256 digest (64 hex characters, or 44 of base64)'
            -- (each scope: a letter, then a-z 0-9 _ . -, with : between
            -- segments that are not empty; checked on the list joined by
            -- commas, which no scope holds, a NULL scope as a control char)
            WHEN pg_catalog.cardinality(r.scopes) > 0
                 AND (pg_catalog.array_ndims(r.scopes) <> 1 OR pg_catalog.array_lower(r.scopes, 1) <> 1
                      OR pg_catalog.array_to_string(r.scopes, ',', E'\x01')
                          !~ '^[a-z][a-z0-9_.-]*(:[a-z0-9_.-]+)*(,[a-z][a-z0-9_.-]*(:[a-z0-9_.-]+)*)*$'
                      OR (pg_catalog.octet_length(pg_catalog.array_to_string(r.scopes, ',')) > 64
                          AND (SELECT pg_catalog.max(pg_catalog.length(x)) FROM pg_catalog.unnest(r.scopes) AS x) > 64)
                      OR (pg_catalog.cardinality(r.scopes) > 64
                          AND (SELECT count(DISTINCT x) FROM pg_catalog.unnest(r.scopes) AS x) > 64))
                THEN 'scopes: each 1-64 of a-z, 0-9, _ . : - starting with a letter, at most 64'
            -- (the text form is read only where the limits could be
            -- reached: an uncompressed jsonb under 256 bytes nests at most
            -- 31 levels and prints far under 16 KiB)
            WHEN r.metadata IS NOT NULL AND (pg_catalog.jsonb_typeof(r.metadata) <> 'object'
                                             OR ((pg_catalog.pg_column_compression(r.metadata) IS NOT NULL
                                                  OR pg_catalog.pg_column_size(r.metadata) >= 256)
                                                 AND NOT apikeys.metadata_ok(r.metadata::text)))
                THEN 'metadata: not a JSON object of at most 16 KiB, nested at most 64 levels'
            WHEN r.expires_at IS NOT NULL AND r.expires_at <= pg_catalog.now()
                THEN 'expires_at: not in the future (an expired key is not imported)'
            WHEN r.created_at > pg_catalog.now() OR r.last_used_at > pg_catalog.now()
                 OR r.last_used_at < r.created_at
                 OR NOT pg_catalog.isfinite(r.created_at) OR NOT pg_catalog.isfinite(r.last_used_at)
                THEN 'created_at, last_used_at: in the future, not finite, or used before created'
            WHEN (r.rate_limit IS NULL) <> (r.rate_window IS NULL) OR r.rate_limit <= 0
                 OR r.rate_window IS NOT NULL AND (r.rate_window < interval '1 second' OR r.rate_window > interval '1 day'
                 OR pg_catalog.date_part('month', r.rate_window) <> 0 OR pg_catalog.date_part('year', r.rate_window) <> 0
                 OR pg_catalog.date_part('day', r.rate_window) < 0 OR pg_catalog.date_part('hour', r.rate_window) < 0
                 OR pg_catalog.date_part('minute', r.rate_window) < 0 OR pg_catalog.date_part('second', r.rate_window) < 0
                 OR pg_catalog.date_part('second', r.rate_window) <> pg_catalog.floor(pg_catalog.date_part('second', r.rate_window)))
                THEN 'rate: a positive limit with a window of whole seconds, 1 second to 1 day'
            WHEN r.credits < 0 OR (r.refill_amount IS NULL) <> (r.refill_interval IS NULL) OR r.refill_amount <= 0
                 OR (r.refill_amount IS NOT NULL AND r.credits IS NULL)
                 OR (r.refill_interval IS NOT NULL
                     -- (by its fields: '30 days' or '24 hours' equal '1 month' and '1 day' as intervals)
                     AND NOT (pg_catalog.date_part('year', r.refill_interval) = 0
                              AND pg_catalog.date_part('hour', r.refill_interval) = 0
                              AND pg_catalog.date_part('minute', r.refill_interval) = 0
                              AND pg_catalog.date_part('second', r.refill_interval) = 0
                              AND ((pg_catalog.date_part('month', r.refill_interval) = 1
                                    AND pg_catalog.date_part('day', r.refill_interval) = 0)
                                   OR (pg_catalog.date_part('month', r.refill_interval) = 0
                                       AND pg_catalog.date_part('day', r.refill_interval) = 1))))
                THEN 'credits, refill: credits of 0 or more; a positive refill every 1 day or 1 month, with credits'
            WHEN NOT $1 AND (r.rate_limit IS NOT NULL OR r.credits IS NOT NULL)
                THEN 'rate, credits: limits need the usage engine (shared_preload_libraries)'
               END
          FROM (SELECT %s FROM %s s) r$q$, cols, source) USING engine;
    ANALYZE pg_temp.apikeys_import;

    -- owners: an importer imports for active members only, within their
    -- scopes; no one for an owner (or a workspace) the operator suspended
    IF NOT operator THEN
        UPDATE pg_temp.apikeys_import i SET reason = 'owner: not an active member of this workspace'
         WHERE i.reason IS NULL
           AND NOT EXISTS (SELECT FROM apikeys.members m
                            WHERE m.workspace_id = ws AND m.principal = i.owner AND m.removed_at IS NULL);
        UPDATE pg_temp.apikeys_import i SET reason = 'scopes: beyond what the owner holds'
          FROM apikeys.members m
         WHERE i.reason IS NULL AND m.workspace_id = ws AND m.principal = i.owner AND m.removed_at IS NULL
           AND m.role = 'member' AND NOT i.scopes <@ m.scopes;
    END IF;
    UPDATE pg_temp.apikeys_import i SET reason = 'owner: suspended by the operator'
     WHERE i.reason IS NULL
       AND EXISTS (SELECT FROM apikeys.suspensions s
                    WHERE s.workspace_id = ws AND s.resumed_at IS NULL AND (s.owner IS NULL OR s.owner = i.owner));

    -- digests and names: stored already, or repeated in the input (the
    -- first row keeps it)
    UPDATE pg_temp.apikeys_import i SET reason = 'digest: a key with this digest is stored already'
     WHERE i.reason IS NULL AND EXISTS (SELECT FROM apikeys.key_hashes h WHERE h.hash = i.hash);
    -- (the repeated ones found by one hashed count, then only their rows
    -- visited)
    UPDATE pg_temp.apikeys_import i SET reason = pg_catalog.format('digest: the same as row %s', d.first)
      FROM (SELECT x.hash, pg_catalog.min(x.n) AS first FROM pg_temp.apikeys_import x
             WHERE x.reason IS NULL GROUP BY x.hash HAVING count(*) > 1) d
     WHERE i.hash = d.hash AND i.n <> d.first AND i.reason IS NULL;
    UPDATE pg_temp.apikeys_import i SET reason = 'name: taken by an active key in this workspace'
     WHERE i.reason IS NULL
       AND EXISTS (SELECT FROM apikeys.keys k
                    WHERE k.workspace_id = ws AND k.name = i.name AND k.revoked_at IS NULL AND k.replaced_by IS NULL);
    UPDATE pg_temp.apikeys_import i SET reason = pg_catalog.format('name: the same as row %s (names are unique in a workspace)', d.first)
      FROM (SELECT x.name, pg_catalog.min(x.n) AS first FROM pg_temp.apikeys_import x
             WHERE x.reason IS NULL GROUP BY x.name HAVING count(*) > 1) d
     WHERE i.name = d.name AND i.n <> d.first AND i.reason IS NULL;
    bad := 0;
    IF cols NOT LIKE 'pg_catalog.row_number()%' THEN
        SELECT count(*) INTO bad FROM (SELECT x.n FROM pg_temp.apikeys_import x WHERE x.n IS NOT NULL
                                        GROUP BY x.n HAVING count(*) > 1) d;
    END IF;
    IF bad > 0 THEN
        RAISE EXCEPTION 'the source repeats row numbers (column n)' USING ERRCODE = '22023',
            HINT = 'give each row its own n, or leave the column out to number rows as they are read';
    END IF;

    -- the plan, for an importer: a key without a rate, credits or expiry
    -- gets the plan's; one beyond it, or past the most active keys, is not
    -- imported
    IF NOT operator THEN
        SELECT * INTO p FROM apikeys.plans pl WHERE pl.workspace_id = ws;
        IF FOUND THEN
            UPDATE pg_temp.apikeys_import i SET
                rate_limit = coalesce(i.rate_limit, p.rate_limit), rate_window = coalesce(i.rate_window, p.rate_window),
                credits = coalesce(i.credits, p.credits),
                -- (a key given the plan's credits gets its refill too, as a mint does)
                refill_amount = CASE WHEN i.credits IS NULL AND i.refill_amount IS NULL THEN p.refill_amount
                                     ELSE i.refill_amount END,
                refill_interval = CASE WHEN i.credits IS NULL AND i.refill_amount IS NULL THEN p.refill_interval
                                       ELSE i.refill_interval END,
                expires_at = coalesce(i.expires_at, pg_catalog.now() + p.key_lifetime)
             WHERE i.reason IS NULL;
            UPDATE pg_temp.apikeys_import i SET reason = 'limits: beyond the workspace''s plan'
             WHERE i.reason IS NULL
               AND (NOT apikeys.rate_within(i.rate_limit, i.rate_window, p.rate_limit, p.rate_window)
                    OR (p.credits IS NOT NULL AND (i.credits IS NULL OR i.credits > p.credits))
                    OR (p.credits IS NOT NULL AND p.refill_amount IS NULL AND i.refill_amount IS NOT NULL)
                    OR (p.refill_amount IS NOT NULL AND i.refill_amount IS NOT NULL
                        AND i.refill_amount::numeric * (CASE WHEN p.refill_interval = interval '1 month' THEN 30 ELSE 1 END)
                            > p.refill_amount::numeric * (CASE WHEN i.refill_interval = interval '1 month' THEN 30 ELSE 1 END))
                    OR (p.key_lifetime IS NOT NULL AND i.expires_at > pg_catalog.now() + p.key_lifetime + interval '1 second'));
            IF p.active_keys IS NOT NULL THEN
                -- mints of the workspace take turns on the plan's row
                UPDATE apikeys.plans pl SET set_at = pl.set_at WHERE pl.workspace_id = ws;
                SELECT count(*) INTO active FROM apikeys.keys k
                 WHERE k.workspace_id = ws AND k.revoked_at IS NULL AND k.replaced_by IS NULL
                   AND (k.expires_at IS NULL OR k.expires_at > pg_catalog.now());
                UPDATE pg_temp.apikeys_import i SET reason = pg_catalog.format('plan: at most %s active keys', p.active_keys)
                  FROM (SELECT x.n, pg_catalog.row_number() OVER (ORDER BY x.n) AS r
                          FROM pg_temp.apikeys_import x WHERE x.reason IS NULL) o
                 WHERE i.n = o.n AND o.r > p.active_keys - active;
            END IF;
        END IF;
    END IF;

    SELECT count(*) FILTER (WHERE i.reason IS NOT NULL), count(*) INTO bad, done FROM pg_temp.apikeys_import i;
    IF bad > 0 AND all_or_nothing THEN
        RETURN QUERY SELECT i.n, NULL::uuid,
                            CASE WHEN i.reason IS NULL THEN 'not imported' ELSE 'refused' END,
                            coalesce(i.reason, 'all_or_nothing: another row was refused')
                       FROM pg_temp.apikeys_import i ORDER BY i.n;
        RETURN;
    END IF;

    -- the batch: keys (with their owner's shared limit), their digests,
    -- and one audit row; the per-row triggers skip these rows (their work
    -- is done above), in a block of its own so the mark ends with it.
    -- Display prefixes are random (48 bits): one taken already, or twice in
    -- the batch, is rare; the unique index finds it, and only then are the
    -- batch's prefixes checked and the repeated ones drawn again.
    LOOP
        BEGIN
            PERFORM apikeys.import_mark();
            INSERT INTO apikeys.keys (id, workspace_id, owner, name, prefix, scopes, metadata, created_at, expires_at,
                                      last_used_at, source, rate_limit, rate_window, credits, credits_refilled_at,
                                      refill_amount, refill_interval, owner_rate_limit, owner_rate_window)
            SELECT i.id, ws, i.owner, i.name, i.prefix, i.scopes, i.metadata,
               -- (without a legacy created_at: its first known use, else now)
               coalesce(i.created_at, LEAST(i.last_used_at, pg_catalog.now()), pg_catalog.now()),
                   i.expires_at, i.last_used_at, 'imported', i.rate_limit, i.rate_window, i.credits,
                   CASE WHEN i.credits IS NOT NULL THEN pg_catalog.statement_timestamp() END,
                   i.refill_amount, i.refill_interval, l.rate_limit, l.rate_window
              FROM pg_temp.apikeys_import i
              LEFT JOIN apikeys.owner_limits l ON l.workspace_id = ws AND l.owner = i.owner
             WHERE i.reason IS NULL
             ORDER BY i.id;  -- (in key order: the primary key's index and the
                             -- digests' foreign-key checks fill pages in turn)
            INSERT INTO apikeys.key_hashes (key_id, hash)
            SELECT i.id, i.hash FROM pg_temp.apikeys_import i WHERE i.reason IS NULL ORDER BY i.id;
            EXIT;
        EXCEPTION WHEN unique_violation THEN
            -- (the handler makes this block a subtransaction: the mark ends
            -- with it, whether it commits or not)
            GET STACKED DIAGNOSTICS con = CONSTRAINT_NAME;
            -- a digest or a name stored meanwhile by a transaction that
            -- committed after the checks above (a racing import or mint):
            -- the extension's own message, never PostgreSQL's, whose
            -- DETAIL would print the digest
            IF con = 'key_hashes_hash_key' THEN
                RAISE EXCEPTION 'a key with this digest is stored already' USING ERRCODE = '23505',
                    HINT = 'another transaction stored one of the digests meanwhile: run the import again, and its report names the row';
            ELSIF con = 'keys_active_name' THEN
                RAISE EXCEPTION 'an active key with this name already exists in the workspace' USING ERRCODE = '23505',
                    HINT = 'another transaction minted one of the names meanwhile: run the import again, and its report names the row';
            ELSIF con IS DISTINCT FROM 'keys_prefix_key' THEN
                RAISE;
            END IF;
        END;
        LOOP
            UPDATE pg_temp.apikeys_import i SET
                prefix = 'imported:' || pg_catalog.substr(pg_catalog.translate(pg_catalog.encode(
                            pg_catalog.uuid_send(pg_catalog.gen_random_uuid()), 'base64'), '+/=', 'xyz'), 1, 8)
              FROM (SELECT x.n FROM (SELECT y.n, y.prefix, pg_catalog.min(y.n) OVER (PARTITION BY y.prefix) AS first
                                       FROM pg_temp.apikeys_import y WHERE y.reason IS NULL) x
                     WHERE x.n <> x.first OR EXISTS (SELECT FROM apikeys.keys k WHERE k.prefix = x.prefix)) d
             WHERE i.n = d.n;
            EXIT WHEN NOT FOUND;
        END LOOP;
    END LOOP;
    IF done - bad > 0 THEN
        INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
        VALUES (ws, apikeys.current_principal(), 'keys.imported',
                pg_catalog.jsonb_build_object('imported', done - bad, 'refused', bad, 'source', source::text));
    END IF;
    RETURN QUERY SELECT i.n, CASE WHEN i.reason IS NULL THEN i.id END,
                        CASE WHEN i.reason IS NULL THEN 'imported' ELSE 'refused' END, i.reason
                   FROM pg_temp.apikeys_import i ORDER BY i.n;
END
$$;
COMMENT ON FUNCTION apikeys.import_keys(uuid, regclass, boolean) IS
    'Import many keys from another keystore by digest (operators, or admins holding apikeys_importer): one result row per source row, imported or the reason; bad rows roll back nothing unless all_or_nothing.';

-- The per-row triggers of keys skip import_keys' rows (it does their
-- work for the batch)
DROP TRIGGER keys_audit ON apikeys.keys;
CREATE TRIGGER keys_audit AFTER INSERT ON apikeys.keys
    FOR EACH ROW WHEN (NOT apikeys.importing()) EXECUTE FUNCTION apikeys.audit_keys();
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_audit;
REVOKE ALL ON FUNCTION apikeys.importing() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.valid_principal(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.import_mark() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.metadata_ok(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.import_keys_caller(uuid, regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.import_keys(uuid, regclass, boolean) FROM PUBLIC;

-- 11b. Usage forwarded by hot standbys: the ledger of batches applied,
-- apply_forwarded_usage and grant_forwarder.

-- Usage forwarded by hot standbys (apply_forwarded_usage): the last batch
-- applied from each standby's run (its source id, random at each start).
-- A batch is applied once: a retry of one already applied changes nothing.
CREATE TABLE apikeys.usage_sources (
    source  bigint      PRIMARY KEY,
    batch   bigint      NOT NULL CHECK (batch >= 0),
    at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apikeys.usage_sources IS
    'The last batch of usage applied from each standby''s run (internal: no client reads it); rows are kept 30 days.';

-- Standbys' forwarded batches: no client reads or writes them (no policy;
-- apply_forwarded_usage is the only writer).
ALTER TABLE apikeys.usage_sources ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys.usage_sources FORCE ROW LEVEL SECURITY;

-- Usage from hot standbys (docs/operations.md, "Read replicas"): a
-- standby's engine, given apikeys.primary_conninfo, sends each database's
-- counts and last uses to the primary in numbered batches, kept on the
-- standby's disk until the primary answers. The primary applies a batch
-- once: the last batch of each standby run is recorded in usage_sources in
-- the same transaction, so a retry of a batch applied already (its answer
-- lost), a restart or a promotion never counts twice.
CREATE FUNCTION apikeys.apply_forwarded_usage(source bigint, batch bigint, usage text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    last bigint;
    rows jsonb;
    bad bigint;
BEGIN
    IF source IS NULL OR batch IS NULL OR batch < 1 OR usage IS NULL THEN
        RAISE EXCEPTION 'a batch needs its source, a number of 1 or more and its usage' USING ERRCODE = '22023';
    END IF;
    BEGIN
        rows := usage::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'the usage of a batch is not JSON' USING ERRCODE = '22023';
    END;
    IF pg_catalog.jsonb_typeof(rows) <> 'array' THEN
        RAISE EXCEPTION 'the usage of a batch is a JSON array' USING ERRCODE = '22023';
    END IF;
    -- one batch of a source at a time, in order
    INSERT INTO apikeys.usage_sources AS s (source, batch) VALUES (apply_forwarded_usage.source, 0)
        ON CONFLICT (source) DO NOTHING;
    SELECT s.batch INTO last FROM apikeys.usage_sources s WHERE s.source = apply_forwarded_usage.source FOR UPDATE;
    IF apply_forwarded_usage.batch <= last THEN
        RETURN false;  -- applied already
    END IF;
    UPDATE apikeys.usage_sources s SET batch = apply_forwarded_usage.batch, at = pg_catalog.now()
     WHERE s.source = apply_forwarded_usage.source;
    -- rewrite: (at run time, not at update) sources unheard of for 30 days
    DELETE FROM apikeys.usage_sources s WHERE s.at < pg_catalog.now() - interval '30 days';
    -- (the batch is read straight from its JSON in each statement: no
    -- working table, which a caller could have made first under that name)
    -- every field of every entry; counts of 0 to 2^48 whose outcomes add up
    -- to rejected, also summed per key and hour; whole hours (Unix seconds)
    -- and last uses (Unix microseconds) of this century
    SELECT count(*) INTO bad
      FROM pg_catalog.jsonb_to_recordset(rows)
           AS f(k uuid, h bigint, v bigint, r bigint, rl bigint, ue bigint, sc bigint, rf bigint, u bigint)
     WHERE f.k IS NULL OR f.h IS NULL OR f.v IS NULL OR f.r IS NULL OR f.rl IS NULL OR f.ue IS NULL
        OR f.sc IS NULL OR f.rf IS NULL OR f.u IS NULL
        OR LEAST(f.v, f.r, f.rl, f.ue, f.sc, f.rf, f.u) < 0 OR GREATEST(f.v, f.r) >= 281474976710656
        OR f.rl + f.ue + f.sc + f.rf <> f.r
        OR f.h % 3600 <> 0 OR f.h NOT BETWEEN 946684800 AND 4102444800
        OR f.u > 4102444800000000;
    IF bad = 0 THEN
        SELECT count(*) INTO bad
          FROM (SELECT FROM pg_catalog.jsonb_to_recordset(rows) AS f(k uuid, h bigint, v bigint, r bigint)
                 GROUP BY f.k, f.h HAVING pg_catalog.sum(f.v) >= 281474976710656 OR pg_catalog.sum(f.r) >= 281474976710656) g;
    END IF;
    IF bad > 0 THEN
        RAISE EXCEPTION 'a batch holds % entries that are not usage', bad USING ERRCODE = '22023';
    END IF;
    -- the keys that exist here (the workspace is the key's, not the
    -- sender's), of hours from a week ago to an hour ahead (a standby
    -- promoted long after it saved a batch; a clock far off); a count stops
    -- at 2^62, never overflows
    INSERT INTO apikeys.key_usage AS ku (key_id, workspace_id, hour, verified, rejected,
                                         rate_limited, usage_exceeded, insufficient_scope, refused)
    SELECT f.k, k.workspace_id, pg_catalog.to_timestamp(f.h), pg_catalog.sum(f.v), pg_catalog.sum(f.r),
           pg_catalog.sum(f.rl), pg_catalog.sum(f.ue), pg_catalog.sum(f.sc), pg_catalog.sum(f.rf)
      FROM pg_catalog.jsonb_to_recordset(rows)
           AS f(k uuid, h bigint, v bigint, r bigint, rl bigint, ue bigint, sc bigint, rf bigint)
      JOIN apikeys.keys k ON k.id = f.k
     WHERE f.v + f.r > 0
       AND pg_catalog.to_timestamp(f.h) BETWEEN pg_catalog.now() - interval '8 days' AND pg_catalog.now() + interval '1 hour'
     GROUP BY f.k, k.workspace_id, f.h
    ON CONFLICT (key_id, hour) DO UPDATE
       SET verified = LEAST(ku.verified::numeric + excluded.verified, 4611686018427387904)::bigint,
           rejected = LEAST(ku.rejected::numeric + excluded.rejected, 4611686018427387904)::bigint,
           rate_limited = LEAST(ku.rate_limited::numeric + excluded.rate_limited, 4611686018427387904)::bigint,
           usage_exceeded = LEAST(ku.usage_exceeded::numeric + excluded.usage_exceeded, 4611686018427387904)::bigint,
           insufficient_scope = LEAST(ku.insufficient_scope::numeric + excluded.insufficient_scope, 4611686018427387904)::bigint,
           refused = LEAST(ku.refused::numeric + excluded.refused, 4611686018427387904)::bigint;
    -- last_used_at only moves forward (to at most five minutes ahead, for
    -- clocks a little apart), last (a revoke of one of these keys waits
    -- for this statement only), of the rows no one holds: a row a client
    -- holds is never waited for (its key keeps its older stamp until its
    -- next use arrives)
    UPDATE apikeys.keys k SET last_used_at = l.t
      FROM (SELECT f.k, pg_catalog.max(pg_catalog.to_timestamp(f.u / 1000000.0)) AS t
              FROM pg_catalog.jsonb_to_recordset(rows) AS f(k uuid, u bigint)
             WHERE f.u <> 0
               AND pg_catalog.to_timestamp(f.u / 1000000.0)
                   BETWEEN pg_catalog.now() - interval '8 days' AND pg_catalog.now() + interval '5 minutes'
             GROUP BY f.k) l
     WHERE k.id = l.k AND (k.last_used_at IS NULL OR k.last_used_at < l.t)
       AND k.id IN (SELECT h.id FROM apikeys.keys h
                     WHERE h.id IN (SELECT f.k FROM pg_catalog.jsonb_to_recordset(rows) AS f(k uuid, u bigint)
                                     WHERE f.u <> 0)
                     FOR NO KEY UPDATE SKIP LOCKED);
    RETURN true;
END
$$;
COMMENT ON FUNCTION apikeys.apply_forwarded_usage(bigint, bigint, text) IS
    'For the usage engine of hot standbys (a role granted grant_forwarder): add a numbered batch of a standby''s usage to key_usage and last_used_at, once; false for a batch applied already.';

CREATE FUNCTION apikeys.grant_forwarder(role regrole) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    -- regrole's text form is already a quoted identifier
    EXECUTE format('GRANT USAGE ON SCHEMA apikeys TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION apikeys.apply_forwarded_usage(bigint, bigint, text) TO %s', role);
END
$$;
COMMENT ON FUNCTION apikeys.grant_forwarder(regrole) IS
    'Let a login role forward standbys'' usage (apply_forwarded_usage) in this database, and nothing else: the role apikeys.primary_conninfo names.';
REVOKE ALL ON apikeys.usage_sources FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.apply_forwarded_usage(bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.grant_forwarder(regrole) FROM PUBLIC;

-- 12. Nothing new for PUBLIC (the fresh install revokes everything in the
-- schema from PUBLIC). Client roles get the new table and function by
-- running grant_to again after the update: a GRANT made inside this script
-- would be recorded as the extension's own initial privilege, which pg_dump
-- leaves out, so a restored database would silently lose it.
REVOKE ALL ON apikeys.invitations FROM PUBLIC;
REVOKE ALL ON SEQUENCE apikeys.invitations_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.arrives_with_history(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.invitations_guard() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.audit_invitations() FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.accept_invitation(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.report_leaked(text[], text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.expiring_keys(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.checked_within(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION apikeys.github_secret_scanning(text, text, text) FROM PUBLIC;
REVOKE ALL ON apikeys.scanning_keys FROM PUBLIC;
DO $$
BEGIN
    RAISE WARNING 'pg_apikeys 0.2.0 adds apikeys.invitations, apikeys.key_usage, apikeys.accept_invitation(uuid), apikeys.expiring_keys(interval), apikeys.checked_within(interval), apikeys.usage_mode(), apikeys.pending_usage(), apikeys.key_usage_live, apikeys.owner_limits, check_key, update_key, suspend_key, resume_key, set_owner_limit, and new argument lists of create_key and rotate_key for clients'
        USING HINT = 'run SELECT apikeys.grant_to(''<role>'') again for each client role';
END
$$;
