-- how use is recorded changes what this file sees: its expected output
-- has a variant per mode (expected/23_engine.out without the preload,
-- expected/23_engine_1.out with it)
SELECT apikeys.usage_mode() AS usage_mode;
-- Every interval argument is checked as a whole, part by part: a month part
-- where none is allowed, a negative part, or a length out of range is
-- 22023, never accepted and ignored, never PostgreSQL's own 22008. And
-- check_key reports live values for every code.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('ews', apikeys.create_workspace('Engine Inc')::text);
SELECT regress.put('e1', key), regress.put('e1_id', id::text)
  FROM apikeys.create_key(regress.id('ews'), 'engine-one', '{read}', now() + interval '1 day');

-- rate windows: '1 mon -29 days' orders equal to '1 day' in PostgreSQL, and
-- '1 day -1 hour' to '23 hours'; both were accepted and then never enforced
SELECT w AS rate_window,
       regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 3, rate_window => %L)', regress.id('e1_id'), w)) AS update_key
  FROM unnest(ARRAY['1 mon -29 days', '1 day -1 hour', '-1 day 25 hours', '-1 second',
                    '1 mon', '0 seconds', '25 hours']) w;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L, rate_limit => 3, rate_window => %L)',
                          regress.id('ews'), 'odd-window', '1 mon -29 days')) AS create_key;
SELECT regress.try(format('SELECT apikeys.set_owner_limit(%L, %L, 2, %L)',
                          regress.id('ews'), 'alice', '1 mon -29 days')) AS set_owner_limit;
-- refills: exactly '1 day' or '1 month', part by part
SELECT r AS refill_interval,
       regress.try(format('SELECT apikeys.update_key(%L, credits => 5, refill_amount => 5, refill_interval => %L)',
                          regress.id('e1_id'), r)) AS update_key
  FROM unnest(ARRAY['1 mon -29 days', '2 mons -31 days', '2 days -24 hours', '30 days', '24 hours', '-1 day']) r;
-- grace: zero to 100 years, no negative part
SELECT g AS grace, regress.try(format('SELECT apikeys.rotate_key(%L, %L)', regress.id('e1_id'), g)) AS rotate_key
  FROM unnest(ARRAY['1 day -25 hours', '-1 mon 31 days', '101 years']) g;
SELECT regress.ok('e1') AS still_verifies;
-- expiring_keys: a key with an expiry is visible, so now() + '1000000 years'
-- used to overflow into 22008
SELECT regress.try($$SELECT count(*) FROM apikeys.expiring_keys('1000000 years')$$) AS expiring_huge;
SELECT regress.try($$SELECT count(*) FROM apikeys.expiring_keys('1 day -25 hours')$$) AS expiring_negative_part;
SELECT regress.try($$SELECT count(*) FROM apikeys.expiring_keys('-1 day')$$) AS expiring_negative;
SELECT count(*) AS expiring_within_100_years FROM apikeys.expiring_keys('100 years')
 WHERE workspace_id = regress.id('ews');
SELECT count(*) AS expiring_null FROM apikeys.expiring_keys(NULL);
RESET ROLE;
-- checked even when the caller sees no key that could match (the check
-- used to sit on the inner side of the join and never ran then)
SET ROLE mallory;
SELECT regress.try($$SELECT count(*) FROM apikeys.expiring_keys('1 mon -29 days')$$) AS expiring_nothing_visible;
RESET ROLE;

-- the rest runs only with the usage engine
SELECT apikeys.usage_mode() = 'shared_memory' AS engine \gset
\if :engine
-- live credits for every code: a check refused for a missing scope reads
-- this server's balance, not the row the flusher has not written yet
SET ROLE alice;
SELECT regress.put('ec', key), regress.put('ec_id', id::text)
  FROM apikeys.create_key(regress.id('ews'), 'engine-credits', '{read}', credits => 3);
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('ec'), NULL, 3);
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('ec'), ARRAY['nope']);
SELECT code, credits_remaining FROM apikeys.check_key(regress.tok('ec'));
RESET ROLE;
-- a window stored around the functions (a superuser's UPDATE) with a month
-- part counts as the strictest window, one day: never as no limit at all
UPDATE apikeys.keys SET rate_limit = 1, rate_window = '1 mon -29 days' WHERE id = regress.id('e1_id');
SELECT code, rate_limit, rate_remaining FROM apikeys.check_key(regress.tok('e1'));
SELECT code, rate_limit, rate_remaining FROM apikeys.check_key(regress.tok('e1'));
-- a key rotated with a grace period and its replacement share one budget:
-- 10 credits, 6 spent through the old token (not written yet), then 4
-- through either token, then both are refused (20 before: each token
-- spent its own copy)
CREATE FUNCTION regress.checks(label text, n int) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        RETURN QUERY SELECT code FROM apikeys.check_key(regress.tok(label));
    END LOOP;
END $$;
SET ROLE alice;
SELECT regress.put('er', key), regress.put('er_id', id::text)
  FROM apikeys.create_key(regress.id('ews'), 'engine-rotated', '{read}', credits => 10);
SELECT count(*) FILTER (WHERE c = 'valid') AS old_token_valid FROM regress.checks('er', 6) c;
SELECT regress.put('er2', key) FROM apikeys.rotate_key(regress.id('er_id'), '1 hour');
SELECT regress.checks('er', 1) AS old_token, regress.checks('er2', 1) AS new_token FROM generate_series(1, 3);
RESET ROLE;
-- the counters of refusals for lack of room and of writes deferred
SELECT deferred >= 0 AS deferred, limits_full >= 0 AS limits_full, credits_held >= 0 AS credits_held
  FROM apikeys.usage_stats();
\endif
