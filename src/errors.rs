//! Errors: the one place where messages are written and SQLSTATEs chosen
//! (the table in docs/reference.md, "Errors").
//!
//! Every failure a client can see is an [`ApiError`]; its SQLSTATE, message
//! and hint are chosen here and nowhere else. How an `ApiError` reaches the
//! client with its exact SQLSTATE (pgrx cannot raise `PT401`/`PT404`) is
//! [`crate::fmgr`]'s business.
//!
//! Messages are `'static` and never contain a token, a hash, an id, or any
//! value a caller sent.

use std::ffi::{c_int, CStr};

use crate::rules::RuleError;

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
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState(*b"0A000");
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
    Invalid(RuleError),
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
    /// 42501: `import_keys` given a source table the caller cannot read.
    SourceNotReadable,
    /// 42501: a request authenticated by an API key tried to make, change or
    /// remove an admin.
    KeyCannotManageAdmins,
    /// PT404: no open invitation to this workspace for the caller.
    InvitationNotFound,
    /// PT401: a secret-scanning report whose signature does not verify under
    /// a current scanning key.
    BadSignature,
    /// 42501: a request authenticated by an API key tried to act outside
    /// the key's workspace (join another workspace).
    KeyOutsideWorkspace,
    /// PT404: no such public key, or not the caller's to see.
    PublicKeyNotFound,
    /// PT401: `authenticate()` rejected the API key.
    Unauthenticated,
    /// 0A000: a rate limit or credits without the usage engine.
    LimitsNeedPreload,
    /// 23514: a revoked key cannot be suspended or resumed.
    KeyRevokedForGood,
    /// 42501: the key was suspended by a higher tier (an admin) than the
    /// caller's (a member, or an API key): only that tier lifts it.
    SuspendedByHigherTier,
    /// 23514: a suspended key cannot be rotated (the new key would not be).
    KeySuspended,
    /// 42501: a member tried to loosen a control of their own key (a higher
    /// rate limit, more credits, a later expiry, a limit removed).
    MemberCannotLoosen,
    /// 42501: minting a key for another owner without being an operator.
    MintForOthers,
    /// 42501: the key's owner, or its whole workspace, is suspended by an
    /// operator: nothing is minted for it meanwhile.
    OwnerSuspended,
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
            | SourceNotReadable
            | KeyCannotManageAdmins
            | KeyOutsideWorkspace
            | SuspendedByHigherTier
            | MemberCannotLoosen
            | MintForOthers
            | OwnerSuspended => SqlState::INSUFFICIENT_PRIVILEGE,
            LastAdmin | KeyNotActive | KeyAlreadyRotated | KeyRevokedForGood | KeySuspended => {
                SqlState::CHECK_VIOLATION
            }
            LimitsNeedPreload => SqlState::FEATURE_NOT_SUPPORTED,
            NameTaken | WorkspaceExists | DigestTaken => SqlState::UNIQUE_VIOLATION,
            WorkspaceNotFound | KeyNotFound | MemberNotFound | PublicKeyNotFound | InvitationNotFound => {
                SqlState::NOT_FOUND
            }
            Unauthenticated | BadSignature => SqlState::UNAUTHENTICATED,
            ReadOnly => SqlState::READ_ONLY,
            Internal => SqlState::INTERNAL,
        }
    }

    pub fn message(self) -> &'static CStr {
        use ApiError::*;
        match self {
            Invalid(i) => match i {
                crate::rules::RuleError::Name => {
                    c"invalid key name: use 1-64 characters a-z, 0-9 and single inner dashes"
                }
                crate::rules::RuleError::Scope => {
                    c"invalid scope: use 1-64 characters a-z, 0-9, '_', '.', '-', ':' starting with a letter"
                }
                crate::rules::RuleError::TooManyScopes => c"too many scopes: at most 64",
                crate::rules::RuleError::NullScope => c"invalid scope: scopes must not be null",
                crate::rules::RuleError::Prefix => {
                    c"invalid key prefix: use 2-16 characters a-z0-9 starting with a letter, optionally '_' and 1-16 more"
                }
                crate::rules::RuleError::ReservedPrefix => {
                    c"invalid key prefix: 'pk' is reserved for public keys"
                }
                crate::rules::RuleError::Role => c"invalid role: use 'admin' or 'member'",
                crate::rules::RuleError::Principal => {
                    c"invalid principal: use 1-256 characters, no control or invisible characters or surrounding spaces"
                }
                crate::rules::RuleError::WorkspaceName => {
                    c"invalid workspace name: use 1-128 characters, no control characters"
                }
                crate::rules::RuleError::Metadata => {
                    c"invalid metadata: use a JSON object of at most 16 kB, nested at most 64 levels deep"
                }
                crate::rules::RuleError::Origin => {
                    c"invalid origin: use scheme://host[:port] as a browser sends it, with no path"
                }
                crate::rules::RuleError::TooManyOrigins => c"too many allowed origins: at most 64",
                crate::rules::RuleError::Digest => {
                    c"invalid sha256_hex: use the 64 hexadecimal characters of a SHA-256 digest"
                }
                crate::rules::RuleError::Grace => c"invalid grace: use an interval from zero to 100 years",
                crate::rules::RuleError::Report => {
                    c"invalid report: send a JSON array of objects with a string token, at most 1000 of them and 1 MB"
                }
                crate::rules::RuleError::Cost => c"invalid cost: use 0 to 1000000000",
                crate::rules::RuleError::RateLimit => {
                    c"invalid rate limit: give rate_limit (1 or more) and rate_window (1 second to 1 day) together"
                }
                crate::rules::RuleError::Credits => c"invalid credits: use 0 or more",
                crate::rules::RuleError::Refill => {
                    c"invalid refill: give refill_amount (1 or more) and refill_interval ('1 day' or '1 month') together, on a key with credits"
                }
                crate::rules::RuleError::Within => {
                    c"invalid interval: use an interval from zero to 100 years, with no negative part"
                }
                crate::rules::RuleError::Subject => {
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
            SourceNotReadable => c"permission denied: the caller cannot read the source table",
            KeyCannotManageAdmins => {
                c"permission denied: a request authenticated by an API key cannot make, change or remove admins"
            }
            InvitationNotFound => c"invitation not found",
            KeyOutsideWorkspace => {
                c"permission denied: a request authenticated by an API key acts only in the key's workspace"
            }
            PublicKeyNotFound => c"public key not found",
            Unauthenticated => c"invalid API key",
            BadSignature => c"invalid signature: the report is not signed by a current scanning key",
            LimitsNeedPreload => c"rate limits and credits need the usage engine",
            KeyRevokedForGood => c"a revoked key stays revoked: it cannot be suspended or resumed",
            SuspendedByHigherTier => {
                c"permission denied: the key was suspended by a higher tier (an admin or the operator); only that tier can resume it"
            }
            KeySuspended => c"a suspended key cannot be rotated",
            MintForOthers => c"permission denied: only an operator mints keys for another owner",
            OwnerSuspended => c"permission denied: the owner or its workspace is suspended",
            MemberCannotLoosen => {
                c"permission denied: a member may only tighten their own key's limits, credits, expiry and scopes"
            }
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
            SourceNotReadable => Some(c"grant the importing role USAGE on the source table's schema and SELECT on the table"),
            InvitationNotFound => Some(c"an admin invites you with apikeys.add_member(); accept as yourself"),
            NameTaken => Some(c"choose another name, or revoke or rotate the key that holds it"),
            KeyNotActive => Some(c"create a new key instead"),
            KeySuspended => Some(c"resume the key first (or ask whoever suspended it)"),
            MemberCannotLoosen => Some(c"an admin of the workspace raises or removes limits"),
            SuspendedByHigherTier => Some(c"ask whoever suspended it: an admin of the workspace, or the operator"),
            MintForOthers => Some(c"mint for yourself, or as a role a superuser granted apikeys.grant_operator()"),
            OwnerSuspended => Some(c"the operator lifts it with apikeys.resume_owner()"),
            LimitsNeedPreload => Some(
                c"add pg_apikeys to shared_preload_libraries in postgresql.conf and restart the server",
            ),
            Unauthenticated => Some(c"send a valid, active API key, or none"),
            ReadOnly => Some(c"call it in a read-write transaction on the primary (PostgREST: POST, not GET); verify_key and resolve_public_key work read-only"),
            _ => None,
        }
    }
}

impl From<RuleError> for ApiError {
    fn from(i: RuleError) -> Self {
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

    /// The limits quoted in messages are the limits the rules apply.
    #[test]
    fn messages_quote_the_rules_limits() {
        use crate::rules::*;
        let msg = |e: RuleError| ApiError::Invalid(e).message().to_str().unwrap_or("").to_owned();
        assert!(msg(RuleError::Name).contains(&format!("1-{MAX_NAME_LEN} characters")));
        assert!(msg(RuleError::Scope).contains(&format!("1-{MAX_SCOPE_LEN} characters")));
        assert!(msg(RuleError::TooManyScopes).contains(&format!("at most {MAX_SCOPES}")));
        assert!(msg(RuleError::Principal).contains(&format!("1-{MAX_PRINCIPAL_LEN} characters")));
        assert!(msg(RuleError::Subject).contains(&format!("1-{MAX_PRINCIPAL_LEN} characters")));
        assert!(msg(RuleError::WorkspaceName).contains(&format!("1-{MAX_WORKSPACE_NAME_LEN} characters")));
        assert!(msg(RuleError::Metadata).contains(&format!("at most {} kB", MAX_METADATA_BYTES / 1024)));
        assert!(msg(RuleError::Metadata).contains(&format!("at most {MAX_METADATA_DEPTH} levels")));
        assert!(msg(RuleError::TooManyOrigins).contains(&format!("at most {MAX_ORIGINS}")));
    }

    #[test]
    fn every_error_has_a_sqlstate_from_the_error_table() {
        let all = [
            ApiError::Invalid(RuleError::Name),
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
            ApiError::Invalid(RuleError::Origin),
            ApiError::Invalid(RuleError::Digest),
            ApiError::Invalid(RuleError::Grace),
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
            ApiError::BadSignature,
            ApiError::Invalid(RuleError::Report),
            ApiError::Invalid(RuleError::Subject),
            ApiError::Invalid(RuleError::Cost),
            ApiError::Invalid(RuleError::RateLimit),
            ApiError::Invalid(RuleError::Credits),
            ApiError::Invalid(RuleError::Refill),
            ApiError::Invalid(RuleError::Within),
            ApiError::KeyRevokedForGood,
            ApiError::LimitsNeedPreload,
            ApiError::SuspendedByHigherTier,
            ApiError::KeySuspended,
            ApiError::MemberCannotLoosen,
            ApiError::MintForOthers,
            ApiError::OwnerSuspended,
        ];
        for e in all {
            let s = e.sqlstate();
            assert!(
                ["22023", "42501", "23505", "23514", "PT404", "PT401", "0A000"].contains(&s.as_str()),
                "{e:?}"
            );
            assert!(!e.message().to_bytes().is_empty());
        }
        // a write on a standby or in a READ ONLY transaction: PostgreSQL's
        // own code for it, which PostgREST answers with 405
        assert_eq!(ApiError::ReadOnly.sqlstate().as_str(), "25006");
    }
}
