//! Secret keys: `create_key`, `revoke_key`, `rotate_key`, `import_key`
//! (`verify_key` is the hot path, in verify.rs).
//!
//! Only P ever holds a token that acts as P: `create_key` mints for the
//! caller, `rotate_key` only for the key's owner, and `import_key` for
//! another owner only with the `apikeys_importer` role (docs/security.md).

use pgrx::datum::TimestampWithTimeZone;
use pgrx::datum::{AnyElement, DatumWithOid};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

use crate::errors::{ApiError, ApiResult};
use crate::fmgr::deferred;
use crate::principal::Caller;
use crate::rules::{self, Role};
use crate::spi::{insert_with_retry, name_taken, random_body, RevokeOnce};
use crate::token;
use crate::workspaces::{caller, caller_membership, insider_membership, membership, require_admin};

/// What `create_key` returns: the only moment the token exists.
pub struct NewKey {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub key: String,
}

type NewKeyRow = (Uuid, String, String, String);

impl NewKey {
    fn row(self) -> NewKeyRow {
        (self.id, self.name, self.prefix, self.key)
    }
}

/// `expires_at` must lie in the future (after the statement's start, the
/// clock verify_key judges expiry by).
pub(crate) fn check_future(expires_at: Option<TimestampWithTimeZone>) -> ApiResult<()> {
    if let Some(t) = expires_at {
        let at: pg_sys::TimestampTz = t.into();
        // SAFETY: reads the current statement's start time
        let now = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
        if at <= now {
            return Err(ApiError::ExpiryNotFuture);
        }
    }
    Ok(())
}

/// Settings of a key to mint, already validated.
pub struct KeySpec {
    /// `None`: a new random id.
    pub id: Option<Uuid>,
    pub workspace_id: Uuid,
    pub owner: String,
    /// `None`: `key-<first 8 of body>`.
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub metadata: Metadata,
    pub expires_at: Option<TimestampWithTimeZone>,
    pub prefix: String,
}

/// A new key's metadata. Never converted to a Rust value: the jsonb datum
/// goes into the table as given, so numbers, key order and depth are kept
/// exactly as PostgreSQL's jsonb holds them.
#[derive(Clone, Copy)]
pub enum Metadata {
    /// `{}`.
    Empty,
    /// The caller's jsonb argument, checked by [`check_metadata`].
    Given(AnyElement),
    /// The metadata of another key (rotation).
    CopyOf(Uuid),
}

impl Metadata {
    /// The `$6` (jsonb) and `$9` (key id to copy from) arguments of the mint.
    fn args(self) -> (DatumWithOid<'static>, DatumWithOid<'static>) {
        let no_json = DatumWithOid::null_oid(pg_sys::JSONBOID);
        let no_id = DatumWithOid::null_oid(pg_sys::UUIDOID);
        match self {
            Metadata::Empty => (no_json, no_id),
            // SAFETY: the datum is the caller's jsonb argument, alive for the call
            Metadata::Given(j) => (unsafe { DatumWithOid::new(j, pg_sys::JSONBOID) }, no_id),
            Metadata::CopyOf(id) => (no_json, id.into()),
        }
    }
}

/// Check metadata given as a jsonb argument: an object, at most 16 KiB as
/// text, nested at most 64 levels (rules::metadata_text). It is measured in
/// its text form; what is stored is the datum itself.
pub fn check_metadata(client: &mut SpiClient<'_>, metadata: AnyElement) -> ApiResult<()> {
    // SAFETY: the datum is the caller's jsonb argument, alive for the call
    let arg = unsafe { DatumWithOid::new(metadata, pg_sys::JSONBOID) };
    let row = client.select(
        "SELECT pg_catalog.jsonb_typeof(j) = 'object',
                CASE WHEN pg_catalog.octet_length(t) <= $2 THEN t END
           FROM (SELECT $1 AS j, $1::pg_catalog.text AS t) s",
        Some(1),
        &[arg, (rules::MAX_METADATA_BYTES as i32).into()],
    )?;
    let row = row.first();
    let object: bool = row.get(1)?.unwrap_or(false);
    let text: Option<String> = row.get(2)?;
    match text {
        Some(t) if object => Ok(rules::metadata_text(&t)?),
        _ => Err(rules::RuleError::Metadata.into()),
    }
}

/// Insert a key row and its hash. The only place a token is made.
pub fn mint(client: &mut SpiClient<'_>, spec: &KeySpec) -> ApiResult<NewKey> {
    // a display-prefix collision (47 random bits) is retried with a new token;
    // a taken name the caller chose is final
    insert_with_retry(client, ApiError::NameTaken, |client| {
        let minted = token::build(&spec.prefix, &random_body()?);
        let name = spec.name.clone().unwrap_or_else(|| minted.default_name.clone());
        let (metadata, copy_of) = spec.metadata.args();
        let inserted = client.update(
            "INSERT INTO apikeys.keys (id, workspace_id, owner, name, prefix, scopes, metadata, expires_at)
             VALUES (coalesce($8, pg_catalog.gen_random_uuid()), $1, $2, $3, $4, $5,
                     coalesce($6, (SELECT c.metadata FROM apikeys.keys c WHERE c.id = $9), '{}'::pg_catalog.jsonb),
                     $7)
             ON CONFLICT DO NOTHING
             RETURNING id",
            None,
            &[
                spec.workspace_id.into(),
                spec.owner.as_str().into(),
                name.as_str().into(),
                minted.display_prefix.as_str().into(),
                spec.scopes.clone().into(),
                metadata,
                spec.expires_at.into(),
                spec.id.into(),
                copy_of,
            ],
        )?;
        if inserted.is_empty() {
            if spec.name.is_some() && name_taken(client, spec.workspace_id, &name)? {
                return Err(ApiError::NameTaken);
            }
            return Ok(None);
        }
        let id: Uuid = inserted.first().get(1)?.ok_or(ApiError::Internal)?;
        let digest = token::digest(&minted.token);
        client.update(
            "INSERT INTO apikeys.key_hashes (key_id, hash) VALUES ($1, $2)",
            None,
            &[id.into(), digest.as_slice().into()],
        )?;
        Ok(Some(NewKey { id, name, prefix: minted.display_prefix, key: minted.token }))
    })
}

/// May `caller` (with `membership`) give a key `scopes`?
pub fn authorize_scopes(caller: &Caller, role: Role, held: &[String], scopes: &[String]) -> ApiResult<()> {
    caller.require_key_manage()?;
    caller.require_key_scopes(scopes)?;
    if role == Role::Member && !rules::missing(scopes, held).is_empty() {
        return Err(ApiError::ScopeEscalation);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn create_key_impl(
    workspace_id: Option<Uuid>,
    name: Option<&str>,
    scopes: Option<Vec<Option<String>>>,
    expires_at: Option<TimestampWithTimeZone>,
    metadata: Option<AnyElement>,
    prefix: Option<&str>,
    owner: Option<&str>,
) -> ApiResult<NewKey> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    // a key for another owner (an identity: an external id that needs no
    // membership): only an operator mints one
    let owner = match owner {
        Some(o) if o != caller.principal => {
            rules::principal(o)?;
            if !crate::principal::is_operator(&caller) {
                return Err(ApiError::MintForOthers);
            }
            o.to_owned()
        }
        _ => caller.principal.clone(),
    };
    let workspace_id = workspace_id.ok_or(ApiError::NullArgument(c"workspace_id must not be null"))?;
    let name = name.map(rules::key_name).transpose()?;
    let scopes = rules::scopes(&scopes.unwrap_or_default())?;
    check_future(expires_at)?;
    let prefix = prefix.unwrap_or("sk");
    rules::key_prefix(prefix)?;

    Spi::connect_mut(|client| {
        let metadata = match metadata {
            Some(m) => {
                check_metadata(client, m)?;
                Metadata::Given(m)
            }
            None => Metadata::Empty,
        };
        let m = caller_membership(client, &caller, workspace_id)?;
        authorize_scopes(&caller, m.role, &m.scopes, &scopes)?;
        not_suspended(client, workspace_id, &owner)?;
        let spec = KeySpec {
            id: None,
            workspace_id,
            owner,
            name,
            scopes,
            metadata,
            expires_at,
            prefix: prefix.to_owned(),
        };
        mint(client, &spec)
    })
}

/// Whether the schema has `apikeys.suspensions` (0.2.0 on; a database
/// still on 0.1.0's schema has none).
pub(crate) fn has_suspensions(client: &SpiClient<'_>) -> ApiResult<bool> {
    Ok(client
        .select("SELECT pg_catalog.to_regclass('apikeys.suspensions') IS NOT NULL", Some(1), &[])?
        .first()
        .get::<bool>(1)?
        .unwrap_or(false))
}

/// Refuse a mint for an owner (or in a workspace) an operator suspended
/// ([`ApiError::OwnerSuspended`]); a schema from before 0.2.0 has no
/// suspensions.
pub(crate) fn not_suspended(client: &mut SpiClient<'_>, workspace_id: Uuid, owner: &str) -> ApiResult<()> {
    if !has_suspensions(client)? {
        return Ok(());
    }
    let suspended = !client
        .select(
            "SELECT 1 FROM apikeys.suspensions s
              WHERE s.workspace_id = $1 AND s.resumed_at IS NULL AND (s.owner IS NULL OR s.owner = $2)",
            Some(1),
            &[workspace_id.into(), owner.into()],
        )?
        .is_empty();
    if suspended {
        Err(ApiError::OwnerSuspended)
    } else {
        Ok(())
    }
}

#[pg_extern(sql = false)]
fn create_key(
    workspace_id: Option<Uuid>,
    name: Option<&str>,
    scopes: Option<Vec<Option<String>>>,
    expires_at: Option<TimestampWithTimeZone>,
    metadata: Option<AnyElement>,
    prefix: Option<&str>,
) -> TableIterator<'static, (name!(id, Uuid), name!(name, String), name!(prefix, String), name!(key, String))>
{
    match deferred(create_key_impl(workspace_id, name, scopes, expires_at, metadata, prefix, None)) {
        Some(k) => TableIterator::once(k.row()),
        None => TableIterator::empty(),
    }
}

// ---------------------------------------------------------------------------
// revoke_key

/// Find a key the caller may manage: admins any key of their workspace,
/// members their own. Absent and not-yours are the same [`ApiError::KeyNotFound`].
pub fn manageable_key(client: &mut SpiClient<'_>, caller: &Caller, key_id: Uuid) -> ApiResult<Uuid> {
    let row = client.select(
        "SELECT workspace_id, owner FROM apikeys.keys WHERE id = $1",
        Some(1),
        &[key_id.into()],
    )?;
    if row.is_empty() {
        return Err(ApiError::KeyNotFound);
    }
    let row = row.first();
    let workspace_id: Uuid = row.get(1)?.ok_or(ApiError::Internal)?;
    let owner: String = row.get(2)?.ok_or(ApiError::Internal)?;
    let m = insider_membership(client, caller, workspace_id, ApiError::KeyNotFound)?;
    if m.role != Role::Admin && owner != caller.principal {
        return Err(ApiError::KeyNotFound);
    }
    Ok(workspace_id)
}

/// `revoke_key`'s latch: the first revoke sets `revoked_at`, later ones
/// return it.
const REVOKE_KEY: RevokeOnce = RevokeOnce {
    set: "UPDATE apikeys.keys SET revoked_at = pg_catalog.now()
           WHERE id = $1 AND revoked_at IS NULL RETURNING revoked_at",
    get: "SELECT revoked_at FROM apikeys.keys WHERE id = $1",
};

fn revoke_key_impl(key_id: Option<Uuid>) -> ApiResult<TimestampWithTimeZone> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    let key_id = key_id.ok_or(ApiError::NullArgument(c"key_id must not be null"))?;
    Spi::connect_mut(|client| {
        manageable_key(client, &caller, key_id)?;
        if let Some(k) = &caller.key {
            // a key may always revoke itself; anything else needs apikeys:manage
            if k.key_id != key_id {
                caller.require_key_manage()?;
            }
        }
        REVOKE_KEY.run(client, key_id)
    })
}

#[pg_extern(sql = false)]
fn revoke_key(key_id: Option<Uuid>) -> Option<TimestampWithTimeZone> {
    deferred(revoke_key_impl(key_id))
}

// ---------------------------------------------------------------------------
// rotate_key

/// The token prefix a key was minted with, from its display prefix
/// (`<prefix>_<8 body characters>`); imported keys rotate to `sk`.
fn token_prefix(display_prefix: &str, source: &str) -> String {
    let cut = display_prefix.len().saturating_sub(1 + token::DISPLAY_BODY_CHARS);
    match display_prefix.get(..cut) {
        Some(p) if source == "minted" && token::valid_prefix(p) => p.to_owned(),
        _ => "sk".to_owned(),
    }
}

/// Rotate a key: a new token for its owner, the old one replaced (after
/// `grace`). The new key keeps the old one's expiry unless `renew` gives
/// another (checked to be in the future by the caller): renewal.
pub(crate) fn rotate_key_impl(
    key_id: Option<Uuid>,
    grace: Option<pgrx::datum::Interval>,
    renew: Option<TimestampWithTimeZone>,
) -> ApiResult<NewKey> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    let key_id = key_id.ok_or(ApiError::NullArgument(c"key_id must not be null"))?;
    let grace = grace.ok_or(ApiError::NullArgument(c"grace must not be null"))?;
    Spi::connect_mut(|client| {
        // 0 to 100 years, no negative part: a longer one could overflow now() + grace
        crate::key_admin::check_interval(rules::IntervalKind::Grace, grace)?;
        let workspace_id = manageable_key(client, &caller, key_id)?;
        caller.require_key_manage()?;
        // lock the key: a concurrent revoke or rotation waits, then sees this one
        let row = client.update(
            "SELECT owner, name, prefix, scopes, expires_at, source, replaced_by IS NOT NULL,
                    revoked_at IS NOT NULL OR (expires_at IS NOT NULL AND expires_at <= pg_catalog.now())
               FROM apikeys.keys WHERE id = $1 FOR UPDATE",
            Some(1),
            &[key_id.into()],
        )?;
        if row.is_empty() {
            return Err(ApiError::KeyNotFound);
        }
        let row = row.first();
        let owner: String = row.get(1)?.ok_or(ApiError::Internal)?;
        let name: String = row.get(2)?.ok_or(ApiError::Internal)?;
        let display: String = row.get(3)?.ok_or(ApiError::Internal)?;
        let scopes: Vec<String> = row.get(4)?.unwrap_or_default();
        let expires_at: Option<TimestampWithTimeZone> = row.get(5)?;
        let source: String = row.get(6)?.ok_or(ApiError::Internal)?;
        let replaced: bool = row.get(7)?.unwrap_or(false);
        let dead: bool = row.get(8)?.unwrap_or(true);
        if owner != caller.principal && !crate::principal::is_operator(&caller) {
            // the new token would act as the owner: only the owner gets one
            // (or an operator: a support rotation of a customer's key)
            return Err(ApiError::NotKeyOwner);
        }
        not_suspended(client, workspace_id, &owner)?;
        if dead {
            return Err(ApiError::KeyNotActive);
        }
        if replaced {
            return Err(ApiError::KeyAlreadyRotated);
        }
        caller.require_key_scopes(&scopes)?;
        // the replacement keeps the old key's limits and its credit balance
        // (a schema from before 0.2.0 has none, nor suspensions)
        let has_limits = !client
            .select(
                "SELECT 1 FROM pg_catalog.pg_attribute
                  WHERE attrelid = 'apikeys.keys'::pg_catalog.regclass AND attname = 'suspended_at'
                    AND NOT attisdropped",
                Some(1),
                &[],
            )?
            .is_empty();
        // a suspended key is not rotated: its replacement would not be
        // suspended, undoing whoever suspended it
        if has_limits
            && client
                .select(
                    "SELECT suspended_at IS NOT NULL FROM apikeys.keys WHERE id = $1",
                    Some(1),
                    &[key_id.into()],
                )?
                .first()
                .get::<bool>(1)?
                .unwrap_or(false)
        {
            return Err(ApiError::KeySuspended);
        }
        let new_id: Uuid = client
            .select("SELECT pg_catalog.gen_random_uuid()", Some(1), &[])?
            .first()
            .get(1)?
            .ok_or(ApiError::Internal)?;
        // the old key gives its name up, and expires after the grace period
        // (never later than it would have), or is revoked now
        client.update(
            "UPDATE apikeys.keys
                SET replaced_by = $2,
                    revoked_at = CASE WHEN $3 = interval '0' THEN pg_catalog.now() END,
                    expires_at = CASE
                        WHEN $3 = interval '0' THEN expires_at
                        WHEN expires_at IS NULL OR expires_at > pg_catalog.now() + $3
                            THEN pg_catalog.now() + $3
                        ELSE expires_at END
              WHERE id = $1",
            None,
            &[key_id.into(), new_id.into(), grace.into()],
        )?;
        // an older generation still in its grace period (this key replaced
        // it) ends now: a key has at most one predecessor that still works,
        // so rotations in a row never multiply its tokens, its credits or
        // its rate
        client.update(
            "UPDATE apikeys.keys SET expires_at = pg_catalog.now()
              WHERE replaced_by = $1 AND revoked_at IS NULL
                AND (expires_at IS NULL OR expires_at > pg_catalog.now())",
            None,
            &[key_id.into()],
        )?;
        let spec = KeySpec {
            id: Some(new_id),
            workspace_id,
            owner,
            name: Some(name),
            scopes,
            metadata: Metadata::CopyOf(key_id),
            expires_at: renew.or(expires_at),
            prefix: token_prefix(&display, &source),
        };
        let new = mint(client, &spec)?;
        if has_limits {
            // the balance as this server knows it: less the debits not
            // written yet (from now on both tokens spend the replacement's)
            let unwritten = crate::limits::unwritten_debits(key_id.as_bytes());
            client.update(
                "UPDATE apikeys.keys n
                    SET rate_limit = o.rate_limit, rate_window = o.rate_window,
                        credits = GREATEST(o.credits - $3, 0), refill_amount = o.refill_amount,
                        refill_interval = o.refill_interval, credits_refilled_at = o.credits_refilled_at
                   FROM apikeys.keys o
                  WHERE n.id = $1 AND o.id = $2
                    AND (o.rate_limit IS NOT NULL OR o.credits IS NOT NULL)",
                None,
                &[new.id.into(), key_id.into(), unwritten.into()],
            )?;
        }
        Ok(new)
    })
}

#[pg_extern(sql = false)]
fn rotate_key(
    key_id: Option<Uuid>,
    grace: Option<pgrx::datum::Interval>,
) -> TableIterator<'static, (name!(id, Uuid), name!(name, String), name!(prefix, String), name!(key, String))>
{
    match deferred(rotate_key_impl(key_id, grace, None)) {
        Some(k) => TableIterator::once(k.row()),
        None => TableIterator::empty(),
    }
}

// ---------------------------------------------------------------------------
// import_key

/// Display prefix of an imported key: nothing of its token is known, so it
/// is `imported:` and 8 random base62 characters (a colon never appears in
/// a minted key's prefix).
fn imported_prefix() -> ApiResult<String> {
    let body = token::encode_body(&random_body()?);
    Ok(format!("imported:{}", &body[..token::DISPLAY_BODY_CHARS]))
}

/// Whether the role the caller acts as holds the privileges of
/// `apikeys_importer` (granted by `apikeys.grant_importer`; superusers hold
/// every role's): the one way to import a key for another principal.
pub(crate) fn is_importer() -> bool {
    // SAFETY: a role look-up by name and a membership check, both cached
    unsafe {
        let user = pg_sys::GetOuterUserId();
        if pg_sys::superuser_arg(user) {
            return true;
        }
        let role = pg_sys::get_role_oid(c"apikeys_importer".as_ptr(), true);
        role != pg_sys::InvalidOid && pg_sys::has_privs_of_role(user, role)
    }
}

#[allow(clippy::too_many_arguments)]
fn import_key_impl(
    workspace_id: Option<Uuid>,
    owner: Option<&str>,
    name: Option<&str>,
    sha256_hex: Option<&str>,
    scopes: Option<Vec<Option<String>>>,
    expires_at: Option<TimestampWithTimeZone>,
) -> ApiResult<Uuid> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    let workspace_id = workspace_id.ok_or(ApiError::NullArgument(c"workspace_id must not be null"))?;
    let owner = owner.ok_or(ApiError::NullArgument(c"owner must not be null"))?;
    rules::principal(owner)?;
    let name = rules::key_name(name.ok_or(ApiError::NullArgument(c"name must not be null"))?)?;
    let digest =
        rules::sha256_hex(sha256_hex.ok_or(ApiError::NullArgument(c"sha256_hex must not be null"))?)?;
    let scopes = rules::scopes(&scopes.unwrap_or_default())?;
    check_future(expires_at)?;
    Spi::connect_mut(|client| {
        require_admin(client, &caller, workspace_id)?;
        caller.require_key_scopes(&scopes)?;
        // (a database still on 0.1.0's schema, before ALTER EXTENSION
        // UPDATE, keeps 0.1.0's rule: any admin)
        // an operator imports for any owner, members or identities (its
        // customers' external ids), as it mints for them
        let operator = crate::principal::is_operator(&caller);
        if owner != caller.principal
            && crate::workspaces::has_invitations(client)?
            && !operator
            && (caller.key.is_some() || !is_importer())
        {
            // a digest the caller chose would act as someone else
            return Err(ApiError::ImportForOthers);
        }
        if !operator {
            let m = match membership(client, workspace_id, owner) {
                Ok(m) => m,
                Err(ApiError::NotMember) => return Err(ApiError::OwnerNotMember),
                Err(e) => return Err(e),
            };
            if m.role == Role::Member && !rules::missing(&scopes, &m.scopes).is_empty() {
                return Err(ApiError::OwnerScopeEscalation);
            }
        }
        not_suspended(client, workspace_id, owner)?;
        let stored = client.select(
            "SELECT 1 FROM apikeys.key_hashes WHERE hash = $1",
            Some(1),
            &[digest.as_slice().into()],
        )?;
        if !stored.is_empty() {
            return Err(ApiError::DigestTaken);
        }
        // a display-prefix collision is retried; a taken name is final
        insert_with_retry(client, ApiError::Internal, |client| {
            let inserted = client.update(
                "INSERT INTO apikeys.keys (workspace_id, owner, name, prefix, scopes, expires_at, source)
                 VALUES ($1, $2, $3, $4, $5, $6, 'imported')
                 ON CONFLICT DO NOTHING
                 RETURNING id",
                None,
                &[
                    workspace_id.into(),
                    owner.into(),
                    name.as_str().into(),
                    imported_prefix()?.as_str().into(),
                    scopes.clone().into(),
                    expires_at.into(),
                ],
            )?;
            if inserted.is_empty() {
                if name_taken(client, workspace_id, &name)? {
                    return Err(ApiError::NameTaken);
                }
                return Ok(None);
            }
            let id: Uuid = inserted.first().get(1)?.ok_or(ApiError::Internal)?;
            // a concurrent import of the same digest that committed first
            // (the check above could not see it yet): the same 23505, never
            // PostgreSQL's own unique-violation message with the hash in it
            let stored = client.update(
                "INSERT INTO apikeys.key_hashes (key_id, hash) VALUES ($1, $2)
                 ON CONFLICT (hash) DO NOTHING RETURNING key_id",
                None,
                &[id.into(), digest.as_slice().into()],
            )?;
            if stored.is_empty() {
                return Err(ApiError::DigestTaken);
            }
            Ok(Some(id))
        })
    })
}

#[pg_extern(sql = false)]
fn import_key(
    workspace_id: Option<Uuid>,
    owner: Option<&str>,
    name: Option<&str>,
    sha256_hex: Option<&str>,
    scopes: Option<Vec<Option<String>>>,
    expires_at: Option<TimestampWithTimeZone>,
) -> Option<Uuid> {
    deferred(import_key_impl(workspace_id, owner, name, sha256_hex, scopes, expires_at))
}

#[cfg(test)]
mod tests {
    use super::token_prefix;

    #[test]
    fn rotation_keeps_the_token_prefix() {
        assert_eq!(token_prefix("sk_AbCdEfGh", "minted"), "sk");
        assert_eq!(token_prefix("sk_live_AbCdEfGh", "minted"), "sk_live");
        assert_eq!(token_prefix("imported:AbCdEfGh", "imported"), "sk");
        assert_eq!(token_prefix("x", "minted"), "sk");
    }
}
