//! Errors: the one place where messages are written and SQLSTATEs chosen
//! (design.md §7).
//!
//! pgrx reports errors through `PgSqlErrorCode`, a closed enum of
//! PostgreSQL's own codes, so it cannot carry this extension's `PT401` and
//! `PT404`. Every SQL-callable function therefore has two layers:
//!
//! * an inner `#[pg_extern(sql = false)]` function that computes a
//!   `Result<T, ApiError>`; on `Err` it parks the error with [`defer`] and
//!   returns an empty placeholder, so every Rust value is dropped normally;
//! * an outer C entry point made by [`entry_points!`], which calls pgrx's
//!   generated wrapper and then, with only plain data on its stack, raises
//!   the parked error through PostgreSQL's `errstart`/`errfinish` with the
//!   exact SQLSTATE. This is the same point at which pgrx itself reports
//!   errors (after its guard has returned), so no Rust frame with a
//!   destructor is ever skipped by the `longjmp`.
//!
//! Messages are `'static` and never contain a token, a hash, an id, or any
//! value a caller sent.

use std::cell::Cell;
use std::ffi::{c_char, c_int, CStr};

use crate::rules::Invalid;

/// A SQLSTATE as its five characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub [u8; 5]);

impl SqlState {
    pub const INVALID_PARAMETER: SqlState = SqlState(*b"22023");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState(*b"42501");
    pub const UNIQUE_VIOLATION: SqlState = SqlState(*b"23505");
    pub const CHECK_VIOLATION: SqlState = SqlState(*b"23514");
    pub const NOT_FOUND: SqlState = SqlState(*b"PT404");
    pub const UNAUTHENTICATED: SqlState = SqlState(*b"PT401");
    pub const READ_ONLY: SqlState = SqlState(*b"25006");
    pub const INTERNAL: SqlState = SqlState(*b"XX000");

    /// PostgreSQL's `MAKE_SQLSTATE`.
    pub const fn code(self) -> c_int {
        const fn six(c: u8) -> c_int {
            (c.wrapping_sub(b'0') & 0x3f) as c_int
        }
        let b = self.0;
        six(b[0]) | (six(b[1]) << 6) | (six(b[2]) << 12) | (six(b[3]) << 18) | (six(b[4]) << 24)
    }

    pub fn as_str(&self) -> &str {
        // ok: every constant above is ASCII
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }
}

/// Every failure a client can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    /// 22023: an argument broke a rule.
    Invalid(Invalid),
    /// 22023: `expires_at` is not in the future.
    ExpiryNotFuture,
    /// 22023: a required argument was NULL.
    NullArgument(&'static CStr),
    /// 42501: nobody is calling (no role claim, anonymous JWT).
    NoPrincipal,
    /// 42501: the caller is not a member of the workspace.
    NotMember,
    /// 42501: the caller is a member but not an admin.
    NotAdmin,
    /// 42501: scopes beyond what the caller holds.
    ScopeEscalation,
    /// 42501: an API-key caller whose key lacks `apikeys:manage`.
    KeyCannotManage,
    /// 23514: the change would leave a workspace with no admin.
    LastAdmin,
    /// 23505: an active key already has this name in the workspace.
    NameTaken,
    /// 23505: a workspace with this id exists.
    WorkspaceExists,
    /// PT404: no such workspace.
    WorkspaceNotFound,
    /// PT404: no such key, or not the caller's to see.
    KeyNotFound,
    /// PT404: no such active member.
    MemberNotFound,
    /// 22023: `import_key`'s owner is not an active member of the workspace.
    OwnerNotMember,
    /// 42501: an imported key's scopes go beyond its owner's.
    OwnerScopeEscalation,
    /// 23514: the key is revoked or expired; it cannot be rotated.
    KeyNotActive,
    /// 23514: the key was rotated already; rotate its replacement.
    KeyAlreadyRotated,
    /// 23505: `import_key` got a digest that is stored already.
    DigestTaken,
    /// 42501: only a key's owner may rotate it (the new token acts as the owner).
    NotKeyOwner,
    /// 42501: importing a key for another principal without the importer role.
    ImportForOthers,
    /// 42501: a request authenticated by an API key tried to make, change or
    /// remove an admin.
    KeyCannotManageAdmins,
    /// PT404: no open invitation to this workspace for the caller.
    InvitationNotFound,
    /// 42501: a request authenticated by an API key tried to act outside
    /// the key's workspace (join another workspace).
    KeyOutsideWorkspace,
    /// PT404: no such public key, or not the caller's to see.
    PublicKeyNotFound,
    /// PT401: `authenticate()` rejected the API key.
    Unauthenticated,
    /// 25006: a function that writes was called in a read-only transaction
    /// or on a hot standby.
    ReadOnly,
    /// XX000: a bug (an SPI call failed in a way that cannot be the caller's fault).
    Internal,
}

impl ApiError {
    pub fn sqlstate(self) -> SqlState {
        use ApiError::*;
        match self {
            Invalid(_) | ExpiryNotFuture | NullArgument(_) | OwnerNotMember => SqlState::INVALID_PARAMETER,
            NoPrincipal
            | NotMember
            | NotAdmin
            | ScopeEscalation
            | KeyCannotManage
            | OwnerScopeEscalation
            | NotKeyOwner
            | ImportForOthers
            | KeyCannotManageAdmins
            | KeyOutsideWorkspace => SqlState::INSUFFICIENT_PRIVILEGE,
            LastAdmin | KeyNotActive | KeyAlreadyRotated => SqlState::CHECK_VIOLATION,
            NameTaken | WorkspaceExists | DigestTaken => SqlState::UNIQUE_VIOLATION,
            WorkspaceNotFound | KeyNotFound | MemberNotFound | PublicKeyNotFound | InvitationNotFound => {
                SqlState::NOT_FOUND
            }
            Unauthenticated => SqlState::UNAUTHENTICATED,
            ReadOnly => SqlState::READ_ONLY,
            Internal => SqlState::INTERNAL,
        }
    }

    pub fn message(self) -> &'static CStr {
        use ApiError::*;
        match self {
            Invalid(i) => match i {
                crate::rules::Invalid::Name => {
                    c"invalid key name: use 1-64 characters a-z, 0-9 and single inner dashes"
                }
                crate::rules::Invalid::Scope => {
                    c"invalid scope: use 1-64 characters a-z, 0-9, '_', '.', '-', ':' starting with a letter"
                }
                crate::rules::Invalid::TooManyScopes => c"too many scopes: at most 64",
                crate::rules::Invalid::NullScope => c"invalid scope: scopes must not be null",
                crate::rules::Invalid::Prefix => {
                    c"invalid key prefix: use 2-16 characters a-z0-9 starting with a letter, optionally '_' and 1-16 more"
                }
                crate::rules::Invalid::ReservedPrefix => {
                    c"invalid key prefix: 'pk' is reserved for public keys"
                }
                crate::rules::Invalid::Role => c"invalid role: use 'admin' or 'member'",
                crate::rules::Invalid::Principal => {
                    c"invalid principal: use 1-256 characters, no control characters or surrounding spaces"
                }
                crate::rules::Invalid::WorkspaceName => {
                    c"invalid workspace name: use 1-128 characters, no control characters"
                }
                crate::rules::Invalid::Metadata => {
                    c"invalid metadata: use a JSON object of at most 16 kB, nested at most 64 levels deep"
                }
                crate::rules::Invalid::Origin => {
                    c"invalid origin: use scheme://host[:port] as a browser sends it, with no path"
                }
                crate::rules::Invalid::TooManyOrigins => c"too many allowed origins: at most 64",
                crate::rules::Invalid::Digest => {
                    c"invalid sha256_hex: use the 64 hexadecimal characters of a SHA-256 digest"
                }
                crate::rules::Invalid::Grace => c"invalid grace: use an interval from zero to 100 years",
                crate::rules::Invalid::Subject => {
                    c"invalid JWT sub: use 1-256 characters, no control characters or surrounding spaces"
                }
            },
            ExpiryNotFuture => c"invalid expires_at: it must lie in the future",
            NullArgument(m) => m,
            NoPrincipal => c"no principal: call as a database role, with JWT claims that carry a sub, or with an API key",
            NotMember => c"permission denied: the caller is not a member of this workspace",
            NotAdmin => c"permission denied: this needs the workspace admin role",
            ScopeEscalation => c"permission denied: scopes beyond the caller's own",
            KeyCannotManage => c"permission denied: the API key in use lacks scope apikeys:manage",
            LastAdmin => c"a workspace must keep at least one admin",
            NameTaken => c"an active key with this name already exists in the workspace",
            WorkspaceExists => c"a workspace with this id already exists",
            WorkspaceNotFound => c"workspace not found",
            KeyNotFound => c"key not found",
            MemberNotFound => c"member not found",
            OwnerNotMember => c"invalid owner: not an active member of this workspace",
            OwnerScopeEscalation => c"permission denied: scopes beyond what the key's owner holds",
            KeyNotActive => c"a revoked or expired key cannot be rotated",
            KeyAlreadyRotated => c"this key was rotated already: rotate its replacement",
            DigestTaken => c"a key with this digest is stored already",
            NotKeyOwner => c"permission denied: only the key's owner can rotate it",
            ImportForOthers => {
                c"permission denied: importing a key for another principal needs the apikeys_importer role"
            }
            KeyCannotManageAdmins => {
                c"permission denied: a request authenticated by an API key cannot make, change or remove admins"
            }
            InvitationNotFound => c"invitation not found",
            KeyOutsideWorkspace => {
                c"permission denied: a request authenticated by an API key acts only in the key's workspace"
            }
            PublicKeyNotFound => c"public key not found",
            Unauthenticated => c"invalid API key",
            ReadOnly => c"cannot change API keys, workspaces or members in a read-only transaction",
            Internal => c"internal error in pg_apikeys",
        }
    }

    pub fn hint(self) -> Option<&'static CStr> {
        use ApiError::*;
        match self {
            NoPrincipal => {
                Some(c"anonymous callers may only verify keys, authenticate and resolve public keys")
            }
            ScopeEscalation => Some(
                c"members grant only scopes they hold; admins any scope, but through an API key only the key's scopes",
            ),
            NotKeyOwner => Some(c"an admin can revoke the key; its owner rotates it"),
            ImportForOthers => Some(
                c"import keys for yourself, or run the migration as a role a superuser granted apikeys.grant_importer()",
            ),
            InvitationNotFound => Some(c"an admin invites you with apikeys.add_member(); accept as yourself"),
            NameTaken => Some(c"choose another name, or revoke or rotate the key that holds it"),
            KeyNotActive => Some(c"create a new key instead"),
            Unauthenticated => Some(c"send a valid, active API key, or none"),
            ReadOnly => Some(c"call it in a read-write transaction on the primary (PostgREST: POST, not GET); verify_key and resolve_public_key work read-only"),
            _ => None,
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(i: Invalid) -> Self {
        ApiError::Invalid(i)
    }
}

impl From<pgrx::spi::SpiError> for ApiError {
    fn from(_: pgrx::spi::SpiError) -> Self {
        ApiError::Internal
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Refuse a write up front in a read-only transaction or on a hot standby,
/// with PostgreSQL's own 25006. Without it a write path fails on a standby
/// with XX000 "cannot assign TransactionIds during recovery", because SPI
/// asks for a transaction id before PostgreSQL's read-only check runs.
pub fn require_writable() -> ApiResult<()> {
    // SAFETY: plain reads of backend-global state, valid inside any transaction
    let read_only = unsafe { pgrx::pg_sys::XactReadOnly || pgrx::pg_sys::RecoveryInProgress() };
    if read_only {
        Err(ApiError::ReadOnly)
    } else {
        Ok(())
    }
}

thread_local! {
    static PENDING: Cell<Option<ApiError>> = const { Cell::new(None) };
}

/// Park `err` to be raised by the entry point once pgrx's wrapper returns.
pub fn defer(err: ApiError) {
    PENDING.with(|p| p.set(Some(err)));
}

/// `Ok(v)` → `Some(v)`; `Err(e)` → parks `e` and gives `None` (the placeholder).
pub fn deferred<T>(r: ApiResult<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            defer(e);
            None
        }
    }
}

#[doc(hidden)]
pub fn clear_pending() {
    PENDING.with(|p| p.set(None));
}

#[cfg_attr(target_os = "windows", link(name = "postgres"))]
unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// Raise the parked error, if any. Called only by [`entry_points!`] code,
/// whose frame holds nothing but a `Datum`.
///
/// # Safety
/// Must be called from an `extern "C-unwind"` function called by PostgreSQL,
/// outside any Rust frame that owns a value with a destructor.
#[doc(hidden)]
#[inline(never)]
pub unsafe fn raise_pending() {
    let Some(err) = PENDING.with(|p| p.take()) else { return };
    let code = err.sqlstate().code();
    let msg = err.message().as_ptr();
    let hint = err.hint().map(CStr::as_ptr);
    // SAFETY: plain FFI into PostgreSQL's ereport(); every pointer is 'static.
    unsafe {
        if errstart(pgrx::pg_sys::PGERROR as c_int, std::ptr::null()) {
            errcode(code);
            errmsg(c"%s".as_ptr(), msg);
            if let Some(h) = hint {
                errhint(c"%s".as_ptr(), h);
            }
            errfinish(c"pg_apikeys".as_ptr(), 0, std::ptr::null());
        }
    }
}

/// For each `outer => inner_wrapper` pair, define the C symbol `outer` (and its
/// `pg_finfo_outer` record) that `sql/*.sql` names in `CREATE FUNCTION ... AS
/// 'MODULE_PATHNAME', 'outer'`. It calls pgrx's wrapper and then raises any
/// parked [`ApiError`] with its exact SQLSTATE.
#[macro_export]
macro_rules! entry_points {
    ($($outer:ident / $finfo:ident => $inner:path;)*) => {$(
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static ::pgrx::pg_sys::Pg_finfo_record {
            const V1_API: ::pgrx::pg_sys::Pg_finfo_record =
                ::pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1_API
        }

        #[unsafe(no_mangle)]
        #[doc(hidden)]
        /// # Safety
        /// Called by PostgreSQL's function manager only.
        pub unsafe extern "C-unwind" fn $outer(
            fcinfo: ::pgrx::pg_sys::FunctionCallInfo,
        ) -> ::pgrx::pg_sys::Datum {
            $crate::errors::clear_pending();
            // SAFETY: same fcinfo, same calling convention as pgrx's own wrapper
            let datum = unsafe { $inner(fcinfo) };
            // SAFETY: only `datum` (plain data) is live in this frame
            unsafe { $crate::errors::raise_pending() };
            datum
        }
    )*};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_sqlstate_matches_postgres() {
        use pgrx::PgSqlErrorCode as E;
        assert_eq!(SqlState::INVALID_PARAMETER.code(), E::ERRCODE_INVALID_PARAMETER_VALUE as c_int);
        assert_eq!(SqlState::UNIQUE_VIOLATION.code(), E::ERRCODE_UNIQUE_VIOLATION as c_int);
        assert_eq!(SqlState::CHECK_VIOLATION.code(), E::ERRCODE_CHECK_VIOLATION as c_int);
        assert_eq!(SqlState::INSUFFICIENT_PRIVILEGE.code(), E::ERRCODE_INSUFFICIENT_PRIVILEGE as c_int);
        assert_eq!(SqlState::INTERNAL.code(), E::ERRCODE_INTERNAL_ERROR as c_int);
        assert_eq!(SqlState::READ_ONLY.code(), E::ERRCODE_READ_ONLY_SQL_TRANSACTION as c_int);
    }

    #[test]
    fn every_error_has_a_sqlstate_from_the_design_table() {
        let all = [
            ApiError::Invalid(Invalid::Name),
            ApiError::ExpiryNotFuture,
            ApiError::NoPrincipal,
            ApiError::NotMember,
            ApiError::NotAdmin,
            ApiError::ScopeEscalation,
            ApiError::KeyCannotManage,
            ApiError::LastAdmin,
            ApiError::NameTaken,
            ApiError::WorkspaceNotFound,
            ApiError::KeyNotFound,
            ApiError::MemberNotFound,
            ApiError::Unauthenticated,
            ApiError::Invalid(Invalid::Origin),
            ApiError::Invalid(Invalid::Digest),
            ApiError::Invalid(Invalid::Grace),
            ApiError::OwnerNotMember,
            ApiError::OwnerScopeEscalation,
            ApiError::KeyNotActive,
            ApiError::KeyAlreadyRotated,
            ApiError::DigestTaken,
            ApiError::PublicKeyNotFound,
            ApiError::NotKeyOwner,
            ApiError::ImportForOthers,
            ApiError::KeyCannotManageAdmins,
            ApiError::InvitationNotFound,
            ApiError::KeyOutsideWorkspace,
            ApiError::Invalid(Invalid::Subject),
        ];
        for e in all {
            let s = e.sqlstate();
            assert!(["22023", "42501", "23505", "23514", "PT404", "PT401"].contains(&s.as_str()), "{e:?}");
            assert!(!e.message().to_bytes().is_empty());
        }
        // a write on a standby or in a READ ONLY transaction: PostgreSQL's
        // own code for it, which PostgREST answers with 405
        assert_eq!(ApiError::ReadOnly.sqlstate().as_str(), "25006");
    }
}
