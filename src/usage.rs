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
//! hash's place or a few places after it (linear probing); an entry is
//! taken out by shifting the rest of its run back, so probe runs never
//! break and no entry moves further from its place.
//!
//! The worker side (docs/architecture.md, "The usage engine"):
//! * the **launcher** (`pg_apikeys_usage_launcher`, registered at preload,
//!   connected to no database) wakes every `apikeys.usage_flush_interval`,
//!   when the table is three quarters full, or when `flush_usage()` asks;
//!   for each database with pending entries it starts, a few at a time,
//! * a **flusher** (`pg_apikeys_usage_flush`, a dynamic worker connected to
//!   that database, with its own session settings), which writes the
//!   database's credits and entries in small committed transactions and
//!   takes each batch out of shared memory only after its commit: one
//!   `INSERT … ON CONFLICT` into `key_usage` per batch (the entry carries
//!   the key's workspace, so no key is read), and one `UPDATE` of
//!   `keys.last_used_at` per batch of keys whose verifies found it due, of
//!   the rows no client holds (SKIP LOCKED: a held row waits for a later
//!   flush). It never waits for a client, and exits. Short-lived, so it
//!   never holds a database that someone wants to drop.
//!
//! Nothing is dropped without being counted: events of keys that no longer
//! exist (extension dropped and re-created, a mint rolled back), of dropped
//! databases or ones that take no connections are added to `discarded`; a
//! verify that finds no free entry (or whose workspace holds its share)
//! falls back to the in-transaction write (`fallbacks`) or, where it cannot
//! write, is `unrecorded`. On a standby nothing is written: with
//! `apikeys.primary_conninfo` its flushers send the entries to the primary
//! (src/forward.rs); without, they stay pending (shown by `usage_stats()`)
//! and are written after promotion. At a
//! clean shutdown the launcher saves pending entries (src/save.rs) and the
//! next start takes them back; a crash loses what was pending (at most one
//! flush interval).

use std::ffi::CStr;
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
const TRANCHE: &CStr = c"pg_apikeys usage";
const SEGMENT: &CStr = c"pg_apikeys usage table";
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
    /// every check that did not admit the key (the sum of `why`)
    pub rejected: u64,
    /// the rejected checks by outcome, indexed by [`Outcome::index`]:
    /// rate limited, usage exceeded, insufficient scope, refused
    pub why: [u32; 4],
    /// the latest verified use that found `last_used_at` due (TimestampTz), 0 when none
    pub last_used: i64,
    /// oid of the `apikeys.keys` the key was read from: an entry of a
    /// dropped (and maybe re-created) extension no longer matches
    pub keys_rel: u32,
    /// [`UNCOMMITTED`], [`NEVER_USED`]
    pub flags: u32,
}

/// A verify found the key row written by its own open transaction (a key
/// minted there): the next flush checks that it exists.
pub const UNCOMMITTED: u32 = 1;
/// A verify found `last_used_at` NULL (the key's first use): its stamp is
/// written at the next flush, not after the hour.
pub const NEVER_USED: u32 = 2;

/// The key a verify found, as the usage engine records it.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef {
    pub id: [u8; 16],
    pub workspace: [u8; 16],
    pub keys_rel: u32,
    pub uncommitted: bool,
    /// `last_used_at` was NULL
    pub never_used: bool,
}

pub(crate) const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Cluster-wide counters, since the server started.
#[repr(C)]
struct Header {
    per_part: u64,
    launcher_latch: AtomicPtr<pg_sys::Latch>,
    wake_sent: AtomicBool,
    in_use: AtomicI64,
    verified: AtomicU64,
    rejected: AtomicU64,
    /// the rejected checks by outcome ([`Outcome::index`])
    why: [AtomicU64; 4],
    unknown: AtomicU64,
    malformed: AtomicU64,
    fallbacks: AtomicU64,
    unrecorded: AtomicU64,
    flushes: AtomicU64,
    flushed: AtomicU64,
    discarded: AtomicU64,
    /// `last_used_at` stamps a flush skipped because a client held the row
    deferred: AtomicU64,
    /// flushers that started and have not finished their work
    flush_failures: AtomicU64,
    /// a launcher ran since this shared memory was made
    launched: AtomicBool,
    /// verifies that found no entry because their workspace held its share
    over_share: AtomicU64,
    flush_requested: AtomicU64,
    flush_done: AtomicU64,
    last_flush: AtomicI64,
    /// the id of the last copy of the table saved to disk (src/save.rs)
    snapshot: AtomicI64,
    /// the round the launcher runs now: the copy it follows, and the hours
    /// it writes (those before `round_before`; `i64::MAX`: every hour)
    round_snapshot: AtomicI64,
    round_before: AtomicI64,
    /// a workspace that found its share used (its [`pressed_tag`]; 0:
    /// none), and the one the running round writes whole
    pressed: AtomicU64,
    round_pressed: AtomicU64,
    /// the reserve flusher: its latch while it waits for a database, the
    /// database handed to it, its starts, and the start whose work ended
    reserve_latch: AtomicPtr<pg_sys::Latch>,
    reserve_db: AtomicU64,
    reserve_starts: AtomicU64,
    reserve_done: AtomicU64,
    /// flushes the reserve flusher ran because no other slot was free
    reserve_flushes: AtomicU64,
    /// the secret key of the tables' hash (shmem::mix), random at start
    seed: [u64; 2],
    /// a standby's forwarding (src/forward.rs): this run's source id
    /// (random, made when first needed), its last batch number, the
    /// events the primary took, and when a failure was last logged
    forward_source: AtomicU64,
    forward_batch: AtomicI64,
    forwarded: AtomicU64,
    forward_warned: AtomicI64,
}

static mut HEADER: *mut Header = std::ptr::null_mut();
static mut SLOTS: *mut Entry = std::ptr::null_mut();
/// per partition, how many entries each workspace holds there
static mut TENANTS: *mut shmem::Tenant = std::ptr::null_mut();
static mut LOCKS: *mut pg_sys::LWLockPadded = std::ptr::null_mut();
static mut PREV_REQUEST: Option<unsafe extern "C-unwind" fn()> = None;
static mut PREV_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;

fn slot_count() -> usize {
    let n = gucs::USAGE_SLOTS.get().max(PARTITIONS as i32) as usize;
    n.div_ceil(PARTITIONS) * PARTITIONS
}

fn segment_size() -> usize {
    std::mem::size_of::<Header>() + slot_count() * (ENTRY_BYTES + std::mem::size_of::<shmem::Tenant>())
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
    // a flusher that holds its worker slot from the server's start: when
    // parallel queries (or other extensions) take every free slot, the
    // launcher hands it a database
    BackgroundWorkerBuilder::new("pg_apikeys usage reserve")
        .set_type("pg_apikeys usage reserve")
        .set_library("pg_apikeys")
        .set_function("pg_apikeys_usage_reserve")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(0)))
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
            let mut seed = [0u8; 16];
            if !pg_sys::pg_strong_random(seed.as_mut_ptr().cast(), seed.len()) {
                pgrx::error!("pg_apikeys: no random bytes for the usage tables' hash key");
            }
            (*h).seed = [
                u64::from_le_bytes(seed[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(seed[8..].try_into().unwrap_or_default()),
            ];
        }
        HEADER = base as *mut Header;
        shmem::set_seed(&raw mut (*HEADER).seed);
        SLOTS = base.add(std::mem::size_of::<Header>()) as *mut Entry;
        TENANTS = SLOTS.add(slot_count()) as *mut shmem::Tenant;
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
        self.both().0
    }

    /// The partition's entries and its workspaces' counts.
    fn both(&mut self) -> (&mut [Entry], &mut [shmem::Tenant]) {
        let per = header().per_part as usize;
        // SAFETY: the partition's ranges of the two arrays, under its lock
        unsafe {
            (
                std::slice::from_raw_parts_mut(SLOTS.add(self.p * per), per),
                std::slice::from_raw_parts_mut(TENANTS.add(self.p * per), per),
            )
        }
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

/// Why an entry found no place.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NoRoom {
    /// no free place within MAX_PROBES of its own
    Full,
    /// its workspace holds its share of the partition already
    Share,
}

/// Add `e` into the partition's slots (merging with its entry): `true` for
/// a new entry. A new entry counts against its workspace's share (`limit`
/// entries of this partition).
fn put(
    slots: &mut [Entry],
    tenants: &mut [shmem::Tenant],
    h: u64,
    e: &Entry,
    limit: u32,
) -> Result<bool, NoRoom> {
    let per = slots.len();
    let start = ((h >> 5) as usize) % per;
    for i in 0..MAX_PROBES.min(per) {
        let s = &mut slots[(start + i) % per];
        if s.used == 0 {
            if !shmem::tenant_add(tenants, e.dbid, &e.workspace, limit) {
                return Err(NoRoom::Share);
            }
            *s = *e;
            s.used = 1;
            return Ok(true); // a new entry
        }
        if s.dbid == e.dbid && s.key == e.key && s.hour == e.hour {
            s.verified += e.verified;
            s.rejected += e.rejected;
            add_why(&mut s.why, &e.why);
            s.last_used = s.last_used.max(e.last_used);
            // the latest read wins (an extension dropped and re-created
            // in between: the key is the new extension's now)
            s.keys_rel = e.keys_rel;
            if s.workspace != e.workspace {
                shmem::tenant_sub(tenants, s.dbid, &s.workspace);
                shmem::tenant_add(tenants, e.dbid, &e.workspace, u32::MAX);
                s.workspace = e.workspace;
            }
            s.flags |= e.flags;
            return Ok(false); // merged
        }
    }
    Err(NoRoom::Full)
}

/// How many entries of a partition one workspace may hold.
fn share() -> u32 {
    shmem::share_limit(header().per_part as usize, gucs::WORKSPACE_SHARE.get())
}

fn add(e: &Entry) -> bool {
    let h = hash(e.dbid, &e.key, e.hour);
    let limit = share();
    let mut part = Part::lock((h as usize) & (PARTITIONS - 1), true);
    let (slots, tenants) = part.both();
    match put(slots, tenants, h, e, limit) {
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
        Err(why) => {
            drop(part);
            if why == NoRoom::Share {
                header().over_share.fetch_add(1, Ordering::Relaxed);
                header().pressed.store(pressed_tag(e), Ordering::Relaxed);
            }
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
    /// the key answered and every check admitted it (`verified`)
    Verified,
    /// a rate limit (the key's or its owner's) refused it
    RateLimited,
    /// its credits were used up
    UsageExceeded,
    /// it lacks a scope the check required
    InsufficientScope,
    /// it no longer answers: revoked, expired, suspended, its owner removed
    Refused,
}

impl Outcome {
    /// The place of a rejected outcome in [`Entry::why`].
    fn index(self) -> Option<usize> {
        match self {
            Outcome::Verified => None,
            Outcome::RateLimited => Some(0),
            Outcome::UsageExceeded => Some(1),
            Outcome::InsufficientScope => Some(2),
            Outcome::Refused => Some(3),
        }
    }
}

/// Add one entry's counts by outcome to another's (saturating: a u32 per
/// key and hour holds over a million checks a second).
fn add_why(to: &mut [u32; 4], from: &[u32; 4]) {
    for (t, f) in to.iter_mut().zip(from) {
        *t = t.saturating_add(*f);
    }
}

/// Record a verify of `key` in this database at `now`; `stamp`: the key's
/// `last_used_at` is due (older than `apikeys.last_used_interval`), so the
/// flush writes it (a key used again within the interval costs the flush
/// nothing but its count). `false` when the table had no room: the caller
/// falls back to its in-transaction write, counted by the caller as a
/// fallback ([`record_fallback`]) or unrecorded ([`record_unrecorded`]).
pub fn record(key: &KeyRef, outcome: Outcome, now: pg_sys::TimestampTz, stamp: bool) -> bool {
    let hd = header();
    let verified = outcome == Outcome::Verified;
    let mut why = [0u32; 4];
    if let Some(i) = outcome.index() {
        why[i] = 1;
        hd.why[i].fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: backend-local
    let dbid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let e = Entry {
        used: 1,
        dbid,
        key: key.id,
        workspace: key.workspace,
        keys_rel: key.keys_rel,
        flags: if key.uncommitted { UNCOMMITTED } else { 0 }
            | if verified && stamp && key.never_used { NEVER_USED } else { 0 },
        hour: now.div_euclid(USECS_PER_HOUR),
        verified: u64::from(verified),
        rejected: u64::from(!verified),
        why,
        last_used: if verified && stamp { now } else { 0 },
    };
    if verified {
        hd.verified.fetch_add(1, Ordering::Relaxed);
    } else {
        hd.rejected.fetch_add(1, Ordering::Relaxed);
    }
    add(&e)
}

/// Events given up (counted in `usage_stats().discarded`).
pub(crate) fn count_discarded(n: u64) {
    header().discarded.fetch_add(n, Ordering::Relaxed);
}

/// Whether a saved entry is one this table could have held.
pub(crate) fn plausible(e: &Entry) -> bool {
    const MAX_COUNT: u64 = 1 << 48;
    // hours from 2000 to 2300
    e.used != 0
        && e.dbid != 0
        && (0..300 * 366 * 24).contains(&e.hour)
        && e.verified < MAX_COUNT
        && e.rejected < MAX_COUNT
        && e.verified + e.rejected + u64::from(e.last_used != 0) > 0
}

/// A verify that found no entry and wrote in its own transaction instead.
pub fn record_fallback() {
    header().fallbacks.fetch_add(1, Ordering::Relaxed);
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

/// A standby's forwarding (src/forward.rs): this database's entries, out
/// of the table.
pub(crate) fn take_db(db: u32) -> Vec<Entry> {
    take_where(|e| e.dbid == db)
}

/// Entries taken out and not sent, back into the table (merged with any
/// counted since); what no longer fits is counted as unrecorded.
pub(crate) fn put_back(entries: &[Entry]) {
    for e in entries {
        if !add(e) {
            header().unrecorded.fetch_add(e.verified + e.rejected, Ordering::Relaxed);
        }
    }
}

/// The source id of this run and the number of its next batch.
pub(crate) fn next_batch() -> (u64, i64) {
    let hd = header();
    let mut source = hd.forward_source.load(Ordering::Acquire);
    if source == 0 {
        let fresh = loop {
            let r = rand::random::<u64>() & (i64::MAX as u64);
            if r != 0 {
                break r;
            }
        };
        source = match hd.forward_source.compare_exchange(0, fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => fresh,
            Err(seen) => seen,
        };
    }
    (source, hd.forward_batch.fetch_add(1, Ordering::AcqRel) + 1)
}

/// Events the primary took from this standby (or applied here after a
/// promotion).
pub(crate) fn count_forwarded(n: u64) {
    header().forwarded.fetch_add(n, Ordering::Relaxed);
}

/// A forwarding failure, logged at most once a minute (the batch stays on
/// disk and is sent again).
pub(crate) fn warn_forward(msg: &str) {
    let hd = header();
    let now = crate::limits::clock_now();
    let last = hd.forward_warned.load(Ordering::Relaxed);
    if (now - last >= 60_000_000 || now < last)
        && hd.forward_warned.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    {
        pgrx::warning!("pg_apikeys: {msg}; the usage stays on this standby's disk and is sent again");
    }
}

/// On a standby that forwards: the copies of the table a start recovered
/// (saved at a clean shutdown, of what was not sent) back into the table.
fn requeue_recovered() {
    for (path, _) in crate::save::recovered_files() {
        if let Some(entries) = crate::save::read_recovered(&path) {
            put_back(&entries);
        }
        crate::save::forget_recovered(&path);
    }
}

/// Where an entry's probe run starts in a partition of `per` slots.
fn home(e: &Entry, per: usize) -> usize {
    ((hash(e.dbid, &e.key, e.hour) >> 5) as usize) % per
}

/// Empty slot `at` of a partition, then shift the later entries of its
/// probe run back into the hole (linear probing without tombstones: no
/// entry is ever separated from its place by an empty slot, and moving
/// entries back only shortens their runs, so none can be lost).
fn remove_at(slots: &mut [Entry], tenants: &mut [shmem::Tenant], at: usize) {
    let per = slots.len();
    shmem::tenant_sub(tenants, slots[at].dbid, &slots[at].workspace);
    shmem::shift_back(slots, at, |e| e.used != 0, |e| home(e, per));
}

/// Take every entry that `pick` picks out of the table.
fn take_where(pick: impl Fn(&Entry) -> bool) -> Vec<Entry> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let mut part = Part::lock(p, true);
        let (slots, tenants) = part.both();
        let mut i = 0;
        while i < slots.len() {
            if slots[i].used != 0 && pick(&slots[i]) {
                out.push(slots[i]);
                remove_at(slots, tenants, i);
                // look at what moved into slot i
                continue;
            }
            i += 1;
        }
    }
    header().in_use.fetch_sub(out.len() as i64, Ordering::Relaxed);
    out
}

/// A copy of the entries of database `dbid` a round writing the hours
/// before `before` has work in; the table keeps them until a committed
/// write settles them ([`settle`]).
fn copy_db(dbid: u32, round: Round) -> Vec<Entry> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        // room for the whole partition before its lock is taken: nothing
        // is allocated (nothing can fail to be) while it is held
        let per = header().per_part as usize;
        if out.try_reserve(per).is_err() {
            break; // the rest waits for the next flush
        }
        let mut part = Part::lock(p, false);
        out.extend(part.slots().iter().filter(|s| s.dbid == dbid && due(s, round)).copied());
    }
    out
}

/// After a committed write: change the entry (take out what was written),
/// and free it once it holds nothing more.
fn settle(dbid: u32, key: &[u8; 16], hour: i64, f: impl FnOnce(&mut Entry)) {
    let h = hash(dbid, key, hour);
    let mut part = Part::lock((h as usize) & (PARTITIONS - 1), true);
    let (slots, tenants) = part.both();
    let per = slots.len();
    let start = ((h >> 5) as usize) % per;
    let found = (0..MAX_PROBES.min(per)).map(|i| (start + i) % per).find(|&at| {
        let s = &slots[at];
        s.used != 0 && s.dbid == dbid && s.key == *key && s.hour == hour
    });
    if let Some(at) = found {
        f(&mut slots[at]);
        let s = &slots[at];
        if s.verified == 0 && s.rejected == 0 && s.last_used == 0 {
            remove_at(slots, tenants, at);
            drop(part);
            header().in_use.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether a round that writes the hours before `before` has work in an
/// entry: counts or a stamp of such an hour, a first use's stamp, or a key
/// minted in a verifying transaction (whose fate the flush checks).
fn due(e: &Entry, round: Round) -> bool {
    e.used != 0 && (written(e, round) || e.flags & (UNCOMMITTED | NEVER_USED) != 0)
}

/// What a write round writes: the hours before `before` (`i64::MAX`: every
/// hour), and every hour of the workspace whose tag is `pressed` (one that
/// found its share of the table used: only its own entries are written
/// early, so a tenant that fills its share costs the others nothing).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Round {
    pub before: i64,
    pub pressed: u64,
}

/// Whether the round writes the counts of entry `e`.
fn written(e: &Entry, round: Round) -> bool {
    e.hour < round.before || (round.pressed != 0 && pressed_tag(e) == round.pressed)
}

/// A workspace of a database, as the round that writes it early knows it
/// (never 0).
fn pressed_tag(e: &Entry) -> u64 {
    shmem::mix(e.dbid, &e.workspace, 0x5052_4553).max(1)
}

/// The id of a new copy of the table: after every id before it, also
/// those of copies saved before a restart.
pub(crate) fn next_snapshot() -> i64 {
    let hd = header();
    let now = crate::limits::clock_now();
    let mut last = hd.snapshot.load(Ordering::Acquire);
    loop {
        let id = now.max(last + 1);
        match hd.snapshot.compare_exchange(last, id, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return id,
            Err(seen) => last = seen,
        }
    }
}

/// A copy saved before this start had id `id`.
pub(crate) fn note_snapshot(id: i64) {
    header().snapshot.fetch_max(id, Ordering::AcqRel);
}

/// Call `f` with the entries in use of each partition in turn (copied
/// out under a shared lock into room reserved once, written after it is
/// released); the number of entries.
pub(crate) fn each_partition(mut f: impl FnMut(&[Entry]) -> std::io::Result<()>) -> std::io::Result<usize> {
    let per = header().per_part as usize;
    let mut buf: Vec<Entry> = Vec::new();
    buf.try_reserve_exact(per).map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
    let mut n = 0;
    for p in 0..PARTITIONS {
        buf.clear();
        {
            let mut part = Part::lock(p, false);
            buf.extend(part.slots().iter().filter(|s| s.used != 0).copied());
        }
        n += buf.len();
        if !buf.is_empty() {
            f(&buf)?;
        }
    }
    Ok(n)
}

/// The databases with work for a round that writes the hours before
/// `before` (no copy of the table).
fn pending_dbs(round: Round) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for p in 0..PARTITIONS {
        let mut part = Part::lock(p, false);
        for s in part.slots().iter().filter(|s| due(s, round)) {
            if !out.contains(&s.dbid) {
                out.push(s.dbid);
            }
        }
    }
    out
}

/// Entries in use and the events they hold (no copy of the table).
fn totals() -> (u64, u64) {
    let (mut n, mut ev) = (0u64, 0u64);
    for p in 0..PARTITIONS {
        let mut part = Part::lock(p, false);
        for s in part.slots().iter().filter(|s| s.used != 0) {
            n += 1;
            ev += s.verified + s.rejected;
        }
    }
    (n, ev)
}

fn events(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.verified + e.rejected).sum()
}

// ---------------------------------------------------------------------------
// The launcher

/// Flushers run at once, at most (each in its own database).
const PARALLEL_FLUSHERS: usize = 4;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_apikeys_usage_launcher(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    let hd = header();
    // SAFETY: our own latch, in shared memory
    hd.launcher_latch.store(unsafe { pg_sys::MyLatch }, Ordering::Release);
    // what was saved to disk belongs to fresh shared memory (a server
    // start, or the reset after a crash); a launcher restarted after
    // pg_terminate_backend finds both tables still here
    let fresh = !hd.launched.swap(true, Ordering::AcqRel);
    if fresh {
        crate::save::recover_usage();
        crate::save::load_limits();
    } else {
        crate::save::forget_limits();
    }
    crate::limits::load_done();
    // every round follows a copy newer than any recovered one
    crate::save::snapshot_usage(false);
    let mut saved_at = crate::limits::clock_now();
    let mut failed = false;
    loop {
        let secs = gucs::USAGE_FLUSH_INTERVAL.get().max(1) as u64;
        let asked = hd.flush_requested.load(Ordering::Acquire);
        let alive = (!failed && asked > hd.flush_done.load(Ordering::Acquire))
            || BackgroundWorker::wait_latch(Some(Duration::from_secs(secs)));
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a background worker to reload
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !alive || BackgroundWorker::sigterm_received() {
            crate::save::save_all();
            hd.launcher_latch.store(std::ptr::null_mut(), Ordering::Release);
            // exit code 1: the postmaster starts a new launcher (after
            // pg_terminate_backend), except while it shuts down
            // SAFETY: ends this process, as a background worker may
            unsafe { pg_sys::proc_exit(1) };
        }
        let asked = hd.flush_requested.load(Ordering::Acquire);
        hd.wake_sent.store(false, Ordering::Release);
        // a copy of the table on disk at every interval: what a crash
        // loses is what was counted after it
        let now = crate::limits::clock_now();
        // SAFETY: reads shared state
        let recovering = unsafe { pg_sys::RecoveryInProgress() };
        let forwarding = recovering && crate::forward::configured();
        if forwarding {
            // a standby that forwards keeps no copy between intervals: an
            // older copy could bring back, after a crash, what it has sent
            crate::save::forget_pending_copy();
            requeue_recovered();
        } else if now - saved_at >= secs as i64 * 1_000_000 - 50_000 || now < saved_at {
            crate::save::snapshot_usage(false);
            saved_at = now;
        }
        if recovering && !forwarding {
            // a standby that does not forward keeps its usage until it is
            // promoted
            failed = false;
            hd.flush_done.fetch_max(asked, Ordering::AcqRel);
            continue;
        }
        // what this round writes: the hours that ended, or every hour when
        // flush_usage() asks or the table is three quarters full; and every
        // hour of a workspace that found its share used
        let total = hd.per_part * PARTITIONS as u64;
        let full = hd.in_use.load(Ordering::Relaxed).max(0) as u64 * 4 >= total * 3;
        let before = if forwarding || asked > hd.flush_done.load(Ordering::Acquire) || full {
            i64::MAX
        } else {
            now.div_euclid(USECS_PER_HOUR)
        };
        let round = Round { before, pressed: hd.pressed.swap(0, Ordering::AcqRel) };
        hd.round_snapshot.store(hd.snapshot.load(Ordering::Acquire), Ordering::Release);
        hd.round_before.store(round.before, Ordering::Release);
        hd.round_pressed.store(round.pressed, Ordering::Release);
        failed = !flush_all(round);
        if !failed {
            hd.flush_done.fetch_max(asked, Ordering::AcqRel);
        } else {
            // no worker slot (or a flusher that did not finish): try again
            // soon, but not in a tight loop while flush_usage() keeps
            // setting our latch (this wait does not end on it)
            // SAFETY: a plain timed wait of this process
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                    200,
                    pg_sys::PG_WAIT_EXTENSION,
                );
            }
        }
    }
}

/// One flusher per database with pending entries or credits, a few at a
/// time; each writes its own database only. False when a flusher could not
/// start (no worker slot) or did not finish its work.
fn flush_all(round: Round) -> bool {
    let mut dbs = pending_dbs(round);
    // recovered copies of the table: the databases they hold entries of
    let recovered: Vec<(std::path::PathBuf, Vec<Entry>)> = crate::save::recovered_files()
        .into_iter()
        .filter_map(|(path, _)| match crate::save::read_recovered(&path) {
            Some(entries) => Some((path, entries)),
            None => {
                // damaged since it was checked at the start: refused whole
                pgrx::warning!("pg_apikeys: saved usage not loaded (Damaged): {}", path.display());
                crate::save::forget_recovered(&path);
                None
            }
        })
        .collect();
    let mut gone_dbs = Vec::new();
    for db in crate::limits::pending_dbs()
        .into_iter()
        .chain(recovered.iter().flat_map(|(_, es)| es.iter().map(|e| e.dbid)))
        // a standby's batches not yet taken by the primary (src/forward.rs)
        .chain(crate::save::batch_dbs())
    {
        if !dbs.contains(&db) {
            dbs.push(db);
        }
    }
    dbs.sort_unstable();
    let mut ok = true;
    let mut wanted = Vec::new();
    let mut reserved = Vec::new();
    for db in dbs {
        match database_state(db) {
            DbState::Open => wanted.push(db),
            DbState::Gone | DbState::Closed => {
                // dropped, invalid (an interrupted DROP DATABASE) or taking
                // no connections: nothing can be written there; counted
                let gone = take_where(|e| e.dbid == db);
                header().discarded.fetch_add(events(&gone), Ordering::Relaxed);
                crate::limits::drop_database(db);
                // a standby's batches of it (src/forward.rs) too
                for (path, _, _) in crate::save::batch_files(db) {
                    let n = crate::save::read_batch(&path).map(|es| events(&es)).unwrap_or(0);
                    header().discarded.fetch_add(n, Ordering::Relaxed);
                    crate::save::forget_batch(&path);
                }
                gone_dbs.push(db);
            }
        }
    }
    for group in wanted.chunks(PARALLEL_FLUSHERS) {
        let mut running = Vec::new();
        for &db in group {
            let worker = BackgroundWorkerBuilder::new("pg_apikeys usage flush")
                .set_type("pg_apikeys usage flush")
                .set_library("pg_apikeys")
                .set_function("pg_apikeys_usage_flush")
                .set_argument(Some(pg_sys::Datum::from(db)))
                .enable_spi_access()
                // (on a hot standby too: there it forwards, src/forward.rs)
                .set_start_time(BgWorkerStartTime::ConsistentState)
                .set_restart_time(None)
                // SAFETY: backend-local
                .set_notify_pid(unsafe { pg_sys::MyProcPid })
                .load_dynamic();
            match worker {
                Ok(w) => running.push(w),
                Err(_) => reserved.push(db),
            }
        }
        for w in running {
            if w.wait_for_startup().is_err() {
                ok = false;
                continue;
            }
            let _ = w.wait_for_shutdown();
        }
    }
    // no free slot for these: the reserve flusher writes them, one by one
    for db in reserved {
        if !reserve_flush(db) {
            ok = false;
            warn_no_slot();
            break;
        }
    }
    // a flusher that stopped before settling everything it copied leaves
    // the rest pending for the next flush (nothing taken out is lost)
    let ok = ok && header().flush_failures.swap(0, Ordering::AcqRel) == 0;
    if ok {
        // every database of the recovered copies wrote (and marked) its
        // entries, or is gone: the copies are done with
        for (path, entries) in &recovered {
            let lost: Vec<Entry> = entries.iter().filter(|e| gone_dbs.contains(&e.dbid)).copied().collect();
            header().discarded.fetch_add(events(&lost), Ordering::Relaxed);
            crate::save::forget_recovered(path);
        }
    }
    ok
}

/// The launcher's warning that no worker slot was free, at most once a
/// minute (a flush_usage() waiting for it wakes the launcher every 10 ms).
fn warn_no_slot() {
    thread_local! {
        static LAST: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    }
    let now = crate::limits::clock_now();
    if LAST.with(|l| now - l.get() >= 60_000_000) {
        LAST.with(|l| l.set(now));
        pgrx::warning!("pg_apikeys: no background worker slot for a usage flush (max_worker_processes, taken by parallel queries or other workers); retrying");
    }
}

/// Hand database `db` to the reserve flusher and wait until it has
/// written it; false when the reserve is not there (starting again after
/// its last flush) or stopped before finishing.
fn reserve_flush(db: u32) -> bool {
    let hd = header();
    // it waits for work with its latch published; after a flush it exits
    // and the postmaster starts it again at once
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let latch = loop {
        let l = hd.reserve_latch.load(Ordering::Acquire);
        if !l.is_null() {
            break l;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        launcher_nap(20);
    };
    let start = hd.reserve_starts.load(Ordering::Acquire);
    hd.reserve_db.store(u64::from(db), Ordering::Release);
    // SAFETY: the reserve flusher's latch, in shared memory
    unsafe { pg_sys::SetLatch(latch) };
    loop {
        if hd.reserve_done.load(Ordering::Acquire) == start {
            hd.reserve_flushes.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if hd.reserve_starts.load(Ordering::Acquire) != start {
            return false; // it stopped (an error, a signal) and started again
        }
        launcher_nap(20);
        if BackgroundWorker::sigterm_received() {
            return false;
        }
    }
}

/// A short timed wait of the launcher (not ended by its latch).
fn launcher_nap(ms: i64) {
    // SAFETY: a plain timed wait of this process
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
    }
}

/// The reserve flusher: started with the server, it holds its worker slot
/// while it waits, unconnected, for the launcher to hand it a database;
/// it then flushes that database as a flusher does and exits, and the
/// postmaster starts it again at once (a backend connects to one database
/// in its life).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_apikeys_usage_reserve(_arg: pg_sys::Datum) {
    flusher_signals();
    let hd = header();
    let me = hd.reserve_starts.fetch_add(1, Ordering::AcqRel) + 1;
    hd.reserve_db.store(0, Ordering::Release);
    // SAFETY: our own latch, in shared memory
    hd.reserve_latch.store(unsafe { pg_sys::MyLatch }, Ordering::Release);
    let db = loop {
        // SAFETY: waiting on our own latch; SIGTERM (die) is handled at the
        // interrupt check after it
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                10_000,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pg_sys::check_for_interrupts!();
        let db = hd.reserve_db.swap(0, Ordering::AcqRel) as u32;
        if db != 0 {
            break db;
        }
    };
    hd.reserve_latch.store(std::ptr::null_mut(), Ordering::Release);
    flush_database(db);
    hd.reserve_done.store(me, Ordering::Release);
    // exit code 1: the postmaster starts it again (code 0 would unregister it)
    // SAFETY: ends this process, as a background worker may
    unsafe { pg_sys::proc_exit(1) };
}

enum DbState {
    Open,
    /// no such database (dropped)
    Gone,
    /// exists, but takes no connections (ALLOW_CONNECTIONS false, or left
    /// invalid by an interrupted DROP DATABASE)
    Closed,
}

fn database_state(db: u32) -> DbState {
    // SAFETY: a syscache read of the shared catalog pg_database in a transaction
    unsafe {
        pg_sys::StartTransactionCommand();
        let tup =
            pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::DATABASEOID as i32, pg_sys::Datum::from(db));
        let state = if tup.is_null() {
            DbState::Gone
        } else {
            let form = (*tup).t_data.cast::<u8>().add(usize::from((*(*tup).t_data).t_hoff))
                as *const pg_sys::FormData_pg_database;
            // -2: invalid (DATCONNLIMIT_INVALID_DB)
            let open = (*form).datallowconn && (*form).datconnlimit != -2;
            pg_sys::ReleaseSysCache(tup);
            if open {
                DbState::Open
            } else {
                DbState::Closed
            }
        };
        pg_sys::CommitTransactionCommand();
        state
    }
}

// ---------------------------------------------------------------------------
// The flusher

/// Entries whose counts one transaction writes.
const COUNT_BATCH: usize = 5_000;
/// Keys whose `last_used_at` or credits one transaction writes: a revoke
/// of one of them waits for one such batch at most.
const ROW_BATCH: usize = 1_000;

/// The counts of one batch: one row per entry (an entry is one key and
/// hour), added to the row already there. The workspace comes with the
/// entry (write-once in `keys`), so no row of `keys` is read.
const COUNT_SQL: &str = "\
INSERT INTO apikeys.key_usage AS ku (key_id, workspace_id, hour, verified, rejected,
                                     rate_limited, usage_exceeded, insufficient_scope, refused)
SELECT * FROM ROWS FROM (pg_catalog.unnest($1::uuid[]), pg_catalog.unnest($2::uuid[]),
                         pg_catalog.unnest($3::timestamptz[]), pg_catalog.unnest($4::int8[]),
                         pg_catalog.unnest($5::int8[]), pg_catalog.unnest($6::int8[]),
                         pg_catalog.unnest($7::int8[]), pg_catalog.unnest($8::int8[]),
                         pg_catalog.unnest($9::int8[]))
ON CONFLICT (key_id, hour) DO UPDATE
   SET verified = ku.verified OPERATOR(pg_catalog.+) excluded.verified,
       rejected = ku.rejected OPERATOR(pg_catalog.+) excluded.rejected,
       rate_limited = ku.rate_limited OPERATOR(pg_catalog.+) excluded.rate_limited,
       usage_exceeded = ku.usage_exceeded OPERATOR(pg_catalog.+) excluded.usage_exceeded,
       insufficient_scope = ku.insufficient_scope OPERATOR(pg_catalog.+) excluded.insufficient_scope,
       refused = ku.refused OPERATOR(pg_catalog.+) excluded.refused";

/// The rows of `keys` of a batch that no one else holds, locked for this
/// transaction: a row a client holds is skipped, never waited for.
const LOCK_SQL: &str = "\
SELECT k.id, k.credits IS NOT NULL AS has_credits, k.credits_refilled_at
  FROM apikeys.keys k
 WHERE k.id OPERATOR(pg_catalog.=) ANY ($1::uuid[])
   FOR NO KEY UPDATE SKIP LOCKED";

/// `last_used_at` of the keys (locked by [`LOCK_SQL`]) whose verifies
/// found it due, each key once, still at most once per
/// `apikeys.last_used_interval`.
const STAMP_SQL: &str = "\
UPDATE apikeys.keys k SET last_used_at = l.t
  FROM ROWS FROM (pg_catalog.unnest($1::uuid[]), pg_catalog.unnest($2::timestamptz[])) AS l(key_id, t)
 WHERE k.id OPERATOR(pg_catalog.=) l.key_id
   AND (k.last_used_at IS NULL
        OR k.last_used_at OPERATOR(pg_catalog.<=) (l.t OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $3)))";

/// Of the keys given, those that exist.
const EXISTING_SQL: &str = "\
SELECT k.id FROM apikeys.keys k WHERE k.id OPERATOR(pg_catalog.=) ANY ($1::uuid[])";

/// Of the keys given, those that do not exist (minted by a transaction
/// that then rolled back, or has not committed yet).
const MISSING_SQL: &str = "\
SELECT m.id FROM pg_catalog.unnest($1::uuid[]) AS m(id)
 WHERE NOT EXISTS (SELECT FROM apikeys.keys k WHERE k.id OPERATOR(pg_catalog.=) m.id)";

/// Debits and refills of keys locked by [`LOCK_SQL`] whose balance was
/// not set meanwhile.
const CREDITS_SQL: &str = "\
UPDATE apikeys.keys k
   SET credits = GREATEST(CASE WHEN c.refilled_at IS NOT NULL
                               THEN coalesce(k.refill_amount, k.credits) ELSE k.credits END
                          OPERATOR(pg_catalog.-) c.debit, 0),
       credits_refilled_at = coalesce(c.refilled_at, k.credits_refilled_at)
  FROM ROWS FROM (pg_catalog.unnest($1::uuid[]), pg_catalog.unnest($2::int8[]),
                  pg_catalog.unnest($3::timestamptz[])) AS c(key_id, debit, refilled_at)
 WHERE k.id OPERATOR(pg_catalog.=) c.key_id AND k.credits IS NOT NULL";

unsafe extern "C-unwind" {
    /// PostgreSQL's own SIGTERM handler for backends (tcop/postgres.c): it
    /// sets ProcDiePending and the latch; the next interrupt check exits.
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

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
    flusher_signals();
    flush_database(arg.value() as u32);
}

/// SIGTERM as for a backend (die): pg_terminate_backend and a shutdown end
/// a flusher at once, also while it waits for a lock. What it copied and
/// did not settle stays pending.
fn flusher_signals() {
    // SAFETY: installing PostgreSQL's own handler before signals are unblocked
    unsafe {
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_die));
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    IN_FLUSHER.with(|f| f.set(true));
}

/// Connect to `db` and write what the launcher's round asks of it.
fn flush_database(db: u32) {
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    let hd = header();
    // counted as failed until it gets to the end
    hd.flush_failures.fetch_add(1, Ordering::AcqRel);
    BackgroundWorker::transaction(own_session);
    // SAFETY: reads shared state
    if unsafe { pg_sys::RecoveryInProgress() } {
        // a standby: its usage goes to the primary (src/forward.rs)
        crate::forward::forward_database(db);
        hd.flushes.fetch_add(1, Ordering::Relaxed);
        hd.flush_failures.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    crate::forward::apply_left_batches(db);
    resolve_recovered(db);
    flush_credits(db);
    let round = Round {
        before: hd.round_before.load(Ordering::Acquire),
        pressed: hd.round_pressed.load(Ordering::Acquire),
    };
    flush_entries(db, round, hd.round_snapshot.load(Ordering::Acquire));
    hd.flushes.fetch_add(1, Ordering::Relaxed);
    hd.last_flush.store(crate::limits::clock_now(), Ordering::Relaxed);
    hd.flush_failures.fetch_sub(1, Ordering::AcqRel);
}

/// The flusher's own session, whatever `ALTER DATABASE`/`ALTER ROLE`
/// settings say: read-write READ COMMITTED transactions, no statement,
/// idle or transaction timeout, a short `lock_timeout` as a backstop
/// (row locks are skipped, never waited for; this bounds a wait for a
/// table lock such as `VACUUM FULL`'s), triggers as on a primary, no JIT.
fn own_session() {
    let settings: &[(&CStr, &CStr)] = &[
        (c"default_transaction_read_only", c"off"),
        (c"default_transaction_isolation", c"read committed"),
        (c"default_transaction_deferrable", c"off"),
        (c"statement_timeout", c"0"),
        (c"idle_in_transaction_session_timeout", c"0"),
        (c"lock_timeout", c"1s"),
        (c"session_replication_role", c"origin"),
        (c"search_path", c"pg_catalog, pg_temp"),
        (c"jit", c"off"),
        #[cfg(feature = "pg18")]
        (c"transaction_timeout", c"0"),
    ];
    for (name, value) in settings {
        // SAFETY: setting known GUCs of this session by name
        unsafe {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_OVERRIDE,
            )
        };
    }
}

/// What the database can take: the oid of its `keys` table (None: the
/// extension is gone), whether `key_usage` takes counts here, and which of
/// the keys minted in a verifying transaction do not exist.
fn inspect(entries: &[Entry]) -> Option<(u32, bool, std::collections::HashSet<[u8; 16]>)> {
    Spi::connect_mut(|client: &mut SpiClient<'_>| {
        let row = client
            .select(
                "SELECT pg_catalog.to_regclass('apikeys.keys')::pg_catalog.oid AS keys,
                        pg_catalog.to_regclass('apikeys.key_usage') IS NOT NULL AS usage",
                Some(1),
                &[],
            )
            .ok()?;
        let row = row.first();
        let keys_rel = row.get::<pg_sys::Oid>(1).ok().flatten()?;
        let has_usage = row.get::<bool>(2).ok().flatten() == Some(true);
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
        // keys that a verify found minted by its own transaction: only
        // those that exist now (keys are never deleted otherwise)
        let unsure: Vec<pgrx::Uuid> = entries
            .iter()
            .filter(|e| e.flags & UNCOMMITTED != 0 && e.keys_rel == keys_rel.to_u32())
            .map(|e| pgrx::Uuid::from_bytes(e.key))
            .collect();
        let mut missing = std::collections::HashSet::new();
        if !unsure.is_empty() {
            let t = client.select(MISSING_SQL, None, &[unsure.into()]).ok()?;
            missing.extend(t.filter_map(|r| r.get::<pgrx::Uuid>(1).ok().flatten().map(|u| *u.as_bytes())));
        }
        Some((keys_rel.to_u32(), has_usage && !subscribed, missing))
    })
}

/// Write the database's usage that this round writes: the counts of the
/// hours before `before` in one transaction (with the round's row in
/// `usage_rounds`: which copy of the table it follows and which hours it
/// wrote), then the `last_used_at` stamps of those hours and of first uses,
/// of rows no one holds, in small batches. Each commit is settled in
/// shared memory at once; a failure leaves the rest pending.
fn flush_entries(db: u32, round: Round, snapshot: i64) {
    let entries = copy_db(db, round);
    if entries.is_empty() {
        return;
    }
    let hd = header();
    let plan = BackgroundWorker::transaction(|| inspect(&entries));
    // None: the extension is gone (every entry below is discarded)
    let (keys_rel, counts, missing) = plan.unwrap_or_default();
    // keys of a dropped (maybe re-created) extension, keys that never committed
    let dead = |e: &Entry| e.dbid == db && (e.keys_rel != keys_rel || missing.contains(&e.key));
    let gone = take_where(dead);
    hd.discarded.fetch_add(events(&gone), Ordering::Relaxed);
    let live: Vec<Entry> = entries.into_iter().filter(|e| !dead(e)).collect();
    // keys minted in a verifying transaction that exist now: checked
    for e in live.iter().filter(|e| e.flags & UNCOMMITTED != 0) {
        settle(db, &e.key, e.hour, |s| s.flags &= !UNCOMMITTED);
    }

    let with_counts: Vec<&Entry> =
        live.iter().filter(|e| written(e, round) && e.verified + e.rejected > 0).collect();
    if !with_counts.is_empty() {
        let n = events_of(&with_counts);
        if counts {
            BackgroundWorker::transaction(|| write_counts(&with_counts, snapshot, round));
            hd.flushed.fetch_add(n, Ordering::Relaxed);
        } else {
            // nowhere to write them (a subscriber): counted, not kept
            hd.discarded.fetch_add(n, Ordering::Relaxed);
        }
        // committed: no interrupt is processed between the commit and here
        for e in &with_counts {
            settle(db, &e.key, e.hour, |s| {
                s.verified = s.verified.saturating_sub(e.verified);
                s.rejected = s.rejected.saturating_sub(e.rejected);
                for (t, f) in s.why.iter_mut().zip(&e.why) {
                    *t = t.saturating_sub(*f);
                }
            });
        }
    }

    // one stamp per key: its latest due use over the entries' hours
    let stamps: Vec<&Entry> = live
        .iter()
        .filter(|e| e.last_used != 0 && (written(e, round) || e.flags & NEVER_USED != 0))
        .collect();
    let stamped = write_all_stamps(&stamps);
    for e in stamps {
        if stamped.contains(&e.key) {
            settle(db, &e.key, e.hour, |s| {
                if s.last_used <= e.last_used {
                    s.last_used = 0;
                }
                s.flags &= !NEVER_USED;
            });
        } else {
            // a client holds the row: the stamp waits for the next flush
            hd.deferred.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn events_of(entries: &[&Entry]) -> u64 {
    entries.iter().map(|e| e.verified + e.rejected).sum()
}

/// Write the `last_used_at` stamps of `entries` (each key once, its latest
/// use) in batches of rows no one holds; the keys stamped (or with nothing
/// to stamp, when stamps are off).
fn write_all_stamps(entries: &[&Entry]) -> std::collections::HashSet<[u8; 16]> {
    let interval = gucs::LAST_USED_INTERVAL.get();
    let mut due: std::collections::HashMap<[u8; 16], i64> = std::collections::HashMap::new();
    for e in entries {
        let t = due.entry(e.key).or_insert(0);
        *t = (*t).max(e.last_used);
    }
    let due: Vec<([u8; 16], i64)> = due.into_iter().collect();
    let mut out = std::collections::HashSet::new();
    for batch in due.chunks(ROW_BATCH) {
        if interval >= 0 {
            out.extend(BackgroundWorker::transaction(|| write_stamps(batch, f64::from(interval))));
        } else {
            // stamps are off now: nothing to write
            out.extend(batch.iter().map(|(k, _)| *k));
        }
    }
    out
}

/// The round's rows: after the copy `snapshot` of the table, the hours
/// before `before` (infinity: every hour) of this database were written,
/// of every workspace (the nil uuid) or, for a workspace written whole
/// because it found its share used, of that workspace. Two rounds after
/// one copy keep the later hour.
const ROUND_SQL: &str = "\
INSERT INTO apikeys.usage_rounds AS r (snapshot, kind, workspace_id, before_hour)
SELECT $1, 'written', w.id, $3
  FROM pg_catalog.unnest($2::pg_catalog.uuid[]) AS w(id)
ON CONFLICT (snapshot, kind, workspace_id) DO UPDATE
   SET before_hour = GREATEST(r.before_hour, excluded.before_hour)";

/// The workspace of a round's row that stands for every workspace.
const EVERY_WORKSPACE: [u8; 16] = [0; 16];

/// Rows of rounds no copy of the table on disk can refer to any more.
const PRUNE_SQL: &str = "\
DELETE FROM apikeys.usage_rounds
 WHERE at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '7 days')";

/// The copy `snapshot`: whether its entries of this database were written
/// already, and which hours a round after it wrote.
const ROUNDS_SQL: &str = "\
SELECT kind, workspace_id, before_hour
  FROM apikeys.usage_rounds WHERE snapshot OPERATOR(pg_catalog.=) $1";

/// Write the entries of this database in the copies of the table a crash
/// (or a shutdown) left, less what a round after each copy wrote, and mark
/// each copy resolved here, in one transaction per copy: after any crash,
/// nothing is written twice.
fn resolve_recovered(db: u32) {
    let hd = header();
    for (path, snapshot) in crate::save::recovered_files() {
        let Some(entries) = crate::save::read_recovered(&path) else { continue };
        let mine: Vec<Entry> = entries.into_iter().filter(|e| e.dbid == db).collect();
        if mine.is_empty() {
            continue;
        }
        let (written, dropped) = BackgroundWorker::transaction(|| {
            let present =
                Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('apikeys.usage_rounds') IS NOT NULL")
                    .ok()
                    .flatten()
                    .unwrap_or(false);
            if !present {
                return (0, events(&mine)); // the extension is gone
            }
            // whether this copy was written here already, and which hours a
            // round after it wrote, per workspace (the nil uuid: every one)
            let (resolved, covered) = Spi::connect_mut(|client: &mut SpiClient<'_>| {
                let Ok(t) = client.select(ROUNDS_SQL, None, &[snapshot.into()]) else {
                    pgrx::error!("pg_apikeys: usage rounds not read");
                };
                let mut resolved = false;
                let mut covered: std::collections::HashMap<[u8; 16], i64> = std::collections::HashMap::new();
                for r in t {
                    let kind = r.get::<String>(1).ok().flatten().unwrap_or_default();
                    let ws = r.get::<pgrx::Uuid>(2).ok().flatten().map(|u| *u.as_bytes()).unwrap_or_default();
                    let before = r.get::<TimestampWithTimeZone>(3).ok().flatten().map(|t| {
                        if t.is_infinity() {
                            i64::MAX
                        } else {
                            i64::from(t).div_euclid(USECS_PER_HOUR)
                        }
                    });
                    match (kind.as_str(), before) {
                        ("resolved", _) => resolved = true,
                        ("written", Some(b)) => {
                            let c = covered.entry(ws).or_insert(b);
                            *c = (*c).max(b);
                        }
                        _ => {}
                    }
                }
                (resolved, covered)
            });
            if resolved {
                return (0, 0);
            }
            // a round after the copy wrote these hours (with at least the
            // copy's counts): only the rest is written here
            let hit = |ws: &[u8; 16], hour: i64| covered.get(ws).is_some_and(|b| hour < *b);
            let rest: Vec<Entry> = mine
                .iter()
                .filter(|e| !hit(&EVERY_WORKSPACE, e.hour) && !hit(&e.workspace, e.hour))
                .copied()
                .collect();
            let (keys_rel, counts, missing) = inspect(&rest).unwrap_or_default();
            let (live, dead): (Vec<&Entry>, Vec<&Entry>) =
                rest.iter().partition(|e| e.keys_rel == keys_rel && !missing.contains(&e.key));
            let with_counts: Vec<&Entry> =
                live.iter().filter(|e| e.verified + e.rejected > 0).copied().collect();
            let mut dropped = events_of(&dead);
            let mut written = 0;
            if counts {
                write_count_rows(&with_counts);
                written = events_of(&with_counts);
            } else {
                dropped += events_of(&with_counts);
            }
            let stamps: Vec<([u8; 16], i64)> =
                live.iter().filter(|e| e.last_used != 0).map(|e| (e.key, e.last_used)).collect();
            let interval = gucs::LAST_USED_INTERVAL.get();
            if interval >= 0 {
                for batch in stamps.chunks(ROW_BATCH) {
                    write_stamps(batch, f64::from(interval));
                }
            }
            if !counts {
                // a subscriber: its key_usage (and usage_rounds) come from
                // the publisher, so it writes no row of either
                return (0, dropped);
            }
            if let Err(e) = Spi::run_with_args(
                "INSERT INTO apikeys.usage_rounds (snapshot, kind, workspace_id, before_hour)
                 VALUES ($1, 'resolved', '00000000-0000-0000-0000-000000000000', NULL)",
                &[snapshot.into()],
            ) {
                pgrx::error!("pg_apikeys: recovered usage not marked: {e}");
            }
            (written, dropped)
        });
        hd.flushed.fetch_add(written, Ordering::Relaxed);
        hd.discarded.fetch_add(dropped, Ordering::Relaxed);
    }
}

/// The counts of a round (one transaction), and its rows.
fn write_counts(entries: &[&Entry], snapshot: i64, round: Round) {
    write_count_rows(entries);
    let hour = |h: i64| {
        if h == i64::MAX {
            TimestampWithTimeZone::positive_infinity()
        } else {
            ts(h.saturating_mul(USECS_PER_HOUR))
        }
    };
    // every workspace's hours before `before`; a pressed workspace's all
    let mut rows: Vec<(Vec<pgrx::Uuid>, TimestampWithTimeZone)> =
        vec![(vec![pgrx::Uuid::from_bytes(EVERY_WORKSPACE)], hour(round.before))];
    if round.pressed != 0 && round.before != i64::MAX {
        let mut pressed: Vec<[u8; 16]> =
            entries.iter().filter(|e| pressed_tag(e) == round.pressed).map(|e| e.workspace).collect();
        pressed.sort_unstable();
        pressed.dedup();
        if !pressed.is_empty() {
            rows.push((pressed.into_iter().map(pgrx::Uuid::from_bytes).collect(), hour(i64::MAX)));
        }
    }
    for (wss, before) in rows {
        if let Err(e) = Spi::run_with_args(ROUND_SQL, &[snapshot.into(), wss.into(), before.into()]) {
            pgrx::error!("pg_apikeys: usage round not recorded: {e}");
        }
    }
    if let Err(e) = Spi::run(PRUNE_SQL) {
        pgrx::error!("pg_apikeys: usage rounds not pruned: {e}");
    }
}

/// Add the counts of `entries` to `key_usage`, a statement per batch.
fn write_count_rows(entries: &[&Entry]) {
    for batch in entries.chunks(COUNT_BATCH) {
        Spi::connect_mut(|client: &mut SpiClient<'_>| {
            let ids: Vec<pgrx::Uuid> = batch.iter().map(|e| pgrx::Uuid::from_bytes(e.key)).collect();
            let wss: Vec<pgrx::Uuid> = batch.iter().map(|e| pgrx::Uuid::from_bytes(e.workspace)).collect();
            let hours: Vec<TimestampWithTimeZone> =
                batch.iter().map(|e| ts(e.hour * USECS_PER_HOUR)).collect();
            let ver: Vec<i64> = batch.iter().map(|e| e.verified as i64).collect();
            let rej: Vec<i64> = batch.iter().map(|e| e.rejected as i64).collect();
            let why = |i: usize| -> Vec<i64> { batch.iter().map(|e| i64::from(e.why[i])).collect() };
            let args = [
                ids.into(),
                wss.into(),
                hours.into(),
                ver.into(),
                rej.into(),
                why(0).into(),
                why(1).into(),
                why(2).into(),
                why(3).into(),
            ];
            if let Err(e) = client.update(COUNT_SQL, None, &args) {
                pgrx::error!("pg_apikeys: usage counts not written: {e}");
            }
        })
    }
}

/// Lock the rows of `want` that no one holds; stamp those. The keys locked.
fn write_stamps(want: &[([u8; 16], i64)], interval: f64) -> std::collections::HashSet<[u8; 16]> {
    Spi::connect_mut(|client: &mut SpiClient<'_>| {
        batch_settings(client);
        let locked = lock_rows(client, want.iter().map(|(k, _)| *k));
        let mine: Vec<&([u8; 16], i64)> = want.iter().filter(|(k, _)| locked.contains_key(k)).collect();
        if !mine.is_empty() {
            let ids: Vec<pgrx::Uuid> = mine.iter().map(|(k, _)| pgrx::Uuid::from_bytes(*k)).collect();
            let at: Vec<TimestampWithTimeZone> = mine.iter().map(|(_, t)| ts(*t)).collect();
            if let Err(e) = client.update(STAMP_SQL, None, &[ids.into(), at.into(), interval.into()]) {
                pgrx::error!("pg_apikeys: last_used_at not written: {e}");
            }
        }
        locked.into_keys().collect()
    })
}

/// What [`LOCK_SQL`] found of a locked row: whether it has credits, and its
/// `credits_refilled_at` (0 for NULL).
type Locked = std::collections::HashMap<[u8; 16], (bool, i64)>;

fn lock_rows(client: &mut SpiClient<'_>, ids: impl Iterator<Item = [u8; 16]>) -> Locked {
    let ids: Vec<pgrx::Uuid> = ids.map(pgrx::Uuid::from_bytes).collect();
    let rows = match client.update(LOCK_SQL, None, &[ids.into()]) {
        Ok(t) => t,
        Err(e) => pgrx::error!("pg_apikeys: key rows not locked: {e}"),
    };
    rows.filter_map(|r| {
        let id = r.get::<pgrx::Uuid>(1).ok().flatten()?;
        let has = r.get::<bool>(2).ok().flatten().unwrap_or(false);
        let at: i64 = r.get::<TimestampWithTimeZone>(3).ok().flatten().map_or(0, i64::from);
        Some((*id.as_bytes(), (has, at)))
    })
    .collect()
}

/// Write the database's unwritten credits in committed batches of rows no
/// one holds; a row found held is tried once more shortly after, then
/// left for the next flush (and its key fails closed meanwhile).
fn flush_credits(db: u32) {
    let pending = crate::limits::pending_credits(db);
    for batch in pending.chunks(ROW_BATCH) {
        let mut todo: Vec<crate::limits::CreditWrite> = batch.to_vec();
        for attempt in 0..2 {
            let done = BackgroundWorker::transaction(|| write_credits(&todo));
            let (locked, settled): (Vec<_>, Vec<_>) =
                done.into_iter().partition(|(_, o)| *o == crate::limits::CreditOutcome::Locked);
            crate::limits::ack_credits(db, &settled);
            todo = locked.iter().map(|(w, _)| *w).collect();
            if todo.is_empty() {
                break;
            }
            if attempt == 1 {
                crate::limits::ack_credits(db, &locked);
            } else {
                // SAFETY: a short sleep on our own latch; a SIGTERM ends it
                unsafe {
                    pg_sys::WaitLatch(
                        pg_sys::MyLatch,
                        (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                        100,
                        pg_sys::PG_WAIT_EXTENSION,
                    );
                    pg_sys::ResetLatch(pg_sys::MyLatch);
                }
                pg_sys::check_for_interrupts!();
            }
        }
    }
}

fn write_credits(
    batch: &[crate::limits::CreditWrite],
) -> Vec<(crate::limits::CreditWrite, crate::limits::CreditOutcome)> {
    use crate::limits::CreditOutcome;
    Spi::connect_mut(|client: &mut SpiClient<'_>| {
        batch_settings(client);
        let present = client
            .select("SELECT pg_catalog.to_regclass('apikeys.keys') IS NOT NULL", Some(1), &[])
            .ok()
            .and_then(|t| t.first().get::<bool>(1).ok().flatten())
            .unwrap_or(false);
        if !present {
            return batch.iter().map(|w| (*w, CreditOutcome::Stale)).collect();
        }
        let locked = lock_rows(client, batch.iter().map(|w| w.key_id));
        // of the rows not locked: those that exist are held by someone;
        // the others never committed (or are not visible yet): dropped
        let unlocked: Vec<pgrx::Uuid> = batch
            .iter()
            .filter(|w| !locked.contains_key(&w.key_id))
            .map(|w| pgrx::Uuid::from_bytes(w.key_id))
            .collect();
        let mut held = std::collections::HashSet::new();
        if !unlocked.is_empty() {
            match client.select(EXISTING_SQL, None, &[unlocked.into()]) {
                Ok(t) => held
                    .extend(t.filter_map(|r| r.get::<pgrx::Uuid>(1).ok().flatten().map(|u| *u.as_bytes()))),
                Err(e) => pgrx::error!("pg_apikeys: key rows not read: {e}"),
            }
        }
        let out: Vec<_> = batch
            .iter()
            .map(|w| {
                let o = match locked.get(&w.key_id) {
                    None if held.contains(&w.key_id) => CreditOutcome::Locked,
                    None => CreditOutcome::Stale,
                    // credits removed, or the balance set (update_key) since
                    // these debits were made: they no longer apply
                    Some((false, _)) => CreditOutcome::Stale,
                    Some((true, at)) if *at != w.loaded_from => CreditOutcome::Stale,
                    Some(_) => CreditOutcome::Written,
                };
                (*w, o)
            })
            .collect();
        let writes: Vec<&crate::limits::CreditWrite> =
            out.iter().filter(|(_, o)| *o == CreditOutcome::Written).map(|(w, _)| w).collect();
        if !writes.is_empty() {
            let ids: Vec<pgrx::Uuid> = writes.iter().map(|w| pgrx::Uuid::from_bytes(w.key_id)).collect();
            let debits: Vec<i64> = writes.iter().map(|w| w.debit).collect();
            let refills: Vec<Option<TimestampWithTimeZone>> =
                writes.iter().map(|w| w.refilled_at.map(ts)).collect();
            if let Err(e) = client.update(CREDITS_SQL, None, &[ids.into(), debits.into(), refills.into()]) {
                pgrx::error!("pg_apikeys: credits not written: {e}");
            }
        }
        out
    })
}

/// Each batch joins its keys by the primary key (a batch of keys would
/// otherwise be planned as a hash join over a scan of the whole `keys`
/// table).
fn batch_settings(client: &mut SpiClient<'_>) {
    for q in ["SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off"] {
        if let Err(e) = client.update(q, None, &[]) {
            pgrx::error!("pg_apikeys: flusher settings: {e}");
        }
    }
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
        name!(deferred, Option<i64>),
        name!(limits_full, Option<i64>),
        name!(credits_held, Option<i64>),
        name!(rate_limited, Option<i64>),
        name!(usage_exceeded, Option<i64>),
        name!(insufficient_scope, Option<i64>),
        name!(refused, Option<i64>),
        name!(forwarded, Option<i64>),
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
    let (in_use, pending) = totals();
    let n = |a: &AtomicU64| Some(a.load(Ordering::Relaxed) as i64);
    let last = hd.last_flush.load(Ordering::Relaxed);
    TableIterator::once((
        "shared_memory",
        Some((hd.per_part * PARTITIONS as u64) as i64),
        Some(in_use as i64),
        n(&hd.verified),
        n(&hd.rejected),
        n(&hd.unknown),
        n(&hd.malformed),
        Some(pending as i64),
        n(&hd.flushes),
        n(&hd.flushed),
        n(&hd.fallbacks),
        n(&hd.unrecorded),
        n(&hd.discarded),
        (last != 0).then(|| ts(last)),
        Some((hd.deferred.load(Ordering::Relaxed) + crate::limits::deferred_writes()) as i64),
        Some(crate::limits::full_refusals() as i64),
        Some(crate::limits::held_refusals() as i64),
        n(&hd.why[0]),
        n(&hd.why[1]),
        n(&hd.why[2]),
        n(&hd.why[3]),
        n(&hd.forwarded),
    ))
}

/// `apikeys.pending_usage()`: this database's counts and stamps the engine
/// holds in shared memory and has not written yet (the current hour's,
/// mostly), of the keys the caller can see in `apikeys.keys` (its row
/// security decides, as for `key_usage`). Empty without the engine.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn pending_usage() -> TableIterator<
    'static,
    (
        name!(key_id, pgrx::Uuid),
        name!(workspace_id, pgrx::Uuid),
        name!(hour, TimestampWithTimeZone),
        name!(verified, i64),
        name!(rejected, i64),
        name!(rate_limited, i64),
        name!(usage_exceeded, i64),
        name!(insufficient_scope, i64),
        name!(refused, i64),
        name!(last_used_at, Option<TimestampWithTimeZone>),
    ),
> {
    if !active() {
        return TableIterator::new(Vec::new());
    }
    // SAFETY: backend-local
    let dbid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let entries: Vec<Entry> = copy_db(dbid, Round { before: i64::MAX, pressed: 0 })
        .into_iter()
        .filter(|e| e.verified + e.rejected > 0 || e.last_used != 0)
        .collect();
    if entries.is_empty() {
        return TableIterator::new(Vec::new());
    }
    let ids: Vec<pgrx::Uuid> = entries.iter().map(|e| pgrx::Uuid::from_bytes(e.key)).collect();
    // the keys the caller sees, read as the caller (row security applies)
    let visible: std::collections::HashSet<[u8; 16]> = Spi::connect(|client| {
        client
            .select("SELECT k.id FROM apikeys.keys k WHERE k.id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.uuid[])", None, &[ids.into()])
            .map(|t| t.filter_map(|r| r.get::<pgrx::Uuid>(1).ok().flatten().map(|u| *u.as_bytes())).collect())
            .unwrap_or_default()
    });
    let rows: Vec<_> = entries
        .into_iter()
        .filter(|e| visible.contains(&e.key))
        .map(|e| {
            (
                pgrx::Uuid::from_bytes(e.key),
                pgrx::Uuid::from_bytes(e.workspace),
                ts(e.hour * USECS_PER_HOUR),
                e.verified as i64,
                e.rejected as i64,
                i64::from(e.why[0]),
                i64::from(e.why[1]),
                i64::from(e.why[2]),
                i64::from(e.why[3]),
                (e.last_used != 0).then(|| ts(e.last_used)),
            )
        })
        .collect();
    TableIterator::new(rows)
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

    fn table(n: usize) -> (Vec<Entry>, Vec<shmem::Tenant>) {
        (vec![Entry::default(); n], vec![shmem::Tenant::default(); n])
    }

    #[test]
    fn put_merges_the_same_key_hour_and_database() {
        let (mut slots, mut tenants) = table(128);
        let e = entry(1, 7, 10);
        let h = hash(e.dbid, &e.key, e.hour);
        assert_eq!(put(&mut slots, &mut tenants, h, &e, 100), Ok(true));
        assert_eq!(put(&mut slots, &mut tenants, h, &e, 100), Ok(false));
        let other_db = entry(2, 7, 10);
        assert_eq!(put(&mut slots, &mut tenants, hash(2, &other_db.key, 10), &other_db, 100), Ok(true));
        let stored: Vec<_> = slots.iter().filter(|s| s.used != 0).collect();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored.iter().map(|s| s.verified).sum::<u64>(), 3);
    }

    #[test]
    fn put_reports_a_full_partition_and_a_used_share() {
        let (mut slots, mut tenants) = table(8);
        for k in 0..8u8 {
            let e = entry(1, k, 0);
            assert!(put(&mut slots, &mut tenants, 0, &e, 100).is_ok());
        }
        assert_eq!(put(&mut slots, &mut tenants, 0, &entry(1, 99, 0), 100), Err(NoRoom::Full));
        // a workspace at its share gets no new entry, another one does
        let (mut slots, mut tenants) = table(64);
        for k in 0..4u8 {
            let e = entry(1, k, 0);
            assert_eq!(put(&mut slots, &mut tenants, hash(1, &e.key, 0), &e, 4), Ok(true));
        }
        let fifth = entry(1, 4, 0);
        assert_eq!(put(&mut slots, &mut tenants, hash(1, &fifth.key, 0), &fifth, 4), Err(NoRoom::Share));
        let mut other = entry(1, 4, 0);
        other.workspace = [9; 16];
        assert_eq!(put(&mut slots, &mut tenants, hash(1, &other.key, 0), &other, 4), Ok(true));
        // an existing entry of a workspace at its share still merges
        let again = entry(1, 0, 0);
        assert_eq!(put(&mut slots, &mut tenants, hash(1, &again.key, 0), &again, 4), Ok(false));
    }

    #[test]
    fn removing_entries_keeps_every_other_one_reachable() {
        // 40 entries crowded into 48 places (all probing from a few
        // places), then every third removed: each remaining one is found
        // again where put looks for it, and the share counts follow
        let (mut slots, mut tenants) = table(48);
        let keys: Vec<Entry> = (0..40u8).map(|k| entry(1, k, i64::from(k % 3))).collect();
        for e in &keys {
            assert_eq!(put(&mut slots, &mut tenants, hash(1, &e.key, e.hour), e, 100), Ok(true));
        }
        for e in keys.iter().step_by(3) {
            let at = slots.iter().position(|s| s.used != 0 && s.key == e.key && s.hour == e.hour).unwrap();
            remove_at(&mut slots, &mut tenants, at);
        }
        for (i, e) in keys.iter().enumerate() {
            let merged = put(&mut slots, &mut tenants, hash(1, &e.key, e.hour), e, 100);
            assert_eq!(merged, Ok(i % 3 == 0), "entry {i}");
        }
        assert_eq!(slots.iter().filter(|s| s.used != 0).count(), 40);
        assert_eq!(tenants.iter().map(|t| t.count).sum::<u32>(), 40);
    }

    #[test]
    fn an_entry_is_plain_fixed_size_data() {
        assert_eq!(ENTRY_BYTES, 96);
    }
}
