//! Who is calling (design.md §2): `apikeys.current_principal()`.
//!
//! 1. an API key bound to this transaction by `apikeys.authenticate()`: its owner;
//! 2. else `request.jwt.claims` when set: its `sub` (claims without a string
//!    `sub`, or claims that are not JSON, mean anonymous);
//! 3. else the role the session acts as: PostgreSQL's *outer* user id, which
//!    `SET ROLE` and `set_config('role', …)` change but entering a SECURITY
//!    DEFINER function does not. So definer code still sees its caller.
//!
//! The key binding lives in backend memory, never in a setting a client could
//! `set_config`, and is dropped by a transaction callback at commit, abort or
//! prepare (and at abort of the subtransaction that made it).

use std::cell::RefCell;
use std::ffi::{c_void, CStr};

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde::Deserialize;

use crate::errors::{deferred, ApiError, ApiResult};
use crate::gucs;

/// An API key accepted by `authenticate()` in this transaction.
#[derive(Clone, Debug)]
pub struct KeyBinding {
    pub key_id: pgrx::Uuid,
    pub workspace_id: pgrx::Uuid,
    pub owner: String,
    pub scopes: Vec<String>,
    /// Transaction nest level at which the binding was made.
    nest_level: i32,
}

/// The caller of an extension function.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: String,
    /// Set when the caller authenticated with an API key in this transaction.
    pub key: Option<KeyBinding>,
}

impl Caller {
    /// The current caller, or `None` for an anonymous one.
    pub fn current() -> Option<Caller> {
        if let Some(k) = bound_key() {
            return Some(Caller { principal: k.owner.clone(), key: Some(k) });
        }
        principal_without_key().map(|principal| Caller { principal, key: None })
    }
}

impl Caller {
    /// A caller authenticated by an API key must hold `apikeys:manage` to
    /// mint, rotate or administer ([`ApiError::KeyCannotManage`]).
    pub fn require_key_manage(&self) -> ApiResult<()> {
        match &self.key {
            Some(k) if !k.scopes.iter().any(|s| s == crate::rules::MANAGE_SCOPE) => {
                Err(ApiError::KeyCannotManage)
            }
            _ => Ok(()),
        }
    }

    /// A caller authenticated by an API key never hands out scopes its key
    /// lacks ([`ApiError::ScopeEscalation`]).
    pub fn require_key_scopes(&self, scopes: &[String]) -> ApiResult<()> {
        match &self.key {
            Some(k) if !crate::rules::missing(scopes, &k.scopes).is_empty() => Err(ApiError::ScopeEscalation),
            _ => Ok(()),
        }
    }
}

thread_local! {
    static BINDING: RefCell<Option<KeyBinding>> = const { RefCell::new(None) };
}

/// The key bound to this transaction, if any.
pub fn bound_key() -> Option<KeyBinding> {
    BINDING.with(|b| b.borrow().clone())
}

/// Bind `key` to the current transaction.
pub fn bind_key(key_id: pgrx::Uuid, workspace_id: pgrx::Uuid, owner: String, scopes: Vec<String>) {
    // SAFETY: reads backend-local transaction state
    let nest_level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    BINDING.with(|b| *b.borrow_mut() = Some(KeyBinding { key_id, workspace_id, owner, scopes, nest_level }));
}

fn clear_binding() {
    BINDING.with(|b| b.borrow_mut().take());
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        clear_binding();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        // SAFETY: reads backend-local transaction state; during the callback
        // the aborting subtransaction is still the current one
        let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
        BINDING.with(|b| {
            let mut b = b.borrow_mut();
            if b.as_ref().is_some_and(|k| k.nest_level >= level) {
                *b = None;
            }
        });
    }
}

/// Register the transaction callbacks; called once from `_PG_init`.
pub fn init() {
    // SAFETY: registering static callbacks with no argument
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<serde_json::Value>,
}

/// The principal named by JWT claims text: `Some(Some(sub))`, `Some(None)` for
/// anonymous claims, `None` when no claims are set.
pub fn principal_from_claims(claims: &str) -> Option<Option<String>> {
    if claims.trim().is_empty() {
        return None;
    }
    let sub = match serde_json::from_str::<Claims>(claims) {
        Ok(Claims { sub: Some(serde_json::Value::String(s)) }) if !s.is_empty() => Some(s),
        _ => None,
    };
    Some(sub)
}

/// Read a setting, `None` when it is unset or unknown.
pub fn setting(name: &CStr) -> Option<String> {
    // SAFETY: GetConfigOption returns NULL or a NUL-terminated string owned by
    // the GUC machinery, which we copy at once
    unsafe {
        let p = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }
}

fn principal_without_key() -> Option<String> {
    if let Some(claims) = setting(c"request.jwt.claims") {
        if let Some(from_claims) = principal_from_claims(&claims) {
            return from_claims;
        }
    }
    // SAFETY: GetOuterUserId is always valid in a backend; GetUserNameFromId
    // with noerr returns NULL for a dropped role
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), true);
        if name.is_null() {
            None
        } else {
            Some(CStr::from_ptr(name).to_string_lossy().into_owned())
        }
    }
}

// ---------------------------------------------------------------------------
// authenticate(): PostgREST's db-pre-request hook (design.md §6)

/// The key carried by the request's API-key header: `Ok(None)` when the
/// request has no such header, `Err` when the request context is unusable.
pub(crate) fn header_token(headers: Option<&str>, header: &str) -> ApiResult<Option<String>> {
    // PostgREST always sets request.headers to a JSON object; anything else
    // means the request context is broken, and authentication fails closed.
    let headers = headers.filter(|h| !h.trim().is_empty()).ok_or(ApiError::Unauthenticated)?;
    let headers: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(headers).map_err(|_| ApiError::Unauthenticated)?;
    let Some((_, value)) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(header)) else {
        return Ok(None);
    };
    match value {
        serde_json::Value::String(t) => Ok(Some(t.clone())),
        _ => Err(ApiError::Unauthenticated),
    }
}

fn authenticate_impl() -> ApiResult<()> {
    let header = gucs::HEADER
        .get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|| "x-api-key".to_owned());
    let Some(token) = header_token(setting(c"request.headers").as_deref(), &header)? else {
        // no API key: the JWT or anonymous flow goes on untouched
        return Ok(());
    };
    let key = crate::verify::verify(&token)?.ok_or(ApiError::Unauthenticated)?;
    bind_key(key.key_id, key.workspace_id, key.owner, key.scopes);
    if let Some(role) = gucs::KEY_ROLE.get() {
        let role = role.to_string_lossy().into_owned();
        if !role.is_empty() {
            // like PostgREST's own set_config('role', ..., true): until the
            // transaction ends
            Spi::connect_mut(|client| {
                client.update(
                    "SELECT pg_catalog.set_config('role', $1, true)",
                    None,
                    &[role.as_str().into()],
                )?;
                Ok::<_, ApiError>(())
            })?;
        }
    }
    Ok(())
}

/// `apikeys.authenticate()`: see design.md §6 and docs/postgrest.md.
#[pg_extern(sql = false)]
fn authenticate() {
    deferred(authenticate_impl());
}

/// `apikeys.current_key_id()`: the API key authenticated in this
/// transaction, or NULL.
#[pg_extern(sql = false)]
fn current_key_id() -> Option<pgrx::Uuid> {
    bound_key().map(|k| k.key_id)
}

/// `apikeys.current_workspace()`: the workspace of the API key authenticated
/// in this transaction, or NULL.
#[pg_extern(sql = false)]
fn current_workspace() -> Option<pgrx::Uuid> {
    bound_key().map(|k| k.workspace_id)
}

/// `apikeys.has_scope(scope)`: whether the API key authenticated in this
/// transaction holds `scope`; false without a key.
#[pg_extern(sql = false)]
fn has_scope(scope: Option<&str>) -> bool {
    match (scope, bound_key()) {
        (Some(s), Some(k)) => k.scopes.iter().any(|held| held == s),
        _ => false,
    }
}

/// `apikeys.current_principal()`: see the module documentation.
#[pg_extern(sql = false)]
fn current_principal() -> Option<String> {
    Caller::current().map(|c| c.principal)
}

#[cfg(test)]
mod tests {
    use super::{header_token, principal_from_claims};
    use crate::errors::ApiError;

    #[test]
    fn header_token_fails_closed() {
        let h = "x-api-key";
        assert_eq!(header_token(Some(r#"{"x-api-key":"sk_abc"}"#), h), Ok(Some("sk_abc".into())));
        assert_eq!(header_token(Some(r#"{"X-Api-Key":"sk_abc"}"#), h), Ok(Some("sk_abc".into())));
        assert_eq!(header_token(Some(r#"{"accept":"*/*"}"#), h), Ok(None));
        assert_eq!(header_token(Some("{}"), h), Ok(None));
        for bad in [None, Some(""), Some(" "), Some("not json"), Some("[1]"), Some("\"x\""), Some("null")] {
            assert_eq!(header_token(bad, h), Err(ApiError::Unauthenticated), "{bad:?}");
        }
        assert_eq!(header_token(Some(r#"{"x-api-key":42}"#), h), Err(ApiError::Unauthenticated));
        assert_eq!(header_token(Some(r#"{"x-api-key":null}"#), h), Err(ApiError::Unauthenticated));
        assert_eq!(header_token(Some(r#"{"x-api-key":""}"#), h), Ok(Some(String::new())));
    }

    #[test]
    fn claims_give_sub_or_anonymous() {
        assert_eq!(principal_from_claims(r#"{"sub":"u1","role":"authenticated"}"#), Some(Some("u1".into())));
        assert_eq!(principal_from_claims(r#"{"role":"anon"}"#), Some(None));
        assert_eq!(principal_from_claims(r#"{"sub":""}"#), Some(None));
        assert_eq!(principal_from_claims(r#"{"sub":42}"#), Some(None));
        assert_eq!(principal_from_claims("not json"), Some(None));
        assert_eq!(principal_from_claims("[1]"), Some(None));
        assert_eq!(principal_from_claims(""), None);
        assert_eq!(principal_from_claims("  "), None);
    }
}
