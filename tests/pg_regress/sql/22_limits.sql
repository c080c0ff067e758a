-- how use is recorded changes what this file sees: its expected output
-- has a variant per mode (expected/22_limits.out without the preload,
-- expected/22_limits_1.out with it)
SELECT apikeys.usage_mode() AS usage_mode;
-- Suspension, update_key, renewal, check_key, and (with the usage engine)
-- rate limits, owner limits and credits. Without the preload, setting a
-- limit or credits is 0A000 with a hint naming shared_preload_libraries.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('lws', apikeys.create_workspace('Limits Inc')::text);
SELECT regress.add_member(regress.id('lws'), 'bob', 'member', '{read,write}');
SELECT regress.put('la', key), regress.put('la_id', id::text)
  FROM apikeys.create_key(regress.id('lws'), 'alice-one', '{read,write,apikeys:manage}');
RESET ROLE;
SET ROLE bob;
SELECT regress.put('lb', key), regress.put('lb_id', id::text)
  FROM apikeys.create_key(regress.id('lws'), 'bob-one', '{read}');
SELECT regress.put('lb2', key), regress.put('lb2_id', id::text)
  FROM apikeys.create_key(regress.id('lws'), 'bob-two', '{read}');
RESET ROLE;

-- ---------------------------------------------------------------- check_key
-- valid: one row with the key's columns; insufficient_scope names the key
SELECT valid, code, key_id = regress.id('la_id') AS the_key, owner, scopes, metadata, credits_remaining,
       rate_limit, rate_remaining, rate_reset
  FROM apikeys.check_key(regress.tok('la'));
SELECT valid, code, key_id = regress.id('lb_id') AS the_key FROM apikeys.check_key(regress.tok('lb'), '{write}');
-- invalid: unknown, malformed, empty, NULL, mistyped, and (below) revoked,
-- expired and suspended keys all give the same row, every other column NULL
CREATE TABLE regress.invalid_rows AS
SELECT 'unknown' AS what, c.* FROM apikeys.check_key('sk_never_minted_at_all_000000000000000000000000000000') c
UNION ALL SELECT 'malformed', c.* FROM apikeys.check_key('not a key') c
UNION ALL SELECT 'empty', c.* FROM apikeys.check_key('') c
UNION ALL SELECT 'null', c.* FROM apikeys.check_key(NULL) c
UNION ALL SELECT 'mistyped', c.* FROM apikeys.check_key(left(regress.tok('la'), -1)
        || CASE WHEN right(regress.tok('la'), 1) = 'A' THEN 'B' ELSE 'A' END) c;
GRANT ALL ON regress.invalid_rows TO PUBLIC;
-- bad costs
SELECT regress.try($$SELECT * FROM apikeys.check_key(regress.tok('la'), NULL, -1)$$) AS negative_cost;
SELECT regress.try($$SELECT * FROM apikeys.check_key(regress.tok('la'), NULL, NULL)$$) AS null_cost;

-- ---------------------------------------------------------------- suspension
SET ROLE bob;
SELECT apikeys.suspend_key(regress.id('lb_id')) AS suspended;
SELECT apikeys.suspend_key(regress.id('lb_id')) AS suspended_again;
SELECT regress.ok('lb') AS verifies_while_suspended;
INSERT INTO regress.invalid_rows SELECT 'suspended', c.* FROM apikeys.check_key(regress.tok('lb')) c;
SELECT apikeys.resume_key(regress.id('lb_id')) AS resumed;
SELECT apikeys.resume_key(regress.id('lb_id')) AS resumed_again;
SELECT regress.ok('lb') AS verifies_after_resume;
RESET ROLE;
-- a suspended key that is revoked never comes back
SET ROLE bob;
SELECT regress.put('lb3', key), regress.put('lb3_id', id::text)
  FROM apikeys.create_key(regress.id('lws'), 'bob-three', '{read}');
SELECT apikeys.suspend_key(regress.id('lb3_id')) AS suspended;
SELECT apikeys.revoke_key(regress.id('lb3_id')) IS NOT NULL AS revoked;
SELECT regress.try(format('SELECT apikeys.resume_key(%L)', regress.id('lb3_id'))) AS resume_revoked;
SELECT regress.try(format('SELECT apikeys.suspend_key(%L)', regress.id('lb3_id'))) AS suspend_revoked;
RESET ROLE;
-- the trigger holds it for the superuser too (also in replica mode)
SELECT regress.try(format('UPDATE apikeys.keys SET suspended_at = NULL WHERE id = %L', regress.id('lb3_id'))) AS superuser_resume;
BEGIN;
SET LOCAL session_replication_role = replica;
SELECT regress.try(format('UPDATE apikeys.keys SET suspended_at = NULL WHERE id = %L', regress.id('lb3_id'))) AS replica_resume;
ROLLBACK;
INSERT INTO regress.invalid_rows SELECT 'revoked', c.* FROM apikeys.check_key(regress.tok('lb3')) c;
-- an expired key (the superuser moves its expiry into the past)
SET ROLE alice;
SELECT regress.put('lx', key), regress.put('lx_id', id::text) FROM apikeys.create_key(regress.id('lws'), 'soon-gone');
RESET ROLE;
UPDATE apikeys.keys SET expires_at = now() - interval '1 minute' WHERE id = regress.id('lx_id');
INSERT INTO regress.invalid_rows SELECT 'expired', c.* FROM apikeys.check_key(regress.tok('lx')) c;
-- one answer for all of them
SELECT count(DISTINCT (valid, code, key_id, workspace_id, owner, scopes, metadata, expires_at, credits_remaining,
                       rate_limit, rate_remaining, rate_reset)) AS distinct_rows, count(*) AS cases,
       bool_and(NOT valid AND code = 'invalid' AND key_id IS NULL AND workspace_id IS NULL AND owner IS NULL
                AND scopes IS NULL AND metadata IS NULL AND expires_at IS NULL AND credits_remaining IS NULL
                AND rate_limit IS NULL AND rate_remaining IS NULL AND rate_reset IS NULL) AS all_null
  FROM regress.invalid_rows;
-- who may suspend: not an outsider (PT404), not anonymous (42501), not a
-- member for someone else's key (PT404)
SET ROLE carol;
SELECT regress.try(format('SELECT apikeys.suspend_key(%L)', regress.id('lb_id'))) AS outsider;
RESET ROLE;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.try(format('SELECT apikeys.suspend_key(%L)', regress.id('lb_id'))) AS anonymous;
ROLLBACK;
SET ROLE bob;
SELECT regress.try(format('SELECT apikeys.suspend_key(%L)', regress.id('la_id'))) AS member_other;
RESET ROLE;

-- ---------------------------------------------------------------- update_key
SET ROLE alice;
SELECT apikeys.update_key(regress.id('lb_id'), name => 'Bob-Renamed', metadata => '{"tier": "gold", "n": 1.50}');
SELECT name, metadata FROM apikeys.keys WHERE id = regress.id('lb_id');
-- scopes within the owner's: bob holds read, write
SELECT apikeys.update_key(regress.id('lb_id'), scopes => '{read,write}');
SELECT regress.try(format('SELECT apikeys.update_key(%L, scopes => %L)', regress.id('lb_id'), '{admin}')) AS beyond_owner;
-- expiry only moves earlier; never into the past
SELECT apikeys.update_key(regress.id('lb_id'), expires_at => now() + interval '30 days');
SELECT regress.try(format('SELECT apikeys.update_key(%L, expires_at => now() + interval %L)', regress.id('lb_id'), '60 days')) AS later;
SELECT regress.try(format('SELECT apikeys.update_key(%L, expires_at => now() - interval %L)', regress.id('lb_id'), '1 day')) AS past;
-- name rules and uniqueness as at mint
SELECT regress.try(format('SELECT apikeys.update_key(%L, name => %L)', regress.id('lb_id'), 'bob-two')) AS taken;
SELECT regress.try(format('SELECT apikeys.update_key(%L, name => %L)', regress.id('lb_id'), 'no spaces')) AS bad_name;
SELECT regress.try(format('SELECT apikeys.update_key(%L, metadata => %L)', regress.id('lb_id'), '[1]')) AS bad_metadata;
SELECT regress.try($$SELECT apikeys.update_key(NULL, name => 'x')$$) AS null_key;
SELECT regress.try($$SELECT apikeys.update_key(gen_random_uuid(), name => 'x')$$) AS unknown_key;
SELECT regress.try(format('SELECT apikeys.update_key(%L, name => %L)', regress.id('lb3_id'), 'revived')) AS revoked_key;
-- NULL everywhere changes nothing
SELECT apikeys.update_key(regress.id('lb_id'));
RESET ROLE;
-- a member changes their own key, not another's
SET ROLE bob;
SELECT apikeys.update_key(regress.id('lb2_id'), name => 'bob-second');
SELECT regress.try(format('SELECT apikeys.update_key(%L, name => %L)', regress.id('la_id'), 'mine-now')) AS member_other;
RESET ROLE;
SET ROLE carol;
SELECT regress.try(format('SELECT apikeys.update_key(%L, name => %L)', regress.id('lb_id'), 'outsider')) AS outsider;
RESET ROLE;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.try(format('SELECT apikeys.update_key(%L, name => %L)', regress.id('lb_id'), 'anonymous')) AS anonymous;
ROLLBACK;
-- through an API key: with apikeys:manage, and without
BEGIN;
SELECT regress.as_jwt('anon', '');
SELECT set_config('request.headers', json_build_object('x-api-key', regress.tok('la'))::text, true) IS NOT NULL AS headers_set;
SELECT apikeys.authenticate();
SELECT apikeys.update_key(regress.id('lb2_id'), metadata => '{"by": "key"}') AS with_manage;
-- alice is an admin (any scope), her key holds read, write, apikeys:manage
SELECT regress.try(format('SELECT apikeys.update_key(%L, scopes => %L)', regress.id('la_id'), '{read,billing}')) AS beyond_the_key;
COMMIT;
BEGIN;
SELECT regress.as_jwt('anon', '');
SELECT set_config('request.headers', json_build_object('x-api-key', regress.tok('lb2'))::text, true) IS NOT NULL AS headers_set;
SELECT apikeys.authenticate();
SELECT regress.try(format('SELECT apikeys.update_key(%L, name => %L)', regress.id('lb2_id'), 'by-itself')) AS without_manage;
COMMIT;
-- every change audited with old and new values (no secret in any)
SELECT action, CASE WHEN action = 'key.expiry_shortened' THEN detail - 'to' ELSE detail - 'suspended_at' END AS detail
  FROM apikeys.audit_log
 WHERE key_id IN (regress.id('lb_id'), regress.id('lb2_id')) AND action NOT IN ('key.created')
 ORDER BY id;
SELECT count(*) AS rows_with_a_secret FROM apikeys.audit_log
 WHERE detail::text LIKE '%' || regress.tok('lb') || '%' OR detail::text LIKE '%' || regress.tok('lb2') || '%';

-- ---------------------------------------------------------------- renewal
SET ROLE alice;
SELECT regress.put('lr', key), regress.put('lr_id', id::text)
  FROM apikeys.create_key(regress.id('lws'), 'renew-me', expires_at => now() + interval '1 day');
SELECT regress.put('lr2_id', id::text) FROM apikeys.rotate_key(regress.id('lr_id'), '1 hour', expires_at => now() + interval '90 days');
SELECT (SELECT expires_at > now() + interval '89 days' FROM apikeys.keys WHERE id = regress.id('lr2_id')) AS renewed,
       (SELECT expires_at <= now() + interval '1 hour' FROM apikeys.keys WHERE id = regress.id('lr_id')) AS old_in_grace;
SELECT regress.try(format('SELECT apikeys.rotate_key(%L, %L, now() - interval %L)', regress.id('lr2_id'), '0', '1 day')) AS renew_into_past;
RESET ROLE;

-- ---------------------------------------------------------------- limits
-- (without the usage engine: 0A000 with a hint, and nothing changes)
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.create_key(regress.id('lws'), 'limited', rate_limit => 3, rate_window => '1 day')$$) AS create_with_limit;
SELECT regress.try(format('SELECT apikeys.update_key(%L, credits => 5)', regress.id('la_id'))) AS update_credits;
SELECT regress.try(format('SELECT apikeys.set_owner_limit(%L, %L, 2, %L)', regress.id('lws'), 'bob', '1 day')) AS owner_limit;
-- argument rules (checked in either mode before anything is written)
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 3)', regress.id('la_id'))) AS limit_without_window;
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 3, rate_window => %L)', regress.id('la_id'), '2 days')) AS window_too_long;
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => -3, rate_window => %L)', regress.id('la_id'), '1 day')) AS negative_limit;
SELECT regress.try(format('SELECT apikeys.update_key(%L, credits => -5)', regress.id('la_id'))) AS negative_credits;
SELECT regress.try(format('SELECT apikeys.update_key(%L, refill_amount => 5, refill_interval => %L)', regress.id('la_id'), '30 days')) AS refill_30_days;
RESET ROLE;
SELECT name, rate_limit, credits FROM apikeys.keys WHERE workspace_id = regress.id('lws') AND name = 'alice-one';

-- the rest runs only with the usage engine
SELECT apikeys.usage_mode() = 'shared_memory' AS engine \gset
\if :engine
SET ROLE alice;
-- a rate limit of 3 a day: three valid, then rate_limited; a refused check consumes nothing
SELECT regress.put('rl', key), regress.put('rl_id', id::text)
  FROM apikeys.create_key(regress.id('lws'), 'rate-limited', rate_limit => 3, rate_window => '1 day');
SELECT code, rate_limit, rate_remaining, rate_reset = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day' AS resets_at_midnight
  FROM apikeys.check_key(regress.tok('rl'));
SELECT code, rate_remaining FROM apikeys.check_key(regress.tok('rl'), NULL, 5);
SELECT code, rate_remaining FROM apikeys.check_key(regress.tok('rl'), NULL, 2);
SELECT code, rate_remaining FROM apikeys.check_key(regress.tok('rl'));
SELECT regress.ok('rl') AS verify_key_refused;
-- scope is checked before the limit, and consumes nothing either
SELECT code FROM apikeys.check_key(regress.tok('rl'), '{write}');
-- credits: 5; cost 2, then 4 refused (nothing taken), then 3 leaves 0
SELECT regress.put('cr', key), regress.put('cr_id', id::text)
  FROM apikeys.create_key(regress.id('lws'), 'credited', credits => 5);
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('cr'), NULL, 2);
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('cr'), NULL, 4);
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('cr'), NULL, 3);
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('cr'));
RESET ROLE;
-- the worker writes the balance; update_key sets a new one (audited)
SELECT apikeys.flush_usage() AS flushed;
SELECT credits FROM apikeys.keys WHERE id = regress.id('cr_id');
SET ROLE alice;
SELECT apikeys.update_key(regress.id('cr_id'), credits => 10);
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('cr'));
RESET ROLE;
SELECT apikeys.flush_usage() AS flushed;
SELECT credits FROM apikeys.keys WHERE id = regress.id('cr_id');
SELECT action, detail FROM apikeys.audit_log WHERE key_id = regress.id('cr_id') AND action = 'key.limits_changed' ORDER BY id;
-- a daily refill: a balance last refilled yesterday is set back to the amount
SET ROLE alice;
SELECT apikeys.update_key(regress.id('cr_id'), credits => 1, refill_amount => 7, refill_interval => '1 day');
RESET ROLE;
UPDATE apikeys.keys SET credits_refilled_at = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '1 microsecond'
 WHERE id = regress.id('cr_id');
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('cr'));
SELECT apikeys.flush_usage() AS flushed;
SELECT credits, credits_refilled_at = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS refilled_today
  FROM apikeys.keys WHERE id = regress.id('cr_id');
-- a monthly refill: last refilled a microsecond before this month began (UTC)
SET ROLE alice;
SELECT apikeys.update_key(regress.id('cr_id'), credits => 2, refill_amount => 9, refill_interval => '1 month');
RESET ROLE;
UPDATE apikeys.keys SET credits_refilled_at = date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '1 microsecond'
 WHERE id = regress.id('cr_id');
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('cr'));
-- and just after this month began: no refill (the period is this one)
SET ROLE alice;
SELECT apikeys.update_key(regress.id('cr_id'), credits => 2);
RESET ROLE;
UPDATE apikeys.keys SET credits_refilled_at = date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 microsecond'
 WHERE id = regress.id('cr_id');
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('cr'));
SELECT apikeys.flush_usage() AS flushed;
SELECT credits, credits_refilled_at = date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 microsecond' AS this_month
  FROM apikeys.keys WHERE id = regress.id('cr_id');
-- removing: rate_limit 0, credits -1
SET ROLE alice;
SELECT apikeys.update_key(regress.id('rl_id'), rate_limit => 0);
SELECT code, rate_limit FROM apikeys.check_key(regress.tok('rl'));
SELECT apikeys.update_key(regress.id('cr_id'), credits => -1);
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('cr'));
-- an owner limit shared by two keys: 2 a day for bob in this workspace
SELECT apikeys.set_owner_limit(regress.id('lws'), 'bob', 2, '1 day');
RESET ROLE;
SELECT code FROM apikeys.check_key(regress.tok('lb'));
SELECT code FROM apikeys.check_key(regress.tok('lb2'));
SELECT code, rate_limit, rate_remaining FROM apikeys.check_key(regress.tok('lb'));
SELECT code FROM apikeys.check_key(regress.tok('lb2'));
-- a key bob mints now carries it too; alice's keys do not
SET ROLE bob;
SELECT regress.put('lb4', key) FROM apikeys.create_key(regress.id('lws'), 'bob-four', '{read}');
RESET ROLE;
SELECT code FROM apikeys.check_key(regress.tok('lb4'));
SELECT code FROM apikeys.check_key(regress.tok('la'));
SET ROLE bob;
SELECT owner, rate_limit, rate_window FROM apikeys.owner_limits;
SELECT regress.try(format('SELECT apikeys.set_owner_limit(%L, %L, 100, %L)', regress.id('lws'), 'bob', '1 day')) AS member_sets;
RESET ROLE;
SET ROLE alice;
SELECT apikeys.set_owner_limit(regress.id('lws'), 'bob', NULL, NULL);
RESET ROLE;
SELECT code FROM apikeys.check_key(regress.tok('lb'));
\endif
