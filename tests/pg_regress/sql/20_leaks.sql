-- Leak reports and keys about to expire. report_leaked revokes every key
-- whose token is reported, at once, writes key.leaked (source, url; never
-- the token or its hash), and labels each token true_positive (ours,
-- revoked now or already) or false_positive (malformed, mistyped, unknown).
-- Only a role granted by grant_leak_reporter may call it; it shows the
-- reporter nothing else.
\set SHOW_CONTEXT never
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'scanner') THEN
        CREATE ROLE scanner LOGIN;
    END IF;
END
$$;
SET ROLE alice;
SELECT regress.put('lws', apikeys.create_workspace('Leaky')::text);
SELECT regress.put('leak1', key), regress.put('leak1_id', id::text) FROM apikeys.create_key(regress.id('lws'), 'leak-one', '{read}');
SELECT regress.put('leak2', key), regress.put('leak2_id', id::text) FROM apikeys.create_key(regress.id('lws'), 'leak-two');
SELECT regress.put('stays', key) FROM apikeys.create_key(regress.id('lws'), 'stays');
SELECT regress.put('gone', key), regress.put('gone_id', id::text) FROM apikeys.create_key(regress.id('lws'), 'gone');
SELECT apikeys.revoke_key(regress.id('gone_id')) IS NOT NULL AS revoked_before;
-- not granted by grant_to: client roles cannot report
SELECT regress.try($$SELECT * FROM apikeys.report_leaked('{x}')$$) AS client_reports;
RESET ROLE;
SELECT regress.try($$SET ROLE scanner; SELECT * FROM apikeys.report_leaked('{x}')$$) AS ungranted_reports;
RESET ROLE;
SELECT apikeys.grant_leak_reporter('scanner');

-- a report: two live keys, a revoked one, a mistyped one, garbage
SET ROLE scanner;
SELECT label, token_hash = encode(sha256(convert_to(t, 'UTF8')), 'hex') AS hash_is_sha256_hex, ord
  FROM unnest(ARRAY[regress.tok('leak1'), regress.tok('leak2'), regress.tok('gone'),
                    -- its last character changed (to B when it was A): a wrong checksum
                    left(regress.tok('stays'), -1)
                      || CASE WHEN right(regress.tok('stays'), 1) = 'A' THEN 'B' ELSE 'A' END,
                    'not a token at all']) WITH ORDINALITY AS u(t, ord)
  JOIN LATERAL (SELECT * FROM apikeys.report_leaked(ARRAY[u.t], 'github', 'https://github.com/acme/app/blob/main/.env')) r ON true
 ORDER BY ord;
-- the reporter sees nothing of keys, hashes or the audit log
SELECT regress.try('SELECT count(*) FROM apikeys.keys') AS reporter_reads_keys;
SELECT regress.try('SELECT count(*) FROM apikeys.key_hashes') AS reporter_reads_hashes;
RESET ROLE;
SELECT regress.ok('leak1') AS leak1_verifies, regress.ok('leak2') AS leak2_verifies, regress.ok('stays') AS stays_verifies;
-- one key.leaked per key, with source and url, and the usual key.revoked
SET ROLE alice;
SELECT actor, action, detail - 'revoked_at' AS detail FROM apikeys.audit_log
 WHERE workspace_id = regress.id('lws') AND action IN ('key.leaked', 'key.revoked') ORDER BY id;
-- no token and no hash in any audit row
SELECT count(*) AS rows_with_a_secret FROM apikeys.audit_log
 WHERE detail::text LIKE '%' || regress.tok('leak1') || '%'
    OR detail::text LIKE '%' || encode(sha256(convert_to(regress.tok('leak1'), 'UTF8')), 'hex') || '%';
RESET ROLE;
-- idempotent: the same report again changes nothing
SET ROLE scanner;
SELECT label FROM apikeys.report_leaked(ARRAY[regress.tok('leak1')], 'github');
RESET ROLE;
SELECT count(*) AS leaked_rows FROM apikeys.audit_log WHERE key_id = regress.id('leak1_id') AND action = 'key.leaked';
-- bad input: 22023, nothing revoked
SET ROLE scanner;
SELECT regress.try($$SELECT * FROM apikeys.report_leaked(NULL)$$) AS null_list;
SELECT regress.try(format('SELECT * FROM apikeys.report_leaked(ARRAY[%L, NULL])', regress.tok('stays'))) AS null_token;
SELECT regress.try($$SELECT * FROM apikeys.report_leaked((SELECT array_agg(i::text) FROM generate_series(1, 1001) i))$$) AS too_many;
SELECT regress.try(format('SELECT * FROM apikeys.report_leaked(ARRAY[%L], repeat(''s'', 257))', regress.tok('stays'))) AS long_source;
SELECT regress.try($$SELECT * FROM apikeys.report_leaked('{}')$$) AS empty_list;
RESET ROLE;
SELECT regress.ok('stays') AS stays_still_verifies;
-- read-only: PostgreSQL's own 25006, nothing revoked
BEGIN READ ONLY;
SET LOCAL ROLE scanner;
SELECT regress.try(format('SELECT * FROM apikeys.report_leaked(ARRAY[%L])', regress.tok('stays'))) AS read_only;
ROLLBACK;
SELECT regress.ok('stays') AS stays_verifies_after_read_only;

-- keys about to expire, as RLS shows them: admins their workspace's, members their own
SET ROLE alice;
SELECT regress.add_member(regress.id('lws'), 'bob', 'member', '{read}');
SELECT name FROM apikeys.create_key(regress.id('lws'), 'soon', '{}', now() + interval '2 days');
SELECT name FROM apikeys.create_key(regress.id('lws'), 'later', '{}', now() + interval '60 days');
RESET ROLE;
SET ROLE bob;
SELECT name FROM apikeys.create_key(regress.id('lws'), 'bobs-soon', '{read}', now() + interval '3 days');
SELECT name, owner FROM apikeys.expiring_keys() WHERE workspace_id = regress.id('lws');
RESET ROLE;
SET ROLE alice;
SELECT name, owner FROM apikeys.expiring_keys() WHERE workspace_id = regress.id('lws');
SELECT name FROM apikeys.expiring_keys(interval '90 days') WHERE workspace_id = regress.id('lws');
RESET ROLE;
SET ROLE mallory;
SELECT count(*) AS mallory_sees FROM apikeys.expiring_keys(interval '90 days');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION apikeys.report_leaked(text[], text, text) FROM scanner;
REVOKE USAGE ON SCHEMA apikeys FROM scanner;
