//! Public (publishable) keys: `create_public_key`,
//! `revoke_public_key`, `resolve_public_key`.
//!
//! A public key is `pk_<body><check>` in this extension's token format. It is
//! not a secret: it is stored as is, and all it can do is name a workspace to
//! a browser widget, from the origins its admin allowed.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::Uuid;

use crate::errors::{ApiError, ApiResult};
use crate::fmgr::deferred;
use crate::rules::{self, Role};
use crate::spi::{insert_with_retry, random_body, RevokeOnce};
use crate::token;
use crate::workspaces::{caller, insider_membership, require_admin};

/// The token prefix of every public key.
pub const PUBLIC_PREFIX: &str = "pk";

fn create_public_key_impl(
    workspace_id: Option<Uuid>,
    allowed_origins: Option<Vec<Option<String>>>,
) -> ApiResult<(Uuid, String)> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    let workspace_id = workspace_id.ok_or(ApiError::NullArgument(c"workspace_id must not be null"))?;
    let origins = rules::origins(&allowed_origins.unwrap_or_default())?;
    Spi::connect_mut(|client| {
        require_admin(client, &caller, workspace_id)?;
        // a collision with a stored public key is retried with a new one
        insert_with_retry(client, ApiError::Internal, |client| {
            let minted = token::build(PUBLIC_PREFIX, &random_body()?);
            let inserted = client.update(
                "INSERT INTO apikeys.public_keys (workspace_id, public_key, allowed_origins, created_by)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING
                 RETURNING id",
                None,
                &[
                    workspace_id.into(),
                    minted.token.as_str().into(),
                    origins.clone().into(),
                    caller.principal.as_str().into(),
                ],
            )?;
            if inserted.is_empty() {
                return Ok(None);
            }
            let id: Uuid = inserted.first().get(1)?.ok_or(ApiError::Internal)?;
            Ok(Some((id, minted.token)))
        })
    })
}

#[pg_extern(sql = false)]
fn create_public_key(
    workspace_id: Option<Uuid>,
    allowed_origins: Option<Vec<Option<String>>>,
) -> TableIterator<'static, (name!(id, Uuid), name!(public_key, String))> {
    match deferred(create_public_key_impl(workspace_id, allowed_origins)) {
        Some(row) => TableIterator::once(row),
        None => TableIterator::empty(),
    }
}

/// `revoke_public_key`'s latch: the first revoke sets `revoked_at`, later
/// ones return it.
const REVOKE_PUBLIC_KEY: RevokeOnce = RevokeOnce {
    set: "UPDATE apikeys.public_keys SET revoked_at = pg_catalog.now()
           WHERE id = $1 AND revoked_at IS NULL RETURNING revoked_at",
    get: "SELECT revoked_at FROM apikeys.public_keys WHERE id = $1",
};

fn revoke_public_key_impl(id: Option<Uuid>) -> ApiResult<TimestampWithTimeZone> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    let id = id.ok_or(ApiError::NullArgument(c"id must not be null"))?;
    Spi::connect_mut(|client| {
        let row = client.select(
            "SELECT workspace_id FROM apikeys.public_keys WHERE id = $1",
            Some(1),
            &[id.into()],
        )?;
        if row.is_empty() {
            return Err(ApiError::PublicKeyNotFound);
        }
        let workspace_id: Uuid = row.first().get(1)?.ok_or(ApiError::Internal)?;
        let m = insider_membership(client, &caller, workspace_id, ApiError::PublicKeyNotFound)?;
        if m.role != Role::Admin {
            return Err(ApiError::NotAdmin);
        }
        caller.require_key_manage()?;
        REVOKE_PUBLIC_KEY.run(client, id)
    })
}

#[pg_extern(sql = false)]
fn revoke_public_key(id: Option<Uuid>) -> Option<TimestampWithTimeZone> {
    deferred(revoke_public_key_impl(id))
}

/// Whether a request from `origin` may use a key that allows `allowed`
/// (an empty list allows any origin, including none).
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match origin.map(rules::origin) {
        Some(Ok(o)) => allowed.contains(&o),
        _ => false,
    }
}

fn resolve_public_key_impl(public_key: Option<&str>, origin: Option<&str>) -> ApiResult<Option<Uuid>> {
    let Some(public_key) = public_key else { return Ok(None) };
    match token::parse(public_key) {
        Ok(p) if p.prefix == PUBLIC_PREFIX => {}
        _ => return Ok(None),
    }
    Spi::connect(|client| {
        // a workspace the operator suspended whole resolves nothing
        let query = if crate::keys::has_suspensions(client)? {
            "SELECT p.workspace_id, p.allowed_origins FROM apikeys.public_keys p
              WHERE p.public_key = $1 AND p.revoked_at IS NULL
                AND NOT EXISTS (SELECT FROM apikeys.suspensions s
                                 WHERE s.workspace_id = p.workspace_id AND s.owner IS NULL
                                   AND s.resumed_at IS NULL)"
        } else {
            "SELECT workspace_id, allowed_origins FROM apikeys.public_keys
              WHERE public_key = $1 AND revoked_at IS NULL"
        };
        let row = client.select(query, Some(1), &[public_key.into()])?;
        if row.is_empty() {
            return Ok(None);
        }
        let row = row.first();
        let workspace_id: Uuid = row.get(1)?.ok_or(ApiError::Internal)?;
        let allowed: Vec<String> = row.get(2)?.unwrap_or_default();
        Ok(origin_allowed(&allowed, origin).then_some(workspace_id))
    })
}

#[pg_extern(sql = false)]
fn resolve_public_key(
    public_key: Option<&str>,
    origin: Option<&str>,
) -> TableIterator<'static, (name!(workspace_id, Uuid),)> {
    match deferred(resolve_public_key_impl(public_key, origin)).flatten() {
        Some(ws) => TableIterator::once((ws,)),
        None => TableIterator::empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins_gate_resolution() {
        let any: Vec<String> = vec![];
        assert!(origin_allowed(&any, None));
        assert!(origin_allowed(&any, Some("https://x.com")));
        assert!(origin_allowed(&any, Some("garbage")));
        let list = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed(&list, Some("https://app.example.com")));
        assert!(origin_allowed(&list, Some("HTTPS://APP.EXAMPLE.COM")));
        assert!(!origin_allowed(&list, Some("https://evil.example.com")));
        assert!(!origin_allowed(&list, Some("https://app.example.com.evil.com")));
        assert!(!origin_allowed(&list, Some("http://app.example.com")));
        assert!(!origin_allowed(&list, Some("null")));
        assert!(!origin_allowed(&list, Some("")));
        assert!(!origin_allowed(&list, None));
    }
}
