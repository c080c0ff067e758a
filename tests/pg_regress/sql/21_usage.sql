-- how use is recorded changes what this file sees: its expected output
-- has a variant per mode (expected/21_usage.out without the preload,
-- expected/21_usage_1.out with it)
SELECT apikeys.usage_mode() AS usage_mode;
-- The usage engine: with shared_preload_libraries = 'pg_apikeys', verify_key
-- and authenticate() record each outcome in shared memory and a background
-- worker writes key_usage (per key and hour) and last_used_at. Without the
-- preload, key_usage stays empty and flush_usage() has nothing to do.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('uws', apikeys.create_workspace('Usage Inc')::text);
SELECT regress.add_member(regress.id('uws'), 'bob', 'member', '{read}');
SELECT regress.put('ua', key), regress.put('ua_id', id::text)
  FROM apikeys.create_key(regress.id('uws'), 'alice-usage', '{read}');
RESET ROLE;
SET ROLE bob;
SELECT regress.put('ub', key), regress.put('ub_id', id::text)
  FROM apikeys.create_key(regress.id('uws'), 'bob-usage', '{read}');
RESET ROLE;
SELECT apikeys.flush_usage() AS flushed_before;
SELECT regress.put('s0', row_to_json(s)::text) FROM apikeys.usage_stats() s;

-- 5 good verifies of alice's key (two in READ ONLY transactions, as every
-- PostgREST GET), 2 refused for a missing scope; bob's key 3 times; two
-- unknown tokens (a string that could be an imported key counts as
-- unknown); two malformed ones (a token of ours with a wrong checksum, an
-- empty string): these belong to no key
SELECT regress.ok('ua'), regress.ok('ua'), regress.ok('ua');
BEGIN READ ONLY;
SELECT regress.ok('ua'), regress.ok('ua');
COMMIT;
SELECT regress.ok('ua', '{write}'), regress.ok('ua', '{admin}');
SET ROLE bob;
SELECT regress.ok('ub'), regress.ok('ub'), regress.ok('ub');
RESET ROLE;
SELECT count(*) AS unknown FROM apikeys.verify_key('sk_00000000000000000000000000000000000000000000000000');
SELECT count(*) AS unknown FROM apikeys.verify_key('not a key');
SELECT count(*) AS malformed FROM apikeys.verify_key(
    left(regress.tok('ua'), -1) || CASE WHEN right(regress.tok('ua'), 1) = 'A' THEN 'B' ELSE 'A' END);
SELECT count(*) AS malformed FROM apikeys.verify_key('');

-- counts since s0, before the worker wrote anything
SELECT s.verified - (regress.tok('s0')::json->>'verified')::bigint AS verified,
       s.rejected - (regress.tok('s0')::json->>'rejected')::bigint AS rejected,
       s.unknown - (regress.tok('s0')::json->>'unknown')::bigint AS unknown,
       s.malformed - (regress.tok('s0')::json->>'malformed')::bigint AS malformed,
       s.pending, s.slots_in_use
  FROM apikeys.usage_stats() s;
-- a verify wrote nothing itself
SELECT name, last_used_at IS NULL AS not_written_by_verify FROM apikeys.keys
 WHERE workspace_id = regress.id('uws') ORDER BY name;
SELECT apikeys.flush_usage() AS flushed;
SELECT s.pending, s.flushed - (regress.tok('s0')::json->>'flushed')::bigint AS flushed_since,
       s.discarded - (regress.tok('s0')::json->>'discarded')::bigint AS discarded_since
  FROM apikeys.usage_stats() s;
SELECT k.name, u.hour = date_trunc('hour', now()) AS this_hour, u.verified, u.rejected,
       u.workspace_id = regress.id('uws') AS right_workspace
  FROM apikeys.key_usage u JOIN apikeys.keys k ON k.id = u.key_id
 WHERE u.workspace_id = regress.id('uws') ORDER BY k.name;
SELECT name, last_used_at IS NOT NULL AS written_by_worker FROM apikeys.keys
 WHERE workspace_id = regress.id('uws') ORDER BY name;
-- a second flush adds to the same hour's row
SELECT regress.ok('ua');
SELECT apikeys.flush_usage() AS flushed;
SELECT verified FROM apikeys.key_usage WHERE key_id = regress.id('ua_id');

-- RLS like keys: the admin sees the workspace, a member their own keys,
-- an outsider nothing (every file's verifies are in key_usage by now: look
-- at this file's workspace)
SET ROLE alice;
SELECT k.name FROM apikeys.key_usage u JOIN apikeys.keys k ON k.id = u.key_id
 WHERE u.workspace_id = regress.id('uws') ORDER BY 1;
RESET ROLE;
SET ROLE bob;
SELECT count(*) AS bob_rows, bool_and(key_id = regress.id('ub_id')) AS only_his FROM apikeys.key_usage
 WHERE workspace_id = regress.id('uws');
RESET ROLE;
SET ROLE carol;
SELECT count(*) AS outsider_rows FROM apikeys.key_usage WHERE workspace_id = regress.id('uws');
RESET ROLE;
SET ROLE nobody;
SELECT regress.try($$SELECT count(*) FROM apikeys.key_usage$$) AS ungranted;
RESET ROLE;

-- counts only grow; rows are never deleted; clients cannot write
SELECT regress.try($$UPDATE apikeys.key_usage SET verified = 0$$) AS shrink;
SELECT regress.try($$UPDATE apikeys.key_usage SET hour = hour - interval '1 hour'$$) AS move;
SELECT regress.try($$DELETE FROM apikeys.key_usage$$) AS delete;
SELECT regress.try($$TRUNCATE apikeys.key_usage$$) AS truncate;
SET ROLE alice;
SELECT regress.try($$INSERT INTO apikeys.key_usage VALUES (gen_random_uuid(), gen_random_uuid(), now(), 1, 0)$$) AS client_insert;
-- clients may ask how use is recorded, not for the cluster's counters or a flush
SELECT apikeys.usage_mode() IS NOT NULL AS mode_visible;
SELECT regress.try($$SELECT * FROM apikeys.usage_stats()$$) AS stats;
SELECT regress.try($$SELECT apikeys.flush_usage()$$) AS flush;
RESET ROLE;

-- a revoked key's verifies count as rejected, and the revoke waited for no one
SET ROLE bob;
SELECT apikeys.revoke_key(regress.id('ub_id')) IS NOT NULL AS revoked;
SELECT regress.ok('ub') AS after_revoke;
RESET ROLE;
SELECT apikeys.flush_usage() AS flushed;
SELECT verified, rejected FROM apikeys.key_usage WHERE key_id = regress.id('ub_id');

-- usage by outcome: every rejected check is counted under why it was
-- rejected (rate_limited, usage_exceeded, insufficient_scope, refused), in
-- key_usage, key_usage_live and usage_stats(); the four add up to rejected.
-- (Limits need the engine: without it these keys are refused at mint and
-- the rows below are empty.)
SELECT regress.put('s1', row_to_json(s)::text) FROM apikeys.usage_stats() s;
SET ROLE alice;
SELECT regress.put('ur', key), regress.put('ur_id', id::text)
  FROM apikeys.create_key(regress.id('uws'), 'rate-outcomes', '{read}', rate_limit => 2, rate_window => '1 day');
SELECT regress.put('uc', key), regress.put('uc_id', id::text)
  FROM apikeys.create_key(regress.id('uws'), 'credit-outcomes', '{read}', credits => 1);
-- rate: 2 admitted, the third rate limited; a missing scope is checked
-- before the limits (and spends nothing)
SELECT regress.ok('ur'), regress.ok('ur', '{write}'), regress.ok('ur'), regress.ok('ur');
-- credits: 1 admitted, the second usage exceeded
SELECT regress.ok('uc'), regress.ok('uc');
-- revoked: refused
SELECT apikeys.revoke_key(regress.id('ur_id')) IS NOT NULL AS revoked;
SELECT regress.ok('ur') AS after_revoke;
RESET ROLE;
-- before the worker wrote them: the live view has them already
SET ROLE alice;
SELECT k.name, l.verified, l.rejected, l.rate_limited, l.usage_exceeded, l.insufficient_scope, l.refused
  FROM apikeys.key_usage_live l JOIN apikeys.keys k ON k.id = l.key_id
 WHERE k.name IN ('rate-outcomes', 'credit-outcomes') ORDER BY k.name;
RESET ROLE;
SELECT apikeys.flush_usage() AS flushed;
SELECT k.name, u.verified, u.rejected, u.rate_limited, u.usage_exceeded, u.insufficient_scope, u.refused,
       u.rejected = u.rate_limited + u.usage_exceeded + u.insufficient_scope + u.refused AS adds_up
  FROM apikeys.key_usage u JOIN apikeys.keys k ON k.id = u.key_id
 WHERE k.name IN ('rate-outcomes', 'credit-outcomes') ORDER BY k.name;
SELECT s.rate_limited - (regress.tok('s1')::json->>'rate_limited')::bigint AS rate_limited,
       s.usage_exceeded - (regress.tok('s1')::json->>'usage_exceeded')::bigint AS usage_exceeded,
       s.insufficient_scope - (regress.tok('s1')::json->>'insufficient_scope')::bigint AS insufficient_scope,
       s.refused - (regress.tok('s1')::json->>'refused')::bigint AS refused
  FROM apikeys.usage_stats() s;
-- a count by outcome only grows, as the others do
SELECT regress.try($$UPDATE apikeys.key_usage SET refused = 0 WHERE refused > 0$$) AS shrink_refused;

-- a hot standby's usage arrives through apply_forwarded_usage, called by
-- a login role granted grant_forwarder (and nothing else): a batch of a
-- source counts once, whatever the retries; a batch's outcomes must add up
-- to rejected; keys that do not exist here are left out
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'usage_forwarder') THEN
        CREATE ROLE usage_forwarder LOGIN;
    END IF;
END
$$;
SELECT apikeys.grant_forwarder('usage_forwarder');
SELECT regress.put('fh', extract(epoch FROM date_trunc('hour', now()))::bigint::text);
SELECT regress.put('fu', (extract(epoch FROM now()) * 1000000)::bigint::text);
SELECT regress.put('f0', coalesce(sum(verified), 0)::text) FROM apikeys.key_usage WHERE key_id = regress.id('ua_id');
SELECT regress.put('batch1', format('[{"k":"%s","h":%s,"v":3,"r":1,"rl":0,"ue":0,"sc":1,"rf":0,"u":%s},
                                      {"k":"%s","h":%s,"v":9,"r":0,"rl":0,"ue":0,"sc":0,"rf":0,"u":0}]',
       regress.id('ua_id'), regress.tok('fh'), regress.tok('fu'), gen_random_uuid(), regress.tok('fh')));
SET ROLE usage_forwarder;
SELECT apikeys.apply_forwarded_usage(42, 1, regress.tok('batch1')) AS applied;
SELECT apikeys.apply_forwarded_usage(42, 1, regress.tok('batch1')) AS applied_again;
SELECT apikeys.apply_forwarded_usage(42, 2, format('[{"k":"%s","h":%s,"v":2,"r":0,"rl":0,"ue":0,"sc":0,"rf":0,"u":0}]',
                                                   regress.id('ua_id'), regress.tok('fh'))) AS second_batch;
SELECT apikeys.apply_forwarded_usage(42, 1, regress.tok('batch1')) AS first_batch_late;
SELECT regress.try(format($$SELECT apikeys.apply_forwarded_usage(43, 1, '[{"k":"%s","h":%s,"v":1,"r":2,"rl":1,"ue":0,"sc":0,"rf":0,"u":0}]')$$,
                          regress.id('ua_id'), regress.tok('fh'))) AS outcomes_not_adding_up;
SELECT regress.try($$SELECT apikeys.apply_forwarded_usage(43, 1, 'not json')$$) AS not_json;
SELECT regress.try($$SELECT apikeys.apply_forwarded_usage(43, 0, '[]')$$) AS batch_zero;
SELECT regress.try($$SELECT count(*) FROM apikeys.keys$$) AS reads_keys;
SELECT regress.try($$SELECT count(*) FROM apikeys.usage_sources$$) AS reads_sources;
SELECT regress.try($$SELECT * FROM apikeys.verify_key('x')$$) AS verifies;
RESET ROLE;
SELECT sum(verified) - regress.tok('f0')::bigint AS verified_added, sum(insufficient_scope) >= 1 AS scope_outcome_kept
  FROM apikeys.key_usage WHERE key_id = regress.id('ua_id');
SELECT last_used_at >= now() - interval '1 minute' AS last_used_from_the_standby FROM apikeys.keys WHERE id = regress.id('ua_id');
SELECT source, batch FROM apikeys.usage_sources ORDER BY source;
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.apply_forwarded_usage(44, 1, '[]')$$) AS client_forwards;
RESET ROLE;

-- a key row another session holds is never waited for: the batch's counts
-- land, that key keeps its older last_used_at
SET ROLE alice;
SELECT regress.put('uh_id', id::text) FROM apikeys.create_key(regress.id('uws'), 'held-during-forward');
RESET ROLE;
SELECT dblink_connect('holder', format('dbname=%s port=%s host=%s user=postgres', current_database(),
       current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT dblink_exec('holder', 'BEGIN');
SELECT t.id = regress.id('uh_id') AS held FROM dblink('holder', format(
    'SELECT id FROM apikeys.keys WHERE id = %L FOR UPDATE', regress.id('uh_id'))) AS t(id uuid);
SET lock_timeout = '2s';
SET ROLE usage_forwarder;
SELECT apikeys.apply_forwarded_usage(42, 3, format('[{"k":"%s","h":%s,"v":4,"r":0,"rl":0,"ue":0,"sc":0,"rf":0,"u":%s}]',
                                                   regress.id('uh_id'), regress.tok('fh'), regress.tok('fu'))) AS applied_while_held;
RESET ROLE;
RESET lock_timeout;
SELECT dblink_exec('holder', 'ROLLBACK');
SELECT dblink_disconnect('holder');
SELECT u.verified, k.last_used_at IS NULL AS stamp_skipped
  FROM apikeys.key_usage u JOIN apikeys.keys k ON k.id = u.key_id WHERE u.key_id = regress.id('uh_id');
-- the forwarding role gets nothing more through the function: a table of
-- its own named as a working table the function might use is never
-- touched, and a batch whose counts would overflow is refused
SET ROLE usage_forwarder;
CREATE TEMP TABLE apikeys_forwarded (k uuid, h bigint, v bigint, r bigint, rl bigint, ue bigint, sc bigint, rf bigint, u bigint);
SELECT apikeys.apply_forwarded_usage(42, 4, format('[{"k":"%s","h":%s,"v":1,"r":0,"rl":0,"ue":0,"sc":0,"rf":0,"u":0}]',
                                                   regress.id('uh_id'), regress.tok('fh'))) AS applied;
SELECT count(*) AS own_table_untouched FROM pg_temp.apikeys_forwarded;
SELECT regress.try(format($$SELECT apikeys.apply_forwarded_usage(42, 5, '[{"k":"%1$s","h":%2$s,"v":281474976710655,"r":0,"rl":0,"ue":0,"sc":0,"rf":0,"u":0},
                                                                     {"k":"%1$s","h":%2$s,"v":281474976710655,"r":0,"rl":0,"ue":0,"sc":0,"rf":0,"u":0}]')$$,
                          regress.id('uh_id'), regress.tok('fh'))) AS summed_over_2_48;
SELECT regress.try(format($$SELECT apikeys.apply_forwarded_usage(42, 5, '[{"k":"%s","h":%s,"v":1}]')$$,
                          regress.id('uh_id'), regress.tok('fh'))) AS fields_missing;
DROP TABLE pg_temp.apikeys_forwarded;
RESET ROLE;
SELECT rolsuper AS forwarder_superuser FROM pg_roles WHERE rolname = 'usage_forwarder';

