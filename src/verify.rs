//! The hot path: `verify_key` and the check behind
//! `authenticate()`.
//!
//! A verify reads two unique indexes directly, the way PostgreSQL's own
//! catalog look-ups do (`systable_beginscan`), instead of running a query:
//!
//! 1. the token's shape and checksum are checked in Rust; a mistyped token
//!    never reaches a table;
//! 2. `key_hashes` is probed through its unique index on `hash`, giving the
//!    key's id;
//! 3. `keys` is probed through its primary key, and the row is tested in Rust
//!    with `verify_key`'s predicates (not revoked, not expired), then the
//!    required scopes;
//! 4. `verify_key` hands the row's own datums to a one-row tuplestore
//!    (materialize mode, with the caller's expected row type), so nothing is
//!    converted to Rust values and back;
//! 5. with the usage engine, the use is recorded in shared memory; without
//!    it (or when its table has no room), only when `last_used_at` is older
//!    than `apikeys.last_used_interval` does a prepared `UPDATE ... SKIP
//!    LOCKED` run, through SPI, when the verifying transaction commits.
//!
//! Visibility is the latest committed state, in every isolation level: every
//! verify increments the command counter and reads with a fresh snapshot
//! ([`ReadSnapshot`]): under READ COMMITTED the statement's own, as a volatile
//! function's statement takes; under REPEATABLE READ and SERIALIZABLE, whose
//! transaction snapshot is older, the latest one, as PostgreSQL's own
//! foreign-key checks do. A revoke that has committed, in any backend, is
//! seen by the next verify, and expiry is judged by the statement's clock
//! (`statement_timestamp()`), not the transaction's start. Nothing about a
//! key is cached, only the OIDs and
//! column numbers of the two tables and their indexes, which a relcache
//! invalidation callback forgets on any change to them (ALTER, REINDEX
//! CONCURRENTLY, DROP EXTENSION).
//!
//! Reading the tables directly is what a SECURITY DEFINER function owned by
//! the extension owner would do: the caller needs EXECUTE on `verify_key`
//! (granted roles only), not access to the tables, and row-level security is
//! not consulted (`key_hashes` has no policy at all). Only the `UPDATE` runs
//! as a statement, as the owner of `key_hashes` ([`AsOwner`]), fully
//! schema-qualified, so no caller's `search_path` can redirect it.

use std::cell::{Cell, OnceCell};
use std::ffi::{c_char, CStr};
use std::mem::MaybeUninit;

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::tupdesc::PgTupleDesc;
use pgrx::{PgBuiltInOids, PgOid, Uuid};

use crate::errors::{ApiError, ApiResult};
use crate::fmgr::deferred;
use crate::{gucs, limits, token, usage};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// The two tables, found once per backend

/// Most columns a row of `keys` may have here (it has 13).
const MAX_COLS: usize = 32;

/// 0-based column positions in `apikeys.keys`.
#[derive(Clone, Copy)]
struct KeyCols {
    id: usize,
    workspace_id: usize,
    owner: usize,
    scopes: usize,
    metadata: usize,
    expires_at: usize,
    revoked_at: usize,
    last_used_at: usize,
    /// the key that replaced this one (a rotation with a grace period)
    replaced_by: usize,
    /// limits, credits and suspension (0.2.0; absent from a 0.1.0 schema)
    extra: Option<ExtraCols>,
}

#[derive(Clone, Copy)]
struct ExtraCols {
    rate_limit: usize,
    rate_window: usize,
    credits: usize,
    refill_amount: usize,
    refill_interval: usize,
    credits_refilled_at: usize,
    suspended_at: usize,
    owner_rate_limit: usize,
    owner_rate_window: usize,
}

#[derive(Clone, Copy)]
struct Rels {
    keys: Oid,
    /// unique btree index on `keys (id)`
    keys_by_id: Oid,
    keys_id_attno: i16,
    key_cols: KeyCols,
    hashes: Oid,
    /// unique btree index on `key_hashes (hash)`
    hashes_by_hash: Oid,
    hash_attno: i16,
    /// 0-based position of `key_hashes.key_id`
    hash_key_id: usize,
    /// owner of `key_hashes`: the role the `last_used_at` update runs as
    owner: Oid,
}

thread_local! {
    static RELS: Cell<Option<Rels>> = const { Cell::new(None) };
    static TOUCH_PLAN: OnceCell<OwnedPreparedStatement> = const { OnceCell::new() };
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_rels(_arg: Datum, relid: Oid) {
    RELS.with(|r| {
        if let Some(x) = r.get() {
            if relid == pg_sys::InvalidOid
                || [x.keys, x.keys_by_id, x.hashes, x.hashes_by_hash].contains(&relid)
            {
                r.set(None);
            }
        }
    });
}

/// Register the relcache callback; called once from `_PG_init`.
pub fn init() {
    // SAFETY: registering static callbacks
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(forget_rels), Datum::from(0usize));
        pg_sys::RegisterXactCallback(Some(touch_at_commit), std::ptr::null_mut());
    }
}

fn rels() -> ApiResult<Rels> {
    if let Some(r) = RELS.with(Cell::get) {
        return Ok(r);
    }
    // SAFETY: catalog look-ups by name and relcache reads of two tables this
    // extension owns, under AccessShareLock (kept to the end of the
    // transaction, like any query's)
    let r = unsafe { resolve_relations()? };
    RELS.with(|c| c.set(Some(r)));
    Ok(r)
}

/// 0-based position of column `name` in `rel`.
unsafe fn column(rel: pg_sys::Relation, name: &CStr) -> ApiResult<usize> {
    // SAFETY: the relation is open; the descriptor outlives this call
    let desc = unsafe { PgTupleDesc::from_pg_unchecked((*rel).rd_att) };
    if desc.len() > MAX_COLS {
        return Err(ApiError::Internal);
    }
    desc.iter()
        .position(|a| !a.attisdropped && unsafe { CStr::from_ptr(a.attname.data.as_ptr()) } == name)
        .ok_or(ApiError::Internal)
}

/// A valid, unique, non-partial btree index on exactly column `attno` of `rel`.
unsafe fn unique_index_on(rel: pg_sys::Relation, attno: i16) -> ApiResult<Oid> {
    // SAFETY: reads the open relation's index list and each index's
    // pg_index row, as the planner does
    unsafe {
        let list = pg_sys::RelationGetIndexList(rel);
        let mut found = pg_sys::InvalidOid;
        let n = if list.is_null() { 0 } else { (*list).length as usize };
        for i in 0..n {
            let oid = (*(*list).elements.add(i)).oid_value;
            let irel = pg_sys::index_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let idx = (*irel).rd_index;
            let fits = (*idx).indisunique
                && (*idx).indisvalid
                && (*idx).indnkeyatts == 1
                && (*idx).indkey.values.as_slice(1)[0] == attno
                && (*(*irel).rd_rel).relam == pg_sys::BTREE_AM_OID
                && pg_sys::RelationGetIndexPredicate(irel).is_null();
            pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
            if fits {
                found = oid;
                break;
            }
        }
        pg_sys::list_free(list);
        if found == pg_sys::InvalidOid {
            return Err(ApiError::Internal);
        }
        Ok(found)
    }
}

unsafe fn resolve_relations() -> ApiResult<Rels> {
    // SAFETY: see rels()
    unsafe {
        let ns = pg_sys::get_namespace_oid(c"apikeys".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return Err(ApiError::Internal);
        }
        let keys = pg_sys::get_relname_relid(c"keys".as_ptr(), ns);
        let hashes = pg_sys::get_relname_relid(c"key_hashes".as_ptr(), ns);
        if keys == pg_sys::InvalidOid || hashes == pg_sys::InvalidOid {
            return Err(ApiError::Internal);
        }
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let krel = pg_sys::table_open(keys, lock);
        let k = KeyCols {
            id: column(krel, c"id")?,
            workspace_id: column(krel, c"workspace_id")?,
            owner: column(krel, c"owner")?,
            scopes: column(krel, c"scopes")?,
            metadata: column(krel, c"metadata")?,
            expires_at: column(krel, c"expires_at")?,
            revoked_at: column(krel, c"revoked_at")?,
            last_used_at: column(krel, c"last_used_at")?,
            replaced_by: column(krel, c"replaced_by")?,
            extra: match column(krel, c"suspended_at") {
                Ok(suspended_at) => Some(ExtraCols {
                    rate_limit: column(krel, c"rate_limit")?,
                    rate_window: column(krel, c"rate_window")?,
                    credits: column(krel, c"credits")?,
                    refill_amount: column(krel, c"refill_amount")?,
                    refill_interval: column(krel, c"refill_interval")?,
                    credits_refilled_at: column(krel, c"credits_refilled_at")?,
                    suspended_at,
                    owner_rate_limit: column(krel, c"owner_rate_limit")?,
                    owner_rate_window: column(krel, c"owner_rate_window")?,
                }),
                Err(_) => None,
            },
        };
        let keys_id_attno = (k.id + 1) as i16;
        let keys_by_id = unique_index_on(krel, keys_id_attno)?;
        pg_sys::table_close(krel, pg_sys::NoLock as pg_sys::LOCKMODE);

        let hrel = pg_sys::table_open(hashes, lock);
        let hash_key_id = column(hrel, c"key_id")?;
        let hash_attno = (column(hrel, c"hash")? + 1) as i16;
        let hashes_by_hash = unique_index_on(hrel, hash_attno)?;
        let owner = (*(*hrel).rd_rel).relowner;
        pg_sys::table_close(hrel, pg_sys::NoLock as pg_sys::LOCKMODE);
        Ok(Rels {
            keys,
            keys_by_id,
            keys_id_attno,
            key_cols: k,
            hashes,
            hashes_by_hash,
            hash_attno,
            hash_key_id,
            owner,
        })
    }
}

// ---------------------------------------------------------------------------
// The look-up

/// A live key's row, valid while the look-up holds its buffer.
pub struct Row<'a> {
    values: &'a [Datum],
    nulls: &'a [bool],
    key_cols: KeyCols,
    /// the transaction that wrote the row, when it is this open one (0 otherwise)
    xid: u32,
}

impl Row<'_> {
    fn datum(&self, col: usize) -> Option<Datum> {
        (!self.nulls[col]).then(|| self.values[col])
    }

    fn uuid(&self, col: usize) -> [u8; UUID_BYTES] {
        let mut out = [0u8; UUID_BYTES];
        if let Some(d) = self.datum(col) {
            // SAFETY: a non-null uuid column points at UUID_BYTES bytes
            unsafe { out.copy_from_slice(std::slice::from_raw_parts(d.cast_mut_ptr::<u8>(), UUID_BYTES)) };
        }
        out
    }

    /// A varlena column, detoasted if it was stored out of line or
    /// compressed (the copy lives in the current memory context).
    fn varlena(&self, col: usize) -> Option<Datum> {
        // SAFETY: a non-null varlena column of a pinned heap tuple
        self.datum(col).map(|d| unsafe { Datum::from(pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr())) })
    }

    fn int8(&self, col: usize) -> Option<i64> {
        self.datum(col).map(|d| d.value() as i64)
    }

    fn int4(&self, col: usize) -> Option<i64> {
        self.datum(col).map(|d| i64::from(d.value() as i32))
    }

    /// An interval column as (months, days, microseconds).
    fn interval(&self, col: usize) -> Option<(i32, i32, i64)> {
        // SAFETY: a non-null interval column points at a pg_sys::Interval
        self.datum(col).map(|d| unsafe {
            let i = &*(d.cast_mut_ptr::<pg_sys::Interval>());
            (i.month, i.day, i.time)
        })
    }

    /// What the row says about limits and credits.
    fn limit_spec(&self) -> limits::Spec {
        let Some(x) = self.key_cols.extra else { return limits::Spec::default() };
        // a window is checked part by part when it is set; one written
        // around the functions counts as the strictest (rules::window_usecs)
        let window = |limit: usize, window: usize| match (self.int4(limit), self.interval(window)) {
            (Some(l), Some((m, d, us))) => Some((l, crate::rules::window_usecs(m, d, us))),
            _ => None,
        };
        let rate = window(x.rate_limit, x.rate_window);
        let owner_rate = window(x.owner_rate_limit, x.owner_rate_window);
        let credits = self.int8(x.credits);
        let refill = match (self.int8(x.refill_amount), self.interval(x.refill_interval)) {
            (Some(a), Some((months, _, _))) => {
                Some((a, if months >= 1 { limits::Period::Month } else { limits::Period::Day }))
            }
            _ => None,
        };
        // a key rotated with a grace period spends from its replacement's
        // window and balance: the two tokens share one budget
        let replaced = self.datum(self.key_cols.replaced_by).is_some();
        // the superseded row's balance, less its own debits not written yet:
        // what the rotation copied to the replacement
        let credits = match credits {
            Some(c) if replaced => Some((c - limits::unwritten_debits(&self.uuid(self.key_cols.id))).max(0)),
            c => c,
        };
        let mut spec = limits::Spec {
            key_id: self.uuid(if replaced { self.key_cols.replaced_by } else { self.key_cols.id }),
            follows: replaced,
            rate,
            owner_rate,
            credits,
            refill,
            refilled_at: self.int8(x.credits_refilled_at).unwrap_or(0),
            workspace: self.uuid(self.key_cols.workspace_id),
            xid: self.xid,
            ..Default::default()
        };
        if owner_rate.is_some() {
            // (workspace, owner) folded into 16 bytes
            let mut h = Sha256::new();
            h.update(self.uuid(self.key_cols.workspace_id));
            h.update(self.owner_text().as_bytes());
            spec.owner_id.copy_from_slice(&h.finalize()[..16]);
        }
        spec
    }

    fn owner_text(&self) -> String {
        match self.varlena(self.key_cols.owner) {
            // SAFETY: a detoasted text datum
            Some(d) => unsafe {
                String::from_utf8_lossy(pgrx::varlena::varlena_to_byte_slice(d.cast_mut_ptr())).into_owned()
            },
            None => String::new(),
        }
    }
}

/// What a successful look-up gives besides the caller's result.
struct Hit<R> {
    result: R,
    key: usage::KeyRef,
    stale: bool,
}

/// What a look-up by hash found.
enum Found<R> {
    /// no key has this hash
    NoKey,
    /// a key has it, but it is revoked, expired or suspended
    Refused(usage::KeyRef),
    Hit(Hit<R>),
}

/// Bytes of a varlena's 4-byte length header.
const VARHDRSZ: usize = 4;
/// Bytes of a uuid datum.
const UUID_BYTES: usize = 16;
/// Bytes of a SHA-256 digest.
const DIGEST_BYTES: usize = 32;

/// The SHA-256 of a token as a bytea datum on the stack (a 4-byte varlena
/// header, then the 32 bytes): the scan key of the probe of
/// `key_hashes (hash)`.
#[repr(C, align(4))]
struct HashKey {
    header: [u8; VARHDRSZ],
    bytes: [u8; DIGEST_BYTES],
}

/// One probe of a unique index: the visible row or none. The scan stays open
/// (and the tuple's buffer pinned) until [`Probe::end`].
struct Probe {
    rel: pg_sys::Relation,
    scan: pg_sys::SysScanDesc,
    tuple: pg_sys::HeapTuple,
}

impl Probe {
    unsafe fn start(
        relid: Oid,
        index: Oid,
        attno: i16,
        eq: pg_sys::RegProcedure,
        arg: Datum,
        snapshot: pg_sys::Snapshot,
    ) -> Probe {
        // SAFETY: opens a table by OID under AccessShareLock and scans one of
        // its indexes with an MVCC snapshot, as systable_* callers do
        unsafe {
            let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let mut key = MaybeUninit::<pg_sys::ScanKeyData>::zeroed();
            pg_sys::ScanKeyInit(
                key.as_mut_ptr(),
                attno,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                eq,
                arg,
            );
            // systable_beginscan honours ignore_system_indexes, which any
            // client may set at connection start: these are the
            // extension's own tables, always read through their index
            let ignoring = pg_sys::IgnoreSystemIndexes;
            pg_sys::IgnoreSystemIndexes = false;
            let scan = pg_sys::systable_beginscan(rel, index, true, snapshot, 1, key.as_mut_ptr());
            pg_sys::IgnoreSystemIndexes = ignoring;
            let tuple = pg_sys::systable_getnext(scan);
            Probe { rel, scan, tuple }
        }
    }

    /// The probe of the primary key of `keys` for `id` (kept alive by the
    /// caller while the probe is open).
    unsafe fn key_by_id(r: &Rels, id: &mut [u8; UUID_BYTES], snapshot: pg_sys::Snapshot) -> Probe {
        // SAFETY: the relation and index found by resolve_relations(); `id`
        // outlives the scan
        unsafe {
            Probe::start(
                r.keys,
                r.keys_by_id,
                r.keys_id_attno,
                pg_sys::Oid::from(pg_sys::F_UUID_EQ),
                Datum::from(id.as_mut_ptr()),
                snapshot,
            )
        }
    }

    /// Deform the row found into `values`/`nulls`; false when none was found.
    unsafe fn deform(&self, values: &mut [Datum; MAX_COLS], nulls: &mut [bool; MAX_COLS]) -> bool {
        if self.tuple.is_null() {
            return false;
        }
        // SAFETY: the descriptor is the open relation's own (an ALTER
        // TABLE that committed since the column positions were cached is
        // seen here); one with more than MAX_COLS columns is never deformed
        // into the arrays
        unsafe {
            if (*(*self.rel).rd_att).natts as usize > MAX_COLS {
                return false;
            }
            pg_sys::heap_deform_tuple(self.tuple, (*self.rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr())
        };
        true
    }

    /// The transaction that wrote the row found, when it is this (still
    /// open) one: a key minted here exists only if the transaction commits.
    unsafe fn written_here(&self) -> Option<u32> {
        // SAFETY: a found heap tuple (checked), its header read while pinned
        unsafe {
            if self.tuple.is_null() {
                return None;
            }
            let header = &*(*self.tuple).t_data;
            // HeapTupleHeaderGetXmin: a frozen row was written by no
            // transaction that is still open
            let frozen = u32::from(header.t_infomask) & pg_sys::HEAP_XMIN_FROZEN == pg_sys::HEAP_XMIN_FROZEN;
            let xmin = header.t_choice.t_heap.t_xmin;
            (!frozen && pg_sys::TransactionIdIsCurrentTransactionId(xmin)).then(|| u32::from(xmin))
        }
    }

    unsafe fn end(self) {
        // SAFETY: ends what start began; the lock is kept to the end of the
        // transaction, as the executor keeps it
        unsafe {
            pg_sys::systable_endscan(self.scan);
            pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

/// The snapshot a verify reads with: the latest committed state (see the
/// module documentation). A snapshot taken from `GetLatestSnapshot` is
/// registered for the probes' duration and released on drop.
struct ReadSnapshot {
    snapshot: pg_sys::Snapshot,
    registered: bool,
}

impl ReadSnapshot {
    unsafe fn take() -> ReadSnapshot {
        // SAFETY: as a volatile function's statement would: a new command id
        // (so this transaction's own earlier changes are seen), then a fresh
        // snapshot
        unsafe {
            pg_sys::CommandCounterIncrement();
            // registered either way: the statement's snapshot is a static
            // that a later GetTransactionSnapshot() may overwrite
            let snapshot = if pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 {
                pg_sys::GetLatestSnapshot()
            } else {
                pg_sys::GetTransactionSnapshot()
            };
            ReadSnapshot { snapshot: pg_sys::RegisterSnapshot(snapshot), registered: true }
        }
    }
}

impl Drop for ReadSnapshot {
    fn drop(&mut self) {
        if self.registered {
            // SAFETY: releases exactly what take() registered
            unsafe { pg_sys::UnregisterSnapshot(self.snapshot) };
        }
    }
}

/// The clock expiry is judged by: the statement's start.
fn statement_now() -> pg_sys::TimestampTz {
    // SAFETY: reads backend-local statement state
    unsafe { pg_sys::GetCurrentStatementStartTimestamp() }
}

/// Whether a deformed `keys` row is live at `now`: not revoked, not expired.
fn live(values: &[Datum], nulls: &[bool], k: KeyCols, now: pg_sys::TimestampTz) -> bool {
    nulls[k.revoked_at]
        && (nulls[k.expires_at] || values[k.expires_at].value() as i64 > now)
        && k.extra.is_none_or(|x| nulls[x.suspended_at])
}

/// Whether the key `key_id` is live now (not revoked, not expired), read as
/// a verify reads. For a request bound to a key by `authenticate()`: a revoke
/// that commits later in the request's transaction ends what the key may do.
pub fn key_is_live(key_id: Uuid) -> ApiResult<bool> {
    let r = rels()?;
    let mut id = *key_id.as_bytes();
    let mut values = [Datum::from(0usize); MAX_COLS];
    let mut nulls = [true; MAX_COLS];
    // SAFETY: one probe of the primary key of `keys`, as in find_live_key()
    unsafe {
        let snap = ReadSnapshot::take();
        let p = Probe::key_by_id(&r, &mut id, snap.snapshot);
        let found = p.deform(&mut values, &mut nulls) && live(&values, &nulls, r.key_cols, statement_now());
        p.end();
        drop(snap);
        Ok(found)
    }
}

/// Find the live key whose token hashes to `digest`, and run `f` on its row
/// while the row is pinned. `None` when there is no such key, it is revoked
/// or expired, or `f` says no.
fn find_live_key<R>(
    digest: &[u8; DIGEST_BYTES],
    interval: i32,
    f: impl FnOnce(&Row<'_>) -> R,
) -> ApiResult<Found<R>> {
    let r = rels()?;
    let mut hash = HashKey { header: [0; VARHDRSZ], bytes: *digest };
    // SAFETY: writes the varlena header of a 36-byte bytea
    unsafe {
        pgrx::varlena::set_varsize_4b(hash.header.as_mut_ptr().cast(), (VARHDRSZ + DIGEST_BYTES) as i32)
    };
    let mut values = [Datum::from(0usize); MAX_COLS];
    let mut nulls = [true; MAX_COLS];

    // SAFETY: two index probes with the latest snapshot
    unsafe {
        let snap = ReadSnapshot::take();
        let snapshot = snap.snapshot;

        let p = Probe::start(
            r.hashes,
            r.hashes_by_hash,
            r.hash_attno,
            pg_sys::Oid::from(pg_sys::F_BYTEAEQ),
            Datum::from(std::ptr::addr_of_mut!(hash)),
            snapshot,
        );
        let found = p.deform(&mut values, &mut nulls) && !nulls[r.hash_key_id];
        let mut key_id = [0u8; UUID_BYTES];
        if found {
            key_id.copy_from_slice(std::slice::from_raw_parts(
                values[r.hash_key_id].cast_mut_ptr::<u8>(),
                UUID_BYTES,
            ));
        }
        p.end();
        if !found {
            return Ok(Found::NoKey);
        }

        let p = Probe::key_by_id(&r, &mut key_id, snapshot);
        nulls = [true; MAX_COLS];
        if !p.deform(&mut values, &mut nulls) {
            p.end();
            return Ok(Found::NoKey);
        }
        let k = r.key_cols;
        let now = statement_now();
        let written = p.written_here();
        let row = Row { values: &values, nulls: &nulls, key_cols: k, xid: written.unwrap_or(0) };
        let key = usage::KeyRef {
            id: key_id,
            workspace: row.uuid(k.workspace_id),
            keys_rel: r.keys.to_u32(),
            uncommitted: written.is_some(),
            never_used: nulls[k.last_used_at],
        };
        if !live(&values, &nulls, k, now) {
            p.end();
            return Ok(Found::Refused(key));
        }
        let ts = |col: usize| (!nulls[col]).then(|| values[col].value() as i64);
        let window = i64::from(interval.max(0)) * 1_000_000;
        let stale = ts(k.last_used_at).is_none_or(|u| u <= now.saturating_sub(window));
        let result = f(&row);
        p.end();
        Ok(Found::Hit(Hit { result, key, stale }))
    }
}

// ---------------------------------------------------------------------------
// Scopes

/// The elements of a text[] datum as byte strings; `None` for a NULL element.
unsafe fn text_elems<'a>(array: Datum) -> Vec<Option<&'a [u8]>> {
    // SAFETY: a text[] datum; detoasted (4-byte header) before reading
    unsafe {
        let arr = pg_sys::pg_detoast_datum(array.cast_mut_ptr()) as *mut pg_sys::ArrayType;
        let mut elems: *mut Datum = std::ptr::null_mut();
        let mut nulls: *mut bool = std::ptr::null_mut();
        let mut n: std::ffi::c_int = 0;
        pg_sys::deconstruct_array(
            arr,
            pg_sys::TEXTOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as c_char,
            &mut elems,
            &mut nulls,
            &mut n,
        );
        (0..n as usize)
            .map(|i| {
                (!*nulls.add(i)).then(|| pgrx::varlena::varlena_to_byte_slice((*elems.add(i)).cast_mut_ptr()))
            })
            .collect()
    }
}

/// A text[] datum with a 4-byte header (detoasted once; `text_elems` then
/// finds nothing left to do), and whether it is empty.
unsafe fn detoast_array(array: Datum) -> (Datum, bool) {
    // SAFETY: a text[] datum; its header is read after detoasting
    unsafe {
        let arr = pg_sys::pg_detoast_datum(array.cast_mut_ptr()) as *mut pg_sys::ArrayType;
        (Datum::from(arr), (*arr).ndim == 0)
    }
}

/// Does the key (its `scopes` column) hold every scope of `required`?
/// A NULL required scope is never held.
unsafe fn holds(row: &Row<'_>, required: Option<Datum>) -> bool {
    let Some(required) = required else { return true };
    // SAFETY: text[] datums (the argument, and the row's scopes column)
    unsafe {
        let (required, empty) = detoast_array(required);
        if empty {
            return true;
        }
        let held = match row.varlena(row.key_cols.scopes) {
            Some(s) => text_elems(s),
            None => Vec::new(),
        };
        text_elems(required).into_iter().all(|w| w.is_some() && held.contains(&w))
    }
}

// ---------------------------------------------------------------------------
// last_used_at

// Lock the row only if nobody else holds it, so a verify never waits.
const TOUCH_SQL: &str = "\
UPDATE apikeys.keys k SET last_used_at = pg_catalog.now()
 WHERE k.id OPERATOR(pg_catalog.=) (
       SELECT c.id FROM apikeys.keys c
        WHERE c.id OPERATOR(pg_catalog.=) $1 AND c.revoked_at IS NULL
          AND (c.last_used_at IS NULL
               OR c.last_used_at OPERATOR(pg_catalog.<=)
                  (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $2)))
          FOR NO KEY UPDATE SKIP LOCKED)";

const TOUCH_ARGS: [PgOid; 2] =
    [PgOid::BuiltIn(PgBuiltInOids::UUIDOID), PgOid::BuiltIn(PgBuiltInOids::FLOAT8OID)];

/// Runs as the table owner while alive; restores the caller's user id and
/// security context when dropped (also when unwinding from an error; an
/// aborted (sub)transaction restores them as well).
struct AsOwner {
    uid: Oid,
    ctx: std::ffi::c_int,
}

impl AsOwner {
    fn enter(owner: Oid) -> AsOwner {
        let mut uid = pg_sys::InvalidOid;
        let mut ctx: std::ffi::c_int = 0;
        // SAFETY: plain reads and writes of the backend's current user id, as
        // fmgr_security_definer does for SECURITY DEFINER functions
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut uid, &mut ctx);
            pg_sys::SetUserIdAndSecContext(
                owner,
                ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as std::ffi::c_int,
            );
        }
        AsOwner { uid, ctx }
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        // SAFETY: restores exactly what `enter` saved
        unsafe { pg_sys::SetUserIdAndSecContext(self.uid, self.ctx) };
    }
}

/// Whether this transaction may write `last_used_at` at all.
fn may_touch() -> bool {
    // SAFETY: reads backend-local transaction state
    unsafe {
        !pg_sys::XactReadOnly
            && !pg_sys::RecoveryInProgress()
            && pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32
    }
}

thread_local! {
    /// Keys whose `last_used_at` this transaction stamps when it commits.
    static TOUCH_AT_COMMIT: std::cell::RefCell<Vec<([u8; UUID_BYTES], i32)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Stamp `last_used_at` when this transaction commits (see
/// [`touch_at_commit`]): a verify never holds a row lock that outlives it.
fn touch(key_id: [u8; UUID_BYTES], interval: i32) -> ApiResult<()> {
    TOUCH_AT_COMMIT.with(|t| {
        let mut t = t.borrow_mut();
        if !t.iter().any(|(k, _)| *k == key_id) {
            t.push((key_id, interval));
        }
    });
    Ok(())
}

/// At commit (before it, in the committing transaction): stamp the keys
/// this transaction verified, unless another transaction holds the row.
/// The row lock is taken here and released by the commit a moment later,
/// so a request left idle in an open transaction after a verify blocks no
/// revoke. A failure (a cancel during the commit) costs the stamps, never
/// the commit: they run in a subtransaction. A transaction that aborts or
/// is prepared stamps nothing.
#[pg_guard]
unsafe extern "C-unwind" fn touch_at_commit(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    let pending = TOUCH_AT_COMMIT.with(|t| std::mem::take(&mut *t.borrow_mut()));
    if event != XACT_EVENT_PRE_COMMIT || pending.is_empty() || !may_touch() {
        return;
    }
    // SAFETY: a subtransaction around the stamps, restored as PL/pgSQL's
    // exception blocks restore it
    unsafe {
        let ctx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let done = pgrx::PgTryBuilder::new(|| {
            // the statement's snapshot is gone by now: SPI needs one
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let ok = pending.iter().all(|(k, i)| touch_now(*k, *i).is_ok());
            pg_sys::PopActiveSnapshot();
            ok
        })
        .catch_others(|_| false)
        .execute();
        if done {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(ctx);
        pg_sys::CurrentResourceOwner = owner;
    }
}

/// Stamp `last_used_at` now unless another transaction holds the row.
fn touch_now(key_id: [u8; UUID_BYTES], interval: i32) -> ApiResult<()> {
    let owner = rels()?.owner;
    Spi::connect_mut(|client: &mut SpiClient<'_>| {
        let _as_owner = AsOwner::enter(owner);
        TOUCH_PLAN.with(|c| {
            if c.get().is_none() {
                // prepare_mut: run read-write without asking for a
                // transaction id first (pgrx's `update` does), so an update
                // that SKIP LOCKED turns into no write assigns none
                let plan = client.prepare_mut(TOUCH_SQL, &TOUCH_ARGS)?.keep();
                let _ = c.set(plan);
            }
            let plan = c.get().ok_or(ApiError::Internal)?;
            client.select(plan, None, &[Uuid::from_bytes(key_id).into(), f64::from(interval).into()])?;
            Ok(())
        })
    })
}

/// How a check of a key that exists and is live ended.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// accepted (with the limits' state when the key has limits)
    Valid(Option<limits::Decision>),
    /// a required scope is missing
    Scope,
    /// refused by a rate limit or the credits
    Limited(limits::Decision),
}

impl Outcome {
    pub fn valid(&self) -> bool {
        matches!(self, Outcome::Valid(_))
    }
}

/// Check a token: `None` for every key that does not answer (unknown,
/// malformed, revoked, expired, suspended); otherwise the scope check, then
/// the limits (consuming `cost` only when everything admits it), and
/// `emit`'s result for the key's row and the outcome, called while the row
/// is pinned. Records the use (the usage engine, or `last_used_at` when due).
fn check_token<R>(
    token_bytes: &[u8],
    required: Option<Datum>,
    cost: i64,
    emit: impl FnOnce(&Row<'_>, &Outcome) -> R,
) -> ApiResult<Option<(R, Outcome)>> {
    let engine = usage::active();
    let Ok(token_text) = std::str::from_utf8(token_bytes) else {
        if engine {
            usage::record_nokey(true);
        }
        return Ok(None);
    };
    // this extension's tokens with a bad checksum, empty and oversized
    // strings never reach a table; other shapes may be imported keys
    match token::shape(token_text) {
        token::Shape::Own | token::Shape::Foreign => {}
        token::Shape::Mistyped | token::Shape::Rejected => {
            if engine {
                usage::record_nokey(true);
            }
            return Ok(None);
        }
    }
    let digest = token::digest(token_text);
    let interval = gucs::LAST_USED_INTERVAL.get();
    let found = find_live_key(&digest, interval, |row| {
        // SAFETY: the row is pinned; `required` is a text[] datum or None
        let outcome = if !unsafe { holds(row, required) } {
            Outcome::Scope
        } else {
            let spec = row.limit_spec();
            if !spec.limited() {
                Outcome::Valid(None)
            } else if !limits::active() {
                // limits that cannot be enforced (the preload was removed): refused
                Outcome::Limited(limits::Decision {
                    code: limits::Code::RateLimited,
                    limit: spec.rate.or(spec.owner_rate).map(|r| r.0),
                    remaining: Some(0),
                    reset: None,
                    credits_remaining: spec.credits,
                    refill_at: None,
                    held: false,
                })
            } else {
                let d = limits::admit(&spec, cost, limits::clock_now());
                if d.code == limits::Code::Valid {
                    Outcome::Valid(Some(d))
                } else {
                    Outcome::Limited(d)
                }
            }
        };
        (emit(row, &outcome), outcome)
    })?;
    let hit = match found {
        Found::Hit(hit) => hit,
        Found::NoKey => {
            if engine {
                usage::record_nokey(false);
            }
            return Ok(None);
        }
        Found::Refused(key) => {
            // a refusal has nothing to write in a transaction: without room
            // in the table it goes unrecorded (and counted as such)
            if engine && !usage::record(&key, usage::Outcome::Refused, statement_now(), false) {
                usage::record_unrecorded();
            }
            return Ok(None);
        }
    };
    let (result, outcome) = hit.result;
    if !outcome.valid() {
        let counted = match outcome {
            Outcome::Scope => usage::Outcome::InsufficientScope,
            Outcome::Limited(d) if d.code == limits::Code::UsageExceeded => usage::Outcome::UsageExceeded,
            _ => usage::Outcome::RateLimited,
        };
        if engine && !usage::record(&hit.key, counted, statement_now(), false) {
            usage::record_unrecorded();
        }
        return Ok(Some((result, outcome)));
    }
    // the usage engine records the use in shared memory: no write here,
    // unless its table is full (then the write of old, counted as a fallback)
    let due = hit.stale && interval >= 0;
    if engine && usage::record(&hit.key, usage::Outcome::Verified, statement_now(), due) {
        return Ok(Some((result, outcome)));
    }
    // no entry: a fallback where this transaction can write (the stamp,
    // when due, is written here), unrecorded where it cannot; never both
    if engine {
        if may_touch() {
            usage::record_fallback();
        } else {
            usage::record_unrecorded();
        }
    }
    if due && may_touch() {
        touch(hit.key.id, interval)?;
    }
    Ok(Some((result, outcome)))
}

// ---------------------------------------------------------------------------
// Entry points

/// A key verified for `authenticate()`.
pub struct Verified {
    pub key_id: Uuid,
    pub workspace_id: Uuid,
    pub owner: String,
    pub scopes: Vec<String>,
}

/// Check a token for `authenticate()` (no required scopes, cost 1): the
/// key and how the check ended, or `None` for a key that does not answer.
pub fn verify(token_text: &str) -> ApiResult<Option<(Verified, Outcome)>> {
    check_token(token_text.as_bytes(), None, 1, |row, _| {
        let scopes = match row.varlena(row.key_cols.scopes) {
            // SAFETY: the row's text[] scopes column
            Some(s) => unsafe { text_elems(s) }
                .into_iter()
                .flatten()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect(),
            None => Vec::new(),
        };
        Verified {
            key_id: Uuid::from_bytes(row.uuid(row.key_cols.id)),
            workspace_id: Uuid::from_bytes(row.uuid(row.key_cols.workspace_id)),
            owner: row.owner_text(),
            scopes,
        }
    })
}

/// `verify_key`'s columns, in order, and their types.
const OUT_TYPES: [Oid; 6] = [
    pg_sys::UUIDOID,
    pg_sys::UUIDOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTARRAYOID,
    pg_sys::JSONBOID,
    pg_sys::TIMESTAMPTZOID,
];

/// The row type `verify_key`'s caller expects, if it is exactly `OUT_TYPES`.
unsafe fn expected_desc(rsinfo: *mut pg_sys::ReturnSetInfo) -> Option<pg_sys::TupleDesc> {
    // SAFETY: as expected_desc_of
    unsafe { expected_desc_of(rsinfo, &OUT_TYPES) }
}

/// The caller's expected row type, if it is exactly `types`.
unsafe fn expected_desc_of(rsinfo: *mut pg_sys::ReturnSetInfo, types: &[Oid]) -> Option<pg_sys::TupleDesc> {
    // SAFETY: the executor's descriptor for this call, read only
    unsafe {
        let desc = (*rsinfo).expectedDesc;
        if desc.is_null() {
            return None;
        }
        let d = PgTupleDesc::from_pg_unchecked(desc);
        let ok = d.len() == types.len() && d.iter().zip(types).all(|(a, t)| a.atttypid == *t);
        ok.then_some(desc)
    }
}

/// A set-returning call in materialize mode: the caller's ReturnSetInfo,
/// set to return zero rows until [`store_row`] stores one.
unsafe fn materialize(fcinfo: pg_sys::FunctionCallInfo) -> ApiResult<*mut pg_sys::ReturnSetInfo> {
    // SAFETY: the function manager's call info; its resultinfo is checked
    // to be a ReturnSetInfo before use
    unsafe {
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        if rsinfo.is_null()
            || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo
            || (*rsinfo).allowedModes & pg_sys::SetFunctionReturnMode::SFRM_Materialize as i32 == 0
        {
            return Err(ApiError::Internal);
        }
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = std::ptr::null_mut();
        Ok(rsinfo)
    }
}

/// Store the one row of a materialize-mode result (a tuplestore in the
/// query's memory, as the executor expects).
unsafe fn store_row(
    rsinfo: *mut pg_sys::ReturnSetInfo,
    desc: pg_sys::TupleDesc,
    values: &mut [Datum],
    nulls: &mut [bool],
) {
    // SAFETY: a ReturnSetInfo checked by `materialize`; `values` and `nulls`
    // have one element per column of `desc`
    unsafe {
        let econtext = (*rsinfo).econtext;
        let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_query_memory);
        let random =
            (*rsinfo).allowedModes & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Random as i32 != 0;
        let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
        pg_sys::MemoryContextSwitchTo(old);
        pg_sys::tuplestore_putvalues(store, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        (*rsinfo).setResult = store;
    }
}

unsafe fn verify_key_srf(fcinfo: pg_sys::FunctionCallInfo) -> ApiResult<()> {
    // SAFETY: called by the function manager with a ReturnSetInfo (SQL
    // declares verify_key RETURNS TABLE); arguments read per fmgr rules
    unsafe {
        // zero rows unless a row is stored below
        let rsinfo = materialize(fcinfo)?;
        let Some(desc) = expected_desc(rsinfo) else { return Err(ApiError::Internal) };

        let Some(key) = pgrx::fcinfo::pg_getarg_datum(fcinfo, 0) else { return Ok(()) };
        let required = if (*fcinfo).nargs > 1 { pgrx::fcinfo::pg_getarg_datum(fcinfo, 1) } else { None };
        let key = pg_sys::pg_detoast_datum_packed(key.cast_mut_ptr());
        let key = pgrx::varlena::varlena_to_byte_slice(key);

        check_token(key, required, 1, |row, outcome| {
            if !outcome.valid() {
                return;
            }
            let k = row.key_cols;
            let mut values = [Datum::from(0usize); 6];
            let mut nulls = [false; 6];
            for (i, col) in
                [k.id, k.workspace_id, k.owner, k.scopes, k.metadata, k.expires_at].into_iter().enumerate()
            {
                let v = if (2..=4).contains(&i) { row.varlena(col) } else { row.datum(col) };
                match v {
                    Some(v) => values[i] = v,
                    None => nulls[i] = true,
                }
            }
            store_row(rsinfo, desc, &mut values, &mut nulls);
        })?;
        Ok(())
    }
}

/// The C function behind `apikeys.verify_key(text, text[])` (see lib.rs
/// `entry_points!`, which raises a parked error with its SQLSTATE).
///
/// # Safety
/// Called by PostgreSQL's function manager only.
#[pg_guard]
pub unsafe extern "C-unwind" fn verify_key_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    // SAFETY: see verify_key_srf
    deferred(unsafe { verify_key_srf(fcinfo) });
    Datum::from(0usize)
}

// ---------------------------------------------------------------------------
// check_key

/// `check_key`'s columns, in order, and their types.
const CHECK_TYPES: [Oid; 12] = [
    pg_sys::BOOLOID,
    pg_sys::TEXTOID,
    pg_sys::UUIDOID,
    pg_sys::UUIDOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTARRAYOID,
    pg_sys::JSONBOID,
    pg_sys::TIMESTAMPTZOID,
    pg_sys::INT8OID,
    pg_sys::INT4OID,
    pg_sys::INT4OID,
    pg_sys::TIMESTAMPTZOID,
];

/// The largest cost one check may ask for.
pub const MAX_COST: i64 = 1_000_000_000;

fn code_of(outcome: &Outcome) -> &'static CStr {
    match outcome {
        Outcome::Valid(_) => c"valid",
        Outcome::Scope => c"insufficient_scope",
        Outcome::Limited(d) if d.code == limits::Code::UsageExceeded => c"usage_exceeded",
        Outcome::Limited(_) => c"rate_limited",
    }
}

unsafe fn check_key_srf(fcinfo: pg_sys::FunctionCallInfo) -> ApiResult<()> {
    // SAFETY: as verify_key_srf
    unsafe {
        let rsinfo = materialize(fcinfo)?;
        let Some(desc) = expected_desc_of(rsinfo, &CHECK_TYPES) else { return Err(ApiError::Internal) };
        let nargs = (*fcinfo).nargs;
        let required = if nargs > 1 { pgrx::fcinfo::pg_getarg_datum(fcinfo, 1) } else { None };
        let cost = if nargs > 2 {
            match pgrx::fcinfo::pg_getarg_datum(fcinfo, 2) {
                Some(d) => i64::from(d.value() as i32),
                None => return Err(ApiError::NullArgument(c"cost must not be null")),
            }
        } else {
            1
        };
        if !(0..=MAX_COST).contains(&cost) {
            return Err(ApiError::Invalid(crate::rules::RuleError::Cost));
        }
        let store = |values: &mut [Datum; 12], nulls: &mut [bool; 12]| store_row(rsinfo, desc, values, nulls);
        let key = pgrx::fcinfo::pg_getarg_datum(fcinfo, 0).map(|k| {
            let k = pg_sys::pg_detoast_datum_packed(k.cast_mut_ptr());
            pgrx::varlena::varlena_to_byte_slice(k)
        });
        let answered = match key {
            Some(key) => check_token(key, required, cost, |row, outcome| {
                let k = row.key_cols;
                let mut values = [Datum::from(0usize); 12];
                let mut nulls = [true; 12];
                values[0] = Datum::from(outcome.valid());
                nulls[0] = false;
                values[1] = Datum::from(pg_sys::cstring_to_text(code_of(outcome).as_ptr()));
                nulls[1] = false;
                for (i, col) in [k.id, k.workspace_id, k.owner, k.scopes, k.metadata, k.expires_at]
                    .into_iter()
                    .enumerate()
                {
                    let v = if (2..=4).contains(&i) { row.varlena(col) } else { row.datum(col) };
                    if let Some(v) = v {
                        values[i + 2] = v;
                        nulls[i + 2] = false;
                    }
                }
                let d = match outcome {
                    Outcome::Valid(d) => *d,
                    Outcome::Limited(d) => Some(*d),
                    Outcome::Scope => None,
                };
                // live credits for every code: a refusal before the limits
                // (a missing scope) reads this server's balance
                let credits = d
                    .and_then(|d| d.credits_remaining)
                    .or_else(|| limits::peek_credits(&row.limit_spec(), limits::clock_now()));
                if let Some(c) = credits {
                    values[8] = Datum::from(c);
                    nulls[8] = false;
                }
                if let Some(d) = d {
                    if let Some(l) = d.limit {
                        values[9] = Datum::from(l.min(i64::from(i32::MAX)) as i32);
                        nulls[9] = false;
                        if let Some(r) = d.remaining {
                            values[10] = Datum::from(r.min(i64::from(i32::MAX)) as i32);
                            nulls[10] = false;
                        }
                        if let Some(t) = d.reset {
                            values[11] = Datum::from(t);
                            nulls[11] = false;
                        }
                    }
                }
                store(&mut values, &mut nulls);
            })?
            .is_some(),
            None => false,
        };
        if !answered {
            // unknown, malformed, revoked, expired, suspended: one answer
            let mut values = [Datum::from(0usize); 12];
            let mut nulls = [true; 12];
            values[0] = Datum::from(false);
            nulls[0] = false;
            values[1] = Datum::from(pg_sys::cstring_to_text(c"invalid".as_ptr()));
            nulls[1] = false;
            store(&mut values, &mut nulls);
        }
        Ok(())
    }
}

/// `check_key`'s wrapper, called by its C entry point (`entry_points!`).
///
/// # Safety
/// Called through the C entry point by PostgreSQL's function manager only.
/// Guarded like every function PostgreSQL calls: an error raised inside
/// PostgreSQL while it runs (a cancel, a lock wait cut off by
/// `statement_timeout`) unwinds the Rust frames and is re-raised as that
/// statement's ERROR, never across a Rust frame into C.
#[pg_guard]
pub unsafe extern "C-unwind" fn check_key_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    // SAFETY: see check_key_srf
    deferred(unsafe { check_key_srf(fcinfo) });
    Datum::from(0usize)
}
