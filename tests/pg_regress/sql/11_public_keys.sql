-- Public keys: admin-only create and revoke, resolve by
-- anyone granted, zero rows for every failure, origins checked.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('pws', apikeys.create_workspace('Widget Inc')::text);
SELECT regress.add_member(regress.id('pws'), 'bob', 'member', '{read}');
SELECT regress.put('pk_any', id::text), regress.put('pk_any_key', public_key)
  FROM apikeys.create_public_key(regress.id('pws'));
SELECT regress.put('pk_web', id::text), regress.put('pk_web_key', public_key)
  FROM apikeys.create_public_key(regress.id('pws'),
                                 '{https://App.Example.com,http://localhost:3000,https://app.example.com:443}');
SELECT regress.put('pk_gone', id::text), regress.put('pk_gone_key', public_key)
  FROM apikeys.create_public_key(regress.id('pws'));
-- the format: pk_ + 43 base62 + 6 check characters; origins normalised (case,
-- default port), deduplicated
SELECT public_key ~ '^pk_[0-9A-Za-z]{49}$' AS shaped, allowed_origins, created_by
  FROM apikeys.public_keys WHERE id IN (regress.id('pk_any'), regress.id('pk_web')) ORDER BY cardinality(allowed_origins);
-- bad origins and arguments: 22023
SELECT regress.try(format('SELECT apikeys.create_public_key(regress.id(''pws''), %L)', o)) AS bad_origin
  FROM unnest(ARRAY['{example.com}', '{https://example.com/}', '{https://example.com/app}', '{"https://a b.com"}',
                    '{NULL}', '{https://user@example.com}', '{""}']) AS o;
SELECT regress.try($$SELECT apikeys.create_public_key(regress.id('pws'),
                      (SELECT array_agg('https://h' || i || '.com') FROM generate_series(1, 65) i))$$) AS too_many;
SELECT regress.try($$SELECT apikeys.create_public_key(NULL)$$) AS null_workspace;
RESET ROLE;

-- only admins create and revoke
SET ROLE bob;
SELECT regress.try($$SELECT apikeys.create_public_key(regress.id('pws'))$$) AS member_creates;
SELECT regress.try($$SELECT apikeys.revoke_public_key(regress.id('pk_any'))$$) AS member_revokes;
SELECT count(*) AS member_sees FROM apikeys.public_keys;
RESET ROLE;
SET ROLE mallory;
SELECT regress.try($$SELECT apikeys.create_public_key(regress.id('pws'))$$) AS outsider_creates;
SELECT regress.try($$SELECT apikeys.revoke_public_key(regress.id('pk_any'))$$) AS outsider_revokes;
SELECT regress.try($$SELECT apikeys.revoke_public_key('00000000-0000-4000-8000-0000000000aa')$$) AS absent;
SELECT regress.try($$SELECT apikeys.revoke_public_key(regress.id('pk_any'))$$)
     = regress.try($$SELECT apikeys.revoke_public_key('00000000-0000-4000-8000-0000000000aa')$$) AS identical;
SELECT count(*) AS outsider_sees FROM apikeys.public_keys;
RESET ROLE;
SET ROLE alice;
SELECT count(*) AS admin_sees FROM apikeys.public_keys WHERE workspace_id = regress.id('pws');
-- revoking: once, and again returns the original time; nothing else changes
SELECT regress.put('pk_gone_at', apikeys.revoke_public_key(regress.id('pk_gone'))::text);
SELECT apikeys.revoke_public_key(regress.id('pk_gone'))::text = regress.tok('pk_gone_at') AS same_time;
SELECT count(*) FILTER (WHERE revoked_at IS NULL) AS still_active FROM apikeys.public_keys
 WHERE workspace_id = regress.id('pws');
RESET ROLE;

-- resolving, as the widget's anonymous role
CREATE FUNCTION regress.resolves(pk text, origin text DEFAULT NULL) RETURNS text LANGUAGE sql AS $$
    SELECT coalesce((SELECT v.name FROM apikeys.resolve_public_key($1, $2) r
                       JOIN regress.vals v ON v.val = r.workspace_id::text), '(none)') $$;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT c.case, regress.resolves(c.pk, c.origin) AS resolves_to
  FROM (VALUES
    ('any origin, none sent',       regress.tok('pk_any_key'), NULL),
    ('any origin, one sent',        regress.tok('pk_any_key'), 'https://anything.example'),
    ('allowed origin',              regress.tok('pk_web_key'), 'https://app.example.com'),
    ('allowed origin, upper case',  regress.tok('pk_web_key'), 'HTTPS://APP.EXAMPLE.COM'),
    ('allowed origin with port',    regress.tok('pk_web_key'), 'http://localhost:3000'),
    ('default port written out',    regress.tok('pk_web_key'), 'https://app.example.com:443'),
    ('other port',                  regress.tok('pk_web_key'), 'http://localhost:3001'),
    ('other scheme',                regress.tok('pk_web_key'), 'http://app.example.com'),
    ('suffix trick',                regress.tok('pk_web_key'), 'https://app.example.com.evil.io'),
    ('with path',                   regress.tok('pk_web_key'), 'https://app.example.com/x'),
    ('origin "null"',               regress.tok('pk_web_key'), 'null'),
    ('no origin, list set',         regress.tok('pk_web_key'), NULL),
    ('revoked',                     regress.tok('pk_gone_key'), NULL),
    ('unknown',                     'pk_' || repeat('A', 49), NULL),
    ('bad checksum',                regress.typo(regress.tok('pk_any_key')), NULL),
    ('a secret-key prefix',         'sk' || substr(regress.tok('pk_any_key'), 3), NULL),
    ('empty',                       '', NULL),
    ('null',                        NULL, NULL),
    ('1 MB',                        repeat('p', 1024 * 1024), NULL)
  ) AS c("case", pk, origin);
COMMIT;
-- revoked is revoked for everyone
SELECT regress.try($$UPDATE apikeys.public_keys SET revoked_at = NULL WHERE id = regress.id('pk_gone')$$) AS unrevoke;
SELECT regress.try($$UPDATE apikeys.public_keys SET allowed_origins = '{}' WHERE id = regress.id('pk_web')$$) AS reorigin;
SELECT regress.try($$UPDATE apikeys.public_keys SET workspace_id = regress.id('aws') WHERE id = regress.id('pk_web')$$) AS move;
SELECT regress.try($$DELETE FROM apikeys.public_keys WHERE id = regress.id('pk_gone')$$) AS delete;
-- revoking a public key touches no secret key, member or other public key
SET ROLE alice;
SELECT regress.put('pk_sk', id::text) FROM apikeys.create_key(regress.id('pws'), 'server');
SELECT apikeys.revoke_public_key(regress.id('pk_any')) IS NOT NULL AS revoked;
RESET ROLE;
SELECT (SELECT revoked_at IS NULL FROM apikeys.keys WHERE id = regress.id('pk_sk')) AS secret_key_active,
       (SELECT count(*) FROM apikeys.members WHERE workspace_id = regress.id('pws') AND removed_at IS NULL) AS members,
       (SELECT revoked_at IS NULL FROM apikeys.public_keys WHERE id = regress.id('pk_web')) AS other_public_key_active;
-- anonymous callers cannot create
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.try($$SELECT apikeys.create_public_key(regress.id('pws'))$$) AS anonymous;
ROLLBACK;
-- roles never granted cannot even resolve
SET ROLE nobody;
SELECT regress.try($$SELECT * FROM apikeys.resolve_public_key('pk_x')$$) AS ungranted;
RESET ROLE;
