-- limits need the usage engine: this file's expected output has a variant
-- per mode (expected/24_tiers.out without the preload, 24_tiers_1.out with it)
SELECT apikeys.usage_mode() AS usage_mode;
-- Tiers: a control set by a higher tier is never undone by a lower one. An
-- admin's suspension is lifted only by an admin; a suspended key is not
-- rotated away; a member (or any API key) only tightens a key; a request
-- bound to a key never touches an admin invitation, and acts with the
-- key's scopes as they are now; a binding made in a subtransaction never
-- outlives it nor takes the outer one with it.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('tws', apikeys.create_workspace('Tier Inc')::text);
SELECT regress.add_member(regress.id('tws'), 'bob', 'member', '{read,write,apikeys:manage}');
SELECT regress.put('ta', key), regress.put('ta_id', id::text)
  FROM apikeys.create_key(regress.id('tws'), 'alice-tier', '{apikeys:manage,read}');
RESET ROLE;
SET ROLE bob;
SELECT regress.put('tb', key), regress.put('tb_id', id::text)
  FROM apikeys.create_key(regress.id('tws'), 'bob-tier', '{read}', now() + interval '30 days');
SELECT regress.put('tb2', key), regress.put('tb2_id', id::text)
  FROM apikeys.create_key(regress.id('tws'), 'bob-self', '{read,write}');
RESET ROLE;

-- an admin suspends bob's key: bob can neither resume it nor rotate it into
-- a fresh unsuspended key
SET ROLE alice;
SELECT apikeys.suspend_key(regress.id('tb_id')) AS admin_suspends;
RESET ROLE;
SET ROLE bob;
SELECT regress.try(format('SELECT apikeys.resume_key(%L)', regress.id('tb_id'))) AS bob_resumes;
SELECT regress.try(format('SELECT apikeys.rotate_key(%L, %L, %L)', regress.id('tb_id'), '0',
                          now() + interval '100 years')) AS bob_rotates_renewing;
SELECT regress.try(format('SELECT apikeys.rotate_key(%L)', regress.id('tb_id'))) AS bob_rotates;
-- suspending it again as a member leaves it the admin's
SELECT apikeys.suspend_key(regress.id('tb_id')) AS bob_suspends_again;
SELECT regress.try(format('SELECT apikeys.resume_key(%L)', regress.id('tb_id'))) AS bob_resumes_again;
RESET ROLE;
SELECT regress.ok('tb') AS verifies_while_suspended, suspended_by
  FROM apikeys.keys WHERE id = regress.id('tb_id');
-- bob's own suspension is his to lift; once an admin takes it over it is the admin's
SET ROLE bob;
SELECT apikeys.suspend_key(regress.id('tb2_id')) AS bob_suspends_own,
       apikeys.resume_key(regress.id('tb2_id')) AS bob_resumes_own,
       apikeys.suspend_key(regress.id('tb2_id')) AS bob_suspends_own_again;
RESET ROLE;
SET ROLE alice;
SELECT apikeys.suspend_key(regress.id('tb2_id')) AS admin_takes_it_over;
RESET ROLE;
SET ROLE bob;
SELECT regress.try(format('SELECT apikeys.resume_key(%L)', regress.id('tb2_id'))) AS bob_resumes_taken_over;
RESET ROLE;
SET ROLE alice;
SELECT apikeys.resume_key(regress.id('tb_id')) AS admin_resumes, apikeys.resume_key(regress.id('tb2_id')) AS admin_resumes_too;
RESET ROLE;
SELECT regress.ok('tb') AS verifies_again;
SELECT action, detail->>'by' AS suspended_by FROM apikeys.audit_log
 WHERE key_id = regress.id('tb_id') AND action IN ('key.suspended', 'key.resumed') ORDER BY id;

-- a member only tightens a key: an earlier expiry and fewer scopes, never a
-- later expiry or more scopes (even ones the member holds)
SET ROLE bob;
SELECT regress.try(format('SELECT apikeys.update_key(%L, expires_at => %L)', regress.id('tb_id'),
                          now() + interval '60 days')) AS later_expiry;
SELECT regress.try(format('SELECT apikeys.update_key(%L, scopes => %L)', regress.id('tb_id'), '{read,write}')) AS more_scopes;
SELECT apikeys.update_key(regress.id('tb_id'), expires_at => now() + interval '20 days') AS earlier_expiry;
SELECT apikeys.update_key(regress.id('tb2_id'), scopes => '{read}') AS fewer_scopes;
SELECT apikeys.update_key(regress.id('tb_id'), name => 'bob-tier-renamed') AS a_name_is_free;
RESET ROLE;
-- an admin may loosen (scopes back within the owner's)
SET ROLE alice;
SELECT apikeys.update_key(regress.id('tb2_id'), scopes => '{read,write}') AS admin_more_scopes;
RESET ROLE;

-- the rest needs the usage engine (limits and credits)
SELECT apikeys.usage_mode() = 'shared_memory' AS engine \gset
\if :engine
SET ROLE alice;
SELECT apikeys.update_key(regress.id('tb_id'), credits => 2, rate_limit => 1, rate_window => '1 hour') AS admin_limits;
RESET ROLE;
SET ROLE bob;
SELECT regress.try(format('SELECT apikeys.update_key(%L, credits => -1, rate_limit => 0)', regress.id('tb_id'))) AS remove_both;
SELECT regress.try(format('SELECT apikeys.update_key(%L, credits => -1)', regress.id('tb_id'))) AS remove_credits;
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 0)', regress.id('tb_id'))) AS remove_rate;
SELECT regress.try(format('SELECT apikeys.update_key(%L, credits => 5)', regress.id('tb_id'))) AS more_credits;
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 2, rate_window => %L)', regress.id('tb_id'), '1 hour')) AS higher_rate;
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 1, rate_window => %L)', regress.id('tb_id'), '1 minute')) AS shorter_window;
SELECT regress.try(format('SELECT apikeys.update_key(%L, refill_amount => 1, refill_interval => %L)', regress.id('tb_id'), '1 day')) AS a_refill;
SELECT apikeys.update_key(regress.id('tb_id'), credits => 1) AS fewer_credits,
       apikeys.update_key(regress.id('tb_id'), rate_limit => 1, rate_window => '2 hours') AS lower_rate;
RESET ROLE;
SELECT rate_limit, rate_window, credits FROM apikeys.keys WHERE id = regress.id('tb_id');
SELECT code FROM apikeys.check_key(regress.tok('tb'));
SELECT code FROM apikeys.check_key(regress.tok('tb'));
\endif

-- a request bound to alice's key (apikeys:manage) never changes or withdraws
-- an admin invitation
SET ROLE alice;
SELECT apikeys.add_member(regress.id('tws'), 'dora', 'admin');
SELECT apikeys.add_member(regress.id('tws'), 'erin', 'admin');
RESET ROLE;
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.with_key('ta');
SELECT apikeys.authenticate();
SELECT regress.try(format('SELECT apikeys.add_member(%L, %L, %L, %L)', regress.id('tws'), 'dora', 'member', '{read}')) AS key_rewrites_admin_invite;
SELECT regress.try(format('SELECT apikeys.remove_member(%L, %L)', regress.id('tws'), 'erin')) AS key_withdraws_admin_invite;
COMMIT;
SELECT principal, role FROM apikeys.invitations
 WHERE workspace_id = regress.id('tws') AND accepted_at IS NULL AND withdrawn_at IS NULL ORDER BY principal;

-- a bound request acts with the key's scopes as they are now: apikeys:manage
-- taken away after authenticate() mints nothing
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.with_key('ta');
SELECT apikeys.authenticate();
SELECT apikeys.has_scope('apikeys:manage') AS had_manage;
RESET ROLE;
UPDATE apikeys.keys SET scopes = '{read}' WHERE id = regress.id('ta_id');
SET LOCAL ROLE anon;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L)', regress.id('tws'), 'after-narrowing')) AS mints_after_narrowing;
ROLLBACK;

-- bindings and subtransactions: an inner authenticate() that aborts brings
-- back the outer binding; one that commits replaces it
BEGIN;
SELECT regress.as_jwt('anon', '{"role":"anon"}');
SELECT regress.with_key('ta');
SELECT apikeys.authenticate();
SAVEPOINT inner_one;
SELECT regress.with_key('tb2');
SELECT apikeys.authenticate();
SELECT apikeys.current_principal() AS inside;
ROLLBACK TO SAVEPOINT inner_one;
SELECT apikeys.current_principal() AS after_inner_abort;
SAVEPOINT inner_two;
SELECT regress.with_key('tb2');
SELECT apikeys.authenticate();
RELEASE SAVEPOINT inner_two;
SELECT apikeys.current_principal() AS after_inner_commit;
SAVEPOINT inner_three;
ROLLBACK TO SAVEPOINT inner_three;
SELECT apikeys.current_principal() AS after_an_empty_abort;
COMMIT;
SELECT apikeys.current_principal() AS after_commit;

-- claims of a session that may not name the caller are ignored whole: an
-- odd sub there is no error, the caller is the session's role
SELECT dblink_connect('tiers', format('dbname=%s port=%s host=%s user=mallory', current_database(),
       current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT * FROM dblink('tiers', $$SELECT set_config('request.jwt.claims', '{"sub":" spaced "}', false) IS NOT NULL,
                                        apikeys.current_principal()$$) AS t(claims_set boolean, principal text);
SELECT dblink_disconnect('tiers');
