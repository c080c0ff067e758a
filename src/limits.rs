//! Rate limits and credits, kept in shared memory beside the usage engine's
//! table (docs/reference.md, "Limits and credits").
//!
//! One table of `apikeys.limit_slots` entries, 32 partitions with one
//! LWLock each, like the usage table. An entry is either a key's state
//! (its rate window and its credit balance) or an owner's (the window of a
//! limit shared by all of one owner's keys in a workspace). Entries stay
//! between flushes: they hold the state a limit needs.
//!
//! **Rate limits are fixed windows**: at most `rate_limit` accepted verifies
//! (by cost) in each window `[k·w, (k+1)·w)` of length `w = rate_window`,
//! counted from 2000-01-01 00:00 UTC. Exact under concurrency (the count is
//! read and raised under the entry's partition lock), two integers per key,
//! and a reset time that means what it says (`X-RateLimit-Reset`). The price:
//! a burst at the end of one window and the start of the next can admit up
//! to twice the limit within one window's length; a sliding log would need
//! one timestamp per accepted verify, and GCRA admits a burst on top of the
//! rate as well.
//!
//! **Credits**: the balance is loaded from the key's row on first use and
//! kept here; each accepted verify debits its cost; the usage flusher writes
//! the debits to `keys.credits` (a relative decrement, never below zero) at
//! least every flush interval. A crash forgets debits not yet written: the
//! next start reloads the last written balance, so a crash can over-serve at
//! most what one interval admitted. A refill (`refill_amount` every day or
//! month, at 00:00 UTC) sets the balance back to `refill_amount` on the first
//! verify of a new period, and the flusher writes it. `update_key` setting
//! `credits` stamps `credits_refilled_at`, which tells every server to
//! reload the balance from the row.
//!
//! A check that is refused consumes nothing: windows and balance change only
//! when every limit admits the cost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pgrx::pg_sys;

use crate::{gucs, shmem};

const PARTITIONS: usize = 32;
/// How far past its place an entry may sit. Entries stay (they hold the
/// windows and balances), so the table runs fuller than the usage table: a
/// longer reach keeps a check from failing closed while free entries remain
/// (the benchmark saw 52 of 1 000 000 checks refused with 100 000 limited
/// keys in 131 072 entries at 64).
const MAX_PROBES: usize = 512;
const TRANCHE: &std::ffi::CStr = c"pg_apikeys limits";
const SEGMENT: &std::ffi::CStr = c"pg_apikeys limits table";
const USECS_PER_DAY: i64 = 86_400_000_000;

const KIND_KEY: u32 = 1;
const KIND_OWNER: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Entry {
    used: u32,
    dbid: u32,
    id: [u8; 16],
    kind: u32,
    credits_loaded: u32,
    window_len: i64,
    window_start: i64,
    count: i64,
    /// credits: the balance as this server knows it
    balance: i64,
    /// debits (or a refill) not yet written to keys.credits
    unflushed: i64,
    /// the refill period (days or months since 2000-01) the balance is of
    period: i64,
    /// the row's credits_refilled_at the balance was loaded at (or written as)
    loaded_from: i64,
    /// 1 when the balance was refilled here and the flush must set it
    refilled: u32,
    /// the refill period of `period`: 0 none, 1 day, 2 month
    period_kind: u32,
    /// raised at every reload and refill: a flush's acknowledgement of
    /// debits taken under another generation is ignored
    generation: u32,
    /// 1 when a flush found the key's row locked and could not write its
    /// debits: checks fail closed until a flush writes them
    held: u32,
    /// when the oldest debit not yet written was made (0: none pending)
    unflushed_since: i64,
    /// the workspace the entry counts against (its share of the table)
    workspace: [u8; 16],
    /// the transaction that wrote the key's row when this entry was made,
    /// while that transaction had not committed (0 once seen committed):
    /// an entry of a key that never commits is free for the taking
    xid: u32,
    _pad: u32,
    /// when the entry was made (with `xid`: how long it has been waiting
    /// to see its key committed)
    made_at: i64,
}

#[repr(C)]
struct Header {
    per_part: u64,
    /// checks refused because no entry was free (fail closed)
    full: AtomicU64,
    /// checks of keys with credits refused because their debits could not
    /// be written for too long (fail closed)
    held: AtomicU64,
    /// credit writes a flush skipped because a client held the key's row
    deferred: AtomicU64,
    /// a saved limits table waits for the launcher to load it: checks wait
    /// for it (a window or a debit from before the restart must count)
    load_pending: AtomicBool,
}

static mut HEADER: *mut Header = std::ptr::null_mut();
static mut SLOTS: *mut Entry = std::ptr::null_mut();
/// per partition, how many entries each workspace holds there
static mut TENANTS: *mut shmem::Tenant = std::ptr::null_mut();
static mut LOCKS: *mut pg_sys::LWLockPadded = std::ptr::null_mut();

fn slot_count() -> usize {
    let n = gucs::LIMIT_SLOTS.get().max(PARTITIONS as i32) as usize;
    n.div_ceil(PARTITIONS) * PARTITIONS
}

pub fn segment_size() -> usize {
    std::mem::size_of::<Header>()
        + slot_count() * (std::mem::size_of::<Entry>() + std::mem::size_of::<shmem::Tenant>())
}

/// From the usage engine's shmem_request hook.
///
/// # Safety
/// Only in the postmaster's shmem_request phase.
pub unsafe fn request() {
    // SAFETY: called in the postmaster's shmem_request phase
    unsafe {
        pg_sys::RequestAddinShmemSpace(segment_size());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), PARTITIONS as i32);
    }
}

/// From the usage engine's shmem_startup hook.
///
/// # Safety
/// Only in the shmem_startup phase, with AddinShmemInitLock held.
pub unsafe fn startup() {
    // SAFETY: the segment is ours; called with AddinShmemInitLock held
    unsafe {
        let mut found = false;
        let base = pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), segment_size(), &mut found) as *mut u8;
        if !found {
            std::ptr::write_bytes(base, 0, segment_size());
            (*(base as *mut Header)).per_part = (slot_count() / PARTITIONS) as u64;
            (*(base as *mut Header)).load_pending.store(crate::save::limits_saved(), Ordering::Release);
        }
        HEADER = base as *mut Header;
        SLOTS = base.add(std::mem::size_of::<Header>()) as *mut Entry;
        TENANTS = SLOTS.add(slot_count()) as *mut shmem::Tenant;
        LOCKS = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
    }
}

pub fn active() -> bool {
    // SAFETY: set once at start-up, before any backend exists
    unsafe { !(*std::ptr::addr_of!(HEADER)).is_null() }
}

fn header() -> &'static Header {
    // SAFETY: only called when active()
    unsafe { &*HEADER }
}

/// The launcher has loaded the saved limits table (or found it was not
/// to be loaded): checks stop waiting for it.
pub fn load_done() {
    if active() {
        header().load_pending.store(false, Ordering::Release);
    }
}

/// How long a check waits for the saved limits table to be loaded before
/// it goes on without it (a launcher that cannot start).
const LOAD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

static mut LOAD_GIVEN_UP: bool = false;

/// A check made between a server's start and the launcher's load of the
/// saved limits table would find every window empty and every debit
/// written: it waits for the load (a few milliseconds after a start).
fn await_load() {
    // SAFETY: backend-local
    if !header().load_pending.load(Ordering::Acquire) || unsafe { LOAD_GIVEN_UP } {
        return;
    }
    let start = std::time::Instant::now();
    while header().load_pending.load(Ordering::Acquire) {
        if start.elapsed() >= LOAD_PATIENCE {
            // SAFETY: backend-local
            unsafe { LOAD_GIVEN_UP = true };
            pgrx::warning!(
                "pg_apikeys: the saved rate windows and credit debits are not loaded yet; checks go on without them"
            );
            return;
        }
        pgrx::check_for_interrupts!();
        // SAFETY: a plain sleep, interrupts checked above
        unsafe { pg_sys::pg_usleep(5_000) };
    }
}

pub fn full_refusals() -> u64 {
    if active() {
        header().full.load(Ordering::Relaxed)
    } else {
        0
    }
}

/// Checks refused because their key's debits could not be written.
pub fn held_refusals() -> u64 {
    if active() {
        header().held.load(Ordering::Relaxed)
    } else {
        0
    }
}

/// Credit writes a flush deferred because the key's row was locked.
pub fn deferred_writes() -> u64 {
    if active() {
        header().deferred.load(Ordering::Relaxed)
    } else {
        0
    }
}

/// How long a key's debits may stay unwritten before its checks fail
/// closed: one flush interval and half another (at least 2 s), so a flush
/// that runs on time always comes first.
fn hold_after() -> i64 {
    let interval = i64::from(gucs::USAGE_FLUSH_INTERVAL.get().max(1)) * 1_000_000;
    interval + (interval / 2).max(2_000_000)
}

pub fn slots() -> u64 {
    if active() {
        header().per_part * PARTITIONS as u64
    } else {
        0
    }
}

fn hash(dbid: u32, id: &[u8; 16], kind: u32) -> u64 {
    shmem::mix(dbid, id, u64::from(kind))
}

fn partition(h: u64) -> usize {
    (h as usize) & (PARTITIONS - 1)
}

fn lock(p: usize) {
    // SAFETY: p < PARTITIONS
    unsafe { shmem::acquire(LOCKS, p, true) };
}

fn unlock(p: usize) {
    // SAFETY: we hold it
    unsafe { shmem::release(LOCKS, p) };
}

fn part_tenants(p: usize) -> &'static mut [shmem::Tenant] {
    let per = header().per_part as usize;
    // SAFETY: the partition's range of the tenant counts; callers hold its lock
    unsafe { std::slice::from_raw_parts_mut(TENANTS.add(p * per), per) }
}

fn part_slots(p: usize) -> &'static mut [Entry] {
    let per = header().per_part as usize;
    // SAFETY: the partition's range; callers hold its lock
    unsafe { std::slice::from_raw_parts_mut(SLOTS.add(p * per), per) }
}

/// How long an entry made under an uncommitted key waits to be seen
/// committed before it is taken to be (its transaction long over): the
/// commit log is never asked about transaction ids that old.
const XID_PATIENCE: i64 = 10 * 60 * 1_000_000;

/// Whether an entry's key was minted by a transaction that then rolled
/// back (or crashed): nobody will ever check it again. Clog reads, only for
/// the rare entry made while its key's row was uncommitted, and only for a
/// few minutes.
fn never_committed(s: &mut Entry, now: i64) -> bool {
    if s.xid == 0 || s.unflushed != 0 {
        return false;
    }
    if now - s.made_at > XID_PATIENCE {
        s.xid = 0;
        return false;
    }
    let xid = pg_sys::TransactionId::from(s.xid);
    // SAFETY: plain reads of the proc array and the commit log, for a
    // transaction id of the last few minutes
    unsafe { !pg_sys::TransactionIdIsInProgress(xid) && !pg_sys::TransactionIdDidCommit(xid) }
}

/// The entry for (db, id, kind) in its (locked) partition, made if absent:
/// in a free place, or over an entry that holds nothing worth keeping (no
/// unwritten credits and its window over, or its key never committed) when
/// none is free within reach. A new entry counts against the workspace's
/// share; None when no place is free or the share is used.
#[allow(clippy::too_many_arguments)]
fn find_or_make(
    p: usize,
    h: u64,
    dbid: u32,
    id: &[u8; 16],
    kind: u32,
    now: i64,
    workspace: &[u8; 16],
    xid: u32,
    reclaim: bool,
) -> Option<usize> {
    let slots = part_slots(p);
    let per = slots.len();
    let start = ((h >> 5) as usize) % per;
    let mut free = None;
    let mut stale = None;
    for i in 0..MAX_PROBES.min(per) {
        let at = (start + i) % per;
        let s = &mut slots[at];
        if s.used == 0 {
            // an entry is never placed past a free place: no match beyond
            free = Some(at);
            break;
        }
        if s.dbid == dbid && s.kind == kind && s.id == *id {
            if s.xid != 0 && xid == 0 {
                s.xid = 0; // its key has committed since
            }
            return Some(at);
        }
        if stale.is_none()
            && ((s.unflushed == 0 && s.refilled == 0 && now >= s.window_start + s.window_len)
                || never_committed(s, now))
        {
            stale = Some(at);
        }
    }
    let at = free.or(stale)?;
    let tenants = part_tenants(p);
    let share = shmem::share_limit(per, gucs::WORKSPACE_SHARE.get());
    if slots[at].used != 0 {
        shmem::tenant_sub(tenants, slots[at].dbid, &slots[at].workspace);
    }
    if !shmem::tenant_add(tenants, dbid, workspace, share) {
        if slots[at].used != 0 {
            // the stale entry stays (and counts again)
            shmem::tenant_add(tenants, slots[at].dbid, &slots[at].workspace, u32::MAX);
        }
        // the workspace holds its share here: give up one of its own
        // entries that holds nothing worth keeping (a key that never
        // committed, a window over), wherever it sits, and try once more
        if reclaim && reclaim_one(p, dbid, workspace, now) {
            return find_or_make(p, h, dbid, id, kind, now, workspace, xid, false);
        }
        return None;
    }
    slots[at] =
        Entry { used: 1, dbid, id: *id, kind, workspace: *workspace, xid, made_at: now, ..Entry::default() };
    Some(at)
}

/// Take out one entry of (dbid, workspace) in partition `p` that holds
/// nothing worth keeping; whether one was found.
fn reclaim_one(p: usize, dbid: u32, workspace: &[u8; 16], now: i64) -> bool {
    let slots = part_slots(p);
    let found = (0..slots.len()).find(|&i| {
        let s = &mut slots[i];
        s.used != 0
            && s.dbid == dbid
            && s.workspace == *workspace
            && ((s.unflushed == 0 && s.refilled == 0 && now >= s.window_start + s.window_len)
                || never_committed(s, now))
    });
    match found {
        Some(i) => {
            remove_at(slots, part_tenants(p), i);
            true
        }
        None => false,
    }
}

/// A refill period.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Period {
    Day,
    Month,
}

/// The period index of a TimestampTz (UTC): days, or months since 2000-01.
pub fn period_of(p: Period, t: i64) -> i64 {
    let days = t.div_euclid(USECS_PER_DAY);
    match p {
        Period::Day => days,
        Period::Month => {
            let (y, m, _) = civil_from_days(days + 10_957); // 2000-01-01 is day 10957 since 1970
            (y - 2000) * 12 + (m - 1)
        }
    }
}

/// The start (TimestampTz) of period index `i`.
pub fn period_start(p: Period, i: i64) -> i64 {
    match p {
        Period::Day => i * USECS_PER_DAY,
        Period::Month => {
            let y = 2000 + i.div_euclid(12);
            let m = i.rem_euclid(12) + 1;
            (days_from_civil(y, m, 1) - 10_957) * USECS_PER_DAY
        }
    }
}

/// Howard Hinnant's civil_from_days: (year, month, day) of days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What a key row says about its limits.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub key_id: [u8; 16],
    /// (workspace, owner) folded into 16 bytes, for the owner's window
    pub owner_id: [u8; 16],
    /// (rate_limit, rate_window in microseconds)
    pub rate: Option<(i64, i64)>,
    pub owner_rate: Option<(i64, i64)>,
    pub credits: Option<i64>,
    pub refill: Option<(i64, Period)>,
    /// the row's credits_refilled_at (0 when NULL)
    pub refilled_at: i64,
    /// the key's workspace (the share of the table its entries count against)
    pub workspace: [u8; 16],
    /// the transaction that wrote the key's row, while it has not
    /// committed (a key minted in the checking transaction); 0 otherwise
    pub xid: u32,
    /// a superseded key (rotated with a grace period) checked against its
    /// replacement's entry (`key_id`): its own row's balance only starts an
    /// entry, never resets one the replacement's row loaded
    pub follows: bool,
}

impl Spec {
    pub fn limited(&self) -> bool {
        self.rate.is_some() || self.owner_rate.is_some() || self.credits.is_some()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Code {
    Valid,
    RateLimited,
    UsageExceeded,
}

/// The answer to one check.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    pub code: Code,
    /// the limit shown (the key's own, else its owner's)
    pub limit: Option<i64>,
    /// what is left in the current window (of the tighter limit)
    pub remaining: Option<i64>,
    /// when the current window ends (TimestampTz)
    pub reset: Option<i64>,
    pub credits_remaining: Option<i64>,
    /// when the credits are next refilled (TimestampTz), if they are
    pub refill_at: Option<i64>,
    /// refused because the key's debits could not be written (fail closed)
    pub held: bool,
}

struct Window {
    len: i64,
}

/// The clock limits are judged by: read at the check (never a statement's
/// or transaction's start, which an old statement would carry into a newer
/// window).
pub fn clock_now() -> i64 {
    // SAFETY: a plain clock read
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Move the entry's window to the one `now` falls in. Windows only move
/// forwards: a time before the current window (a clock stepped back, a
/// check that read the clock just before another one rolled the window)
/// counts in the current window, never opens a fresh one.
fn roll(e: &mut Entry, w: &Window, now: i64) {
    if e.window_len != w.len {
        e.window_len = w.len;
        e.window_start = now - now.rem_euclid(w.len);
        e.count = 0;
    } else if now >= e.window_start + e.window_len {
        e.window_start = now - now.rem_euclid(w.len);
        e.count = 0;
    }
}

/// Admit `cost` for the key `spec` describes, in this database, at `now`.
/// Everything is checked before anything is consumed.
pub fn admit(spec: &Spec, cost: i64, now: i64) -> Decision {
    await_load();
    // SAFETY: backend-local
    let dbid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let key_needed = spec.rate.is_some() || spec.credits.is_some();
    let hk = hash(dbid, &spec.key_id, KIND_KEY);
    let ho = hash(dbid, &spec.owner_id, KIND_OWNER);
    let mut parts: Vec<usize> = Vec::with_capacity(2);
    if key_needed {
        parts.push(partition(hk));
    }
    if spec.owner_rate.is_some() {
        parts.push(partition(ho));
    }
    parts.sort_unstable();
    parts.dedup();
    for &p in &parts {
        lock(p);
    }
    let d = admit_locked(spec, cost, now, dbid, hk, ho, key_needed);
    for &p in parts.iter().rev() {
        unlock(p);
    }
    if d.held {
        header().held.fetch_add(1, Ordering::Relaxed);
    } else if d.code == Code::RateLimited && d.limit.is_none() && d.credits_remaining.is_none() {
        header().full.fetch_add(1, Ordering::Relaxed);
    }
    d
}

#[allow(clippy::too_many_arguments)]
fn admit_locked(spec: &Spec, cost: i64, now: i64, dbid: u32, hk: u64, ho: u64, key_needed: bool) -> Decision {
    let refused_full = Decision {
        code: Code::RateLimited,
        limit: None,
        remaining: Some(0),
        reset: None,
        credits_remaining: None,
        refill_at: None,
        held: false,
    };
    let key_at = if key_needed {
        match find_or_make(
            partition(hk),
            hk,
            dbid,
            &spec.key_id,
            KIND_KEY,
            now,
            &spec.workspace,
            spec.xid,
            true,
        ) {
            Some(at) => Some(at),
            None => return refused_full,
        }
    } else {
        None
    };
    let owner_at = if spec.owner_rate.is_some() {
        match find_or_make(
            partition(ho),
            ho,
            dbid,
            &spec.owner_id,
            KIND_OWNER,
            now,
            &spec.workspace,
            spec.xid,
            true,
        ) {
            Some(at) => Some(at),
            None => return refused_full,
        }
    } else {
        None
    };
    // the key's and the owner's entries may share a partition: reach each
    // through its own pointer, never two live slices of one partition
    let slot_ptr = |h: u64, at: usize| -> *mut Entry {
        let per = header().per_part as usize;
        // SAFETY: `at` < per, inside the (locked) partition of `h`
        unsafe { SLOTS.add(partition(h) * per + at) }
    };
    // SAFETY: distinct entries (one of kind key, one of kind owner) of
    // partitions this backend holds locked; each reference lives only for
    // the statement that uses it
    let key_entry = |at: usize| unsafe { &mut *slot_ptr(hk, at) };
    let owner_entry = |at: usize| unsafe { &mut *slot_ptr(ho, at) };

    // windows
    let mut limit_shown = None;
    let mut remaining: Option<i64> = None;
    let mut reset: Option<i64> = None;
    let mut rate_ok = true;
    if let (Some(at), Some((limit, len))) = (key_at, spec.rate) {
        let e = key_entry(at);
        roll(e, &Window { len }, now);
        let left = limit - e.count;
        rate_ok &= e.count + cost <= limit;
        limit_shown = Some(limit);
        remaining = Some(left);
        reset = Some(e.window_start + e.window_len);
    }
    if let (Some(at), Some((limit, len))) = (owner_at, spec.owner_rate) {
        let e = owner_entry(at);
        roll(e, &Window { len }, now);
        let left = limit - e.count;
        rate_ok &= e.count + cost <= limit;
        limit_shown.get_or_insert(limit);
        if remaining.is_none_or(|r| left < r) {
            remaining = Some(left);
            reset = Some(e.window_start + e.window_len);
        }
    }

    // credits
    let mut credits_ok = true;
    let mut credits_left = None;
    let mut held = false;
    if let (Some(at), Some(row_credits)) = (key_at, spec.credits) {
        let e = key_entry(at);
        let own_refill = e.credits_loaded != 0
            && e.refilled != 0
            && e.period_kind != 0
            && spec.refilled_at == period_start(kind_period(e.period_kind), e.period);
        if e.credits_loaded != 0 && e.loaded_from != spec.refilled_at && own_refill {
            // the refill this server made, written by its flush: the
            // balance here already has it and every debit since
            e.loaded_from = spec.refilled_at;
        } else if e.credits_loaded == 0 || (e.loaded_from != spec.refilled_at && !spec.follows) {
            // first use here, or the row's balance was set (update_key): the row is the truth
            e.credits_loaded = 1;
            e.balance = row_credits;
            e.unflushed = 0;
            e.unflushed_since = 0;
            e.refilled = 0;
            e.held = 0;
            e.generation = e.generation.wrapping_add(1);
            e.loaded_from = spec.refilled_at;
            e.period = match spec.refill {
                Some((_, p)) => period_of(p, spec.refilled_at),
                None => 0,
            };
            e.period_kind = match spec.refill {
                Some((_, Period::Day)) => 1,
                Some((_, Period::Month)) => 2,
                None => 0,
            };
        }
        if let Some((amount, p)) = spec.refill {
            let now_period = period_of(p, now);
            let kind = if p == Period::Day { 1 } else { 2 };
            if e.period_kind != kind {
                // the refill interval changed: count periods anew
                e.period_kind = kind;
                e.period = now_period;
            }
            if now_period > e.period {
                e.balance = amount;
                e.unflushed = 0;
                e.unflushed_since = 0;
                e.held = 0;
                e.refilled = 1;
                e.period = now_period;
                e.generation = e.generation.wrapping_add(1);
            }
        }
        // debits that could not be written (a flush found the row locked,
        // or none ran for too long) bound what a crash can serve twice:
        // until they are written, the key fails closed. A standby writes
        // no debits: each server keeps its own balance there.
        held = e.unflushed > 0
            && (e.held != 0 || now - e.unflushed_since > hold_after())
            // SAFETY: reads shared state
            && !unsafe { pg_sys::RecoveryInProgress() };
        credits_ok = e.balance >= cost;
        credits_left = Some(e.balance);
    }
    if held {
        return Decision {
            code: Code::RateLimited,
            limit: limit_shown,
            remaining: Some(0),
            reset: Some(now + hold_after()),
            credits_remaining: credits_left,
            refill_at: None,
            held: true,
        };
    }

    let code = if !rate_ok {
        Code::RateLimited
    } else if !credits_ok {
        Code::UsageExceeded
    } else {
        Code::Valid
    };
    if code == Code::Valid {
        if let (Some(at), Some(_)) = (key_at, spec.rate) {
            key_entry(at).count += cost;
        }
        if let (Some(at), Some(_)) = (owner_at, spec.owner_rate) {
            owner_entry(at).count += cost;
        }
        if let (Some(at), Some(_)) = (key_at, spec.credits) {
            let e = key_entry(at);
            if e.unflushed == 0 && cost > 0 {
                e.unflushed_since = now;
            }
            e.balance -= cost;
            e.unflushed += cost;
            credits_left = Some(e.balance);
        }
        remaining = remaining.map(|r| r - cost);
    }
    let refill_at = spec.refill.map(|(_, p)| period_start(p, period_of(p, now) + 1));
    Decision {
        code,
        limit: limit_shown,
        remaining: remaining.map(|r| r.max(0)),
        reset,
        credits_remaining: credits_left,
        refill_at,
        held: false,
    }
}

fn kind_period(kind: u32) -> Period {
    if kind == 2 {
        Period::Month
    } else {
        Period::Day
    }
}

/// Debits of key `key_id` made on this server and not written to its row
/// yet (a rotation takes them off the balance it copies).
pub fn unwritten_debits(key_id: &[u8; 16]) -> i64 {
    if !active() {
        return 0;
    }
    await_load();
    // SAFETY: backend-local
    let dbid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let h = hash(dbid, key_id, KIND_KEY);
    let p = partition(h);
    lock(p);
    let n = find(part_slots(p), h, dbid, key_id, KIND_KEY)
        .filter(|e| e.credits_loaded != 0)
        .map_or(0, |e| e.unflushed);
    unlock(p);
    n
}

/// The live credit balance of the key `spec` describes, consuming nothing
/// and making no entry: what a check that is refused before the limits (a
/// missing scope) reports. The row's balance when this server holds none.
pub fn peek_credits(spec: &Spec, now: i64) -> Option<i64> {
    let row = spec.credits?;
    let refill_due = |period: i64| match spec.refill {
        Some((amount, p)) if period_of(p, now) > period => Some(amount),
        _ => None,
    };
    let from_row = || {
        let period = spec.refill.map_or(0, |(_, p)| period_of(p, spec.refilled_at));
        refill_due(period).unwrap_or(row)
    };
    if !active() {
        return Some(from_row());
    }
    await_load();
    // SAFETY: backend-local
    let dbid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let h = hash(dbid, &spec.key_id, KIND_KEY);
    let p = partition(h);
    lock(p);
    let slots = part_slots(p);
    let per = slots.len();
    let start = ((h >> 5) as usize) % per;
    let held = (0..MAX_PROBES.min(per))
        .map(|i| &slots[(start + i) % per])
        .find(|s| s.used != 0 && s.dbid == dbid && s.kind == KIND_KEY && s.id == spec.key_id)
        .filter(|s| s.credits_loaded != 0 && s.loaded_from == spec.refilled_at)
        .map(|s| refill_due(s.period).unwrap_or(s.balance));
    unlock(p);
    Some(held.unwrap_or_else(from_row))
}

/// Credits to write for one key: its unwritten debits, and whether the
/// balance was refilled first (then credits becomes the refill amount minus
/// the debits). A copy: the entry keeps them until the flush that wrote
/// them acknowledges it ([`ack_credits`]).
#[derive(Clone, Copy, Debug)]
pub struct CreditWrite {
    pub key_id: [u8; 16],
    pub debit: i64,
    /// Some(start of the period) when the balance was refilled
    pub refilled_at: Option<i64>,
    /// the row's credits_refilled_at the debits were made against (0: NULL)
    pub loaded_from: i64,
    generation: u32,
}

/// What a flush did with one key's credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditOutcome {
    /// written (and committed)
    Written,
    /// the row's balance was set meanwhile (or its credits removed): the
    /// debits were against a balance that no longer is, and are dropped
    Stale,
    /// a client held the row: kept for the next flush, and the key's checks
    /// fail closed until then
    Locked,
}

/// The unwritten credits of database `dbid` (copies; nothing changes here).
pub fn pending_credits(dbid: u32) -> Vec<CreditWrite> {
    let mut out = Vec::new();
    if !active() {
        return out;
    }
    for p in 0..PARTITIONS {
        lock(p);
        for s in part_slots(p).iter() {
            if s.used != 0 && s.dbid == dbid && s.kind == KIND_KEY && (s.unflushed != 0 || s.refilled != 0) {
                out.push(CreditWrite {
                    key_id: s.id,
                    debit: s.unflushed,
                    refilled_at: (s.refilled != 0)
                        .then(|| period_start(kind_period(s.period_kind), s.period)),
                    loaded_from: s.loaded_from,
                    generation: s.generation,
                });
            }
        }
        unlock(p);
    }
    out
}

/// After a flush: take what it wrote (or dropped) out of the entries, and
/// hold the keys whose rows were locked. An entry reloaded or refilled
/// since the copy (another generation) is left alone.
pub fn ack_credits(dbid: u32, done: &[(CreditWrite, CreditOutcome)]) {
    let now = clock_now();
    for (w, outcome) in done {
        if *outcome == CreditOutcome::Locked {
            header().deferred.fetch_add(1, Ordering::Relaxed);
        }
        let h = hash(dbid, &w.key_id, KIND_KEY);
        let p = partition(h);
        lock(p);
        if let Some(s) = find(part_slots(p), h, dbid, &w.key_id, KIND_KEY) {
            if s.generation == w.generation {
                match outcome {
                    CreditOutcome::Written | CreditOutcome::Stale => {
                        s.unflushed -= w.debit;
                        s.refilled = 0;
                        s.held = 0;
                        s.unflushed_since = if s.unflushed > 0 { now } else { 0 };
                        if *outcome == CreditOutcome::Stale {
                            // the row is the truth again at the next check
                            s.credits_loaded = 0;
                        } else if let Some(at) = w.refilled_at {
                            s.loaded_from = at;
                        }
                    }
                    CreditOutcome::Locked => s.held = 1,
                }
            }
        }
        unlock(p);
    }
}

/// The entry (db, id, kind) of a locked partition, if there is one.
fn find<'a>(slots: &'a mut [Entry], h: u64, dbid: u32, id: &[u8; 16], kind: u32) -> Option<&'a mut Entry> {
    let per = slots.len();
    let start = ((h >> 5) as usize) % per;
    let at = (0..MAX_PROBES.min(per)).map(|i| (start + i) % per).find(|&at| {
        slots[at].used != 0 && slots[at].dbid == dbid && slots[at].kind == kind && slots[at].id == *id
    })?;
    Some(&mut slots[at])
}

/// The size of one saved entry ([`export`]).
pub(crate) const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Every entry as bytes, for the file a clean shutdown writes (windows,
/// balances and debits not yet written).
pub(crate) fn export() -> Vec<u8> {
    let mut out = Vec::new();
    if !active() {
        return out;
    }
    for p in 0..PARTITIONS {
        lock(p);
        for e in part_slots(p).iter().filter(|e| e.used != 0) {
            // SAFETY: Entry is repr(C) plain data
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts((e as *const Entry).cast::<u8>(), ENTRY_BYTES)
            });
        }
        unlock(p);
    }
    out
}

/// Take back one entry saved at shutdown; false when it is not one this
/// table could have held. A check made since the start may have made the
/// entry already (from the row): the saved window's count and the saved
/// debits are added to it.
pub(crate) fn import(bytes: &[u8]) -> bool {
    if bytes.len() != ENTRY_BYTES || !active() {
        return false;
    }
    // SAFETY: ENTRY_BYTES bytes of a saved Entry (plain data, any bit pattern)
    let mut saved: Entry = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let plausible = saved.used != 0
        && saved.dbid != 0
        && (saved.kind == KIND_KEY || saved.kind == KIND_OWNER)
        && (0..=USECS_PER_DAY).contains(&saved.window_len)
        && saved.count >= 0
        && saved.unflushed >= 0;
    if !plausible {
        return false;
    }
    // a save was never held: the next flush writes its debits
    saved.held = 0;
    let h = hash(saved.dbid, &saved.id, saved.kind);
    let p = partition(h);
    lock(p);
    if let Some(e) = find(part_slots(p), h, saved.dbid, &saved.id, saved.kind) {
        if e.window_len == saved.window_len && e.window_start == saved.window_start {
            e.count += saved.count;
        }
        if e.credits_loaded != 0 && saved.credits_loaded != 0 && e.loaded_from == saved.loaded_from {
            e.balance -= saved.unflushed;
            e.unflushed += saved.unflushed;
            if e.unflushed_since == 0 {
                e.unflushed_since = saved.unflushed_since;
            }
        }
    } else if let Some(at) =
        find_or_make(p, h, saved.dbid, &saved.id, saved.kind, clock_now(), &saved.workspace, saved.xid, true)
    {
        part_slots(p)[at] = saved;
    }
    unlock(p);
    true
}

/// Databases with unwritten credits.
pub fn pending_dbs() -> Vec<u32> {
    let mut out = Vec::new();
    if !active() {
        return out;
    }
    for p in 0..PARTITIONS {
        lock(p);
        out.extend(
            part_slots(p)
                .iter()
                .filter(|s| s.used != 0 && s.kind == KIND_KEY && (s.unflushed != 0 || s.refilled != 0))
                .map(|s| s.dbid),
        );
        unlock(p);
    }
    out
}

/// Drop every entry of a database (it was dropped, or takes no
/// connections): each taken out with its run shifted back, so no other
/// entry moves further from its place.
pub fn drop_database(dbid: u32) {
    if !active() {
        return;
    }
    for p in 0..PARTITIONS {
        lock(p);
        let slots = part_slots(p);
        let tenants = part_tenants(p);
        let mut i = 0;
        while i < slots.len() {
            if slots[i].used != 0 && slots[i].dbid == dbid {
                remove_at(slots, tenants, i);
                continue; // look at what moved into slot i
            }
            i += 1;
        }
        unlock(p);
    }
}

/// Empty slot `at` and shift the later entries of its run back (linear
/// probing without tombstones, as the usage table does).
fn remove_at(slots: &mut [Entry], tenants: &mut [shmem::Tenant], at: usize) {
    let per = slots.len();
    shmem::tenant_sub(tenants, slots[at].dbid, &slots[at].workspace);
    shmem::shift_back(slots, at, |e| e.used != 0, |e| ((hash(e.dbid, &e.id, e.kind) >> 5) as usize) % per);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_of_days_and_months() {
        // 2000-01-01 00:00 UTC is 0
        assert_eq!(period_of(Period::Day, 0), 0);
        assert_eq!(period_of(Period::Day, USECS_PER_DAY - 1), 0);
        assert_eq!(period_of(Period::Day, USECS_PER_DAY), 1);
        assert_eq!(period_of(Period::Day, -1), -1);
        assert_eq!(period_of(Period::Month, 0), 0);
        // 2000-02-01 is day 31; 2000-03-01 day 60 (a leap year)
        assert_eq!(period_of(Period::Month, 31 * USECS_PER_DAY - 1), 0);
        assert_eq!(period_of(Period::Month, 31 * USECS_PER_DAY), 1);
        assert_eq!(period_of(Period::Month, 59 * USECS_PER_DAY), 1);
        assert_eq!(period_of(Period::Month, 60 * USECS_PER_DAY), 2);
        for i in [-13, -1, 0, 1, 11, 12, 311, 320] {
            assert_eq!(period_of(Period::Month, period_start(Period::Month, i)), i);
            assert_eq!(period_of(Period::Month, period_start(Period::Month, i) - 1), i - 1);
        }
    }

    #[test]
    fn an_entry_is_144_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 144);
    }

    #[test]
    fn windows_roll_on_their_boundaries() {
        let mut e = Entry::default();
        let w = Window { len: 10 };
        roll(&mut e, &w, 25);
        assert_eq!((e.window_start, e.window_len, e.count), (20, 10, 0));
        e.count = 3;
        roll(&mut e, &w, 29);
        assert_eq!(e.count, 3);
        roll(&mut e, &w, 30);
        assert_eq!((e.window_start, e.count), (30, 0));
        // never backwards: an earlier time counts in the current window
        e.count = 2;
        roll(&mut e, &w, 12);
        assert_eq!((e.window_start, e.count), (30, 2));
    }
}
