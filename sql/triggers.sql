-- pg_apikeys: invariants enforced by triggers (design.md §5).
--
-- Written in PL/pgSQL rather than Rust: each is a few comparisons of OLD and
-- NEW, reads best next to the tables it guards, shows up as is in pg_dump and
-- \d+, and runs only on writes (never on the verify path).
-- Every trigger is ENABLE ALWAYS, so it also fires under
-- session_replication_role = replica, and it binds the superuser too.
-- Each guard runs twice: BEFORE UPDATE, so a violation is reported as 23514
-- before PostgreSQL's own foreign-key checks run, and AFTER UPDATE on the row
-- as finally written, so a BEFORE trigger that sorts later (they fire in
-- name order) cannot undo the check by rewriting NEW after it looked.

-- No DELETE, no TRUNCATE: rows stay for audit (revoke instead).
CREATE FUNCTION apikeys.forbid_delete() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RAISE EXCEPTION '% on apikeys.% is not allowed: rows are kept for audit', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'revoke keys and remove members instead';
END
$$;

-- keys: revoked_at is a one-way latch; expires_at only moves earlier;
-- id, workspace_id, owner, prefix and created_at are write-once.
CREATE FUNCTION apikeys.keys_guard() RETURNS trigger
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
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id
       OR NEW.owner IS DISTINCT FROM OLD.owner
       OR NEW.prefix IS DISTINCT FROM OLD.prefix
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'id, workspace_id, owner, prefix and created_at of a key are write-once'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;  -- ignored when fired AFTER
END
$$;

-- key_hashes: a stored hash never changes.
CREATE FUNCTION apikeys.key_hashes_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RAISE EXCEPTION 'key hashes are write-once'
        USING ERRCODE = 'check_violation';
END
$$;

-- members: removed_at is a latch (a removed member comes back as a new row);
-- id, workspace_id, principal and created_at are write-once.
CREATE FUNCTION apikeys.members_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF OLD.removed_at IS NOT NULL AND NEW IS DISTINCT FROM OLD THEN
        RAISE EXCEPTION 'a removed membership is history and cannot change'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id
       OR NEW.principal IS DISTINCT FROM OLD.principal
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'id, workspace_id, principal and created_at of a membership are write-once'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;  -- ignored when fired AFTER
END
$$;

-- members, after a change: a key's scopes never exceed its owner's, and a
-- removed member's keys stop working at once. Removal revokes the member's
-- active keys in that workspace; a narrower role or scope list narrows them.
CREATE FUNCTION apikeys.members_follow() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
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

-- workspaces: the id is write-once.
CREATE FUNCTION apikeys.workspaces_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.created_at IS DISTINCT FROM OLD.created_at
       OR NEW.created_by IS DISTINCT FROM OLD.created_by THEN
        RAISE EXCEPTION 'id, created_by and created_at of a workspace are write-once'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;  -- ignored when fired AFTER
END
$$;

CREATE TRIGGER keys_guard BEFORE UPDATE ON apikeys.keys
    FOR EACH ROW EXECUTE FUNCTION apikeys.keys_guard();
CREATE TRIGGER keys_guard_final AFTER UPDATE ON apikeys.keys
    FOR EACH ROW EXECUTE FUNCTION apikeys.keys_guard();
CREATE TRIGGER key_hashes_guard BEFORE UPDATE ON apikeys.key_hashes
    FOR EACH ROW EXECUTE FUNCTION apikeys.key_hashes_guard();
CREATE TRIGGER members_guard BEFORE UPDATE ON apikeys.members
    FOR EACH ROW EXECUTE FUNCTION apikeys.members_guard();
CREATE TRIGGER members_guard_final AFTER UPDATE ON apikeys.members
    FOR EACH ROW EXECUTE FUNCTION apikeys.members_guard();
CREATE TRIGGER members_follow AFTER UPDATE ON apikeys.members
    FOR EACH ROW EXECUTE FUNCTION apikeys.members_follow();
CREATE TRIGGER workspaces_guard BEFORE UPDATE ON apikeys.workspaces
    FOR EACH ROW EXECUTE FUNCTION apikeys.workspaces_guard();
CREATE TRIGGER workspaces_guard_final AFTER UPDATE ON apikeys.workspaces
    FOR EACH ROW EXECUTE FUNCTION apikeys.workspaces_guard();

CREATE TRIGGER keys_no_delete BEFORE DELETE ON apikeys.keys
    FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER keys_no_truncate BEFORE TRUNCATE ON apikeys.keys
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER key_hashes_no_delete BEFORE DELETE ON apikeys.key_hashes
    FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER key_hashes_no_truncate BEFORE TRUNCATE ON apikeys.key_hashes
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER members_no_delete BEFORE DELETE ON apikeys.members
    FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER members_no_truncate BEFORE TRUNCATE ON apikeys.members
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER workspaces_no_delete BEFORE DELETE ON apikeys.workspaces
    FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER workspaces_no_truncate BEFORE TRUNCATE ON apikeys.workspaces
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys.forbid_delete();

ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_guard;
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_guard_final;
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_no_delete;
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_no_truncate;
ALTER TABLE apikeys.key_hashes ENABLE ALWAYS TRIGGER key_hashes_guard;
ALTER TABLE apikeys.key_hashes ENABLE ALWAYS TRIGGER key_hashes_no_delete;
ALTER TABLE apikeys.key_hashes ENABLE ALWAYS TRIGGER key_hashes_no_truncate;
ALTER TABLE apikeys.members ENABLE ALWAYS TRIGGER members_guard;
ALTER TABLE apikeys.members ENABLE ALWAYS TRIGGER members_guard_final;
ALTER TABLE apikeys.members ENABLE ALWAYS TRIGGER members_follow;
ALTER TABLE apikeys.members ENABLE ALWAYS TRIGGER members_no_delete;
ALTER TABLE apikeys.members ENABLE ALWAYS TRIGGER members_no_truncate;
ALTER TABLE apikeys.workspaces ENABLE ALWAYS TRIGGER workspaces_guard;
ALTER TABLE apikeys.workspaces ENABLE ALWAYS TRIGGER workspaces_guard_final;
ALTER TABLE apikeys.workspaces ENABLE ALWAYS TRIGGER workspaces_no_delete;
ALTER TABLE apikeys.workspaces ENABLE ALWAYS TRIGGER workspaces_no_truncate;
