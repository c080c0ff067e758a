//! Changing a key after its mint: `update_key`, `suspend_key`,
//! `resume_key`, limits and credits at mint (`create_key`'s new arguments),
//! renewal (`rotate_key`'s `expires_at`), and `set_owner_limit`
//! (docs/reference.md, "Limits and credits").
//!
//! Every change is an UPDATE of `keys` (or `owner_limits`) in the caller's
//! transaction; the audit triggers record it with old and new values.
//! Limits and credits need the usage engine: without the preload, setting
//! one raises 0A000.

use pgrx::datum::{AnyElement, Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

use crate::errors::{ApiError, ApiResult};
use crate::fmgr::deferred;
use crate::keys::{authorize_scopes, check_metadata, manageable_key, NewKey};
use crate::rules::{self, IntervalKind, RuleError};
use crate::spi::name_taken;
use crate::workspaces::{caller, membership, require_admin};

/// Limits and credits given to `create_key` or `update_key`. In
/// `update_key` a NULL leaves a field alone; `rate_limit = 0` removes the
/// rate limit, `credits = -1` removes the credits (and the refill),
/// `refill_amount = 0` removes the refill.
#[derive(Clone, Copy, Default)]
pub struct LimitArgs {
    pub rate_limit: Option<i32>,
    pub rate_window: Option<Interval>,
    pub credits: Option<i64>,
    pub refill_amount: Option<i64>,
    pub refill_interval: Option<Interval>,
}

impl LimitArgs {
    fn any(&self) -> bool {
        self.rate_limit.is_some()
            || self.rate_window.is_some()
            || self.credits.is_some()
            || self.refill_amount.is_some()
            || self.refill_interval.is_some()
    }

    /// Whether these arguments set (not remove) a limit or credits.
    fn sets_something(&self) -> bool {
        self.rate_limit.is_some_and(|l| l > 0)
            || self.credits.is_some_and(|c| c >= 0)
            || self.refill_amount.is_some_and(|a| a > 0)
    }

    /// Check the arguments (ranges, pairs) for a key whose current values
    /// are `current`; 0A000 when a limit is set without the usage engine.
    fn check(&self, current: &Current) -> ApiResult<()> {
        self.check_rules(current)?;
        if self.sets_something() && !crate::limits::active() {
            return Err(ApiError::LimitsNeedPreload);
        }
        Ok(())
    }

    /// The argument rules alone (ranges, pairs).
    fn check_rules(&self, current: &Current) -> ApiResult<()> {
        match (self.rate_limit, self.rate_window) {
            (Some(0), _) => {}
            (Some(l), Some(w)) if l > 0 => check_interval(IntervalKind::RateWindow, w)?,
            (Some(_), _) | (None, Some(_)) => return Err(RuleError::RateLimit.into()),
            (None, None) => {}
        }
        if let Some(c) = self.credits {
            if c < -1 {
                return Err(RuleError::Credits.into());
            }
        }
        let credits_after = match self.credits {
            Some(-1) => false,
            Some(_) => true,
            None => current.has_credits,
        };
        match (self.refill_amount, self.refill_interval) {
            (Some(0), _) => {}
            (Some(a), Some(i)) if a > 0 => {
                // exactly '1 day' or '1 month', part by part (interval
                // equality would take '30 days' for a month and '24 hours'
                // or '1 mon -29 days' for a day)
                let period = check_interval(IntervalKind::Refill, i).is_ok();
                if !period || !credits_after {
                    return Err(RuleError::Refill.into());
                }
            }
            (Some(_), _) | (None, Some(_)) => return Err(RuleError::Refill.into()),
            // removing the credits removes a refill with them (apply_limits)
            (None, None) => {}
        }
        Ok(())
    }
}

/// An interval argument checked as a whole (rules::interval): 22023 when
/// any part is out of its kind's bounds.
pub(crate) fn check_interval(kind: IntervalKind, i: Interval) -> ApiResult<()> {
    rules::interval(kind, i.months(), i.days(), i.micros()).map_err(ApiError::from)
}

/// `apikeys.checked_within(within)`: `expiring_keys`' interval as given,
/// or 22023 when it has a negative part or exceeds 100 years (where
/// `now() + within` would overflow into PostgreSQL's own 22008).
#[pg_extern(sql = false)]
fn checked_within(within: Interval) -> Option<Interval> {
    deferred(check_interval(IntervalKind::Within, within).map(|_| within))
}

/// What a key is now, as far as a change needs to know.
struct Current {
    workspace_id: Uuid,
    owner: String,
    name: String,
    revoked: bool,
    has_credits: bool,
    scopes: Vec<String>,
    expires_at: Option<TimestampWithTimeZone>,
    rate_limit: Option<i32>,
    rate_window: Option<Interval>,
    credits: Option<i64>,
    refill_amount: Option<i64>,
    refill_interval: Option<Interval>,
    suspended: bool,
    /// the tier that suspended it (a suspension made outside the
    /// functions, with no tier, counts as an admin's)
    suspended_by: Tier,
}

fn current(client: &mut SpiClient<'_>, key_id: Uuid) -> ApiResult<Current> {
    // locked: two changes of one key run one after the other
    let row = client.update(
        "SELECT workspace_id, owner, name, revoked_at IS NOT NULL, credits IS NOT NULL,
                scopes, expires_at, rate_limit, rate_window, credits, refill_amount, refill_interval,
                suspended_at IS NOT NULL, suspended_by
           FROM apikeys.keys WHERE id = $1 FOR UPDATE",
        Some(1),
        &[key_id.into()],
    )?;
    if row.is_empty() {
        return Err(ApiError::KeyNotFound);
    }
    let r = row.first();
    Ok(Current {
        workspace_id: r.get(1)?.ok_or(ApiError::Internal)?,
        owner: r.get(2)?.ok_or(ApiError::Internal)?,
        name: r.get(3)?.ok_or(ApiError::Internal)?,
        revoked: r.get(4)?.unwrap_or(false),
        has_credits: r.get(5)?.unwrap_or(false),
        scopes: r.get(6)?.unwrap_or_default(),
        expires_at: r.get(7)?,
        rate_limit: r.get(8)?,
        rate_window: r.get(9)?,
        credits: r.get(10)?,
        refill_amount: r.get(11)?,
        refill_interval: r.get(12)?,
        suspended: r.get(13)?.unwrap_or(false),
        suspended_by: r.get::<String>(14)?.and_then(|t| Tier::parse(&t)).unwrap_or(Tier::Admin),
    })
}

/// The tiers of authority over a key, lowest first (docs/security.md, "Who
/// undoes what"): a control set by a tier is lifted or loosened only by that
/// tier or a higher one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Tier {
    /// the key's owner acting as a member, or any caller through an API key
    /// (a key never acts above a member)
    Member,
    /// an admin of the key's workspace, acting as itself
    Admin,
    /// an operator (`apikeys.grant_operator`, superusers), acting as itself
    Operator,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Member => "member",
            Tier::Admin => "admin",
            Tier::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "member" => Some(Tier::Member),
            "admin" => Some(Tier::Admin),
            "operator" => Some(Tier::Operator),
            _ => None,
        }
    }
}

/// The caller's tier over the keys of `workspace_id` (the caller may manage
/// the key: [`manageable_key`] said so).
fn caller_tier(
    client: &mut SpiClient<'_>,
    caller: &crate::principal::Caller,
    workspace_id: Uuid,
) -> ApiResult<Tier> {
    if caller.key.is_some() {
        return Ok(Tier::Member);
    }
    if crate::principal::is_operator(caller) {
        return Ok(Tier::Operator);
    }
    let m = membership(client, workspace_id, &caller.principal)?;
    Ok(if m.role == rules::Role::Admin { Tier::Admin } else { Tier::Member })
}

/// A window or refill period in microseconds (days and time; a month
/// counts as 30 days, and only refills have months).
fn usecs(i: Interval) -> i128 {
    i128::from(i.months()) * 30 * 86_400_000_000
        + i128::from(i.days()) * 86_400_000_000
        + i128::from(i.micros())
}

/// Whether a member's change only tightens the key: a lower rate (or a
/// limit where there was none), fewer credits (or credits where there were
/// none), less or no refill, an earlier expiry, fewer scopes. Removing a
/// limit or the credits, more of anything, a later expiry loosen.
fn only_tightens(
    cur: &Current,
    limits: &LimitArgs,
    scopes: Option<&Vec<String>>,
    expires_at: Option<TimestampWithTimeZone>,
    live_credits: Option<i64>,
) -> bool {
    let rate_ok = match (limits.rate_limit, limits.rate_window) {
        (None, _) => true,
        (Some(0), _) => cur.rate_limit.is_none(),
        (Some(l), Some(w)) => match (cur.rate_limit, cur.rate_window) {
            (Some(cl), Some(cw)) => rate_within(l, usecs(w), cl, usecs(cw)),
            _ => true,
        },
        (Some(_), None) => false,
    };
    let credits_ok = match limits.credits {
        None => true,
        Some(-1) => cur.credits.is_none(),
        Some(c) => live_credits.is_none_or(|have| c <= have),
    };
    let refill_ok = match (limits.refill_amount, limits.refill_interval) {
        (None, _) | (Some(0), _) => true,
        (Some(a), Some(i)) => match (cur.refill_amount, cur.refill_interval) {
            (Some(ca), Some(ci)) => i128::from(a) * usecs(ci) <= i128::from(ca) * usecs(i),
            _ => false,
        },
        (Some(_), None) => false,
    };
    let expiry_ok = match expires_at {
        None => true,
        Some(t) => cur.expires_at.is_none_or(|c| i64::from(t) <= i64::from(c)),
    };
    let scopes_ok = scopes.is_none_or(|s| s.iter().all(|x| cur.scopes.contains(x)));
    rate_ok && credits_ok && refill_ok && expiry_ok && scopes_ok
}

/// Whether `rate` per `win` stays within `cap` per `cap_win` in every
/// window of the cap (as SQL's `apikeys.rate_within`), windows being fixed
/// and aligned to the epoch as the engine keeps them: a longer window holds
/// at most `cap` when it is a whole multiple of the cap's (its boundaries
/// are the cap's), else at most half of it (two of its windows may meet in
/// one of the cap's); a shorter one has all the windows that meet one of
/// the cap's filled: `cap_win / win` when it divides it, else one more than
/// that rounded up.
fn rate_within(rate: i32, win: i128, cap: i32, cap_win: i128) -> bool {
    if win <= 0 || cap_win <= 0 {
        return false;
    }
    let windows = if win >= cap_win {
        if win % cap_win == 0 {
            1
        } else {
            2
        }
    } else if cap_win % win == 0 {
        cap_win / win
    } else {
        cap_win / win + 2
    };
    i128::from(rate) * windows <= i128::from(cap)
}

/// Apply limit arguments to a key (validated by [`LimitArgs::check`]).
fn apply_limits(client: &mut SpiClient<'_>, key_id: Uuid, a: &LimitArgs) -> ApiResult<()> {
    if !a.any() {
        return Ok(());
    }
    client.update(
        "UPDATE apikeys.keys SET
            rate_limit = CASE WHEN $2 IS NULL THEN rate_limit WHEN $2 = 0 THEN NULL ELSE $2 END,
            rate_window = CASE WHEN $2 IS NULL THEN rate_window WHEN $2 = 0 THEN NULL ELSE $3 END,
            credits = CASE WHEN $4 IS NULL THEN credits WHEN $4 = -1 THEN NULL ELSE $4 END,
            credits_refilled_at = CASE WHEN $4 IS NULL OR $4 = -1 THEN credits_refilled_at
                                       ELSE pg_catalog.statement_timestamp() END,
            refill_amount = CASE WHEN $4 = -1 OR $5 = 0 THEN NULL WHEN $5 IS NULL THEN refill_amount ELSE $5 END,
            refill_interval = CASE WHEN $4 = -1 OR $5 = 0 THEN NULL WHEN $5 IS NULL THEN refill_interval ELSE $6 END
          WHERE id = $1",
        None,
        &[
            key_id.into(),
            a.rate_limit.into(),
            a.rate_window.into(),
            a.credits.into(),
            a.refill_amount.into(),
            a.refill_interval.into(),
        ],
    )?;
    // setting credits stamps credits_refilled_at: every server reloads the
    // balance from the row at its next check once this commits (nothing in
    // shared memory changes here, so a rollback leaves no trace)
    Ok(())
}

// ---------------------------------------------------------------------------
// create_key with limits

#[allow(clippy::too_many_arguments)]
fn create_key_limited_impl(
    workspace_id: Option<Uuid>,
    name: Option<&str>,
    scopes: Option<Vec<Option<String>>>,
    expires_at: Option<TimestampWithTimeZone>,
    metadata: Option<AnyElement>,
    prefix: Option<&str>,
    limits: LimitArgs,
    owner: Option<&str>,
) -> ApiResult<NewKey> {
    // in create_key, 0 and -1 remove nothing: they are out of range
    if limits.rate_limit.is_some_and(|l| l <= 0) {
        return Err(RuleError::RateLimit.into());
    }
    if limits.credits.is_some_and(|c| c < 0) {
        return Err(RuleError::Credits.into());
    }
    if limits.refill_amount.is_some_and(|a| a <= 0) {
        return Err(RuleError::Refill.into());
    }
    if limits.any() {
        limits.check(&Current {
            workspace_id: Uuid::from_bytes([0; 16]),
            owner: String::new(),
            name: String::new(),
            revoked: false,
            has_credits: false,
            scopes: Vec::new(),
            expires_at: None,
            rate_limit: None,
            rate_window: None,
            credits: None,
            refill_amount: None,
            refill_interval: None,
            suspended: false,
            suspended_by: Tier::Member,
        })?;
    }
    let k = crate::keys::create_key_impl(workspace_id, name, scopes, expires_at, metadata, prefix, owner)?;
    Spi::connect_mut(|client| apply_limits(client, k.id, &limits))?;
    Ok(k)
}

#[allow(clippy::too_many_arguments, clippy::type_complexity)]
#[pg_extern(sql = false)]
fn create_key_limited(
    workspace_id: Option<Uuid>,
    name: Option<&str>,
    scopes: Option<Vec<Option<String>>>,
    expires_at: Option<TimestampWithTimeZone>,
    metadata: Option<AnyElement>,
    prefix: Option<&str>,
    rate_limit: Option<i32>,
    rate_window: Option<Interval>,
    credits: Option<i64>,
    refill_amount: Option<i64>,
    refill_interval: Option<Interval>,
    owner: Option<&str>,
) -> TableIterator<'static, (name!(id, Uuid), name!(name, String), name!(prefix, String), name!(key, String))>
{
    let limits = LimitArgs { rate_limit, rate_window, credits, refill_amount, refill_interval };
    match deferred(create_key_limited_impl(
        workspace_id,
        name,
        scopes,
        expires_at,
        metadata,
        prefix,
        limits,
        owner,
    )) {
        Some(k) => TableIterator::once((k.id, k.name, k.prefix, k.key)),
        None => TableIterator::empty(),
    }
}

// ---------------------------------------------------------------------------
// rotate_key with a new expiry (renewal)

fn rotate_key_renew_impl(
    key_id: Option<Uuid>,
    grace: Option<Interval>,
    expires_at: Option<TimestampWithTimeZone>,
) -> ApiResult<NewKey> {
    // any future expiry: the new key is a new key (the shrink-only rule is
    // about one key's life)
    crate::keys::check_future(expires_at)?;
    crate::keys::rotate_key_impl(key_id, grace, expires_at)
}

#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn rotate_key_renew(
    key_id: Option<Uuid>,
    grace: Option<Interval>,
    expires_at: Option<TimestampWithTimeZone>,
) -> TableIterator<'static, (name!(id, Uuid), name!(name, String), name!(prefix, String), name!(key, String))>
{
    match deferred(rotate_key_renew_impl(key_id, grace, expires_at)) {
        Some(k) => TableIterator::once((k.id, k.name, k.prefix, k.key)),
        None => TableIterator::empty(),
    }
}

// ---------------------------------------------------------------------------
// update_key

#[allow(clippy::too_many_arguments)]
fn update_key_impl(
    key_id: Option<Uuid>,
    name: Option<&str>,
    scopes: Option<Vec<Option<String>>>,
    metadata: Option<AnyElement>,
    limits: LimitArgs,
    expires_at: Option<TimestampWithTimeZone>,
) -> ApiResult<()> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    let key_id = key_id.ok_or(ApiError::NullArgument(c"key_id must not be null"))?;
    let name = name.map(rules::key_name).transpose()?;
    let scopes = scopes.map(|s| rules::scopes(&s)).transpose()?;
    crate::keys::check_future(expires_at)?;
    Spi::connect_mut(|client| {
        manageable_key(client, &caller, key_id)?;
        caller.require_key_manage()?;
        let cur = current(client, key_id)?;
        if cur.revoked {
            return Err(ApiError::KeyRevokedForGood);
        }
        limits.check(&cur)?;
        if let Some(m) = metadata {
            check_metadata(client, m)?;
        }
        if let Some(s) = &scopes {
            // within the owner's scopes, and the calling key's
            let m = membership(client, cur.workspace_id, &cur.owner)?;
            if m.role != rules::Role::Admin && !s.iter().all(|x| m.scopes.contains(x)) {
                return Err(ApiError::OwnerScopeEscalation);
            }
            let me = membership(client, cur.workspace_id, &caller.principal)?;
            authorize_scopes(&caller, me.role, &me.scopes, s)?;
        }
        // a member (or any API key) only tightens: the limits an admin set
        // are raised or removed only by an admin
        if caller_tier(client, &caller, cur.workspace_id)? == Tier::Member {
            let live = cur.credits.map(|c| c - crate::limits::unwritten_debits(key_id.as_bytes()));
            if !only_tightens(&cur, &limits, scopes.as_ref(), expires_at, live) {
                return Err(ApiError::MemberCannotLoosen);
            }
        }
        if let Some(n) = &name {
            if *n != cur.name && name_taken(client, cur.workspace_id, n)? {
                return Err(ApiError::NameTaken);
            }
        }
        // SAFETY: the caller's jsonb argument, alive for the call
        let meta = metadata.map(|m| unsafe { pgrx::datum::DatumWithOid::new(m, pgrx::pg_sys::JSONBOID) });
        client.update(
            "UPDATE apikeys.keys SET
                name = coalesce($2, name),
                scopes = coalesce($3, scopes),
                metadata = coalesce($4, metadata),
                expires_at = coalesce($5, expires_at)
              WHERE id = $1",
            None,
            &[
                key_id.into(),
                name.into(),
                scopes.into(),
                meta.unwrap_or_else(|| pgrx::datum::DatumWithOid::null_oid(pgrx::pg_sys::JSONBOID)),
                expires_at.into(),
            ],
        )?;
        apply_limits(client, key_id, &limits)
    })
}

#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn update_key(
    key_id: Option<Uuid>,
    name: Option<&str>,
    scopes: Option<Vec<Option<String>>>,
    metadata: Option<AnyElement>,
    rate_limit: Option<i32>,
    rate_window: Option<Interval>,
    credits: Option<i64>,
    refill_amount: Option<i64>,
    refill_interval: Option<Interval>,
    expires_at: Option<TimestampWithTimeZone>,
) -> Option<bool> {
    let limits = LimitArgs { rate_limit, rate_window, credits, refill_amount, refill_interval };
    deferred(update_key_impl(key_id, name, scopes, metadata, limits, expires_at)).map(|_| true)
}

// ---------------------------------------------------------------------------
// suspend_key / resume_key

fn suspend_impl(key_id: Option<Uuid>, suspend: bool) -> ApiResult<bool> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    let key_id = key_id.ok_or(ApiError::NullArgument(c"key_id must not be null"))?;
    Spi::connect_mut(|client| {
        manageable_key(client, &caller, key_id)?;
        if let Some(k) = &caller.key {
            // a key may suspend itself; anything else needs apikeys:manage
            if !(suspend && k.key_id == key_id) {
                caller.require_key_manage()?;
            }
        }
        let cur = current(client, key_id)?;
        if cur.revoked {
            return Err(ApiError::KeyRevokedForGood);
        }
        let tier = caller_tier(client, &caller, cur.workspace_id)?;
        // an operator's suspend_owner holds the key: its own suspension
        // waits aside until resume_owner gives it back
        let (owner_suspended, held_by) = client
            .select(
                "SELECT owner_suspended, held_suspended_by FROM apikeys.keys WHERE id = $1",
                Some(1),
                &[key_id.into()],
            )?
            .first()
            .get_two::<bool, String>()?;
        let held = owner_suspended.map(|o| (o, held_by));
        if let Some((true, held_by)) = held {
            if !suspend {
                return Err(ApiError::OwnerSuspended);
            }
            let held_tier = held_by.as_deref().and_then(Tier::parse);
            if held_tier.is_some_and(|h| h >= tier) {
                return Ok(false);
            }
            client.update(
                "UPDATE apikeys.keys SET held_suspended_at = coalesce(held_suspended_at, pg_catalog.now()),
                        held_suspended_by = $2
                  WHERE id = $1",
                None,
                &[key_id.into(), tier.as_str().into()],
            )?;
            return Ok(held_tier.is_none());
        }
        if suspend {
            if cur.suspended && cur.suspended_by >= tier {
                return Ok(false);
            }
            // a new suspension, or a higher tier taking over a lower one's
            // (which the lower tier then cannot lift)
            client.update(
                "UPDATE apikeys.keys SET suspended_at = coalesce(suspended_at, pg_catalog.now()), suspended_by = $2
                  WHERE id = $1",
                None,
                &[key_id.into(), tier.as_str().into()],
            )?;
            return Ok(!cur.suspended);
        }
        if !cur.suspended {
            return Ok(false);
        }
        if cur.suspended_by > tier {
            return Err(ApiError::SuspendedByHigherTier);
        }
        client.update(
            "UPDATE apikeys.keys SET suspended_at = NULL, suspended_by = NULL WHERE id = $1",
            None,
            &[key_id.into()],
        )?;
        Ok(true)
    })
}

/// `suspend_key(key_id)`: true when it suspended the key, false when it was
/// suspended already.
#[pg_extern(sql = false)]
fn suspend_key(key_id: Option<Uuid>) -> Option<bool> {
    deferred(suspend_impl(key_id, true))
}

/// `resume_key(key_id)`: true when it resumed the key, false when it was
/// not suspended.
#[pg_extern(sql = false)]
fn resume_key(key_id: Option<Uuid>) -> Option<bool> {
    deferred(suspend_impl(key_id, false))
}

// ---------------------------------------------------------------------------
// set_owner_limit

fn set_owner_limit_impl(
    workspace_id: Option<Uuid>,
    owner: Option<&str>,
    rate_limit: Option<i32>,
    rate_window: Option<Interval>,
) -> ApiResult<()> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    let workspace_id = workspace_id.ok_or(ApiError::NullArgument(c"workspace_id must not be null"))?;
    let owner = owner.ok_or(ApiError::NullArgument(c"owner must not be null"))?;
    rules::principal(owner)?;
    if rate_limit.is_some() && !crate::limits::active() {
        return Err(ApiError::LimitsNeedPreload);
    }
    Spi::connect_mut(|client| {
        require_admin(client, &caller, workspace_id)?;
        // mints of this owner in flight finish first (their trigger takes
        // this lock shared), and mints after this wait for its commit: no
        // new key escapes the limit
        client.update(
            "SELECT pg_catalog.pg_advisory_xact_lock(1634757497,
                        pg_catalog.hashtext($1::text OPERATOR(pg_catalog.||) $2))",
            None,
            &[workspace_id.into(), owner.into()],
        )?;
        match (rate_limit, rate_window) {
            (Some(l), Some(w)) if l > 0 => {
                check_interval(IntervalKind::RateWindow, w)?;
                client.update(
                    "INSERT INTO apikeys.owner_limits (workspace_id, owner, rate_limit, rate_window)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (workspace_id, owner) DO UPDATE
                        SET rate_limit = excluded.rate_limit, rate_window = excluded.rate_window",
                    None,
                    &[workspace_id.into(), owner.into(), l.into(), w.into()],
                )?;
            }
            (None, None) => {
                client.update(
                    "DELETE FROM apikeys.owner_limits WHERE workspace_id = $1 AND owner = $2",
                    None,
                    &[workspace_id.into(), owner.into()],
                )?;
            }
            _ => return Err(RuleError::RateLimit.into()),
        }
        // every key of the owner in the workspace carries the limit
        client.update(
            "UPDATE apikeys.keys SET owner_rate_limit = $3, owner_rate_window = $4
              WHERE workspace_id = $1 AND owner = $2
                AND (owner_rate_limit IS DISTINCT FROM $3 OR owner_rate_window IS DISTINCT FROM $4)",
            None,
            &[workspace_id.into(), owner.into(), rate_limit.into(), rate_window.into()],
        )?;
        client.update(
            "INSERT INTO apikeys.audit_log (workspace_id, actor, action, detail)
             VALUES ($1, apikeys.current_principal(), 'owner.limit_set',
                     pg_catalog.jsonb_build_object('owner', $2::text, 'rate_limit', $3::int,
                                                   'rate_window', $4::interval))",
            None,
            &[workspace_id.into(), owner.into(), rate_limit.into(), rate_window.into()],
        )?;
        Ok(())
    })
}

/// `set_owner_limit(workspace_id, owner, rate_limit, rate_window)`: a limit
/// shared by all of `owner`'s keys in the workspace; NULL and NULL remove it.
#[pg_extern(sql = false)]
fn set_owner_limit(
    workspace_id: Option<Uuid>,
    owner: Option<&str>,
    rate_limit: Option<i32>,
    rate_window: Option<Interval>,
) -> Option<bool> {
    deferred(set_owner_limit_impl(workspace_id, owner, rate_limit, rate_window)).map(|_| true)
}

#[cfg(test)]
mod tests {
    use super::rate_within;
    const S: i128 = 1_000_000;

    #[test]
    fn a_rate_is_within_another_in_every_window_not_on_average() {
        // the same average as 10 per minute, but 14 400 at once
        assert!(!rate_within(14_400, 86_400 * S, 10, 60 * S));
        assert!(rate_within(10, 60 * S, 10, 60 * S));
        assert!(rate_within(5, 30 * S, 10, 60 * S));
        assert!(!rate_within(6, 30 * S, 10, 60 * S));
        // a longer window holds no more than the cap, when its boundaries
        // are the cap's; else two of its windows may meet in one of the cap's
        assert!(rate_within(10, 120 * S, 10, 60 * S));
        assert!(!rate_within(11, 120 * S, 10, 60 * S));
        assert!(!rate_within(10, 90 * S, 10, 60 * S));
        assert!(rate_within(5, 90 * S, 10, 60 * S));
        assert!(!rate_within(10, 61 * S, 10, 60 * S));
        // a shorter window that does not divide the cap's: one more window
        assert!(!rate_within(4, 25 * S, 10, 60 * S));
        assert!(rate_within(2, 25 * S, 10, 60 * S));
        assert!(!rate_within(1, 6_100_000, 10, 60 * S));
        // 1 per second is 60 per minute
        assert!(!rate_within(1, S, 59, 60 * S));
        assert!(rate_within(1, S, 60, 60 * S));
    }
}
