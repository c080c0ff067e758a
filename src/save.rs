//! What the usage engine keeps on disk, in the data directory, beside
//! shared memory:
//!
//! * `pg_apikeys_usage.pending`: a copy of the usage table (counts and
//!   `last_used_at` stamps not yet written), saved by the launcher at every
//!   `apikeys.usage_flush_interval` and at shutdown, without WAL. The
//!   engine keeps each key's counts of the current hour in memory and
//!   writes them once, after the hour (or under pressure, or when
//!   `flush_usage()` asks), so this copy is what bounds a crash's loss to
//!   one interval. Each copy has an id (its *snapshot*, increasing); a
//!   write round that follows it records that id in the database, in
//!   `apikeys.usage_rounds`, in the transaction that writes the counts.
//! * `pg_apikeys_usage.recovered.<snapshot>`: at the start of fresh shared
//!   memory (a server start, or the reset after a crash), the last copy is
//!   renamed so; each database's flusher writes the entries of its
//!   database that the round of that snapshot did not write (the round's
//!   row says which hours it wrote), and marks the copy resolved in the
//!   same transaction: a crash at any point counts nothing twice and loses
//!   at most what was counted after the last copy. Once every database in
//!   it is resolved (or gone), the file is removed.
//! * `pg_apikeys_limits.saved`: the limits table (every rate window, credit
//!   balance and debit not yet written), saved at a clean shutdown, so a
//!   routine restart serves nothing twice and opens no fresh window.
//!
//! Each file: a magic number, the cluster's system identifier, whether it
//! was saved on a standby, the record size, the snapshot id, the records,
//! the number of records and a CRC-32 of everything before it. A file that
//! fails any check is not loaded (logged, never half-loaded).
//!
//! A cold copy of a primary's data directory started as a standby (or from
//! a base backup) finds the primary's saved usage: the primary writes that
//! usage itself, so a server in recovery drops a file saved by a primary
//! (counted as discarded) instead of writing it again after a promotion.
//! A standby's own saves are kept until it is promoted (or, when it
//! forwards its usage, put back into its table at the next start,
//! src/forward.rs); a copy of a standby's data directory drops them, as
//! they belong to the directory that saved them. A standby's batches for
//! the primary are files of their own (`pg_apikeys_forward.*`).
//!
//! The limits file is only loaded by the first launcher of fresh shared
//! memory; a launcher started again after `pg_terminate_backend` finds both
//! tables still in shared memory and takes nothing from disk.

use std::ffi::CStr;
use std::io::{Read, Write};
use std::path::PathBuf;

use pgrx::pg_sys;

use crate::{limits, token, usage};

const USAGE_FILE: &str = "pg_apikeys_usage.pending";
const RECOVERED_PREFIX: &str = "pg_apikeys_usage.recovered.";
const LIMITS_FILE: &str = "pg_apikeys_limits.saved";
const USAGE_MAGIC: &[u8; 8] = b"PGAKU005";
const LIMITS_MAGIC: &[u8; 8] = b"PGAKL002";
const FORWARD_PREFIX: &str = "pg_apikeys_forward.";
const FORWARD_MAGIC: &[u8; 8] = b"PGAKF001";
/// magic, system identifier, flags, record size, snapshot id
const HEADER_BYTES: usize = 8 + 8 + 4 + 4 + 8;
/// record count, CRC-32
const TRAILER_BYTES: usize = 8 + 4;
const SAVED_IN_RECOVERY: u32 = 1;

fn data_dir() -> Option<PathBuf> {
    // SAFETY: DataDir is set before any worker starts
    let dir = unsafe { pg_sys::DataDir };
    if dir.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated path
    let dir = unsafe { CStr::from_ptr(dir) }.to_str().ok()?;
    Some(PathBuf::from(dir))
}

fn path(name: &str) -> Option<PathBuf> {
    Some(data_dir()?.join(name))
}

fn system_identifier() -> u64 {
    // SAFETY: reads the control file's identifier, set at start-up
    unsafe { pg_sys::GetSystemIdentifier() }
}

fn in_recovery() -> bool {
    // SAFETY: reads shared state
    unsafe { pg_sys::RecoveryInProgress() }
}

/// This data directory, as 31 bits (its device and inode): a copy of it
/// (pg_basebackup, cp) is another directory. A standby's saved usage is its
/// own: a standby cloned from it must not send it again.
fn dir_identity() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let Some(m) = data_dir().and_then(|d| std::fs::metadata(d).ok()) else { return 0 };
    let h = m.dev().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ m.ino();
    ((h ^ (h >> 31)) & 0x7fff_ffff) as u32
}

fn header(magic: &[u8; 8], record: usize, snapshot: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES);
    out.extend_from_slice(magic);
    out.extend_from_slice(&system_identifier().to_le_bytes());
    let flags = if in_recovery() { SAVED_IN_RECOVERY | (dir_identity() << 1) } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(record as u32).to_le_bytes());
    out.extend_from_slice(&snapshot.to_le_bytes());
    out
}

/// The bytes of a file: header, records, trailer.
fn encode(magic: &[u8; 8], record: usize, snapshot: i64, records: &[u8]) -> Vec<u8> {
    let mut out = header(magic, record, snapshot);
    out.extend_from_slice(records);
    out.extend_from_slice(&((records.len() / record.max(1)) as u64).to_le_bytes());
    let crc = token::crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Why a saved file is not loaded.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// damaged: wrong magic, size or checksum
    Damaged,
    /// saved by another cluster
    OtherCluster,
    /// saved by a primary, found by a server in recovery
    FromPrimary,
    /// saved by a standby in another data directory (this one is a copy
    /// of it): that standby sends or writes it itself
    OtherStandby,
}

/// The records and snapshot id of a file, checked (`sysid`: this
/// cluster's identifier; `recovering`: whether this server is in recovery
/// now).
pub fn decode<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    record: usize,
    sysid: u64,
    recovering: bool,
    dir: Option<u32>,
) -> Result<(&'a [u8], i64), Refused> {
    if bytes.len() < HEADER_BYTES + TRAILER_BYTES || &bytes[..8] != magic {
        return Err(Refused::Damaged);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let word = |at: usize, n: usize| -> u64 {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&body[at..at + n]);
        u64::from_le_bytes(b)
    };
    if token::crc32(body).to_le_bytes() != crc {
        return Err(Refused::Damaged);
    }
    let count = word(body.len() - 8, 8);
    let records = &body[HEADER_BYTES..body.len() - 8];
    if word(20, 4) != record as u64 || count.checked_mul(record as u64) != Some(records.len() as u64) {
        return Err(Refused::Damaged);
    }
    if word(8, 8) != sysid {
        return Err(Refused::OtherCluster);
    }
    let flags = word(16, 4) as u32;
    let saved_in_recovery = flags & SAVED_IN_RECOVERY != 0;
    if recovering && !saved_in_recovery {
        return Err(Refused::FromPrimary);
    }
    if saved_in_recovery && dir.is_some_and(|d| flags >> 1 != d) {
        return Err(Refused::OtherStandby);
    }
    Ok((records, word(24, 8) as i64))
}

fn write(name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let Some(path) = path(name) else { return Ok(()) };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// Read and remove a saved file (None when there is none).
fn take_file(name: &str) -> Option<Vec<u8>> {
    let path = path(name)?;
    let mut f = std::fs::File::open(&path).ok()?;
    let mut buf = Vec::new();
    let read = f.read_to_end(&mut buf);
    let _ = std::fs::remove_file(&path);
    read.ok().map(|_| buf)
}

fn entries_of(records: &[u8]) -> impl Iterator<Item = usage::Entry> + '_ {
    records.chunks_exact(usage::ENTRY_BYTES).map(|chunk| {
        // SAFETY: ENTRY_BYTES bytes of a saved Entry (plain data, any bit pattern)
        unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<usage::Entry>()) }
    })
}

/// Save a copy of the usage table as `pg_apikeys_usage.pending` (a new
/// snapshot id; `sync`: flushed to disk, as at shutdown). Written piece
/// by piece, one partition at a time, into a temporary file renamed over
/// the last copy. Returns the snapshot id; on a failure the last copy is
/// removed (a write round after an older copy could otherwise have that
/// copy's entries written twice after a crash) and a warning is logged.
pub fn snapshot_usage(sync: bool) -> i64 {
    let id = usage::next_snapshot();
    let Some(path) = path(USAGE_FILE) else { return id };
    let tmp = path.with_extension("tmp");
    let written = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let head = header(USAGE_MAGIC, usage::ENTRY_BYTES, id);
        let mut crc = token::crc32(&head);
        out.write_all(&head)?;
        let count = usage::each_partition(|entries| {
            // SAFETY: Entry is repr(C) plain data
            let bytes = unsafe {
                std::slice::from_raw_parts(entries.as_ptr().cast::<u8>(), std::mem::size_of_val(entries))
            };
            crc = token::crc32_more(crc, bytes);
            out.write_all(bytes)
        })?;
        let tail = (count as u64).to_le_bytes();
        crc = token::crc32_more(crc, &tail);
        out.write_all(&tail)?;
        out.write_all(&crc.to_le_bytes())?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        if sync {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&path);
        warn_once(&format!(
            "pg_apikeys: could not save the usage table ({e}); a crash now loses what is pending"
        ));
    }
    id
}

fn warn_once(msg: &str) {
    thread_local! {
        static LAST: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    }
    let now = limits::clock_now();
    if LAST.with(|l| now - l.get() >= 60_000_000) {
        LAST.with(|l| l.set(now));
        pgrx::warning!("{msg}");
    }
}

/// Usage a standby sends to the primary: the batch `batch` of database
/// `db` from the standby's run `source`, on disk (synced) before it is
/// sent and until the primary has answered, as
/// `pg_apikeys_forward.<db>.<source>.<batch>` (src/forward.rs).
pub fn write_batch(db: u32, source: u64, batch: i64, entries: &[usage::Entry]) -> std::io::Result<()> {
    // SAFETY: Entry is repr(C) plain data
    let records =
        unsafe { std::slice::from_raw_parts(entries.as_ptr().cast::<u8>(), std::mem::size_of_val(entries)) };
    write(
        &format!("{FORWARD_PREFIX}{db}.{source:016x}.{batch}"),
        &encode(FORWARD_MAGIC, usage::ENTRY_BYTES, batch, records),
    )
}

/// The batches of database `db` on disk, in the order they were made:
/// (path, source, batch).
pub fn batch_files(db: u32) -> Vec<(PathBuf, u64, i64)> {
    let Some(dir) = data_dir() else { return Vec::new() };
    let Ok(list) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(PathBuf, u64, i64)> = list
        .filter_map(|d| {
            let d = d.ok()?;
            let name = d.file_name();
            let rest = name.to_str()?.strip_prefix(FORWARD_PREFIX)?;
            let mut parts = rest.split('.');
            let file_db = parts.next()?.parse::<u32>().ok()?;
            let source = u64::from_str_radix(parts.next()?, 16).ok()?;
            let batch = parts.next()?.parse::<i64>().ok()?;
            (file_db == db && parts.next().is_none()).then(|| (d.path(), source, batch))
        })
        .collect();
    out.sort_by_key(|(p, _, batch)| (std::fs::metadata(p).and_then(|m| m.modified()).ok(), *batch));
    out
}

/// The databases that have batches on disk.
pub fn batch_dbs() -> Vec<u32> {
    let Some(dir) = data_dir() else { return Vec::new() };
    let Ok(list) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<u32> = list
        .filter_map(|d| {
            let name = d.ok()?.file_name();
            let rest = name.to_str()?.strip_prefix(FORWARD_PREFIX)?;
            let (db, tail) = rest.split_once('.')?;
            // (a file being written ends in .tmp: not a batch yet)
            (!tail.ends_with(".tmp")).then_some(())?;
            db.parse::<u32>().ok()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The entries of a batch file (None: unreadable or damaged).
pub fn read_batch(file: &std::path::Path) -> Option<Vec<usage::Entry>> {
    let bytes = std::fs::read(file).ok()?;
    let (records, _) =
        decode(&bytes, FORWARD_MAGIC, usage::ENTRY_BYTES, system_identifier(), false, None).ok()?;
    Some(entries_of(records).filter(usage::plausible).collect())
}

/// A batch the primary has (or that is given up).
pub fn forget_batch(file: &std::path::Path) {
    let _ = std::fs::remove_file(file);
}

/// The last copy of the usage table, removed: a standby that forwards its
/// usage keeps no copy between shutdowns (what it sent must not come back
/// from an older copy after a crash).
pub fn forget_pending_copy() {
    if let Some(p) = path(USAGE_FILE) {
        let _ = std::fs::remove_file(p);
    }
}

/// At shutdown (or when the launcher is stopped): save both tables.
pub fn save_all() {
    snapshot_usage(true);
    let limits = limits::export();
    if !limits.is_empty()
        && write(LIMITS_FILE, &encode(LIMITS_MAGIC, limits::ENTRY_BYTES, 0, &limits)).is_err()
    {
        pgrx::warning!("pg_apikeys: could not save rate windows and credit debits at shutdown");
    }
}

/// At the first launcher of fresh shared memory: the last copy of the
/// usage table becomes a recovered file (its entries are written by each
/// database's flusher, less what a round after it wrote).
pub fn recover_usage() {
    let Some(file) = path(USAGE_FILE) else { return };
    let Ok(bytes) = std::fs::read(&file) else { return };
    match decode(
        &bytes,
        USAGE_MAGIC,
        usage::ENTRY_BYTES,
        system_identifier(),
        in_recovery(),
        Some(dir_identity()),
    ) {
        Ok((records, snapshot)) => {
            usage::note_snapshot(snapshot);
            let to = file.with_file_name(format!("{RECOVERED_PREFIX}{snapshot}"));
            if records.is_empty() || std::fs::rename(&file, &to).is_err() {
                let _ = std::fs::remove_file(&file);
            }
        }
        Err(why @ (Refused::FromPrimary | Refused::OtherStandby)) => {
            // the primary (or the standby this one was copied from) writes
            // or sends its own usage
            pgrx::log!("pg_apikeys: saved usage not loaded ({why:?}): the server that saved it counts it");
            let (records, _) =
                decode(&bytes, USAGE_MAGIC, usage::ENTRY_BYTES, system_identifier(), false, None)
                    .unwrap_or((&[], 0));
            usage::count_discarded(entries_of(records).map(|e| e.verified + e.rejected).sum());
            let _ = std::fs::remove_file(&file);
        }
        Err(why) => {
            pgrx::warning!("pg_apikeys: saved usage not loaded ({why:?})");
            let _ = std::fs::remove_file(&file);
        }
    }
}

/// The recovered files: (path, snapshot id).
pub fn recovered_files() -> Vec<(PathBuf, i64)> {
    let Some(dir) = data_dir() else { return Vec::new() };
    let Ok(list) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(PathBuf, i64)> = list
        .filter_map(|d| {
            let d = d.ok()?;
            let name = d.file_name();
            let id = name.to_str()?.strip_prefix(RECOVERED_PREFIX)?.parse::<i64>().ok()?;
            Some((d.path(), id))
        })
        .collect();
    out.sort_by_key(|(_, id)| *id);
    out
}

/// The plausible entries of a recovered file (None: unreadable or damaged).
pub fn read_recovered(file: &std::path::Path) -> Option<Vec<usage::Entry>> {
    let bytes = std::fs::read(file).ok()?;
    let (records, _) =
        decode(&bytes, USAGE_MAGIC, usage::ENTRY_BYTES, system_identifier(), false, None).ok()?;
    Some(entries_of(records).filter(usage::plausible).collect())
}

/// A recovered file every database of which has its entries written.
pub fn forget_recovered(file: &std::path::Path) {
    let _ = std::fs::remove_file(file);
}

/// At the first launcher of fresh shared memory: take back the limits table.
pub fn load_limits() {
    let Some(bytes) = take_file(LIMITS_FILE) else { return };
    let (records, _) =
        match decode(&bytes, LIMITS_MAGIC, limits::ENTRY_BYTES, system_identifier(), in_recovery(), None) {
            Ok(r) => r,
            Err(why) => {
                pgrx::warning!("pg_apikeys: saved rate windows and credit debits not loaded ({why:?})");
                return;
            }
        };
    let bad = records.chunks_exact(limits::ENTRY_BYTES).filter(|c| !limits::import(c)).count();
    if bad > 0 {
        pgrx::warning!("pg_apikeys: {bad} saved limits entries were not plausible and were left out");
    }
}

/// Whether a saved limits table waits to be loaded (asked as shared
/// memory is made, in the postmaster, whose working directory is the data
/// directory).
pub fn limits_saved() -> bool {
    std::path::Path::new(LIMITS_FILE).exists()
}

/// A relaunched launcher: the limits table is still in shared memory.
pub fn forget_limits() {
    let _ = take_file(LIMITS_FILE);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sysid: u64, flags: u32, records: &[u8], record: usize) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(USAGE_MAGIC);
        out.extend_from_slice(&sysid.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&(record as u32).to_le_bytes());
        out.extend_from_slice(&77i64.to_le_bytes());
        out.extend_from_slice(records);
        out.extend_from_slice(&((records.len() / record) as u64).to_le_bytes());
        let crc = token::crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn a_saved_file_loads_only_whole_and_on_its_own_cluster() {
        let records = [7u8; 32];
        let good = file(42, 0, &records, 16);
        assert_eq!(decode(&good, USAGE_MAGIC, 16, 42, false, None), Ok((&records[..], 77)));
        assert_eq!(decode(&good, USAGE_MAGIC, 16, 43, false, None), Err(Refused::OtherCluster));
        assert_eq!(decode(&good, LIMITS_MAGIC, 16, 42, false, None), Err(Refused::Damaged));
        assert_eq!(decode(&good, USAGE_MAGIC, 32, 42, false, None), Err(Refused::Damaged));
        // a primary's save found by a standby (a copy made into one)
        assert_eq!(decode(&good, USAGE_MAGIC, 16, 42, true, None), Err(Refused::FromPrimary));
        let standby = file(42, SAVED_IN_RECOVERY, &records, 16);
        assert_eq!(decode(&standby, USAGE_MAGIC, 16, 42, true, None), Ok((&records[..], 77)));
        // a standby's save, found in its own data directory or in a copy of it
        let own = file(42, SAVED_IN_RECOVERY | (1234 << 1), &records, 16);
        assert_eq!(decode(&own, USAGE_MAGIC, 16, 42, true, Some(1234)), Ok((&records[..], 77)));
        assert_eq!(decode(&own, USAGE_MAGIC, 16, 42, false, Some(1234)), Ok((&records[..], 77)));
        assert_eq!(decode(&own, USAGE_MAGIC, 16, 42, true, Some(999)), Err(Refused::OtherStandby));
        assert_eq!(decode(&own, USAGE_MAGIC, 16, 42, false, Some(999)), Err(Refused::OtherStandby));
        // one flipped bit anywhere, or a cut
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert!(decode(&bad, USAGE_MAGIC, 16, 42, false, None).is_err(), "bit at {i}");
        }
        assert!(decode(&good[..good.len() - 1], USAGE_MAGIC, 16, 42, false, None).is_err());
        assert!(decode(&[], USAGE_MAGIC, 16, 42, false, None).is_err());
    }
}
