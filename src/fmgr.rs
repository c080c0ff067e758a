//! The C entry points and deferred raising: the pgrx internals this crate
//! relies on, kept in one place.
//!
//! pgrx reports errors through `PgSqlErrorCode`, a closed enum of
//! PostgreSQL's own codes, so it cannot carry this extension's `PT401` and
//! `PT404`. Every SQL-callable function therefore has two layers:
//!
//! * an inner `#[pg_extern(sql = false)]` function that computes a
//!   `Result<T, ApiError>`; on `Err` it parks the error with [`deferred`]
//!   and returns an empty placeholder, so every Rust value is dropped
//!   normally;
//! * an outer C entry point made by [`entry_points!`], which calls pgrx's
//!   generated wrapper (`<name>_wrapper`, an `extern "C-unwind"` function
//!   taking the `FunctionCallInfo`) and then, with only plain data on its
//!   stack, raises the parked error through PostgreSQL's
//!   `errstart`/`errfinish` with the exact SQLSTATE. This is the same point
//!   at which pgrx itself reports errors (after its guard has returned), so
//!   no Rust frame with a destructor is ever skipped by the `longjmp`.
//!
//! What this relies on, and why `pgrx` is pinned to one exact version
//! (`=0.18.1` in Cargo.toml): the name and signature of the generated
//! `_wrapper` functions, and that a wrapper returns normally after the inner
//! function returned (it converts results to a `Datum` and nothing else).
//! A pgrx upgrade must re-check both; the regress suite's error tests
//! (every `try()` with a SQLSTATE) fail if either changes.

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::ffi::{c_char, c_int, CStr};

use crate::errors::{ApiError, ApiResult};

thread_local! {
    static PENDING: Cell<Option<ApiError>> = const { Cell::new(None) };
    /// PostgREST's error takeover (SQLSTATE PGRST): MESSAGE and DETAIL
    static PENDING_PGRST: RefCell<Option<(CString, CString)>> = const { RefCell::new(None) };
}

/// Park `err` to be raised by the entry point once pgrx's wrapper returns.
pub(crate) fn defer(err: ApiError) {
    PENDING.with(|p| p.set(Some(err)));
}

/// `Ok(v)` → `Some(v)`; `Err(e)` → parks `e` and gives `None` (the placeholder).
pub(crate) fn deferred<T>(r: ApiResult<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            defer(e);
            None
        }
    }
}

/// Park an error for PostgREST's error takeover: SQLSTATE `PGRST`, MESSAGE
/// the JSON body, DETAIL the JSON status and headers (docs/postgrest.md).
pub(crate) fn defer_pgrst((message, detail): (String, String)) {
    let m = CString::new(message).unwrap_or_default();
    let d = CString::new(detail).unwrap_or_default();
    PENDING_PGRST.with(|p| *p.borrow_mut() = Some((m, d)));
}

pub(crate) fn clear_pending() {
    PENDING_PGRST.with(|p| *p.borrow_mut() = None);
    PENDING.with(|p| p.set(None));
}

#[cfg_attr(target_os = "windows", link(name = "postgres"))]
unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errdetail(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// Raise the parked error, if any. Called only by [`entry_points!`] code,
/// whose frame holds nothing but a `Datum`.
///
/// # Safety
/// Must be called from an `extern "C-unwind"` function called by PostgreSQL,
/// outside any Rust frame that owns a value with a destructor.
#[inline(never)]
pub(crate) unsafe fn raise_pending() {
    // copies in PostgreSQL's memory; the Rust strings are dropped at the end
    // of this block, before any jump
    let pgrst = PENDING_PGRST.with(|p| p.borrow_mut().take()).map(|(m, d)| {
        // SAFETY: pstrdup of NUL-terminated strings into the current context
        unsafe { (pgrx::pg_sys::pstrdup(m.as_ptr()), pgrx::pg_sys::pstrdup(d.as_ptr())) }
    });
    if let Some((m, d)) = pgrst {
        // SAFETY: plain FFI into PostgreSQL's ereport(); only raw pointers live here
        unsafe {
            if errstart(pgrx::pg_sys::PGERROR as c_int, std::ptr::null()) {
                errcode(crate::errors::SqlState(*b"PGRST").code());
                errmsg(c"%s".as_ptr(), m);
                errdetail(c"%s".as_ptr(), d);
                errfinish(c"pg_apikeys".as_ptr(), 0, std::ptr::null());
            }
        }
        return;
    }
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
            $crate::fmgr::clear_pending();
            // SAFETY: same fcinfo, same calling convention as pgrx's own wrapper
            let datum = unsafe { $inner(fcinfo) };
            // SAFETY: only `datum` (plain data) is live in this frame
            unsafe { $crate::fmgr::raise_pending() };
            datum
        }
    )*};
}

pub(crate) use entry_points;
