-- pg_apikeys: invariants enforced by triggers.
--
-- Written in PL/pgSQL rather than Rust: each is a few comparisons of OLD and
-- NEW, reads best next to the tables it guards, shows up as is in pg_dump and
-- \d+, and runs only on writes (never on the verify path).
-- Every trigger is ENABLE ALWAYS, so it also fires under
-- session_replication_role = replica, and it binds the superuser too.
-- A guard that allows some changes runs twice: BEFORE UPDATE, so a violation
-- is reported as 23514 before PostgreSQL's own foreign-key checks run, and
-- AFTER UPDATE on the row as finally written, so a BEFORE trigger that sorts
-- later (they fire in name order) cannot undo the check by rewriting NEW
-- after it looked. The guards that refuse every update (key_hashes_guard,
-- audit_log_guard) need only the BEFORE trigger.

-- No DELETE, no TRUNCATE: rows stay for audit (revoke instead).
CREATE FUNCTION apikeys.forbid_delete() RETURNS trigger
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

-- keys: revoked_at and replaced_by are one-way latches; expires_at only
-- moves earlier; id, workspace_id, owner, prefix, source and created_at are
-- write-once.
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

-- public_keys: revoked_at is a latch; every other column is write-once
-- (to change the allowed origins, create a new public key and revoke the old).
CREATE FUNCTION apikeys.public_keys_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'a revoked public key stays revoked: revoked_at cannot be cleared or moved'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.workspace_id IS DISTINCT FROM OLD.workspace_id
       OR NEW.public_key IS DISTINCT FROM OLD.public_key
       OR NEW.allowed_origins IS DISTINCT FROM OLD.allowed_origins
       OR NEW.created_by IS DISTINCT FROM OLD.created_by
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'only revoked_at of a public key may change, once'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;  -- ignored when fired AFTER
END
$$;

-- invitations: an accepted or withdrawn invitation is history and never
-- changes again; an open one may change its role, scopes and inviter (an
-- admin inviting again) and be accepted or withdrawn once; id,
-- workspace_id, principal and created_at are write-once.
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

-- key_usage: counters only grow; key_id, workspace_id and hour are write-once.
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

-- audit_log: rows are written once and never changed.
CREATE FUNCTION apikeys.audit_log_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: its rows cannot change'
        USING ERRCODE = 'check_violation';
END
$$;

-- ---------------------------------------------------------------------------
-- Audit: one row per change, written in the same transaction.
-- SECURITY DEFINER so that every writer's change is recorded (clients cannot
-- write audit_log); the actor is still the caller, because
-- current_principal() reads the outer role, never this function's owner.
-- detail holds names, scopes, times and ids: never a token or a hash (there
-- is none in these tables to leak).

-- Whether this backend is a logical replication worker applying a
-- subscription's changes (src/replication.rs). Such a change carries what its
-- publisher's triggers wrote (audit rows, cascaded revokes, stamped
-- provenance), so the triggers that derive writes stand aside for it; the
-- guards keep firing. It is the backend's state, not session_replication_role,
-- which a superuser may set by hand (docs/operations.md).
CREATE FUNCTION apikeys.applying_replicated_change() RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'apikeys_applying_replicated_change';

-- Logical replication does not carry sequences. When a subscription applies
-- a row with a generated id (members, invitations, audit_log), the table's
-- sequence is moved past it, so that after a switch-over the subscriber's
-- own rows never take a replicated id. Only for replicated rows: a local
-- insert (or a restore, which sets the sequence itself) is left alone.
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

-- A new key carries its owner's shared limit (owner_limits), so that a
-- verify reads it with the key. Replicated and restored rows bring theirs.
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

-- Whether a row being inserted is history arriving with its own audit rows
-- (pg_restore, pg_dump's plain SQL, a superuser's backfill) rather than a new
-- event: its created_at lies before this transaction. The audit triggers
-- write nothing for such a row (the dump brings its audit rows, and a second
-- set would collide with their ids).
CREATE FUNCTION apikeys.arrives_with_history(created_at timestamptz) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT $1 < pg_catalog.now() $$;

CREATE FUNCTION apikeys.audit_keys() RETURNS trigger
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

CREATE FUNCTION apikeys.audit_members() RETURNS trigger
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

CREATE FUNCTION apikeys.audit_workspaces() RETURNS trigger
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

CREATE FUNCTION apikeys.audit_public_keys() RETURNS trigger
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

-- invitations: made or renewed by an admin, withdrawn by an admin; an
-- acceptance shows as the member.added row the new membership writes.
CREATE FUNCTION apikeys.audit_invitations() RETURNS trigger
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

CREATE TRIGGER public_keys_guard BEFORE UPDATE ON apikeys.public_keys
    FOR EACH ROW EXECUTE FUNCTION apikeys.public_keys_guard();
CREATE TRIGGER public_keys_guard_final AFTER UPDATE ON apikeys.public_keys
    FOR EACH ROW EXECUTE FUNCTION apikeys.public_keys_guard();
CREATE TRIGGER audit_log_guard BEFORE UPDATE ON apikeys.audit_log
    FOR EACH ROW EXECUTE FUNCTION apikeys.audit_log_guard();

-- Audit triggers. The keys one skips updates of last_used_at alone, so
-- verify_key never writes an audit row, and the usage engine's writes of
-- credits (a debit is not a change anyone made). An INSERT of a row whose created_at
-- lies before the transaction (what pg_restore and pg_dump's plain SQL do
-- with every row) is not audited: the dump brings that row's audit rows
-- with it, and a second set would collide with their ids.
CREATE TRIGGER keys_audit AFTER INSERT ON apikeys.keys
    FOR EACH ROW WHEN (NOT apikeys.importing()) EXECUTE FUNCTION apikeys.audit_keys();
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
CREATE TRIGGER members_audit AFTER INSERT OR UPDATE ON apikeys.members
    FOR EACH ROW EXECUTE FUNCTION apikeys.audit_members();
CREATE TRIGGER workspaces_audit AFTER INSERT ON apikeys.workspaces
    FOR EACH ROW EXECUTE FUNCTION apikeys.audit_workspaces();
CREATE TRIGGER public_keys_audit AFTER INSERT OR UPDATE ON apikeys.public_keys
    FOR EACH ROW EXECUTE FUNCTION apikeys.audit_public_keys();

CREATE TRIGGER public_keys_no_delete BEFORE DELETE ON apikeys.public_keys
    FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER public_keys_no_truncate BEFORE TRUNCATE ON apikeys.public_keys
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON apikeys.audit_log
    FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON apikeys.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys.forbid_delete();
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
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_audit;
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_audit_change;
ALTER TABLE apikeys.members ENABLE ALWAYS TRIGGER members_audit;
ALTER TABLE apikeys.workspaces ENABLE ALWAYS TRIGGER workspaces_audit;
ALTER TABLE apikeys.public_keys ENABLE ALWAYS TRIGGER public_keys_guard;
ALTER TABLE apikeys.public_keys ENABLE ALWAYS TRIGGER public_keys_guard_final;
ALTER TABLE apikeys.public_keys ENABLE ALWAYS TRIGGER public_keys_audit;
ALTER TABLE apikeys.public_keys ENABLE ALWAYS TRIGGER public_keys_no_delete;
ALTER TABLE apikeys.public_keys ENABLE ALWAYS TRIGGER public_keys_no_truncate;
ALTER TABLE apikeys.audit_log ENABLE ALWAYS TRIGGER audit_log_guard;
ALTER TABLE apikeys.audit_log ENABLE ALWAYS TRIGGER audit_log_no_delete;
ALTER TABLE apikeys.audit_log ENABLE ALWAYS TRIGGER audit_log_no_truncate;

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

CREATE TRIGGER members_follow_replicated_id BEFORE INSERT ON apikeys.members
    FOR EACH ROW EXECUTE FUNCTION apikeys.follow_replicated_id();
CREATE TRIGGER invitations_follow_replicated_id BEFORE INSERT ON apikeys.invitations
    FOR EACH ROW EXECUTE FUNCTION apikeys.follow_replicated_id();
CREATE TRIGGER audit_log_follow_replicated_id BEFORE INSERT ON apikeys.audit_log
    FOR EACH ROW EXECUTE FUNCTION apikeys.follow_replicated_id();
ALTER TABLE apikeys.members ENABLE ALWAYS TRIGGER members_follow_replicated_id;
ALTER TABLE apikeys.invitations ENABLE ALWAYS TRIGGER invitations_follow_replicated_id;
ALTER TABLE apikeys.audit_log ENABLE ALWAYS TRIGGER audit_log_follow_replicated_id;

CREATE TRIGGER keys_owner_limit BEFORE INSERT ON apikeys.keys
    FOR EACH ROW WHEN (NOT apikeys.importing()) EXECUTE FUNCTION apikeys.keys_owner_limit();
ALTER TABLE apikeys.keys ENABLE ALWAYS TRIGGER keys_owner_limit;

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

-- Internal functions: each says so, so that \df apikeys.* tells them from the API.
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
COMMENT ON FUNCTION apikeys.applying_replicated_change() IS 'Internal: whether this backend is a logical replication worker applying a subscription''s changes; used by the triggers.';
COMMENT ON FUNCTION apikeys.follow_replicated_id() IS 'Internal trigger function (moves an id sequence past a replicated row''s id); not for calling.';
COMMENT ON FUNCTION apikeys.key_usage_guard() IS 'Internal trigger function (usage counts only grow; write-once columns of key_usage); not for calling.';
COMMENT ON FUNCTION apikeys.keys_owner_limit() IS 'Internal trigger function (a new key carries its owner''s shared rate limit); not for calling.';

CREATE TRIGGER suspensions_no_delete BEFORE DELETE ON apikeys.suspensions
    FOR EACH ROW EXECUTE FUNCTION apikeys.forbid_delete();
CREATE TRIGGER suspensions_no_truncate BEFORE TRUNCATE ON apikeys.suspensions
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys.forbid_delete();
ALTER TABLE apikeys.suspensions ENABLE ALWAYS TRIGGER suspensions_no_delete;
ALTER TABLE apikeys.suspensions ENABLE ALWAYS TRIGGER suspensions_no_truncate;

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
