-- Shared setup for every file: the extension, client roles as PostgREST sets
-- them up, and helpers that keep random ids and tokens out of the output.
\set SHOW_CONTEXT never
CREATE EXTENSION pg_apikeys;
-- a second real session for the lock and cache tests (ships with PostgreSQL)
CREATE EXTENSION dblink;

-- Roles are cluster-wide and survive the database between runs.
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['app_user', 'anon', 'authenticated', 'nobody'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    FOREACH r IN ARRAY ARRAY['alice', 'bob', 'carol', 'mallory'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
        IF NOT pg_has_role(r, 'app_user', 'MEMBER') THEN
            EXECUTE format('GRANT app_user TO %I', r);
        END IF;
        -- a run stopped half-way may have left an importer grant behind
        IF pg_has_role(r, 'apikeys_importer', 'MEMBER') THEN
            EXECUTE format('REVOKE apikeys_importer FROM %I', r);
        END IF;
    END LOOP;
END
$$;
-- what clients get: through grant_to only
SELECT apikeys.grant_to('app_user');
SELECT apikeys.grant_to('anon');
SELECT apikeys.grant_to('authenticated');
-- 'nobody' gets nothing

-- Helpers (plain SQL, owned by the test superuser, usable by every role).
CREATE SCHEMA regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;
-- run a statement, return 'ok' or 'SQLSTATE: message' (plus hint, detail)
CREATE FUNCTION regress.try(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE msg text; det text; hin text;
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL, hin = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || msg
        || CASE WHEN det <> '' THEN ' / DETAIL: ' || det ELSE '' END
        || CASE WHEN hin <> '' THEN ' / HINT: ' || hin ELSE '' END;
END
$$;
-- named ids and tokens, so statements inside try() can refer to them
CREATE TABLE regress.vals (name text PRIMARY KEY, val text NOT NULL);
GRANT ALL ON regress.vals TO PUBLIC;
-- (search_path pinned: 17_hostile calls them under a hijacked path)
CREATE FUNCTION regress.put(name text, val text) RETURNS void LANGUAGE sql
    SET search_path = pg_catalog, pg_temp AS
    $$ INSERT INTO regress.vals VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET val = EXCLUDED.val $$;
CREATE FUNCTION regress.id(name text) RETURNS uuid LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp AS
    $$ SELECT val::uuid FROM regress.vals WHERE name = $1 $$;
CREATE FUNCTION regress.tok(name text) RETURNS text LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp AS
    $$ SELECT val FROM regress.vals WHERE name = $1 $$;
-- does the token verify (as the current role)?
CREATE FUNCTION regress.ok(name text, scopes text[] DEFAULT '{}') RETURNS boolean LANGUAGE sql AS
    $$ SELECT EXISTS (SELECT FROM apikeys.verify_key(regress.tok($1), $2)) $$;
-- act as a PostgREST request would: role and claims, local to the transaction
CREATE FUNCTION regress.as_jwt(role text, claims text) RETURNS void LANGUAGE sql AS
    $$ SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true) $$;
-- membership needs the invitee's consent: add_member invites, and the
-- invitee accepts as themself. For files about something else, this does
-- both steps: add_member as the caller, then accept_invitation as `who` (as
-- a PostgREST request with sub = who would; nothing to accept when `who`
-- was a member already and add_member only changed them).
CREATE FUNCTION regress.add_member(ws uuid, who text, role text DEFAULT 'member', scopes text[] DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    saved text := current_setting('request.jwt.claims', true);
BEGIN
    PERFORM apikeys.add_member(ws, who, role, scopes);
    PERFORM set_config('request.jwt.claims', json_build_object('sub', who)::text, true);
    BEGIN
        PERFORM apikeys.accept_invitation(ws);
    EXCEPTION WHEN SQLSTATE 'PT404' THEN
        NULL;
    END;
    PERFORM set_config('request.jwt.claims', coalesce(saved, ''), true);
END
$$;
