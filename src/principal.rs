//! Who is calling: `apikeys.current_principal()`.
//!
//! 1. an API key bound to this transaction by `apikeys.authenticate()`: its owner;
//! 2. else `request.jwt.claims` when set *and* the session's login user is a
//!    superuser or a member of a role in `apikeys.claims_roles` (default
//!    `authenticator`, the role PostgREST logs in as): its `sub` (claims
//!    without a string `sub`, or claims that are not JSON, mean anonymous; a
//!    `sub` that is no valid principal is an error, 22023). Claims set by any
//!    other session are ignored: anyone can `set_config` them;
//! 3. else the role the session acts as: PostgreSQL's *outer* user id, which
//!    `SET ROLE` and `set_config('role', …)` change but entering a SECURITY
//!    DEFINER function does not. So definer code still sees its caller.
//!
//! The key binding lives in backend memory, never in a setting a client could
//! `set_config`, and is dropped by a transaction callback at commit, abort or
//! prepare; a binding made in a subtransaction passes to its parent at its
//! commit and is dropped at its abort, bringing back the parent's.

use std::cell::RefCell;
use std::ffi::{c_void, CStr, CString};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::{ApiError, ApiResult};
use crate::fmgr::deferred;
use crate::gucs;
use crate::rules::RuleError;

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
    /// The current caller, or `None` for an anonymous one; an error for
    /// claims whose `sub` is no valid principal.
    pub fn current() -> ApiResult<Option<Caller>> {
        if let Some(k) = bound_key() {
            return Ok(Some(Caller { principal: k.owner.clone(), key: Some(k) }));
        }
        Ok(principal_without_key()?.map(|principal| Caller { principal, key: None }))
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
    /// The bindings of this transaction, innermost last: a re-`authenticate()`
    /// inside a subtransaction stacks its binding on the outer one, so the
    /// subtransaction's abort restores the outer binding (never none).
    static BINDING: RefCell<Vec<KeyBinding>> = const { RefCell::new(Vec::new()) };
}

/// The key bound to this transaction, if any.
pub fn bound_key() -> Option<KeyBinding> {
    BINDING.with(|b| b.borrow().last().cloned())
}

/// Bind `key` to the current (sub)transaction.
pub fn bind_key(key_id: pgrx::Uuid, workspace_id: pgrx::Uuid, owner: String, scopes: Vec<String>) {
    // SAFETY: reads backend-local transaction state
    let nest_level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    BINDING.with(|b| {
        let mut b = b.borrow_mut();
        // a binding made at this level before is replaced
        while b.last().is_some_and(|k| k.nest_level >= nest_level) {
            b.pop();
        }
        b.push(KeyBinding { key_id, workspace_id, owner, scopes, nest_level });
    });
}

fn clear_binding() {
    BINDING.with(|b| b.borrow_mut().clear());
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
    // SAFETY: reads backend-local transaction state; during the callback
    // the ending subtransaction is still the current one
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    BINDING.with(|b| {
        let mut b = b.borrow_mut();
        if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
            // the subtransaction's bindings go; the outer one is back
            while b.last().is_some_and(|k| k.nest_level >= level) {
                b.pop();
            }
        } else if event == pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB {
            // its binding now belongs to the parent, replacing the parent's
            if let Some(mut inner) = b.pop_if(|k| k.nest_level >= level) {
                while b.last().is_some_and(|k| k.nest_level >= level - 1) {
                    b.pop();
                }
                inner.nest_level = level - 1;
                b.push(inner);
            }
        }
    });
}

/// Register the transaction callbacks; called once from `_PG_init`.
pub fn init() {
    // SAFETY: registering static callbacks with no argument
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

/// The principal named by JWT claims text: `Ok(Some(Some(sub)))`,
/// `Ok(Some(None))` for anonymous claims, `Ok(None)` when no claims are set,
/// and [`RuleError::Subject`] for a `sub` that is no valid principal (over 256
/// characters, control characters, surrounding spaces).
///
/// The claims are read as a JSON object in which a key given twice counts
/// once, with its last value: the same `sub` PostgreSQL's
/// `current_setting('request.jwt.claims')::jsonb ->> 'sub'` gives.
pub fn principal_from_claims(claims: &str) -> Result<Option<Option<String>>, RuleError> {
    if claims.trim().is_empty() {
        return Ok(None);
    }
    let sub = match serde_json::from_str::<serde_json::Value>(claims) {
        Ok(serde_json::Value::Object(m)) => match m.get("sub") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    if let Some(s) = &sub {
        crate::rules::subject(s)?;
    }
    Ok(Some(sub))
}

/// Whether this session may name the caller through `request.jwt.claims`:
/// its login user is a superuser, or a member of a role listed in
/// `apikeys.claims_roles`.
fn claims_trusted() -> bool {
    // SAFETY: reads of backend-global session state and of the role caches
    unsafe {
        let session = pg_sys::GetSessionUserId();
        if pg_sys::superuser_arg(session) {
            return true;
        }
        let Some(list) = gucs::CLAIMS_ROLES.get() else { return false };
        list.to_string_lossy().split(',').any(|name| {
            let name = name.trim().trim_matches('"');
            let Ok(name) = CString::new(name) else { return false };
            if name.is_empty() {
                return false;
            }
            let role = pg_sys::get_role_oid(name.as_ptr(), true);
            role != pg_sys::InvalidOid && pg_sys::is_member_of_role(session, role)
        })
    }
}

/// Whether this session is the API's login (a role of
/// `apikeys.claims_roles`, PostgREST's authenticator, not a superuser):
/// whatever role it switches to and whatever claims it sets or leaves
/// empty, it is never an operator (a role granted to it after
/// `grant_operator` checked it included).
fn api_login() -> bool {
    // SAFETY: reads of backend-global session state
    let superuser = unsafe { pg_sys::superuser_arg(pg_sys::GetSessionUserId()) };
    !superuser && claims_trusted()
}

/// Whether trusted claims name (or make anonymous) the caller now: a
/// PostgREST request, which is never an operator.
fn claims_in_effect() -> bool {
    setting(c"request.jwt.claims").is_some_and(|c| !c.trim().is_empty()) && claims_trusted()
}

/// Whether the caller is an **operator** (docs/security.md, "Who undoes
/// what"): a superuser, or a role holding the privileges of
/// `apikeys_operator` (`apikeys.grant_operator`), acting as itself: never
/// through an API key, never in a request whose trusted claims name the
/// caller (a role PostgREST switches to is no operator, whatever it holds).
pub fn is_operator(caller: &Caller) -> bool {
    if caller.key.is_some() || claims_in_effect() || api_login() {
        return false;
    }
    // SAFETY: a role look-up by name and a membership check, both cached
    unsafe {
        let user = pg_sys::GetOuterUserId();
        if pg_sys::superuser_arg(user) {
            return true;
        }
        let role = pg_sys::get_role_oid(c"apikeys_operator".as_ptr(), true);
        role != pg_sys::InvalidOid && pg_sys::has_privs_of_role(user, role)
    }
}

/// `apikeys.is_operator()`: whether the caller is an operator now.
#[pg_extern(sql = false)]
fn is_operator_now() -> bool {
    // anonymous callers (claims without sub) and bad claims are none
    matches!(Caller::current(), Ok(Some(c)) if is_operator(&c))
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

fn principal_without_key() -> ApiResult<Option<String>> {
    if let Some(claims) = setting(c"request.jwt.claims") {
        // claims of a session that may not name the caller are ignored
        // whole, before anything in them is read
        if !claims.trim().is_empty() && claims_trusted() {
            if let Some(from_claims) = principal_from_claims(&claims)? {
                return Ok(from_claims);
            }
        }
    }
    // SAFETY: GetOuterUserId is always valid in a backend; GetUserNameFromId
    // with noerr returns NULL for a dropped role
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), true);
        if name.is_null() {
            Ok(None)
        } else {
            Ok(Some(CStr::from_ptr(name).to_string_lossy().into_owned()))
        }
    }
}

// ---------------------------------------------------------------------------
// authenticate(): PostgREST's db-pre-request hook

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

/// The X-RateLimit-* values of a decision: limit, remaining, reset (Unix
/// epoch seconds, rounded up).
fn rate_headers(d: &crate::limits::Decision) -> (String, String, String) {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let reset = d.reset.map(|t| (t + 999_999).div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS);
    (
        d.limit.map(|l| l.to_string()).unwrap_or_default(),
        d.remaining.unwrap_or(0).to_string(),
        reset.map(|r| r.to_string()).unwrap_or_default(),
    )
}

/// The MESSAGE and DETAIL of PostgREST's error takeover for a refused
/// request: HTTP 429, no key data.
fn too_many_requests(d: &crate::limits::Decision) -> (String, String) {
    let usage = d.code == crate::limits::Code::UsageExceeded;
    let message = serde_json::json!({
        "code": "PT429",
        "message": if usage { "usage exceeded: no credits left" } else { "rate limit exceeded" },
        "details": null,
        "hint": null,
    });
    let (limit, _, reset) = rate_headers(d);
    // SAFETY: the statement's start time
    let now = unsafe { pgrx::pg_sys::GetCurrentStatementStartTimestamp() };
    // until the window ends; for credits, until the next refill (a day
    // when there is none: retrying sooner cannot help)
    let until = if usage { d.refill_at } else { d.reset };
    let retry = match until {
        Some(t) => ((t - now).max(0) + 999_999) / 1_000_000,
        None => 86_400,
    };
    let mut headers = serde_json::Map::new();
    headers.insert("Retry-After".into(), retry.max(1).to_string().into());
    if d.limit.is_some() {
        headers.insert("X-RateLimit-Limit".into(), limit.into());
        headers.insert("X-RateLimit-Remaining".into(), "0".into());
        headers.insert("X-RateLimit-Reset".into(), reset.into());
    }
    let detail = serde_json::json!({"status": 429, "headers": headers});
    (message.to_string(), detail.to_string())
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
    let (key, outcome) = crate::verify::verify(&token)?.ok_or(ApiError::Unauthenticated)?;
    let limits = match outcome {
        crate::verify::Outcome::Valid(d) => d,
        crate::verify::Outcome::Limited(d) => {
            // PostgREST's error takeover: status, headers and body of the
            // 429 come from this error (a response.headers setting would be
            // rolled back with the failed request)
            crate::fmgr::defer_pgrst(too_many_requests(&d));
            return Ok(());
        }
        crate::verify::Outcome::Scope => return Err(ApiError::Unauthenticated),
    };
    bind_key(key.key_id, key.workspace_id, key.owner, key.scopes);
    if let Some(d) = limits.filter(|d| d.limit.is_some()) {
        // an accepted request with a rate limit says where it stands
        let (limit, remaining, reset) = rate_headers(&d);
        let headers = serde_json::json!([
            {"X-RateLimit-Limit": limit},
            {"X-RateLimit-Remaining": remaining},
            {"X-RateLimit-Reset": reset},
        ])
        .to_string();
        Spi::connect_mut(|client| {
            client.update(
                "SELECT pg_catalog.set_config('response.headers', $1, true)",
                None,
                &[headers.as_str().into()],
            )?;
            Ok::<_, ApiError>(())
        })?;
    }
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

/// `apikeys.authenticate()`: see docs/postgrest.md.
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
    deferred(Caller::current()).flatten().map(|c| c.principal)
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
        let some = |s: &str| Ok(Some(Some(s.to_owned())));
        assert_eq!(principal_from_claims(r#"{"sub":"u1","role":"authenticated"}"#), some("u1"));
        assert_eq!(principal_from_claims(r#"{"role":"anon"}"#), Ok(Some(None)));
        assert_eq!(principal_from_claims(r#"{"sub":""}"#), Ok(Some(None)));
        assert_eq!(principal_from_claims(r#"{"sub":42}"#), Ok(Some(None)));
        assert_eq!(principal_from_claims("not json"), Ok(Some(None)));
        assert_eq!(principal_from_claims("[1]"), Ok(Some(None)));
        assert_eq!(principal_from_claims(""), Ok(None));
        assert_eq!(principal_from_claims("  "), Ok(None));
    }

    #[test]
    fn duplicate_sub_keys_read_as_postgres_does_the_last_one() {
        assert_eq!(
            principal_from_claims(r#"{"sub":"alice","sub":"mallory"}"#),
            Ok(Some(Some("mallory".into())))
        );
        assert_eq!(principal_from_claims(r#"{"sub":"alice","sub":7}"#), Ok(Some(None)));
    }

    #[test]
    fn an_invalid_sub_is_an_error_not_a_principal() {
        use crate::rules::RuleError;
        let long = format!(r#"{{"sub":"{}"}}"#, "s".repeat(9_600));
        assert_eq!(principal_from_claims(&long), Err(RuleError::Subject));
        assert_eq!(principal_from_claims(r#"{"sub":" alice"}"#), Err(RuleError::Subject));
        assert_eq!(principal_from_claims(r#"{"sub":"al\nice"}"#), Err(RuleError::Subject));
        let max = format!(r#"{{"sub":"{}"}}"#, "s".repeat(256));
        assert!(principal_from_claims(&max).is_ok());
    }
}
