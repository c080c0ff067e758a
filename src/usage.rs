//! The usage engine: with `shared_preload_libraries = 'pg_apikeys'`, every
//! verify records its outcome in shared memory and a background worker
//! writes it out, so a request never writes a table for usage
//! (docs/operations.md, "Usage engine"; docs/reference.md, "Usage").
//!
//! Shared memory holds a header of cluster-wide counters and a fixed table of
//! `apikeys.usage_slots` entries, one per (database, key, hour), cut into
//! [`PARTITIONS`] partitions with one LWLock each: two backends verifying
//! different keys almost never take the same lock, and a verify holds its
//! lock for a few dozen instructions. Inside a partition an entry sits at its
//! hash's place or a few places after it (linear probing); taking entries out
//! rebuilds the partition, so probe chains never break.
//!
//! The worker side:
//! * the **launcher** (`pg_apikeys_usage_launcher`, registered at preload,
//!   connected to no database) wakes every `apikeys.usage_flush_interval`,
//!   when the table is three quarters full, or when `flush_usage()` asks;
//!   for each database with pending entries it starts
//! * a **flusher** (`pg_apikeys_usage_flush`, a dynamic worker connected to
//!   that database), which takes the database's entries out and writes them
//!   in one transaction: one `INSERT … ON CONFLICT` into `key_usage` per
//!   batch (the entry carries the key's workspace, so no key is read), and
//!   one `UPDATE` of `keys.last_used_at` per batch of keys whose verifies
//!   found it due, then exits. Short-lived, so
//!   it never holds a database that someone wants to drop.
//!
//! Nothing is dropped without being counted: events of keys that no longer
//! exist (extension dropped and re-created), of dropped databases, and of a
//! flush that failed are added to `discarded`; a verify that finds no free
//! entry falls back to the in-transaction write and adds to `fallbacks`.
//! On a standby nothing is written: entries stay pending (shown by
//! `usage_stats()`) and are written after promotion. At a clean shutdown the
//! launcher saves pending entries to `pg_apikeys_usage.pending` in the data
//! directory and the next start writes them; a crash loses what was pending
//! (at most one flush interval).

use std::ffi::CStr;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::{gucs, shmem};

/// Lock partitions of the table (a power of two).
pub const PARTITIONS: usize = 32;
/// How far past its place an entry may sit; beyond, the partition is full.
const MAX_PROBES: usize = 64;
/// Entries written by one statement.
const BATCH: usize = 10_000;
const TRANCHE: &CStr = c"pg_apikeys usage";
const SEGMENT: &CStr = c"pg_apikeys usage table";
const PENDING_FILE: &str = "pg_apikeys_usage.pending";
const PENDING_MAGIC: &[u8; 8] = b"PGAKU002";
const USECS_PER_HOUR: i64 = 3_600_000_000;

/// One (database, key, hour): what happened since the last flush.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Entry {
    pub used: u32,
    pub dbid: u32,
    pub key: [u8; 16],
    /// the key's workspace (write-once in `keys`): the flush needs no look-up
    pub workspace: [u8; 16],
    /// hours since 2000-01-01 00:00 UTC (PostgreSQL's epoch)
    pub hour: i64,
    pub verified: u64,
    pub rejected: u64,
    /// the latest verified use that found `last_used_at` due (TimestampTz), 0 when none
    pub last_used: i64,
    /// oid of the `apikeys.keys` the key was read from: an entry of a
    /// dropped (and maybe re-created) extension no longer matches
    pub keys_rel: u32,
    /// 1 when a verify found the key row written by its own open
    /// transaction (a key minted there): the flush checks that it exists
    pub uncommitted: u32,
}

/// The key a verify found, as the usage engine records it.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef {
    pub id: [u8; 16],
    pub workspace: [u8; 16],
    pub keys_rel: u32,
    pub uncommitted: bool,
}

const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Cluster-wide counters, since the server started.
#[repr(C)]
struct Header {
    per_part: u64,
    launcher_latch: AtomicPtr<pg_sys::Latch>,
    wake_sent: AtomicBool,
    in_use: AtomicI64,
    verified: AtomicU64,
    rejected: AtomicU64,
    unknown: AtomicU64,
    malformed: AtomicU64,
    fallbacks: AtomicU64,
    unrecorded: AtomicU64,
    flushes: AtomicU64,
    flushed: AtomicU64,
    discarded: AtomicU64,
    /// events a running flusher took out and has not committed yet
    in_flight: AtomicU64,
    flush_requested: AtomicU64,
    flush_done: AtomicU64,
    last_flush: AtomicI64,
}

static mut HEADER: *mut Header = std::ptr::null_mut();
static mut SLOTS: *mut Entry = std::ptr::null_mut();
static mut LOCKS: *mut pg_sys::LWLockPadded = std::ptr::null_mut();
static mut PREV_REQUEST: Option<unsafe extern "C-unwind" fn()> = None;
static mut PREV_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

fn slot_count() -> usize {
    let n = gucs::USAGE_SLOTS.get().max(PARTITIONS as i32) as usize;
    n.div_ceil(PARTITIONS) * PARTITIONS
}

fn segment_size() -> usize {
    std::mem::size_of::<Header>() + slot_count() * ENTRY_BYTES
}

/// Called from `_PG_init` while `shared_preload_libraries` loads: asks for
/// the shared memory and locks, and registers the launcher.
pub fn init_preload() {
    // SAFETY: postmaster start-up, single-threaded; hooks chained as PostgreSQL documents
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
    BackgroundWorkerBuilder::new("pg_apikeys usage launcher")
        .set_type("pg_apikeys usage launcher")
        .set_library("pg_apikeys")
        .set_function("pg_apikeys_usage_launcher")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called by the postmaster in its shmem_request phase
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(segment_size());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), PARTITIONS as i32);
        crate::limits::request();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: called by the postmaster (and after a crash reset) with
    // AddinShmemInitLock available; the segment is ours
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        // AddinShmemInitLock, as pgrx's own shared memory takes it
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let base = pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), segment_size(), &mut found) as *mut u8;
        if !found {
            std::ptr::write_bytes(base, 0, segment_size());
            let h = base as *mut Header;
            (*h).per_part = (slot_count() / PARTITIONS) as u64;
        }
        HEADER = base as *mut Header;
        SLOTS = base.add(std::mem::size_of::<Header>()) as *mut Entry;
        LOCKS = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
        crate::limits::startup();
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Whether the usage engine runs (the library was preloaded).
pub fn active() -> bool {
    // SAFETY: set once by shmem_startup before any backend exists
    unsafe { !(*std::ptr::addr_of!(HEADER)).is_null() }
}

fn header() -> &'static Header {
    // SAFETY: only called when active()
    unsafe { &*HEADER }
}

/// A held partition lock, released when dropped.
struct Part {
    p: usize,
}

impl Part {
    fn lock(p: usize, exclusive: bool) -> Part {
        // SAFETY: p < PARTITIONS; the tranche has PARTITIONS locks
        unsafe { shmem::acquire(LOCKS, p, exclusive) };
        Part { p }
    }

    fn slots(&mut self) -> &mut [Entry] {
        let per = header().per_part as usize;
        // SAFETY: the partition's range of the table, under its lock
        unsafe { std::slice::from_raw_parts_mut(SLOTS.add(self.p * per), per) }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        // SAFETY: we hold this lock
        unsafe { shmem::release(LOCKS, self.p) };
    }
}

fn hash(dbid: u32, key: &[u8; 16], hour: i64) -> u64 {
    shmem::mix(dbid, key, hour as u64)
}

/// Add `e` into the partition's slots (merging with its entry); false when
/// no place within MAX_PROBES is free.
fn put(slots: &mut [Entry], h: u64, e: &Entry) -> Result<bool, ()> {
    let per = slots.len();
    let start = ((h >> 5) as usize) % per;
    for i in 0..MAX_PROBES.min(per) {
        let s = &mut slots[(start + i) % per];
        if s.used == 0 {
            *s = *e;
            s.used = 1;
            return Ok(true); // a new entry
        }
        if s.dbid == e.dbid && s.key == e.key && s.hour == e.hour {
            s.verified += e.verified;
            s.rejected += e.rejected;
            s.last_used = s.last_used.max(e.last_used);
            // the latest read wins (an extension dropped and re-created
            // in between: the key is the new extension's now)
            s.keys_rel = e.keys_rel;
            s.workspace = e.workspace;
            s.uncommitted |= e.uncommitted;
            return Ok(false); // merged
        }
    }
    Err(())
}

fn add(e: &Entry) -> bool {
    let h = hash(e.dbid, &e.key, e.hour);
    let mut part = Part::lock((h as usize) & (PARTITIONS - 1), true);
    match put(part.slots(), h, e) {
        Ok(new) => {
            drop(part);
            if new {
                let hd = header();
                let used = hd.in_use.fetch_add(1, Ordering::Relaxed) + 1;
                if used as u64 * 4 >= hd.per_part * PARTITIONS as u64 * 3 {
                    wake_launcher();
                }
            }
            true
        }
        Err(()) => {
            drop(part);
            wake_launcher();
            false
        }
    }
}

fn wake_launcher() {
    let hd = header();
    if !hd.wake_sent.swap(true, Ordering::AcqRel) {
        let latch = hd.launcher_latch.load(Ordering::Acquire);
        if !latch.is_null() {
            // SAFETY: the launcher's PGPROC latch, in shared memory
            unsafe { pg_sys::SetLatch(latch) };
        }
    }
}

/// The outcome of one verify, as the usage engine counts it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Verified,
    Rejected,
}

/// Record a verify of `key` in this database at `now`; `stamp`: the key's
/// `last_used_at` is due (older than `apikeys.last_used_interval`), so the
/// flush writes it (a key used again within the interval costs the flush
/// nothing but its count). `false` when the table had no room: the caller
/// falls back to its in-transaction write.
pub fn record(key: &KeyRef, outcome: Outcome, now: pg_sys::TimestampTz, stamp: bool) -> bool {
    let hd = header();
    let verified = outcome == Outcome::Verified;
    // SAFETY: backend-local
    let dbid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let e = Entry {
        used: 1,
        dbid,
        key: key.id,
        workspace: key.workspace,
        keys_rel: key.keys_rel,
        uncommitted: u32::from(key.uncommitted),
        hour: now.div_euclid(USECS_PER_HOUR),
        verified: u64::from(verified),
        rejected: u64::from(!verified),
        last_used: if verified && stamp { now } else { 0 },
    };
    if verified {
        hd.verified.fetch_add(1, Ordering::Relaxed);
    } else {
        hd.rejected.fetch_add(1, Ordering::Relaxed);
    }
    let ok = add(&e);
    if !ok {
        hd.fallbacks.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// A token that matched no key (`malformed`: not even of a key's shape).
pub fn record_nokey(malformed: bool) {
    let hd = header();
    if malformed {
        hd.malformed.fetch_add(1, Ordering::Relaxed);
    } else {
        hd.unknown.fetch_add(1, Ordering::Relaxed);
    }
}

/// A fallback that could not write either (read-only transaction, standby).
pub fn record_unrecorded() {
    header().unrecorded.fetch_add(1, Ordering::Relaxed);
}

/// Take every entry of database `dbid` out of the table.
fn take(dbid: u32) -> Vec<Entry> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let mut part = Part::lock(p, true);
        let slots = part.slots();
        if !slots.iter().any(|s| s.used != 0 && s.dbid == dbid) {
            continue;
        }
        let mut keep = Vec::new();
        for s in slots.iter_mut() {
            if s.used != 0 {
                if s.dbid == dbid {
                    out.push(*s);
                } else {
                    keep.push(*s);
                }
            }
            *s = Entry::default();
        }
        for e in &keep {
            // they fitted before; re-placing them can only shorten chains
            let _ = put(slots, hash(e.dbid, &e.key, e.hour), e);
        }
    }
    header().in_use.fetch_sub(out.len() as i64, Ordering::Relaxed);
    out
}

/// Every pending entry (a copy), under shared locks.
fn snapshot_all() -> Vec<Entry> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let mut part = Part::lock(p, false);
        out.extend(part.slots().iter().filter(|s| s.used != 0).copied());
    }
    out
}

fn events(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.verified + e.rejected).sum()
}

// ---------------------------------------------------------------------------
// The launcher

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_apikeys_usage_launcher(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    let hd = header();
    // SAFETY: our own latch, in shared memory
    hd.launcher_latch.store(unsafe { pg_sys::MyLatch }, Ordering::Release);
    load_pending();
    loop {
        let secs = gucs::USAGE_FLUSH_INTERVAL.get().max(1) as u64;
        let asked = hd.flush_requested.load(Ordering::Acquire);
        let alive = asked > hd.flush_done.load(Ordering::Acquire)
            || BackgroundWorker::wait_latch(Some(Duration::from_secs(secs)));
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a background worker to reload
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !alive || BackgroundWorker::sigterm_received() {
            save_pending();
            break;
        }
        let asked = hd.flush_requested.load(Ordering::Acquire);
        hd.wake_sent.store(false, Ordering::Release);
        // SAFETY: reads shared state
        if !unsafe { pg_sys::RecoveryInProgress() } {
            flush_all();
        }
        hd.flush_done.fetch_max(asked, Ordering::AcqRel);
    }
    hd.launcher_latch.store(std::ptr::null_mut(), Ordering::Release);
}

/// One flusher per database with pending entries, one after the other.
fn flush_all() {
    let mut dbs: Vec<u32> = snapshot_all().iter().map(|e| e.dbid).collect();
    dbs.extend(crate::limits::pending_dbs());
    dbs.sort_unstable();
    dbs.dedup();
    for db in dbs {
        if !database_exists(db) {
            let gone = take(db);
            header().discarded.fetch_add(events(&gone), Ordering::Relaxed);
            crate::limits::drop_database(db);
            continue;
        }
        let worker = BackgroundWorkerBuilder::new("pg_apikeys usage flush")
            .set_type("pg_apikeys usage flush")
            .set_library("pg_apikeys")
            .set_function("pg_apikeys_usage_flush")
            .set_argument(Some(pg_sys::Datum::from(db)))
            .enable_spi_access()
            .set_restart_time(None)
            // SAFETY: backend-local
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic();
        let Ok(worker) = worker else {
            pgrx::warning!("pg_apikeys: no background worker slot for a usage flush (max_worker_processes); retrying next interval");
            return;
        };
        let _ = worker.wait_for_startup();
        let _ = worker.wait_for_shutdown();
        // a flusher that died before its commit: its events are counted, not lost silently
        let lost = header().in_flight.swap(0, Ordering::AcqRel);
        if lost > 0 {
            header().discarded.fetch_add(lost, Ordering::Relaxed);
            pgrx::warning!("pg_apikeys: a usage flush failed; {lost} verifies were counted as discarded");
        }
    }
}

fn database_exists(db: u32) -> bool {
    // SAFETY: a syscache probe of the shared catalog pg_database in a transaction
    unsafe {
        pg_sys::StartTransactionCommand();
        let found = pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::DATABASEOID as i32,
            pg_sys::Datum::from(db),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
        );
        pg_sys::CommitTransactionCommand();
        found
    }
}

fn pending_path() -> Option<std::path::PathBuf> {
    // SAFETY: DataDir is set before any worker starts
    let dir = unsafe { pg_sys::DataDir };
    if dir.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated path
    let dir = unsafe { CStr::from_ptr(dir) }.to_str().ok()?;
    Some(std::path::Path::new(dir).join(PENDING_FILE))
}

/// At shutdown: keep what is pending for the next start (never on a crash).
fn save_pending() {
    let all = snapshot_all();
    let Some(path) = pending_path() else { return };
    if all.is_empty() {
        return;
    }
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(PENDING_MAGIC)?;
        for e in &all {
            // SAFETY: Entry is repr(C) plain data
            let bytes = unsafe { std::slice::from_raw_parts((e as *const Entry).cast::<u8>(), ENTRY_BYTES) };
            f.write_all(bytes)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    if write().is_err() {
        header().discarded.fetch_add(events(&all), Ordering::Relaxed);
        pgrx::warning!("pg_apikeys: could not save pending usage at shutdown");
    }
}

/// At start: take back what the last shutdown saved, then remove the file.
fn load_pending() {
    let Some(path) = pending_path() else { return };
    let Ok(mut f) = std::fs::File::open(&path) else { return };
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_ok() && buf.starts_with(PENDING_MAGIC) {
        for chunk in buf[PENDING_MAGIC.len()..].chunks_exact(ENTRY_BYTES) {
            // SAFETY: ENTRY_BYTES bytes written by save_pending
            let e: Entry = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast()) };
            if e.used != 0 && !add(&e) {
                header().discarded.fetch_add(e.verified + e.rejected, Ordering::Relaxed);
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

// ---------------------------------------------------------------------------
// The flusher

/// The counts of one batch: one row per entry (an entry is one key and
/// hour), added to the row already there. The workspace comes with the
/// entry (write-once in `keys`), so no row of `keys` is read.
const COUNT_SQL: &str = "\
INSERT INTO apikeys.key_usage AS ku (key_id, workspace_id, hour, verified, rejected)
SELECT * FROM ROWS FROM (pg_catalog.unnest($1::uuid[]), pg_catalog.unnest($2::uuid[]),
                         pg_catalog.unnest($3::timestamptz[]), pg_catalog.unnest($4::int8[]),
                         pg_catalog.unnest($5::int8[]))
ON CONFLICT (key_id, hour) DO UPDATE
   SET verified = ku.verified OPERATOR(pg_catalog.+) excluded.verified,
       rejected = ku.rejected OPERATOR(pg_catalog.+) excluded.rejected";

/// `last_used_at` of the keys whose verifies found it due (each key once),
/// still at most once per `apikeys.last_used_interval`.
const STAMP_SQL: &str = "\
UPDATE apikeys.keys k SET last_used_at = l.t
  FROM ROWS FROM (pg_catalog.unnest($1::uuid[]), pg_catalog.unnest($2::timestamptz[])) AS l(key_id, t)
 WHERE k.id OPERATOR(pg_catalog.=) l.key_id
   AND (k.last_used_at IS NULL
        OR k.last_used_at OPERATOR(pg_catalog.<=) (l.t OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $3)))";

/// Of the keys given, those that do not exist (minted by a transaction
/// that then rolled back, or has not committed yet).
const MISSING_SQL: &str = "\
SELECT m.id FROM pg_catalog.unnest($1::uuid[]) AS m(id)
 WHERE NOT EXISTS (SELECT FROM apikeys.keys k WHERE k.id OPERATOR(pg_catalog.=) m.id)";

thread_local! {
    static IN_FLUSHER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `apikeys.in_usage_worker()`: whether this backend is the usage engine's
/// flusher (the audit trigger does not record its credit debits).
#[pgrx::pg_extern(sql = false)]
fn in_usage_worker() -> bool {
    IN_FLUSHER.with(|f| f.get())
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_apikeys_usage_flush(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    IN_FLUSHER.with(|f| f.set(true));
    let db = arg.value() as u32;
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    let credits = crate::limits::take_credits(db);
    if !credits.is_empty() {
        let written = BackgroundWorker::transaction(|| write_credits(&credits));
        for (id, at) in written {
            crate::limits::written_refill(db, &id, at);
        }
    }
    let entries = take(db);
    if entries.is_empty() {
        return;
    }
    let total = events(&entries);
    let hd = header();
    hd.in_flight.store(total, Ordering::Release);
    let interval = f64::from(gucs::LAST_USED_INTERVAL.get());
    let written = BackgroundWorker::transaction(|| write(&entries, interval));
    hd.in_flight.store(0, Ordering::Release);
    hd.flushes.fetch_add(1, Ordering::Relaxed);
    hd.flushed.fetch_add(written, Ordering::Relaxed);
    hd.discarded.fetch_add(total - written, Ordering::Relaxed);
    // SAFETY: a plain clock read
    hd.last_flush.store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::Relaxed);
}

/// Write the entries; returns how many events landed on an existing key.
fn write(entries: &[Entry], interval: f64) -> u64 {
    Spi::connect_mut(|client: &mut SpiClient<'_>| {
        if !flusher_settings(client) {
            return 0;
        }
        let ready = client
            .select(
                "SELECT pg_catalog.to_regclass('apikeys.keys')::pg_catalog.oid AS keys,
                        pg_catalog.to_regclass('apikeys.key_usage') IS NOT NULL AS usage",
                Some(1),
                &[],
            )
            .ok()
            .map(|t| {
                let r = t.first();
                (r.get::<pg_sys::Oid>(1).ok().flatten(), r.get::<bool>(2).ok().flatten() == Some(true))
            });
        let Some((Some(keys_rel), has_usage)) = ready else { return 0 };
        // a logical replication subscriber receives key_usage from its
        // publisher: its own counts would collide with the replicated rows
        let subscribed = has_usage
            && client
                .select(
                    "SELECT EXISTS (SELECT FROM pg_catalog.pg_subscription_rel
                                     WHERE srrelid = 'apikeys.key_usage'::pg_catalog.regclass)",
                    Some(1),
                    &[],
                )
                .ok()
                .and_then(|t| t.first().get::<bool>(1).ok().flatten())
                .unwrap_or(true);
        let counts = has_usage && !subscribed;
        // keys of this extension's keys table (not of one dropped since)
        let mut live: Vec<&Entry> = entries.iter().filter(|e| e.keys_rel == keys_rel.to_u32()).collect();
        // keys that a verify found minted by its own transaction: only
        // those that exist now (keys are never deleted otherwise)
        let unsure: Vec<pgrx::Uuid> =
            live.iter().filter(|e| e.uncommitted != 0).map(|e| pgrx::Uuid::from_bytes(e.key)).collect();
        if !unsure.is_empty() {
            let missing: std::collections::HashSet<[u8; 16]> =
                match client.select(MISSING_SQL, None, &[unsure.into()]) {
                    Ok(t) => t
                        .filter_map(|r| r.get::<pgrx::Uuid>(1).ok().flatten().map(|u| *u.as_bytes()))
                        .collect(),
                    Err(_) => return 0,
                };
            live.retain(|e| !missing.contains(&e.key));
        }
        let mut written = 0u64;
        if counts {
            for batch in live.chunks(BATCH) {
                let ids: Vec<pgrx::Uuid> = batch.iter().map(|e| pgrx::Uuid::from_bytes(e.key)).collect();
                let wss: Vec<pgrx::Uuid> =
                    batch.iter().map(|e| pgrx::Uuid::from_bytes(e.workspace)).collect();
                let hours: Vec<TimestampWithTimeZone> =
                    batch.iter().map(|e| ts(e.hour * USECS_PER_HOUR)).collect();
                let ver: Vec<i64> = batch.iter().map(|e| e.verified as i64).collect();
                let rej: Vec<i64> = batch.iter().map(|e| e.rejected as i64).collect();
                let args = [ids.into(), wss.into(), hours.into(), ver.into(), rej.into()];
                if client.update(COUNT_SQL, None, &args).is_err() {
                    return written;
                }
                written += batch.iter().map(|e| e.verified + e.rejected).sum::<u64>();
            }
        }
        if interval >= 0.0 {
            // one stamp per key: its latest due use over the entries' hours
            let mut due: std::collections::HashMap<[u8; 16], i64> = std::collections::HashMap::new();
            for e in live.iter().filter(|e| e.last_used != 0) {
                let t = due.entry(e.key).or_insert(e.last_used);
                *t = (*t).max(e.last_used);
            }
            let due: Vec<([u8; 16], i64)> = due.into_iter().collect();
            for batch in due.chunks(BATCH) {
                let ids: Vec<pgrx::Uuid> = batch.iter().map(|(k, _)| pgrx::Uuid::from_bytes(*k)).collect();
                let at: Vec<TimestampWithTimeZone> = batch.iter().map(|(_, t)| ts(*t)).collect();
                if client.update(STAMP_SQL, None, &[ids.into(), at.into(), interval.into()]).is_err() {
                    return written;
                }
            }
        }
        written
    })
}

const CREDITS_SQL: &str = "\
WITH c AS (
    SELECT * FROM ROWS FROM (pg_catalog.unnest($1::uuid[]), pg_catalog.unnest($2::int8[]),
                             pg_catalog.unnest($3::timestamptz[]))
        AS c(key_id, debit, refilled_at)
)
UPDATE apikeys.keys k
   SET credits = GREATEST(CASE WHEN c.refilled_at IS NOT NULL
                               THEN coalesce(k.refill_amount, k.credits) ELSE k.credits END
                          OPERATOR(pg_catalog.-) c.debit, 0),
       credits_refilled_at = coalesce(c.refilled_at, k.credits_refilled_at)
  FROM c
 WHERE k.id OPERATOR(pg_catalog.=) c.key_id AND k.credits IS NOT NULL
RETURNING k.id, c.refilled_at";

/// Write credit debits and refills; returns the refills written (key, time).
fn write_credits(credits: &[crate::limits::CreditWrite]) -> Vec<([u8; 16], i64)> {
    Spi::connect_mut(|client: &mut SpiClient<'_>| {
        if !flusher_settings(client) {
            return Vec::new();
        }
        let present = client
            .select("SELECT pg_catalog.to_regclass('apikeys.keys') IS NOT NULL", Some(1), &[])
            .ok()
            .and_then(|t| t.first().get::<bool>(1).ok().flatten())
            .unwrap_or(false);
        if !present {
            return Vec::new();
        }
        let ids: Vec<pgrx::Uuid> = credits.iter().map(|c| pgrx::Uuid::from_bytes(c.key_id)).collect();
        let debits: Vec<i64> = credits.iter().map(|c| c.debit).collect();
        let refills: Vec<Option<TimestampWithTimeZone>> =
            credits.iter().map(|c| c.refilled_at.map(ts)).collect();
        let mut out = Vec::new();
        if let Ok(t) = client.update(CREDITS_SQL, None, &[ids.into(), debits.into(), refills.into()]) {
            for r in t {
                let id: Option<pgrx::Uuid> = r.get(1).ok().flatten();
                let at: Option<TimestampWithTimeZone> = r.get(2).ok().flatten();
                if let (Some(id), Some(at)) = (id, at) {
                    out.push((*id.as_bytes(), at.into()));
                }
            }
        }
        out
    })
}

/// The flusher's transaction settings: nothing a database's users created
/// can stand in for a name, and each batch joins its keys by the primary
/// key (a batch of 10 000 keys would otherwise be planned as a hash join
/// over a scan of the whole `keys` table).
fn flusher_settings(client: &mut SpiClient<'_>) -> bool {
    [
        "SET LOCAL search_path = pg_catalog, pg_temp",
        "SET LOCAL enable_hashjoin = off",
        "SET LOCAL enable_mergejoin = off",
    ]
    .into_iter()
    .all(|q| client.update(q, None, &[]).is_ok())
}

fn ts(t: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(t).unwrap_or_else(|_| TimestampWithTimeZone::negative_infinity())
}

// ---------------------------------------------------------------------------
// SQL surface

/// `apikeys.usage_mode()`: `shared_memory` or `in_transaction`.
#[pg_extern(sql = false)]
fn usage_mode() -> &'static str {
    if active() {
        "shared_memory"
    } else {
        "in_transaction"
    }
}

/// `apikeys.usage_stats()`: one row of cluster-wide counters.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn usage_stats() -> TableIterator<
    'static,
    (
        name!(mode, &'static str),
        name!(slots, Option<i64>),
        name!(slots_in_use, Option<i64>),
        name!(verified, Option<i64>),
        name!(rejected, Option<i64>),
        name!(unknown, Option<i64>),
        name!(malformed, Option<i64>),
        name!(pending, Option<i64>),
        name!(flushes, Option<i64>),
        name!(flushed, Option<i64>),
        name!(fallbacks, Option<i64>),
        name!(unrecorded, Option<i64>),
        name!(discarded, Option<i64>),
        name!(last_flush, Option<TimestampWithTimeZone>),
    ),
> {
    if !active() {
        return TableIterator::once((
            "in_transaction",
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ));
    }
    let hd = header();
    let all = snapshot_all();
    let n = |a: &AtomicU64| Some(a.load(Ordering::Relaxed) as i64);
    let last = hd.last_flush.load(Ordering::Relaxed);
    TableIterator::once((
        "shared_memory",
        Some((hd.per_part * PARTITIONS as u64) as i64),
        Some(all.len() as i64),
        n(&hd.verified),
        n(&hd.rejected),
        n(&hd.unknown),
        n(&hd.malformed),
        Some(events(&all) as i64),
        n(&hd.flushes),
        n(&hd.flushed),
        n(&hd.fallbacks),
        n(&hd.unrecorded),
        n(&hd.discarded),
        (last != 0).then(|| ts(last)),
    ))
}

/// `apikeys.flush_usage(timeout)`: ask the worker to write everything
/// pending now and wait until it has (true), or until `timeout` passed
/// (false). Without the usage engine there is nothing to flush: true.
#[pg_extern(sql = false)]
fn flush_usage(timeout_ms: i32) -> bool {
    if !active() {
        return true;
    }
    let hd = header();
    let want = hd.flush_requested.fetch_add(1, Ordering::AcqRel) + 1;
    let latch = hd.launcher_latch.load(Ordering::Acquire);
    if !latch.is_null() {
        // SAFETY: the launcher's latch, in shared memory
        unsafe { pg_sys::SetLatch(latch) };
    }
    let deadline = std::time::Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64);
    while hd.flush_done.load(Ordering::Acquire) < want {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        // SAFETY: a short sleep on our own latch; interrupts are honoured
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                10,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pg_sys::check_for_interrupts!();
        let latch = hd.launcher_latch.load(Ordering::Acquire);
        if !latch.is_null() {
            // SAFETY: as above
            unsafe { pg_sys::SetLatch(latch) };
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dbid: u32, k: u8, hour: i64) -> Entry {
        Entry {
            used: 1,
            dbid,
            key: [k; 16],
            hour,
            verified: 1,
            rejected: 0,
            last_used: 5,
            ..Entry::default()
        }
    }

    #[test]
    fn put_merges_the_same_key_hour_and_database() {
        let mut slots = vec![Entry::default(); 128];
        let e = entry(1, 7, 10);
        let h = hash(e.dbid, &e.key, e.hour);
        assert_eq!(put(&mut slots, h, &e), Ok(true));
        assert_eq!(put(&mut slots, h, &e), Ok(false));
        let other_db = entry(2, 7, 10);
        assert_eq!(put(&mut slots, hash(2, &other_db.key, 10), &other_db), Ok(true));
        let stored: Vec<_> = slots.iter().filter(|s| s.used != 0).collect();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored.iter().map(|s| s.verified).sum::<u64>(), 3);
    }

    #[test]
    fn put_reports_a_full_partition() {
        let mut slots = vec![Entry::default(); 8];
        for k in 0..8u8 {
            let e = entry(1, k, 0);
            assert!(put(&mut slots, 0, &e).is_ok());
        }
        assert_eq!(put(&mut slots, 0, &entry(1, 99, 0)), Err(()));
    }

    #[test]
    fn an_entry_is_plain_fixed_size_data() {
        assert_eq!(ENTRY_BYTES, 80);
    }
}
