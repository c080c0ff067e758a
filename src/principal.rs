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

/// `apikeys.current_principal()`: see the module documentation.
#[pg_extern(sql = false)]
fn current_principal() -> Option<String> {
    Caller::current().map(|c| c.principal)
}

#[cfg(test)]
mod tests {
    use super::principal_from_claims;

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
