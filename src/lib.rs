//! pg_apikeys: API keys that live, are checked and die inside PostgreSQL.
//!
//! Module map:
//! * [`token`]: token format, base62, CRC32 checksum, SHA-256 (pure Rust)
//! * [`rules`]: name, scope, prefix, role and principal rules (pure Rust)
//! * [`errors`]: the one error type, its SQLSTATEs, messages and hints
//! * `fmgr`: the C entry points and deferred raising (pgrx internals, in one
//!   place)
//! * [`gucs`]: every `apikeys.*` setting
//! * `spi`: write helpers the SQL surfaces share (insert with retry, the
//!   revoke-once latch, the key-name check)
//! * [`principal`]: `current_principal()`, `authenticate()`, the per-transaction
//!   key binding and its helpers
//! * [`workspaces`]: `create_workspace`, `add_member` (an invitation for a
//!   newcomer), `accept_invitation`, `remove_member`
//! * [`keys`]: `create_key`, `revoke_key`, `rotate_key`, `import_key`
//! * [`verify`]: `verify_key` and the check behind `authenticate()`: the hot
//!   path, reading the two unique indexes directly
//! * [`public_keys`]: `create_public_key`, `revoke_public_key`, `resolve_public_key`
//! * [`replication`]: how the triggers recognise a change a logical
//!   replication subscription is applying
//! * [`usage`]: the usage engine (shared memory and its background
//!   workers; with `shared_preload_libraries`)
//! * [`limits`]: rate windows and credit balances in shared memory
//! * `save`: what a clean shutdown keeps for the next start
//! * [`leaks`]: GitHub's signed secret-scanning intake,
//!   `github_secret_scanning` (`report_leaked` itself is SQL)
//!
//! The DDL lives in `sql/*.sql` (tables, functions, triggers, policies,
//! grants), loaded below in that order.

use pgrx::prelude::*;

pub mod errors;
mod fmgr;
mod forward;
pub mod gucs;
mod import;
pub mod key_admin;
pub mod keys;
pub mod leaks;
pub mod limits;
pub mod principal;
pub mod public_keys;
pub mod replication;
pub mod rules;
mod save;
mod shmem;
mod spi;
pub mod token;
pub mod usage;
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

// The C symbols that sql/functions.sql names; see fmgr.rs for why each
// wraps pgrx's generated wrapper. A released version's SQL names them too:
// never remove or rename one (docs/reference.md, "Upgrading").
fmgr::entry_points! {
    apikeys_current_principal / pg_finfo_apikeys_current_principal => principal::current_principal_wrapper;
    apikeys_create_workspace / pg_finfo_apikeys_create_workspace => workspaces::create_workspace_wrapper;
    apikeys_add_member / pg_finfo_apikeys_add_member => workspaces::add_member_wrapper;
    apikeys_remove_member / pg_finfo_apikeys_remove_member => workspaces::remove_member_wrapper;
    apikeys_accept_invitation / pg_finfo_apikeys_accept_invitation => workspaces::accept_invitation_wrapper;
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
    apikeys_github_secret_scanning / pg_finfo_apikeys_github_secret_scanning => leaks::github_secret_scanning_wrapper;
    apikeys_applying_replicated_change / pg_finfo_apikeys_applying_replicated_change => replication::applying_replicated_change_wrapper;
    apikeys_usage_mode / pg_finfo_apikeys_usage_mode => usage::usage_mode_wrapper;
    apikeys_check_key / pg_finfo_apikeys_check_key => verify::check_key_wrapper;
    apikeys_in_usage_worker / pg_finfo_apikeys_in_usage_worker => usage::in_usage_worker_wrapper;
    apikeys_create_key_limited / pg_finfo_apikeys_create_key_limited => key_admin::create_key_limited_wrapper;
    apikeys_rotate_key_renew / pg_finfo_apikeys_rotate_key_renew => key_admin::rotate_key_renew_wrapper;
    apikeys_update_key / pg_finfo_apikeys_update_key => key_admin::update_key_wrapper;
    apikeys_suspend_key / pg_finfo_apikeys_suspend_key => key_admin::suspend_key_wrapper;
    apikeys_resume_key / pg_finfo_apikeys_resume_key => key_admin::resume_key_wrapper;
    apikeys_set_owner_limit / pg_finfo_apikeys_set_owner_limit => key_admin::set_owner_limit_wrapper;
    apikeys_usage_stats / pg_finfo_apikeys_usage_stats => usage::usage_stats_wrapper;
    apikeys_flush_usage / pg_finfo_apikeys_flush_usage => usage::flush_usage_wrapper;
    apikeys_pending_usage / pg_finfo_apikeys_pending_usage => usage::pending_usage_wrapper;
    apikeys_is_operator / pg_finfo_apikeys_is_operator => principal::is_operator_now_wrapper;
    apikeys_checked_within / pg_finfo_apikeys_checked_within => key_admin::checked_within_wrapper;
    apikeys_import_mark / pg_finfo_apikeys_import_mark => import::import_mark_wrapper;
    apikeys_importing / pg_finfo_apikeys_importing => import::importing_wrapper;
    apikeys_import_keys_caller / pg_finfo_apikeys_import_keys_caller => import::import_keys_caller_wrapper;
    apikeys_metadata_ok / pg_finfo_apikeys_metadata_ok => import::metadata_ok_wrapper;
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
    // SAFETY: a plain read of a postmaster flag
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        gucs::init_preload();
        usage::init_preload();
    }
    principal::init();
    verify::init();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Release bookkeeping that a build can check without a database: the
/// control file names this crate's version, and every released version has
/// an upgrade script to it (docs/reference.md, "Upgrading").
#[cfg(test)]
mod release {
    const CONTROL: &str = include_str!("../pg_apikeys.control");
    /// Every version that shipped, oldest first.
    const RELEASED: &[&str] = &["0.1.0"];

    fn sql_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql")
    }

    #[test]
    fn control_file_names_the_crate_version() {
        let line = format!("default_version = '{}'", env!("CARGO_PKG_VERSION"));
        assert!(CONTROL.lines().any(|l| l == line), "pg_apikeys.control must say {line}");
    }

    #[test]
    fn every_released_version_has_its_install_script_and_an_upgrade_path() {
        let current = env!("CARGO_PKG_VERSION");
        for v in RELEASED {
            assert!(sql_dir().join(format!("pg_apikeys--{v}.sql")).is_file(), "sql/pg_apikeys--{v}.sql");
            if *v == current {
                continue;
            }
            // follow the chain of upgrade scripts from v to the current version
            let mut at = v.to_string();
            let mut steps = 0;
            while at != current {
                let next = std::fs::read_dir(sql_dir())
                    .expect("sql/ is readable") // ok: a test, not backend code
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .find_map(|n| {
                        n.strip_prefix(&format!("pg_apikeys--{at}--"))?
                            .strip_suffix(".sql")
                            .map(str::to_owned)
                    });
                at = next.unwrap_or_else(|| panic!("no upgrade script from {at} towards {current}"));
                steps += 1;
                assert!(steps < 100, "upgrade scripts loop");
            }
        }
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
