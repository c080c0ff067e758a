-- limits need the usage engine: this file's expected output has a variant
-- per mode (expected/25_operator.out without the preload, 25_operator_1.out with it)
-- The operator tier: a provider's backend role, granted by a superuser with
-- grant_operator, mints for its customers (owners that are external ids,
-- no membership, no JWT), acts in every workspace as its admins do,
-- rotates any key (a support rotation), and suspends an owner or a whole
-- workspace; no lower tier undoes what it did. Never through an API key,
-- never in a request whose trusted claims name the caller.
\set SHOW_CONTEXT never
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'backend') THEN
        CREATE ROLE backend LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'regress_authenticator') THEN
        CREATE ROLE regress_authenticator LOGIN NOINHERIT;
    END IF;
END
$$;
DO $$
BEGIN
    IF NOT pg_has_role('regress_authenticator', 'anon', 'MEMBER') THEN
        GRANT anon TO regress_authenticator;
    END IF;
    IF NOT pg_has_role('backend', 'app_user', 'MEMBER') THEN
        GRANT app_user TO backend;
    END IF;
END
$$;
SELECT apikeys.grant_operator('backend');
-- never a role the API's login can switch to
SET apikeys.claims_roles = 'regress_authenticator';
SELECT regress.try($$SELECT apikeys.grant_operator('anon')$$) AS grant_to_a_switched_role;
RESET apikeys.claims_roles;
-- not granted to clients: a member cannot make itself an operator
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.grant_operator('alice')$$) AS alice_grants_herself;
SELECT apikeys.is_operator() AS alice_is_operator;
RESET ROLE;
SET ROLE backend;
SELECT apikeys.is_operator() AS backend_is_operator;
RESET ROLE;
-- the API's login is never an operator, whatever role it switches to and
-- whatever claims it sets or leaves empty (a grant made after
-- grant_operator checked the role included)
SET apikeys.claims_roles = 'regress_authenticator';
GRANT backend TO regress_authenticator;
SET SESSION AUTHORIZATION regress_authenticator;
SET ROLE backend;
SELECT apikeys.is_operator() AS api_login_as_backend;
RESET ROLE;
RESET SESSION AUTHORIZATION;
REVOKE backend FROM regress_authenticator;
RESET apikeys.claims_roles;
-- a request with trusted claims is never an operator, whatever its role holds
BEGIN;
SELECT regress.as_jwt('backend', '{"role":"backend","sub":"backend"}');
SELECT apikeys.is_operator() AS backend_in_a_request;
ROLLBACK;

-- the provider's workspace; customers are owners, not members
SET ROLE backend;
SELECT regress.put('pws', apikeys.create_workspace('Provider')::text);
SELECT regress.put('c42', key), regress.put('c42_id', id::text)
  FROM apikeys.create_key(regress.id('pws'), 'cust-42-prod', '{read}', owner => 'cust_42');
SELECT regress.put('c43', key), regress.put('c43_id', id::text)
  FROM apikeys.create_key(regress.id('pws'), 'cust-43-prod', '{read}', owner => 'cust_43');
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L, owner => %L)', regress.id('pws'), 'bad-owner', ' spaced ')) AS odd_owner;
SELECT regress.add_member(regress.id('pws'), 'alice', 'admin');
RESET ROLE;
SELECT owner, name FROM apikeys.keys WHERE workspace_id = regress.id('pws') ORDER BY name;
SELECT regress.ok('c42') AS customer_key_verifies;
SELECT count(*) AS customer_memberships FROM apikeys.members WHERE principal LIKE 'cust_%';

-- an admin mints only for itself
SET ROLE alice;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L, owner => %L)', regress.id('pws'), 'for-cust', 'cust_42')) AS admin_mints_for_a_customer;
SELECT count(*) AS admin_sees_customer_keys FROM apikeys.keys WHERE workspace_id = regress.id('pws');
RESET ROLE;

-- the operator acts in a workspace it is no member of
SET ROLE alice;
SELECT regress.put('aws_op', apikeys.create_workspace('Alice Alone')::text);
SELECT regress.put('al', key), regress.put('al_id', id::text)
  FROM apikeys.create_key(regress.id('aws_op'), 'alice-own', '{read}');
RESET ROLE;
SET ROLE backend;
SELECT regress.put('op77_id', id::text)
  FROM apikeys.create_key(regress.id('aws_op'), 'minted-by-operator', owner => 'cust_77');
SELECT apikeys.suspend_key(regress.id('al_id')) AS operator_suspends_alices_key;
RESET ROLE;
SELECT name, owner FROM apikeys.keys WHERE id = regress.id('op77_id');
SET ROLE alice;
SELECT regress.try(format('SELECT apikeys.resume_key(%L)', regress.id('al_id'))) AS alice_resumes_operators_suspension;
RESET ROLE;
SET ROLE backend;
SELECT apikeys.resume_key(regress.id('al_id')) AS operator_resumes;
RESET ROLE;

-- an operator imports a customer's key from another keystore by its digest,
-- for an owner that is no member
SET ROLE backend;
SELECT apikeys.import_key(regress.id('pws'), 'cust_44', 'cust-44-legacy',
                          encode(sha256('legacy-token-of-cust-44'::bytea), 'hex')) IS NOT NULL AS imported;
RESET ROLE;
SELECT count(*) AS legacy_verifies FROM apikeys.verify_key('legacy-token-of-cust-44');
-- a support rotation of a customer's key keeps its prefix form
SET ROLE backend;
SELECT regress.put('c42b', key), regress.put('c42b_id', id::text), left(prefix, 3) AS prefix_form
  FROM apikeys.rotate_key(regress.id('c42_id'), '1 hour');
RESET ROLE;
SELECT regress.ok('c42') AS old_token_in_grace, regress.ok('c42b') AS new_token, owner
  FROM apikeys.keys WHERE id = regress.id('c42b_id');
-- an admin still rotates only their own keys
SET ROLE alice;
SELECT regress.try(format('SELECT apikeys.rotate_key(%L)', regress.id('c43_id'))) AS admin_rotates_a_customer_key;
RESET ROLE;

-- suspending an owner: every key of theirs is invalid, nothing is minted
-- for them, and no admin lifts it
SET ROLE backend;
SELECT apikeys.suspend_owner(regress.id('pws'), 'cust_42') AS suspend_owner,
       apikeys.suspend_owner(regress.id('pws'), 'cust_42') AS suspend_owner_again;
RESET ROLE;
SELECT regress.ok('c42b') AS suspended_key_verifies, regress.ok('c43') AS other_customer_verifies;
SET ROLE backend;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L, owner => %L)', regress.id('pws'), 'cust-42-two', 'cust_42')) AS mint_for_suspended;
SELECT regress.try(format('SELECT apikeys.rotate_key(%L)', regress.id('c42b_id'))) AS rotate_suspended;
RESET ROLE;
SET ROLE alice;
SELECT regress.try(format('SELECT apikeys.resume_key(%L)', regress.id('c42b_id'))) AS admin_resumes_operators_suspension;
SELECT regress.try(format('SELECT apikeys.resume_owner(%L, %L)', regress.id('pws'), 'cust_42')) AS admin_resumes_owner;
SELECT regress.try(format('SELECT apikeys.suspend_owner(%L, %L)', regress.id('pws'), 'cust_43')) AS admin_suspends_owner;
RESET ROLE;
SET ROLE backend;
SELECT apikeys.resume_owner(regress.id('pws'), 'cust_42') AS resume_owner,
       apikeys.resume_owner(regress.id('pws'), 'cust_42') AS resume_owner_again;
RESET ROLE;
SELECT regress.ok('c42b') AS resumed_key_verifies;

-- a whole workspace: every key, every owner; an owner's own suspension
-- outlives the workspace's
SET ROLE backend;
SELECT apikeys.suspend_owner(regress.id('pws'), 'cust_43') AS owner_first,
       apikeys.suspend_owner(regress.id('pws')) AS whole_workspace;
RESET ROLE;
SELECT regress.ok('c42b') AS c42_in_suspended_workspace, regress.ok('c43') AS c43_in_suspended_workspace;
SET ROLE alice;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L)', regress.id('pws'), 'admin-in-suspended')) AS admin_mints_in_suspended;
RESET ROLE;
SET ROLE backend;
SELECT apikeys.resume_owner(regress.id('pws')) AS workspace_resumed;
RESET ROLE;
SELECT regress.ok('c42b') AS c42_after, regress.ok('c43') AS c43_still_suspended;
SELECT owner, suspended_by IS NOT NULL AS by_someone, resumed_at IS NOT NULL AS resumed
  FROM apikeys.suspensions WHERE workspace_id = regress.id('pws') ORDER BY id;
SELECT action, actor, detail FROM apikeys.audit_log
 WHERE workspace_id = regress.id('pws') AND action LIKE 'owner.%' ORDER BY id;
-- plans: ceilings set by the operator that admins and members never exceed;
-- live keys are brought within them at once, new keys get them by default
SET ROLE alice;
SELECT regress.try(format('SELECT apikeys.set_plan(%L, active_keys => 100)', regress.id('pws'))) AS admin_sets_plan;
RESET ROLE;
SET ROLE backend;
SELECT apikeys.set_plan(regress.id('pws'), key_lifetime => '30 days', active_keys => 5) AS set_plan;
RESET ROLE;
SELECT count(*) AS live_keys_beyond_the_lifetime FROM apikeys.keys
 WHERE workspace_id = regress.id('pws') AND revoked_at IS NULL
   AND (expires_at IS NULL OR expires_at > now() + interval '30 days 1 second');
SET ROLE alice;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L, %L, %L)', regress.id('pws'), 'too-long', '{}',
                          now() + interval '1 year')) AS beyond_the_lifetime;
SELECT regress.put('pd_id', id::text) FROM apikeys.create_key(regress.id('pws'), 'plan-default');
SELECT expires_at <= now() + interval '30 days' AS gets_the_plan_lifetime FROM apikeys.keys WHERE id = regress.id('pd_id');
SELECT count(*) AS active_keys FROM apikeys.keys
 WHERE workspace_id = regress.id('pws') AND revoked_at IS NULL AND replaced_by IS NULL;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L)', regress.id('pws'), 'fourth')) AS fourth_key;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L)', regress.id('pws'), 'fifth')) AS fifth_key;
RESET ROLE;
-- the operator is not bound by the plan it sets
SET ROLE backend;
SELECT name FROM apikeys.create_key(regress.id('pws'), 'operator-beyond-plan', owner => 'cust_99');
SELECT regress.try(format('SELECT apikeys.set_plan(%L, key_lifetime => %L)', regress.id('pws'), '-1 day')) AS negative_lifetime;
SELECT regress.try(format('SELECT apikeys.set_plan(%L, rate_limit => 1, rate_window => %L)', regress.id('pws'), '1 mon -29 days')) AS odd_window;
RESET ROLE;
SELECT apikeys.usage_mode() = 'shared_memory' AS engine \gset
\if :engine
SET ROLE backend;
SELECT apikeys.set_plan(regress.id('pws'), rate_limit => 10, rate_window => '1 minute', credits => 100,
                        key_lifetime => '30 days', active_keys => 10) AS set_plan_with_limits;
RESET ROLE;
SELECT count(*) FILTER (WHERE rate_limit = 10 AND credits = 100) AS clamped, count(*) AS live
  FROM apikeys.keys WHERE workspace_id = regress.id('pws') AND revoked_at IS NULL;
SET ROLE alice;
SELECT regress.try(format('SELECT apikeys.update_key(%L, credits => 1000)', regress.id('pd_id'))) AS admin_beyond_credits;
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 0)', regress.id('pd_id'))) AS admin_removes_rate;
SELECT apikeys.update_key(regress.id('pd_id'), credits => 50) AS admin_within_plan;
RESET ROLE;
\endif
SELECT action FROM apikeys.audit_log WHERE workspace_id = regress.id('pws') AND action = 'plan.set';
-- suspensions are history
SELECT regress.try($$DELETE FROM apikeys.suspensions$$) AS delete_suspensions;
-- Attacks on the operator's controls (each was seen to succeed before).
-- Alice administers workspace 'hws'; bob is a member there.
SET ROLE alice;
SELECT regress.put('hws', apikeys.create_workspace('Hostile')::text);
SELECT regress.add_member(regress.id('hws'), 'bob', 'member');
SELECT regress.put('ha', key), regress.put('ha_id', id::text) FROM apikeys.create_key(regress.id('hws'), 'alice-paused');
SELECT apikeys.suspend_key(regress.id('ha_id')) AS admin_pauses_her_key;
RESET ROLE;
SET ROLE bob;
SELECT regress.put('hb', key), regress.put('hb_id', id::text) FROM apikeys.create_key(regress.id('hws'), 'bob-paused');
SELECT apikeys.suspend_key(regress.id('hb_id')) AS bob_pauses_his_key;
SELECT regress.put('hb2', key), regress.put('hb2_id', id::text) FROM apikeys.create_key(regress.id('hws'), 'bob-live');
RESET ROLE;
SET ROLE alice;
SELECT regress.put('hpk', public_key) FROM apikeys.create_public_key(regress.id('hws'), '{https://shop.example}');
RESET ROLE;
SET ROLE backend;
SELECT regress.put('ho', key), regress.put('ho_id', id::text)
  FROM apikeys.create_key(regress.id('hws'), 'operator-paused', owner => 'bob');
SELECT apikeys.suspend_key(regress.id('ho_id')) AS operator_pauses_a_key;
-- an operator's control needs READ COMMITTED: an older snapshot would miss
-- keys minted meanwhile
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT regress.try(format('SELECT apikeys.suspend_owner(%L, %L)', regress.id('hws'), 'bob')) AS suspend_in_repeatable_read;
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT regress.try(format('SELECT apikeys.set_plan(%L, active_keys => 9)', regress.id('hws'))) AS plan_in_serializable;
ROLLBACK;
-- owners are checked: a typo suspends no one in silence
SELECT regress.try(format('SELECT apikeys.suspend_owner(%L, %L)', regress.id('hws'), 'bob ')) AS trailing_space;
SELECT regress.try(format('SELECT apikeys.suspend_owner(%L, %L)', regress.id('hws'), '')) AS empty_owner;
SELECT regress.try(format('SELECT apikeys.suspend_owner(%L, %L)', regress.id('hws'), E'b\u200Bob')) AS zero_width_space;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L, owner => %L)', regress.id('hws'), 'look-alike', E'b\u202Eob')) AS mint_for_bidi_owner;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L, owner => %L)', regress.id('hws'), 'look-alike', E'bob\u034F')) AS grapheme_joiner;
SELECT regress.try(format('SELECT apikeys.create_key(%L, %L, owner => %L)', regress.id('hws'), 'look-alike', E'b\u00A0ob')) AS no_break_space;
SELECT regress.try(format('SELECT apikeys.suspend_owner(%L, %L)', regress.id('hws'), E'bob\uFE0F')) AS variation_selector;
-- a billing suspension and its end give every key back what it had
SELECT apikeys.suspend_owner(regress.id('hws')) AS whole_workspace;
SELECT apikeys.suspend_owner(regress.id('hws'), 'bob') AS and_bob;
SELECT name, suspended_by, held_suspended_by, owner_suspended FROM apikeys.keys
 WHERE workspace_id = regress.id('hws') ORDER BY name;
RESET ROLE;
-- meanwhile the suspended admin administers nothing, and the workspace's
-- public keys resolve nothing
SELECT count(*) AS public_key_resolves FROM apikeys.resolve_public_key(regress.tok('hpk'), 'https://shop.example');
SET ROLE alice;
SELECT regress.try(format('SELECT apikeys.add_member(%L, %L, %L)', regress.id('hws'), 'mallory', 'admin')) AS suspended_admin_invites;
SELECT regress.try(format('SELECT apikeys.resume_key(%L)', regress.id('ha_id'))) AS admin_resumes_during_suspension;
SELECT regress.try(format('SELECT apikeys.revoke_key(%L)', regress.id('hb2_id'))) AS suspended_admin_revokes_a_members_key;
SELECT regress.try(format('SELECT apikeys.update_key(%L, name => %L)', regress.id('hb2_id'), 'renamed')) AS suspended_admin_renames_it;
RESET ROLE;
SET ROLE backend;
SELECT regress.try(format('SELECT apikeys.resume_key(%L)', regress.id('hb2_id'))) AS operator_resume_key_during_owner_suspension;
SELECT apikeys.resume_owner(regress.id('hws')) AS workspace_resumed;
-- bob's suspension still holds his keys
SELECT name, suspended_by, owner_suspended FROM apikeys.keys
 WHERE workspace_id = regress.id('hws') ORDER BY name;
SELECT apikeys.resume_owner(regress.id('hws'), 'bob') AS bob_resumed;
SELECT name, suspended_by, held_suspended_by, owner_suspended FROM apikeys.keys
 WHERE workspace_id = regress.id('hws') ORDER BY name;
RESET ROLE;
SELECT count(*) AS public_key_resolves_again FROM apikeys.resolve_public_key(regress.tok('hpk'), 'https://shop.example');
SELECT regress.ok('hb2') AS bobs_live_key_verifies, regress.ok('hb') AS bobs_paused_key_verifies,
       regress.ok('ho') AS operators_paused_key_verifies, regress.ok('ha') AS alices_paused_key_verifies;
-- rotations in a row: one predecessor in its grace period at most
SET ROLE alice;
SELECT regress.put('g1_id', id::text) FROM apikeys.create_key(regress.id('hws'), 'chain');
SELECT regress.put('g2_id', id::text) FROM apikeys.rotate_key(regress.id('g1_id'), '7 days');
SELECT regress.put('g3_id', id::text) FROM apikeys.rotate_key(regress.id('g2_id'), '7 days');
RESET ROLE;
SELECT count(*) AS chain_keys_that_work FROM apikeys.keys
 WHERE workspace_id = regress.id('hws') AND name = 'chain' AND revoked_at IS NULL
   AND (expires_at IS NULL OR expires_at > now());
SELECT apikeys.usage_mode() = 'shared_memory' AS engine \gset
\if :engine
-- a plan's rate holds in every window, not on average; its credits are the
-- operator's to add
SET ROLE backend;
SELECT apikeys.set_plan(regress.id('hws'), rate_limit => 10, rate_window => '1 minute', credits => 10) AS plan_10_a_minute;
RESET ROLE;
SET ROLE alice;
SELECT regress.put('pl_id', id::text) FROM apikeys.create_key(regress.id('hws'), 'planned');
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 14400, rate_window => %L)', regress.id('pl_id'), '1 day')) AS same_average_all_at_once;
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 1, rate_window => %L)', regress.id('pl_id'), '1 second')) AS sixty_a_minute;
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 10, rate_window => %L)', regress.id('pl_id'), '90 seconds')) AS two_windows_meet_in_a_minute;
SELECT apikeys.update_key(regress.id('pl_id'), rate_limit => 5, rate_window => '30 seconds') AS five_per_half_minute;
SELECT apikeys.update_key(regress.id('pl_id'), credits => 3) AS spend_down;
SELECT regress.try(format('SELECT apikeys.update_key(%L, credits => 10)', regress.id('pl_id'))) AS top_up;
SELECT regress.try(format('SELECT apikeys.update_key(%L, refill_amount => 10, refill_interval => %L)', regress.id('pl_id'), '1 day')) AS daily_refill;
RESET ROLE;
SET ROLE bob;
SELECT regress.put('bl_id', id::text) FROM apikeys.create_key(regress.id('hws'), 'bob-limited');
SELECT rate_limit, rate_window FROM apikeys.keys WHERE id = regress.id('bl_id');
SELECT regress.try(format('SELECT apikeys.update_key(%L, rate_limit => 14399, rate_window => %L)', regress.id('bl_id'), '1 day')) AS member_widens_the_window;
RESET ROLE;
\endif

-- the operator reads every workspace as its admins do (row security),
-- without being a member; never through a request with trusted claims
SET ROLE alice;
SELECT regress.put('aws', apikeys.create_workspace('Alice only')::text);
SELECT name FROM apikeys.create_key(regress.id('aws'), 'alice-own');
RESET ROLE;
SET ROLE backend;
SELECT apikeys.member_role(regress.id('aws')) AS backend_membership;
SELECT (SELECT count(*) FROM apikeys.workspaces WHERE id = regress.id('aws')) AS workspaces,
       (SELECT count(*) FROM apikeys.keys WHERE workspace_id = regress.id('aws')) AS keys,
       (SELECT count(*) FROM apikeys.members WHERE workspace_id = regress.id('aws')) AS members,
       (SELECT count(*) > 0 FROM apikeys.audit_log WHERE workspace_id = regress.id('aws')) AS audit;
RESET ROLE;
BEGIN;
SELECT regress.as_jwt('backend', '{"role":"backend","sub":"backend"}');
SELECT count(*) AS keys_seen_in_a_request FROM apikeys.keys WHERE workspace_id = regress.id('aws');
ROLLBACK;
REVOKE apikeys_operator FROM backend;
-- the grant taken back: nothing of the workspace is visible any more
SET ROLE backend;
SELECT count(*) AS keys_seen_after_the_revoke FROM apikeys.keys WHERE workspace_id = regress.id('aws');
RESET ROLE;
