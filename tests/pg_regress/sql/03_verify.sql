-- how use is recorded changes what this file sees: its expected output
-- has a variant per mode (expected/03_verify.out without the preload,
-- expected/03_verify_1.out with it)
SELECT apikeys.usage_mode() AS usage_mode;
-- verify_key: one row for a good key, zero rows for every
-- failure alike; works for anonymous callers, in READ ONLY transactions;
-- last_used_at written at most once per interval.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('vws', apikeys.create_workspace('Verify Inc')::text);
SELECT regress.add_member(regress.id('vws'), 'bob', 'member', '{read,write}');
SELECT regress.put('good', key), regress.put('good_id', id::text)
  FROM apikeys.create_key(regress.id('vws'), 'good', '{read,write}', NULL, '{"plan":"pro"}');
SELECT regress.put('revoked', key), regress.put('revoked_id', id::text)
  FROM apikeys.create_key(regress.id('vws'), 'revoked');
SELECT apikeys.revoke_key(regress.id('revoked_id')) IS NOT NULL;
SELECT regress.put('expiring', key), regress.put('expiring_id', id::text)
  FROM apikeys.create_key(regress.id('vws'), 'expiring', '{}', now() + interval '1 hour');
RESET ROLE;
SET ROLE bob;
SELECT regress.put('bobs', key) FROM apikeys.create_key(regress.id('vws'), 'bobs', '{read}');
RESET ROLE;
-- expire one key by moving expires_at earlier (allowed: it only shrinks)
UPDATE apikeys.keys SET expires_at = now() - interval '1 second' WHERE id = regress.id('expiring_id');

-- anonymous callers can verify: one row for a good key
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT key_id = regress.id('good_id') AS right_key, workspace_id = regress.id('vws') AS right_ws,
       owner, scopes, metadata, expires_at
  FROM apikeys.verify_key(regress.tok('good'));
-- required scopes: all must be held
SELECT count(*) FROM apikeys.verify_key(regress.tok('good'), '{read}');
SELECT count(*) FROM apikeys.verify_key(regress.tok('good'), '{read,write}');
SELECT count(*) FROM apikeys.verify_key(regress.tok('good'), '{read,admin}');
SELECT count(*) FROM apikeys.verify_key(regress.tok('good'), ARRAY[NULL]::text[]);
SELECT count(*) FROM apikeys.verify_key(regress.tok('good'), NULL);
COMMIT;

-- zero rows, alike, for every failure
SELECT label, (SELECT count(*) FROM apikeys.verify_key(t)) AS rows
  FROM (VALUES
    ('revoked',          regress.tok('revoked')),
    ('expired',          regress.tok('expiring')),
    ('invented',         'sk_' || repeat('A', 43) || 'AAAAAA'),
    ('checksum broken',  left(regress.tok('good'), -1) ||
                         CASE right(regress.tok('good'), 1) WHEN 'a' THEN 'b' ELSE 'a' END),
    ('body changed',     overlay(regress.tok('good') placing
                         CASE substr(regress.tok('good'), 10, 1) WHEN 'x' THEN 'y' ELSE 'x' END from 10 for 1)),
    ('truncated',        left(regress.tok('good'), -1)),
    ('extended',         regress.tok('good') || 'x'),
    ('wrong prefix',     'pk' || substr(regress.tok('good'), 3)),
    ('upper-cased',      upper(regress.tok('good'))),
    ('empty',            ''),
    ('null',             NULL),
    ('whitespace',       ' ' || regress.tok('good')),
    ('unicode',          'sk_' || repeat('é', 49)),
    ('control chars',    E'sk_\x01\x02'),
    ('1 MB',             repeat('s', 1024 * 1024))
  ) AS v(label, t);

-- a well-formed token with a valid checksum but no such key (its mint was
-- rolled back): zero rows
BEGIN;
SET LOCAL ROLE alice;
SELECT key AS ghost FROM apikeys.create_key(regress.id('vws'), 'ghost') \gset
ROLLBACK;
SELECT count(*) AS rows FROM apikeys.verify_key(:'ghost');

-- works in a READ ONLY transaction (and writes nothing there)
BEGIN READ ONLY;
SELECT count(*) AS rows FROM apikeys.verify_key(regress.tok('bobs'));
COMMIT;
SELECT last_used_at IS NULL AS untouched_by_read_only FROM apikeys.keys
 WHERE workspace_id = regress.id('vws') AND name = 'bobs';

-- last_used_at: written by the first verify, then not again within the interval
-- (with the usage engine, by its worker: flush_usage() waits for it; without,
-- flush_usage() has nothing to do)
SELECT apikeys.flush_usage() AS flushed;
SELECT last_used_at IS NOT NULL AS touched FROM apikeys.keys WHERE id = regress.id('good_id');
SELECT regress.put('t1', last_used_at::text) FROM apikeys.keys WHERE id = regress.id('good_id');
SELECT regress.ok('good');
SELECT regress.ok('good');
SELECT apikeys.flush_usage() AS flushed;
SELECT last_used_at::text = regress.tok('t1') AS unchanged FROM apikeys.keys WHERE id = regress.id('good_id');
-- with an interval of 0 every verify (in a new transaction) writes; the
-- usage engine's worker follows the server's setting, not this session's
SET apikeys.last_used_interval = 0;
SELECT regress.ok('good');
SELECT apikeys.flush_usage() AS flushed;
SELECT last_used_at::text <> regress.tok('t1') AS rewritten FROM apikeys.keys WHERE id = regress.id('good_id');
-- -1: never
SET apikeys.last_used_interval = -1;
SELECT regress.put('t2', last_used_at::text) FROM apikeys.keys WHERE id = regress.id('good_id');
SELECT regress.ok('good');
SELECT apikeys.flush_usage() AS flushed;
SELECT last_used_at::text = regress.tok('t2') AS unchanged FROM apikeys.keys WHERE id = regress.id('good_id');
RESET apikeys.last_used_interval;
-- clients cannot change the interval (superuser-only setting)
SET ROLE alice;
SELECT regress.try($$SET apikeys.last_used_interval = 0$$);
RESET ROLE;

-- a removed member's keys stop verifying at once
SELECT regress.ok('bobs') AS before_removal;
SET ROLE alice;
SELECT apikeys.remove_member(regress.id('vws'), 'bob');
RESET ROLE;
SELECT regress.ok('bobs') AS after_removal;

-- a key's scopes never exceed its owner's: narrowing a member narrows the key
SET ROLE alice;
SELECT regress.add_member(regress.id('vws'), 'carol', 'member', '{read,write}');
RESET ROLE;
SET ROLE carol;
SELECT regress.put('carols', key) FROM apikeys.create_key(regress.id('vws'), 'carols', '{read,write}');
RESET ROLE;
SELECT scopes FROM apikeys.verify_key(regress.tok('carols'));
SET ROLE alice;
SELECT regress.add_member(regress.id('vws'), 'carol', 'member', '{read}');
RESET ROLE;
SELECT scopes FROM apikeys.verify_key(regress.tok('carols'));
SELECT regress.ok('carols', '{write}') AS still_writes;

-- verify_key returns no secret: the key column is nowhere in its result
SELECT count(*) AS leaks FROM apikeys.verify_key(regress.tok('good')) v
 WHERE strpos(v::text, substr(regress.tok('good'), 4)) > 0;
