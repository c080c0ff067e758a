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

use std::sync::atomic::{AtomicU64, Ordering};

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
}

#[repr(C)]
struct Header {
    per_part: u64,
    /// checks refused because no entry was free (fail closed)
    full: AtomicU64,
}

static mut HEADER: *mut Header = std::ptr::null_mut();
static mut SLOTS: *mut Entry = std::ptr::null_mut();
static mut LOCKS: *mut pg_sys::LWLockPadded = std::ptr::null_mut();

fn slot_count() -> usize {
    let n = gucs::LIMIT_SLOTS.get().max(PARTITIONS as i32) as usize;
    n.div_ceil(PARTITIONS) * PARTITIONS
}

pub fn segment_size() -> usize {
    std::mem::size_of::<Header>() + slot_count() * std::mem::size_of::<Entry>()
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
        }
        HEADER = base as *mut Header;
        SLOTS = base.add(std::mem::size_of::<Header>()) as *mut Entry;
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

pub fn full_refusals() -> u64 {
    if active() {
        header().full.load(Ordering::Relaxed)
    } else {
        0
    }
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

fn part_slots(p: usize) -> &'static mut [Entry] {
    let per = header().per_part as usize;
    // SAFETY: the partition's range; callers hold its lock
    unsafe { std::slice::from_raw_parts_mut(SLOTS.add(p * per), per) }
}

/// The entry for (db, id, kind) in its (locked) partition, made if absent.
/// An entry that holds nothing worth keeping (no unwritten credits, its
/// window over) may be taken over when the probe range is full.
fn find_or_make(p: usize, h: u64, dbid: u32, id: &[u8; 16], kind: u32, now: i64) -> Option<usize> {
    let slots = part_slots(p);
    let per = slots.len();
    let start = ((h >> 5) as usize) % per;
    let mut free = None;
    let mut stale = None;
    for i in 0..MAX_PROBES.min(per) {
        let at = (start + i) % per;
        let s = &slots[at];
        if s.used == 0 {
            free.get_or_insert(at);
            continue;
        }
        if s.dbid == dbid && s.kind == kind && s.id == *id {
            return Some(at);
        }
        if stale.is_none() && s.unflushed == 0 && s.refilled == 0 && now >= s.window_start + s.window_len {
            stale = Some(at);
        }
    }
    let at = free.or(stale)?;
    slots[at] = Entry { used: 1, dbid, id: *id, kind, ..Entry::default() };
    Some(at)
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
}

struct Window {
    len: i64,
}

fn roll(e: &mut Entry, w: &Window, now: i64) {
    if e.window_len != w.len || now >= e.window_start + e.window_len || now < e.window_start {
        e.window_len = w.len;
        e.window_start = now - now.rem_euclid(w.len);
        e.count = 0;
    }
}

/// Admit `cost` for the key `spec` describes, in this database, at `now`.
/// Everything is checked before anything is consumed.
pub fn admit(spec: &Spec, cost: i64, now: i64) -> Decision {
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
    if d.code == Code::RateLimited && d.limit.is_none() {
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
    };
    let key_at = if key_needed {
        match find_or_make(partition(hk), hk, dbid, &spec.key_id, KIND_KEY, now) {
            Some(at) => Some(at),
            None => return refused_full,
        }
    } else {
        None
    };
    let owner_at = if spec.owner_rate.is_some() {
        match find_or_make(partition(ho), ho, dbid, &spec.owner_id, KIND_OWNER, now) {
            Some(at) => Some(at),
            None => return refused_full,
        }
    } else {
        None
    };
    let key_slots = part_slots(partition(hk));
    let owner_slots = part_slots(partition(ho));

    // windows
    let mut limit_shown = None;
    let mut remaining: Option<i64> = None;
    let mut reset: Option<i64> = None;
    let mut rate_ok = true;
    if let (Some(at), Some((limit, len))) = (key_at, spec.rate) {
        let e = &mut key_slots[at];
        roll(e, &Window { len }, now);
        let left = limit - e.count;
        rate_ok &= e.count + cost <= limit;
        limit_shown = Some(limit);
        remaining = Some(left);
        reset = Some(e.window_start + e.window_len);
    }
    if let (Some(at), Some((limit, len))) = (owner_at, spec.owner_rate) {
        let e = &mut owner_slots[at];
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
    if let (Some(at), Some(row_credits)) = (key_at, spec.credits) {
        let e = &mut key_slots[at];
        if e.credits_loaded == 0 || e.loaded_from != spec.refilled_at {
            // first use here, or the row's balance was set (update_key): the row is the truth
            e.credits_loaded = 1;
            e.balance = row_credits;
            e.unflushed = 0;
            e.refilled = 0;
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
                e.refilled = 1;
                e.period = now_period;
            }
        }
        credits_ok = e.balance >= cost;
        credits_left = Some(e.balance);
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
            key_slots[at].count += cost;
        }
        if let (Some(at), Some(_)) = (owner_at, spec.owner_rate) {
            owner_slots[at].count += cost;
        }
        if let (Some(at), Some(_)) = (key_at, spec.credits) {
            let e = &mut key_slots[at];
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
    }
}

/// Forget a key's state (its balance is reloaded from the row next time).
pub fn forget(key_id: &[u8; 16]) {
    if !active() {
        return;
    }
    // SAFETY: backend-local
    let dbid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let h = hash(dbid, key_id, KIND_KEY);
    let p = partition(h);
    lock(p);
    let slots = part_slots(p);
    if let Some(s) =
        slots.iter_mut().find(|s| s.used != 0 && s.dbid == dbid && s.kind == KIND_KEY && s.id == *key_id)
    {
        // keep the window, drop the balance
        s.credits_loaded = 0;
        s.unflushed = 0;
        s.refilled = 0;
    }
    unlock(p);
}

/// Credits to write for one key: a debit, and whether the balance was
/// refilled first (then credits becomes the refill amount minus the debit).
#[derive(Clone, Copy, Debug)]
pub struct CreditWrite {
    pub key_id: [u8; 16],
    pub debit: i64,
    /// Some(start of the period) when the balance was refilled
    pub refilled_at: Option<i64>,
}

/// Take the unwritten credits of database `dbid` (the flusher writes them).
pub fn take_credits(dbid: u32) -> Vec<CreditWrite> {
    let mut out = Vec::new();
    if !active() {
        return out;
    }
    for p in 0..PARTITIONS {
        lock(p);
        for s in part_slots(p).iter_mut() {
            if s.used != 0 && s.dbid == dbid && s.kind == KIND_KEY && (s.unflushed != 0 || s.refilled != 0) {
                let kind = if s.period_kind == 2 { Period::Month } else { Period::Day };
                out.push(CreditWrite {
                    key_id: s.id,
                    debit: s.unflushed,
                    refilled_at: (s.refilled != 0).then(|| period_start(kind, s.period)),
                });
                s.unflushed = 0;
                s.refilled = 0;
            }
        }
        unlock(p);
    }
    out
}

/// After the flusher committed a refill: the row now says `refilled_at`;
/// remember it, so the next check does not take the row's balance for a
/// newly set one.
pub fn written_refill(dbid: u32, key_id: &[u8; 16], refilled_at: i64) {
    let h = hash(dbid, key_id, KIND_KEY);
    let p = partition(h);
    lock(p);
    if let Some(s) = part_slots(p)
        .iter_mut()
        .find(|s| s.used != 0 && s.dbid == dbid && s.kind == KIND_KEY && s.id == *key_id)
    {
        s.loaded_from = refilled_at;
    }
    unlock(p);
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

/// Drop every entry of a database (it was dropped).
pub fn drop_database(dbid: u32) {
    if !active() {
        return;
    }
    for p in 0..PARTITIONS {
        lock(p);
        let slots = part_slots(p);
        if slots.iter().any(|s| s.used != 0 && s.dbid == dbid) {
            let keep: Vec<Entry> = slots.iter().filter(|s| s.used != 0 && s.dbid != dbid).copied().collect();
            slots.iter_mut().for_each(|s| *s = Entry::default());
            for e in keep {
                let h = hash(e.dbid, &e.id, e.kind);
                let per = slots.len();
                let start = ((h >> 5) as usize) % per;
                if let Some(at) =
                    (0..MAX_PROBES.min(per)).map(|i| (start + i) % per).find(|&at| slots[at].used == 0)
                {
                    slots[at] = e;
                }
            }
        }
        unlock(p);
    }
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
    fn an_entry_is_96_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 96);
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
    }
}
