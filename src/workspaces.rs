//! Workspaces and members: `create_workspace`, `add_member`,
//! `accept_invitation`, `remove_member`, and the membership look-ups every
//! other module uses.
//!
//! Membership needs the member's consent: `add_member` for a principal who
//! is not yet a member makes (or renews) an invitation, and only the invitee,
//! acting as themself, turns it into a membership with `accept_invitation`.
//! Changing an existing member's role or scopes needs no consent.
//!
//! Roles and scopes never escalate: an admin holds every scope of its
//! workspace, but through an API key only the key's scopes, and a request
//! authenticated by a key never makes, changes or removes an admin
//! (docs/security.md, "Who can hold which token").
//!
//! Every SQL text here is a constant with `$n` parameters; nothing is built
//! from caller input.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

use crate::errors::{ApiError, ApiResult};
use crate::fmgr::deferred;
use crate::principal::Caller;
use crate::rules::{self, Role};

/// A caller's active membership in a workspace.
pub struct Membership {
    pub role: Role,
    pub scopes: Vec<String>,
}

/// The caller of a function that changes something, or
/// [`ApiError::NoPrincipal`]. A caller bound to an API key by
/// `authenticate()` acts only while that key is live: a revoke or expiry
/// that commits after `authenticate()` ends it ([`ApiError::Unauthenticated`]).
pub fn caller() -> ApiResult<Caller> {
    let mut caller = Caller::current()?.ok_or(ApiError::NoPrincipal)?;
    if let Some(k) = &mut caller.key {
        if !crate::verify::key_is_live(k.key_id)? {
            return Err(ApiError::Unauthenticated);
        }
        // the key acts with its scopes as they are now: a scope an admin
        // took away after authenticate() is gone for this write too
        let scopes: Option<Vec<String>> = Spi::get_one_with_args(
            "SELECT scopes FROM apikeys.keys WHERE id OPERATOR(pg_catalog.=) $1",
            &[k.key_id.into()],
        )?;
        k.scopes = scopes.unwrap_or_default();
    }
    Ok(caller)
}

/// The membership of `principal` in `workspace_id`, locked `FOR SHARE` so
/// that a concurrent removal or scope change waits for this transaction
/// (and then sees, and revokes or narrows, whatever it minted).
/// [`ApiError::WorkspaceNotFound`] when the workspace does not exist,
/// [`ApiError::NotMember`] when the principal has no active membership.
pub fn membership(client: &mut SpiClient<'_>, workspace_id: Uuid, principal: &str) -> ApiResult<Membership> {
    // a locking read: SPI runs it as a writing statement
    let row = client.update(
        "SELECT m.role, m.scopes FROM apikeys.members m
          WHERE m.workspace_id = $1 AND m.principal = $2 AND m.removed_at IS NULL
          FOR SHARE",
        Some(1),
        &[workspace_id.into(), principal.into()],
    )?;
    if row.is_empty() {
        let exists = !client
            .select("SELECT 1 FROM apikeys.workspaces WHERE id = $1", Some(1), &[workspace_id.into()])?
            .is_empty();
        return Err(if exists { ApiError::NotMember } else { ApiError::WorkspaceNotFound });
    }
    let row = row.first();
    let role: String = row.get(1)?.ok_or(ApiError::Internal)?;
    let scopes: Vec<String> = row.get(2)?.unwrap_or_default();
    Ok(Membership { role: Role::parse(&role).map_err(|_| ApiError::Internal)?, scopes })
}

/// The caller's membership, refused for an API-key caller outside its key's
/// workspace.
pub fn caller_membership(
    client: &mut SpiClient<'_>,
    caller: &Caller,
    workspace_id: Uuid,
) -> ApiResult<Membership> {
    // an operator acts in every workspace as its admins do, without
    // membership (its own membership, if any, changes nothing)
    if crate::principal::is_operator(caller) {
        let exists = !client
            .select("SELECT 1 FROM apikeys.workspaces WHERE id = $1", Some(1), &[workspace_id.into()])?
            .is_empty();
        return if exists {
            Ok(Membership { role: Role::Admin, scopes: Vec::new() })
        } else {
            Err(ApiError::WorkspaceNotFound)
        };
    }
    let m = membership(client, workspace_id, &caller.principal)?;
    if let Some(k) = &caller.key {
        if k.workspace_id != workspace_id {
            return Err(ApiError::NotMember);
        }
    }
    // an admin the operator suspended (or whose workspace it suspended)
    // administers nothing meanwhile: no key, member or public key of the
    // workspace, its own included
    if m.role == Role::Admin {
        crate::keys::not_suspended(client, workspace_id, &caller.principal)?;
    }
    Ok(m)
}

/// The caller's membership in the workspace of an object it named by id.
/// An outsider (not a member, or the workspace gone) gets `not_found`, the
/// same error as for an object that does not exist: it cannot tell another
/// tenant's object from none.
pub fn insider_membership(
    client: &mut SpiClient<'_>,
    caller: &Caller,
    workspace_id: Uuid,
    not_found: ApiError,
) -> ApiResult<Membership> {
    match caller_membership(client, caller, workspace_id) {
        Err(ApiError::NotMember | ApiError::WorkspaceNotFound) => Err(not_found),
        other => other,
    }
}

/// Lock the workspace row: membership changes in one workspace run one at a
/// time, so two admins removing each other cannot leave it without an admin.
fn lock_workspace(client: &mut SpiClient<'_>, workspace_id: Uuid) -> ApiResult<()> {
    let found = client.update(
        "SELECT 1 FROM apikeys.workspaces WHERE id = $1 FOR UPDATE",
        Some(1),
        &[workspace_id.into()],
    )?;
    if found.is_empty() {
        Err(ApiError::WorkspaceNotFound)
    } else {
        Ok(())
    }
}

/// The caller must be an admin of the workspace (and not an API key without
/// `apikeys:manage`).
pub fn require_admin(client: &mut SpiClient<'_>, caller: &Caller, workspace_id: Uuid) -> ApiResult<()> {
    let m = caller_membership(client, caller, workspace_id)?;
    if m.role != Role::Admin {
        return Err(ApiError::NotAdmin);
    }
    caller.require_key_manage()?;
    // an admin the operator suspended (or whose workspace it suspended)
    // administers nothing meanwhile: no invitations, no public keys
    if !crate::principal::is_operator(caller) {
        crate::keys::not_suspended(client, workspace_id, &caller.principal)?;
    }
    Ok(())
}

/// Lock the workspace, check the caller is its admin, and return the current
/// role of `principal` there (`None` when not an active member).
fn admin_sees_member(
    client: &mut SpiClient<'_>,
    caller: &Caller,
    workspace_id: Uuid,
    principal: &str,
) -> ApiResult<Option<Role>> {
    lock_workspace(client, workspace_id)?;
    require_admin(client, caller, workspace_id)?;
    let existing = client.select(
        "SELECT role FROM apikeys.members
          WHERE workspace_id = $1 AND principal = $2 AND removed_at IS NULL",
        Some(1),
        &[workspace_id.into(), principal.into()],
    )?;
    if existing.is_empty() {
        return Ok(None);
    }
    let role: String = existing.first().get(1)?.ok_or(ApiError::Internal)?;
    Ok(Some(Role::parse(&role).map_err(|_| ApiError::Internal)?))
}

fn active_admins(client: &SpiClient<'_>, workspace_id: Uuid) -> ApiResult<i64> {
    Ok(client
        .select(
            "SELECT count(*) FROM apikeys.members
              WHERE workspace_id = $1 AND role = 'admin' AND removed_at IS NULL",
            None,
            &[workspace_id.into()],
        )?
        .first()
        .get::<i64>(1)?
        .unwrap_or(0))
}

fn create_workspace_impl(name: Option<&str>, id: Option<Uuid>) -> ApiResult<Uuid> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    if caller.key.is_some() {
        // a key acts inside its own workspace only
        return Err(ApiError::KeyCannotManage);
    }
    let name = name.ok_or(ApiError::NullArgument(c"name must not be null"))?;
    rules::workspace_name(name)?;
    let id = id.ok_or(ApiError::NullArgument(c"id must not be null"))?;
    Spi::connect_mut(|client| {
        let inserted = client.update(
            "INSERT INTO apikeys.workspaces (id, name, created_by) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO NOTHING RETURNING id",
            None,
            &[id.into(), name.into(), caller.principal.as_str().into()],
        )?;
        if inserted.is_empty() {
            return Err(ApiError::WorkspaceExists);
        }
        client.update(
            "INSERT INTO apikeys.members (workspace_id, principal, role) VALUES ($1, $2, 'admin')",
            None,
            &[id.into(), caller.principal.as_str().into()],
        )?;
        Ok(id)
    })
}

fn add_member_impl(
    workspace_id: Option<Uuid>,
    principal: Option<&str>,
    role: Option<&str>,
    scopes: Option<Vec<Option<String>>>,
) -> ApiResult<()> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    let workspace_id = workspace_id.ok_or(ApiError::NullArgument(c"workspace_id must not be null"))?;
    let principal = principal.ok_or(ApiError::NullArgument(c"principal must not be null"))?;
    rules::principal(principal)?;
    let role = Role::parse(role.unwrap_or("member"))?;
    let scopes = rules::scopes(&scopes.unwrap_or_default())?;
    Spi::connect_mut(|client| {
        let was = admin_sees_member(client, &caller, workspace_id, principal)?;
        // through an API key: only the key's scopes, and never an admin
        caller.require_key_scopes(&scopes)?;
        if caller.key.is_some()
            && (role == Role::Admin
                || was == Some(Role::Admin)
                || invited_as_admin(client, workspace_id, principal)?)
        {
            return Err(ApiError::KeyCannotManageAdmins);
        }
        let Some(was) = was else {
            if !has_invitations(client)? {
                // a database still on 0.1.0's schema (the library was updated,
                // ALTER EXTENSION UPDATE not yet run): members join at once,
                // as 0.1.0 did, until the update brings invitations
                client.update(
                    "INSERT INTO apikeys.members (workspace_id, principal, role, scopes)
                     VALUES ($1, $2, $3, $4)",
                    None,
                    &[workspace_id.into(), principal.into(), role.as_str().into(), scopes.into()],
                )?;
                return Ok(());
            }
            // not a member yet: an invitation, which only the invitee accepts
            client.update(
                "INSERT INTO apikeys.invitations (workspace_id, principal, role, scopes, invited_by)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (workspace_id, principal) WHERE accepted_at IS NULL AND withdrawn_at IS NULL
                 DO UPDATE SET role = EXCLUDED.role, scopes = EXCLUDED.scopes, invited_by = EXCLUDED.invited_by",
                None,
                &[
                    workspace_id.into(),
                    principal.into(),
                    role.as_str().into(),
                    scopes.into(),
                    caller.principal.as_str().into(),
                ],
            )?;
            return Ok(());
        };
        if was == Role::Admin && role != Role::Admin && active_admins(client, workspace_id)? <= 1 {
            return Err(ApiError::LastAdmin);
        }
        client.update(
            "UPDATE apikeys.members SET role = $3, scopes = $4
              WHERE workspace_id = $1 AND principal = $2 AND removed_at IS NULL",
            None,
            &[workspace_id.into(), principal.into(), role.as_str().into(), scopes.into()],
        )?;
        Ok(())
    })
}

/// Whether `principal` has an open invitation to `workspace_id` as an admin.
fn invited_as_admin(client: &mut SpiClient<'_>, workspace_id: Uuid, principal: &str) -> ApiResult<bool> {
    if !has_invitations(client)? {
        return Ok(false);
    }
    Ok(!client
        .select(
            "SELECT 1 FROM apikeys.invitations
              WHERE workspace_id = $1 AND principal = $2 AND role = 'admin'
                AND accepted_at IS NULL AND withdrawn_at IS NULL",
            Some(1),
            &[workspace_id.into(), principal.into()],
        )?
        .is_empty())
}

/// Whether this database has the invitations table, that is, 0.2.0's schema
/// or later (before ALTER EXTENSION UPDATE a database keeps 0.1.0's).
pub fn has_invitations(client: &SpiClient<'_>) -> ApiResult<bool> {
    Ok(client
        .select("SELECT pg_catalog.to_regclass('apikeys.invitations') IS NOT NULL", Some(1), &[])?
        .first()
        .get::<bool>(1)?
        .unwrap_or(false))
}

/// `accept_invitation`: the caller, as themself, joins a workspace it was
/// invited to, with the invitation's role and scopes. Returns the role.
fn accept_invitation_impl(workspace_id: Option<Uuid>) -> ApiResult<String> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    if caller.key.is_some() {
        // a key acts inside its own workspace only, and never joins another
        return Err(ApiError::KeyOutsideWorkspace);
    }
    let workspace_id = workspace_id.ok_or(ApiError::NullArgument(c"workspace_id must not be null"))?;
    Spi::connect_mut(|client| {
        // serialised with the workspace's other membership changes; a
        // missing workspace and a missing invitation look the same
        lock_workspace(client, workspace_id).map_err(|_| ApiError::InvitationNotFound)?;
        let invitation = client.update(
            "UPDATE apikeys.invitations SET accepted_at = pg_catalog.now()
              WHERE workspace_id = $1 AND principal = $2 AND accepted_at IS NULL AND withdrawn_at IS NULL
              RETURNING role, scopes",
            Some(1),
            &[workspace_id.into(), caller.principal.as_str().into()],
        )?;
        if invitation.is_empty() {
            return Err(ApiError::InvitationNotFound);
        }
        let row = invitation.first();
        let role: String = row.get(1)?.ok_or(ApiError::Internal)?;
        let scopes: Vec<String> = row.get(2)?.unwrap_or_default();
        let member = client.select(
            "SELECT role FROM apikeys.members
              WHERE workspace_id = $1 AND principal = $2 AND removed_at IS NULL",
            Some(1),
            &[workspace_id.into(), caller.principal.as_str().into()],
        )?;
        if !member.is_empty() {
            // a member already (an admin changed them in the meantime): the
            // invitation is used up, the membership stays as it is
            return member.first().get(1)?.ok_or(ApiError::Internal);
        }
        client.update(
            "INSERT INTO apikeys.members (workspace_id, principal, role, scopes) VALUES ($1, $2, $3, $4)",
            None,
            &[workspace_id.into(), caller.principal.as_str().into(), role.as_str().into(), scopes.into()],
        )?;
        Ok(role)
    })
}

fn remove_member_impl(workspace_id: Option<Uuid>, principal: Option<&str>) -> ApiResult<()> {
    crate::errors::require_writable()?;
    let caller = caller()?;
    let workspace_id = workspace_id.ok_or(ApiError::NullArgument(c"workspace_id must not be null"))?;
    let principal = principal.ok_or(ApiError::NullArgument(c"principal must not be null"))?;
    Spi::connect_mut(|client| {
        let Some(was) = admin_sees_member(client, &caller, workspace_id, principal)? else {
            if !has_invitations(client)? {
                return Err(ApiError::MemberNotFound);
            }
            // not a member: withdraw an open invitation, if there is one
            // (an admin invitation never through an API key)
            if caller.key.is_some() && invited_as_admin(client, workspace_id, principal)? {
                return Err(ApiError::KeyCannotManageAdmins);
            }
            let withdrawn = client.update(
                "UPDATE apikeys.invitations SET withdrawn_at = pg_catalog.now()
                  WHERE workspace_id = $1 AND principal = $2 AND accepted_at IS NULL AND withdrawn_at IS NULL
                  RETURNING id",
                None,
                &[workspace_id.into(), principal.into()],
            )?;
            return if withdrawn.is_empty() { Err(ApiError::MemberNotFound) } else { Ok(()) };
        };
        if caller.key.is_some() && was == Role::Admin {
            return Err(ApiError::KeyCannotManageAdmins);
        }
        if was == Role::Admin && active_admins(client, workspace_id)? <= 1 {
            return Err(ApiError::LastAdmin);
        }
        // the members_follow trigger revokes the member's active keys
        client.update(
            "UPDATE apikeys.members SET removed_at = pg_catalog.now()
              WHERE workspace_id = $1 AND principal = $2 AND removed_at IS NULL",
            None,
            &[workspace_id.into(), principal.into()],
        )?;
        Ok(())
    })
}

#[pg_extern(sql = false)]
fn create_workspace(name: Option<&str>, id: Option<Uuid>) -> Option<Uuid> {
    deferred(create_workspace_impl(name, id))
}

#[pg_extern(sql = false)]
fn add_member(
    workspace_id: Option<Uuid>,
    principal: Option<&str>,
    role: Option<&str>,
    scopes: Option<Vec<Option<String>>>,
) {
    deferred(add_member_impl(workspace_id, principal, role, scopes));
}

#[pg_extern(sql = false)]
fn accept_invitation(workspace_id: Option<Uuid>) -> Option<String> {
    deferred(accept_invitation_impl(workspace_id))
}

#[pg_extern(sql = false)]
fn remove_member(workspace_id: Option<Uuid>, principal: Option<&str>) {
    deferred(remove_member_impl(workspace_id, principal));
}
