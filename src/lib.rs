//! pg_apikeys: API keys that live, are checked and die inside PostgreSQL.
//!
//! Module map:
//! * [`token`]: token format, base62, CRC32 checksum, SHA-256 (pure Rust)
//! * [`rules`]: name, scope, prefix, role and principal rules (pure Rust)
//! * [`errors`]: the one error type, its SQLSTATEs and messages, and the C
//!   entry points that raise them
//! * [`gucs`]: every `apikeys.*` setting
//! * [`principal`]: `current_principal()`, `authenticate()`, the per-transaction
//!   key binding and its helpers
//! * [`workspaces`]: `create_workspace`, `add_member`, `remove_member`
//! * [`keys`]: `create_key`, `revoke_key`, `rotate_key`, `import_key`
//! * [`verify`]: `verify_key` and the check behind `authenticate()`: the hot
//!   path, reading the two unique indexes directly
//! * [`public_keys`]: `create_public_key`, `revoke_public_key`, `resolve_public_key`
//!
//! The DDL lives in `sql/*.sql` (tables, functions, triggers, policies,
//! grants), loaded below in that order.

use pgrx::prelude::*;

pub mod errors;
pub mod gucs;
pub mod keys;
pub mod principal;
pub mod public_keys;
pub mod rules;
pub mod token;
pub mod verify;
pub mod workspaces;

#[cfg(test)]
mod fuzz;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/functions.sql", name = "functions", requires = ["schema"]);
extension_sql_file!("../sql/triggers.sql", name = "triggers", requires = ["functions"]);
extension_sql_file!("../sql/policies.sql", name = "policies", requires = ["triggers"]);
extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

// The C symbols that sql/functions.sql names; see errors.rs for why each
// wraps pgrx's generated wrapper.
entry_points! {
    apikeys_current_principal / pg_finfo_apikeys_current_principal => principal::current_principal_wrapper;
    apikeys_create_workspace / pg_finfo_apikeys_create_workspace => workspaces::create_workspace_wrapper;
    apikeys_add_member / pg_finfo_apikeys_add_member => workspaces::add_member_wrapper;
    apikeys_remove_member / pg_finfo_apikeys_remove_member => workspaces::remove_member_wrapper;
    apikeys_create_key / pg_finfo_apikeys_create_key => keys::create_key_wrapper;
    apikeys_verify_key / pg_finfo_apikeys_verify_key => verify::verify_key_wrapper;
    apikeys_revoke_key / pg_finfo_apikeys_revoke_key => keys::revoke_key_wrapper;
    apikeys_rotate_key / pg_finfo_apikeys_rotate_key => keys::rotate_key_wrapper;
    apikeys_import_key / pg_finfo_apikeys_import_key => keys::import_key_wrapper;
    apikeys_authenticate / pg_finfo_apikeys_authenticate => principal::authenticate_wrapper;
    apikeys_current_key_id / pg_finfo_apikeys_current_key_id => principal::current_key_id_wrapper;
    apikeys_current_workspace / pg_finfo_apikeys_current_workspace => principal::current_workspace_wrapper;
    apikeys_has_scope / pg_finfo_apikeys_has_scope => principal::has_scope_wrapper;
    apikeys_create_public_key / pg_finfo_apikeys_create_public_key => public_keys::create_public_key_wrapper;
    apikeys_revoke_public_key / pg_finfo_apikeys_revoke_public_key => public_keys::revoke_public_key_wrapper;
    apikeys_resolve_public_key / pg_finfo_apikeys_resolve_public_key => public_keys::resolve_public_key_wrapper;
}

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx attaches a captured Rust backtrace to the DETAIL of any PostgreSQL
    // error it re-raises when RUST_BACKTRACE is set in the server's
    // environment; clients must never see one. This turns off capturing for
    // std::backtrace only (panic messages in the server log are unchanged).
    // Backends are single-threaded, so changing the environment is safe here.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    gucs::init();
    principal::init();
    verify::init();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
