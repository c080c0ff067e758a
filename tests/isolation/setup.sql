-- Shared by every spec, run once by scripts/isolation.sh in a fresh
-- apikeys_isolation database before pg_isolation_regress (--use-existing):
-- the roles, and the iso schema whose helpers keep ids and tokens out of the
-- output. Each spec's setup creates the extension and its own workspace and
-- keys; its teardown drops the extension and empties iso.vals.
-- roles are cluster-wide and shared with other test layers: create if
-- missing, never drop
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['iso_app', 'iso_alice', 'iso_bob'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', r, CASE WHEN r = 'iso_app' THEN 'NOLOGIN' ELSE 'LOGIN' END);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END;
        END IF;
        IF r <> 'iso_app' AND NOT pg_has_role(r, 'iso_app', 'MEMBER') THEN
            EXECUTE format('GRANT iso_app TO %I', r);
        END IF;
    END LOOP;
END
$$;
-- ids and tokens, shared between sessions and never printed
CREATE SCHEMA iso;
GRANT USAGE ON SCHEMA iso TO PUBLIC;
CREATE TABLE iso.vals (name text PRIMARY KEY, val text NOT NULL);
GRANT ALL ON iso.vals TO PUBLIC;
CREATE FUNCTION iso.val(text) RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT val FROM iso.vals WHERE name = $1 $$;
CREATE FUNCTION iso.id(text) RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT val::uuid FROM iso.vals WHERE name = $1 $$;
-- create_key as the current role; keeps id as <label>, token as <label>.tok
CREATE FUNCTION iso.mint(label text, key_name text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    SELECT * INTO r FROM apikeys.create_key(iso.id('w'), key_name);
    INSERT INTO iso.vals VALUES (label, r.id::text), (label || '.tok', r.key);
END
$$;
-- create_key with scopes as the current role; keeps id and token as mint does
CREATE FUNCTION iso.mint_scoped(label text, key_name text, scopes text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    SELECT * INTO r FROM apikeys.create_key(iso.id('w'), key_name, scopes);
    INSERT INTO iso.vals VALUES (label, r.id::text), (label || '.tok', r.key);
END
$$;
-- rotate_key as the current role; keeps id as <label>, token as <label>.tok
CREATE FUNCTION iso.rotate(label text, key_label text, grace interval) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    SELECT * INTO r FROM apikeys.rotate_key(iso.id(key_label), grace);
    INSERT INTO iso.vals VALUES (label, r.id::text), (label || '.tok', r.key);
END
$$;
-- run a statement; 'ok' or 'SQLSTATE: message' (what a client sees)
CREATE FUNCTION iso.try(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
