//! Every setting of pg_apikeys, registered once from `_PG_init`.

use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `apikeys.last_used_interval` (seconds, default 60): `verify_key` writes a
/// key's `last_used_at` at most once per this interval. `0` writes on every
/// verify; `-1` never writes. Superuser-only (`SUSET`), so a client cannot
/// turn its own verifies into a write load.
pub static LAST_USED_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);

/// `apikeys.header` (default `x-api-key`): the request header, as PostgREST
/// lower-cases it in `request.headers`, that `apikeys.authenticate()` reads.
pub static HEADER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"x-api-key"));

/// `apikeys.key_role` (default unset): the role `apikeys.authenticate()`
/// switches to after accepting an API key. Unset: the role stays as is.
pub static KEY_ROLE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `apikeys.claims_roles` (default `authenticator`): `request.jwt.claims`
/// name the caller only when the session's login user is a superuser or a
/// member of one of these roles (a comma-separated list). PostgREST and
/// Supabase log in as `authenticator`; claims set by any other login are
/// ignored, and the caller is its role. Superuser-only (`SUSET`).
pub static CLAIMS_ROLES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"authenticator"));

/// `apikeys.notify_channel` (default empty: off): the channel on which a
/// key's id is sent (`NOTIFY`) when it stops verifying early. PostgreSQL
/// has no privilege on `LISTEN`: any role that can connect hears every
/// channel it names, so notifications are off until a superuser names one
/// (docs/security.md, "Notifications"). Superuser-only (`SUSET`).
pub static NOTIFY_CHANNEL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `apikeys.usage_slots` (default 524288, 52 MiB): entries of the usage
/// engine's shared-memory table, one per (database, key, hour) not written
/// yet; the current hour's are written after it ends, so the default holds
/// 100 000 keys of one workspace active in an hour, twice over at the hour's
/// turn, within the default workspace share. Postmaster-only; defined only
/// when the library is preloaded.
pub static USAGE_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(524288);

/// `apikeys.limit_slots` (default 131072): entries of the shared-memory
/// table of rate-limit windows and credit balances (one per key with a limit
/// or credits, one per owner with a shared limit). Postmaster-only; defined
/// only when the library is preloaded.
pub static LIMIT_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(131072);

/// `apikeys.usage_flush_interval` (seconds, default 10): the usage engine's
/// worker writes pending usage at least this often. Reloadable (`SIGHUP`).
pub static USAGE_FLUSH_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);

/// `apikeys.workspace_share` (percent, default 50): the most of each
/// shared-memory table (usage and limits) that one workspace's entries may
/// take. A workspace past its share finds no entry: its verifies fall back
/// (or go unrecorded) and its limited keys fail closed, while other
/// workspaces keep their room. 100 for a deployment with one tenant.
/// Reloadable (`SIGHUP`).
pub static WORKSPACE_SHARE: GucSetting<i32> = GucSetting::<i32>::new(50);

/// `apikeys.primary_conninfo` (default empty): on a hot standby, the
/// connection string the usage engine forwards the standby's usage to the
/// primary with (src/forward.rs); the database name is added. Empty: a
/// standby keeps its usage until it is promoted. Reloadable (`SIGHUP`);
/// superusers only, as it may hold a password.
pub static PRIMARY_CONNINFO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The postmaster-only settings: only while `shared_preload_libraries`
/// loads (PostgreSQL refuses them later).
pub fn init_preload() {
    GucRegistry::define_int_guc(
        c"apikeys.usage_slots",
        c"Entries of the usage engine's shared-memory table (one per database, key and hour not written yet).",
        c"Needs a restart. Each entry takes 120 bytes with its share count; when the table is full a verify writes last_used_at in its own transaction instead.",
        &USAGE_SLOTS,
        1024,
        16 * 1024 * 1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"apikeys.limit_slots",
        c"Entries of the shared-memory table of rate-limit windows and credit balances.",
        c"Needs a restart. One per key with a rate limit or credits, one per owner with a shared limit; 168 bytes each with its share count. A check that finds no entry is refused.",
        &LIMIT_SLOTS,
        1024,
        16 * 1024 * 1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

pub fn init() {
    GucRegistry::define_string_guc(
        c"apikeys.primary_conninfo",
        c"On a hot standby: the connection string to the primary that the usage engine forwards this standby's usage with.",
        c"Only with shared_preload_libraries = 'pg_apikeys'. Empty: a standby keeps its usage until it is promoted. The role it names needs apikeys.grant_forwarder() in each database; no TLS (sslmode disable or prefer).",
        &PRIMARY_CONNINFO,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"apikeys.usage_flush_interval",
        c"Seconds between writes of pending usage by the usage engine's worker.",
        c"Only with shared_preload_libraries = 'pg_apikeys'. A crash loses at most this much usage.",
        &USAGE_FLUSH_INTERVAL,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"apikeys.workspace_share",
        c"Percent of each usage engine table (usage, limits) one workspace may fill.",
        c"Only with shared_preload_libraries = 'pg_apikeys'. A workspace past it finds no entry: its own verifies fall back and its limited keys fail closed; others keep their room.",
        &WORKSPACE_SHARE,
        1,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"apikeys.last_used_interval",
        c"Seconds between writes of a key's last_used_at by verify_key.",
        c"0 writes on every verify, -1 never writes. Writes are skipped in read-only transactions, on standbys and when the key row is locked.",
        &LAST_USED_INTERVAL,
        -1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"apikeys.header",
        c"Request header carrying the API key for apikeys.authenticate().",
        c"Lower-case, as PostgREST stores headers in request.headers.",
        &HEADER,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"apikeys.key_role",
        c"Role apikeys.authenticate() switches to after accepting an API key.",
        c"Unset: the request keeps its role.",
        &KEY_ROLE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"apikeys.notify_channel",
        c"Channel on which a key's id is sent (NOTIFY) when it stops verifying early; empty: no notifications.",
        c"Any role that can connect may LISTEN on any channel: name one only where every such role may know key ids.",
        &NOTIFY_CHANNEL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"apikeys.claims_roles",
        c"Login roles whose sessions may name the caller through request.jwt.claims.",
        c"Comma-separated role names; a superuser session always may. Claims set by any other session are ignored.",
        &CLAIMS_ROLES,
        GucContext::Suset,
        GucFlags::default(),
    );
}
