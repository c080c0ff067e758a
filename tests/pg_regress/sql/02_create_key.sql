-- create_key: the only mint path. The raw key is returned
-- once; names, scopes, prefix, expires_at and metadata are validated; owner
-- is always the caller; scopes never exceed the caller's.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('ws', apikeys.create_workspace('Keys Inc')::text);
SELECT regress.add_member(regress.id('ws'), 'bob', 'member', '{read,write}');
SELECT regress.add_member(regress.id('ws'), 'carol', 'member', '{read}');

-- mint: id, name, display prefix and the key, whose shape is <prefix>_<43><6>
SELECT regress.put('k1', key), regress.put('k1_id', id::text),
       name, prefix ~ '^sk_[0-9A-Za-z]{8}$' AS prefix_ok,
       key ~ '^sk_[0-9A-Za-z]{49}$' AS key_ok,
       left(key, length(prefix)) = prefix AS key_starts_with_prefix
  FROM apikeys.create_key(regress.id('ws'), 'Prod-API', '{read,admin:all}');
SELECT owner, name, scopes, metadata, expires_at IS NULL AS no_expiry, revoked_at IS NULL AS active
  FROM apikeys.keys WHERE id = regress.id('k1_id');

-- default name is key-<first 8 of body>, lower-cased
SELECT name = 'key-' || lower(substr(prefix, 4, 8)) AS default_name_ok
  FROM apikeys.create_key(regress.id('ws'));

-- a chosen prefix, metadata and expiry
SELECT prefix ~ '^sk_live_[0-9A-Za-z]{8}$' AS prefix_ok, key ~ '^sk_live_[0-9A-Za-z]{49}$' AS key_ok
  FROM apikeys.create_key(regress.id('ws'), 'live', '{}', now() + interval '30 days',
                          '{"team":"ops"}', 'sk_live');
SELECT metadata, expires_at > now() AS expires_later FROM apikeys.keys
 WHERE workspace_id = regress.id('ws') AND name = 'live';

-- spoofed owner: a supplied owner is never trusted
SELECT regress.put('spoof', id::text)
  FROM apikeys.create_key(regress.id('ws'), 'spoof', '{}', NULL, '{"owner":"mallory"}');
SELECT owner, metadata FROM apikeys.keys WHERE id = regress.id('spoof');
SELECT regress.try($$INSERT INTO apikeys.keys (workspace_id, owner, name, prefix)
                     VALUES (regress.id('ws'), 'mallory', 'direct', 'sk_direct0')$$);

-- name rules: lower-cased; 64 characters fit; others 22023
SELECT name FROM apikeys.create_key(regress.id('ws'), 'UPPER-Case');
SELECT length(name) FROM apikeys.create_key(regress.id('ws'), repeat('n', 64));
SELECT regress.try(format('SELECT apikeys.create_key(regress.id(%L), %L)', 'ws', n)) AS refused
  FROM unnest(ARRAY['trailing-', '-leading', 'double--dash', 'under_score', 'sp ace', 'dot.ted',
                    repeat('n', 65), '', 'ünïcode', E'nl\n']) AS n;

-- scope, prefix, expiry and metadata rules: 22023
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), NULL, '{"Read"}')$$);
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), NULL, ARRAY['read', NULL])$$);
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), NULL, '{}', NULL, '{}', 'SK')$$);
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), NULL, '{}', NULL, '{}', 'sk_live_extra')$$);
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), NULL, '{}', NULL, '{}', 'pk')$$);
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), NULL, '{}', now() - interval '1 second')$$);
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), NULL, '{}', now())$$);
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), NULL, '{}', NULL, '[1,2]')$$);
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), NULL, '{}', NULL, jsonb_build_object('big', repeat('x', 20000)))$$);
SELECT regress.try($$SELECT apikeys.create_key(NULL)$$);
-- NULL scopes, metadata or prefix mean the defaults
SELECT prefix ~ '^sk_' AS sk FROM apikeys.create_key(regress.id('ws'), 'nulls', NULL, NULL, NULL, NULL);
SELECT scopes, metadata FROM apikeys.keys WHERE workspace_id = regress.id('ws') AND name = 'nulls';

-- an active name is unique in its workspace: 23505, and the message names nothing
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), 'prod-api')$$);
-- ...but free again once the key holding it is revoked
SELECT apikeys.revoke_key(regress.id('k1_id')) IS NOT NULL AS revoked;
SELECT name FROM apikeys.create_key(regress.id('ws'), 'prod-api');
-- the same name in another workspace is fine
SELECT regress.put('ws2', apikeys.create_workspace('Other')::text);
SELECT name FROM apikeys.create_key(regress.id('ws2'), 'prod-api');
RESET ROLE;

-- members: scopes within their own; beyond is refused (42501), not trimmed
SET ROLE bob;
SELECT regress.put('bob-rw', id::text) FROM apikeys.create_key(regress.id('ws'), 'bob-rw', '{write,read}');
SELECT owner, scopes FROM apikeys.keys WHERE id = regress.id('bob-rw');
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), 'bob-admin', '{read,admin}')$$);
SELECT count(*) AS bob_admin_keys FROM apikeys.keys WHERE name = 'bob-admin';
RESET ROLE;
SET ROLE carol;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), 'carol-w', '{write}')$$);
RESET ROLE;

-- non-members: 42501; a workspace that does not exist: PT404
SET ROLE mallory;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), 'intruder')$$);
SELECT regress.try($$SELECT apikeys.create_key('00000000-0000-4000-8000-0000000000ff')$$);
RESET ROLE;

-- anonymous: 42501
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.try($$SELECT apikeys.create_key(regress.id('ws'), 'anon')$$);
ROLLBACK;

-- a JWT caller mints as its sub
BEGIN;
SELECT regress.as_jwt('authenticated', '{"sub":"alice","role":"authenticated"}');
SELECT regress.put('via-jwt', id::text) FROM apikeys.create_key(regress.id('ws'), 'via-jwt');
SELECT owner FROM apikeys.keys WHERE id = regress.id('via-jwt');
COMMIT;

-- the raw key is stored nowhere: not in any column of any extension table
SELECT count(*) AS hits FROM (
    SELECT k::text AS t FROM apikeys.keys k
    UNION ALL SELECT h::text FROM apikeys.key_hashes h
    UNION ALL SELECT m::text FROM apikeys.members m
    UNION ALL SELECT w::text FROM apikeys.workspaces w) x
 WHERE strpos(x.t, regress.tok('k1')) > 0
    OR strpos(x.t, substr(regress.tok('k1'), 12)) > 0;
-- only its SHA-256
SELECT h.hash = sha256(convert_to(regress.tok('k1'), 'UTF8')) AS sha256_stored
  FROM apikeys.key_hashes h WHERE h.key_id = regress.id('k1_id');
-- every key has exactly one hash
SELECT count(*) FILTER (WHERE h.key_id IS NULL) AS keys_without_hash
  FROM apikeys.keys k LEFT JOIN apikeys.key_hashes h ON h.key_id = k.id;
