//! The Rust side of `apikeys.import_keys` (sql/functions.sql): many legacy
//! keys in one call (docs/managing-keys.md, "Migrating keys from another
//! system"). The checks and inserts are set-based SQL in that function; here
//! are the two things SQL cannot do safely:
//!
//! * [`import_keys_caller`]: who may import (an operator, or a workspace
//!   admin holding `apikeys_importer` acting as itself) and whether the
//!   caller (not the function's owner) may read the source table;
//! * the *bulk* mark: while `import_keys` inserts its rows, the per-row
//!   triggers on `keys` (`keys_plan`, `keys_owner_limit`, `keys_audit`) are
//!   skipped through their `WHEN (NOT apikeys.importing())`, because the
//!   function did their work for the whole batch already. The mark holds
//!   for one (sub)transaction only: `import_keys` sets it inside a block of
//!   its own (a subtransaction) and it ends with that block, however it
//!   ends. No client can set it: `import_mark()` is granted to no one.

use std::cell::Cell;

use pgrx::prelude::*;

use crate::errors::{ApiError, ApiResult};
use crate::fmgr::deferred;

thread_local! {
    /// (transaction id, subtransaction id) that `import_mark` marked
    static MARK: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// `apikeys.import_mark()`: mark the current subtransaction as a bulk
/// import's (internal; granted to no one).
#[pg_extern(sql = false)]
fn import_mark() -> bool {
    // SAFETY: plain reads of the backend's transaction state; the
    // transaction id is assigned here (the import writes anyway)
    let (xid, sub) = unsafe { (pg_sys::GetCurrentTransactionId(), pg_sys::GetCurrentSubTransactionId()) };
    MARK.with(|m| m.set((xid.into_inner(), sub)));
    true
}

/// `apikeys.importing()`: whether the current subtransaction is the one
/// `import_mark` marked (the per-row triggers of `keys` skip their work).
#[pg_extern(sql = false)]
fn importing() -> bool {
    // SAFETY: plain reads of the backend's transaction state
    let (xid, sub) =
        unsafe { (pg_sys::GetCurrentTransactionIdIfAny(), pg_sys::GetCurrentSubTransactionId()) };
    let xid = xid.into_inner();
    xid != 0 && MARK.with(|m| m.get()) == (xid, sub)
}

/// `apikeys.metadata_ok(text)`: whether a jsonb's text form is metadata
/// create_key takes (at most 16 KiB, nested at most 64 levels); import_keys
/// checks each row with it.
#[pg_extern(sql = false, immutable, parallel_safe)]
fn metadata_ok(text: &str) -> bool {
    crate::rules::metadata_text(text).is_ok()
}

/// `apikeys.import_keys_caller(workspace_id, source)`: checks that the
/// caller may import into the workspace and read `source`; true for an
/// operator (any owner, no plan), false for an importer (members only,
/// within the plan).
#[pg_extern(sql = false)]
fn import_keys_caller(workspace_id: Option<pgrx::Uuid>, source: Option<pg_sys::Oid>) -> Option<bool> {
    deferred(caller_check(workspace_id, source))
}

fn caller_check(workspace_id: Option<pgrx::Uuid>, source: Option<pg_sys::Oid>) -> ApiResult<bool> {
    crate::errors::require_writable()?;
    let caller = crate::workspaces::caller()?;
    let workspace_id = workspace_id.ok_or(ApiError::NullArgument(c"workspace_id must not be null"))?;
    let source = source.ok_or(ApiError::NullArgument(c"source must not be null"))?;
    // the function reads the source as its owner: the caller must be able to
    // read it as itself
    // SAFETY: an ACL check of an existing relation (a regclass argument) for
    // the role the caller acts as
    // (its schema too: a table in a schema the caller may not use is not
    // one it can read, whatever the table's own grant says)
    let readable = unsafe {
        let who = pg_sys::GetOuterUserId();
        pg_sys::pg_class_aclcheck(source, who, pg_sys::ACL_SELECT as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
            && schema_usage(pg_sys::get_rel_namespace(source), who)
    };
    if !readable {
        return Err(ApiError::SourceNotReadable);
    }
    let operator = crate::principal::is_operator(&caller);
    if operator {
        return Ok(true);
    }
    Spi::connect_mut(|client| {
        crate::workspaces::require_admin(client, &caller, workspace_id)?;
        if caller.key.is_some() || !crate::keys::is_importer() {
            return Err(ApiError::ImportForOthers);
        }
        Ok(false)
    })
}

/// Whether `who` may use schema `nsp`.
///
/// # Safety
/// An ACL check of an existing schema.
unsafe fn schema_usage(nsp: pg_sys::Oid, who: pg_sys::Oid) -> bool {
    let mode = pg_sys::ACL_USAGE as pg_sys::AclMode;
    #[cfg(feature = "pg15")]
    let r = unsafe { pg_sys::pg_namespace_aclcheck(nsp, who, mode) };
    #[cfg(not(feature = "pg15"))]
    let r = unsafe { pg_sys::object_aclcheck(pg_sys::NamespaceRelationId, nsp, who, mode) };
    r == pg_sys::AclResult::ACLCHECK_OK
}
