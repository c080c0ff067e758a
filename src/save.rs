//! What a clean shutdown keeps for the next start: the usage not yet
//! written (`pg_apikeys_usage.pending`) and the limits table, that is every
//! rate window, credit balance and debit not yet written
//! (`pg_apikeys_limits.saved`), both in the data directory. A routine
//! restart therefore serves nothing twice and opens no fresh window.
//!
//! Each file: a magic number, the cluster's system identifier, whether it
//! was saved on a standby, the number of records, the records, and a CRC-32
//! of everything before it. A file that fails any check is not loaded
//! (counted and logged, never half-loaded). Loading removes the file.
//!
//! A cold copy of a primary's data directory started as a standby (or from
//! a base backup) finds the primary's saved usage: the primary writes that
//! usage itself, so a server in recovery drops a file saved by a primary
//! (counted as discarded) instead of writing it again after a promotion.
//! A standby's own saves are loaded by the standby.
//!
//! The usage file is taken out of shared memory as it is written, so a
//! launcher stopped by `pg_terminate_backend` and started again takes it
//! back without counting anything twice. The limits file is only loaded by
//! the first launcher of fresh shared memory (a server start, or the reset
//! after a crash); a relaunch finds the table still in shared memory and
//! removes the file.

use std::ffi::CStr;
use std::io::{Read, Write};
use std::path::PathBuf;

use pgrx::pg_sys;

use crate::{limits, token, usage};

const USAGE_FILE: &str = "pg_apikeys_usage.pending";
const LIMITS_FILE: &str = "pg_apikeys_limits.saved";
const USAGE_MAGIC: &[u8; 8] = b"PGAKU003";
const LIMITS_MAGIC: &[u8; 8] = b"PGAKL001";
/// magic, system identifier, flags, record size, count
const HEADER_BYTES: usize = 8 + 8 + 4 + 4 + 8;
const SAVED_IN_RECOVERY: u32 = 1;

fn path(name: &str) -> Option<PathBuf> {
    // SAFETY: DataDir is set before any worker starts
    let dir = unsafe { pg_sys::DataDir };
    if dir.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated path
    let dir = unsafe { CStr::from_ptr(dir) }.to_str().ok()?;
    Some(PathBuf::from(dir).join(name))
}

fn system_identifier() -> u64 {
    // SAFETY: reads the control file's identifier, set at start-up
    unsafe { pg_sys::GetSystemIdentifier() }
}

fn in_recovery() -> bool {
    // SAFETY: reads shared state
    unsafe { pg_sys::RecoveryInProgress() }
}

/// The bytes of a file: header, records, CRC-32.
fn encode(magic: &[u8; 8], record: usize, records: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + records.len() + 4);
    out.extend_from_slice(magic);
    out.extend_from_slice(&system_identifier().to_le_bytes());
    let flags = if in_recovery() { SAVED_IN_RECOVERY } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(record as u32).to_le_bytes());
    out.extend_from_slice(&((records.len() / record.max(1)) as u64).to_le_bytes());
    out.extend_from_slice(records);
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
}

/// The records of a file, checked (`sysid`: this cluster's identifier;
/// `recovering`: whether this server is in recovery now).
pub fn decode<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    record: usize,
    sysid: u64,
    recovering: bool,
) -> Result<&'a [u8], Refused> {
    if bytes.len() < HEADER_BYTES + 4 || &bytes[..8] != magic {
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
    let count = word(24, 8);
    let records = &body[HEADER_BYTES..];
    if word(20, 4) != record as u64 || count.checked_mul(record as u64) != Some(records.len() as u64) {
        return Err(Refused::Damaged);
    }
    if word(8, 8) != sysid {
        return Err(Refused::OtherCluster);
    }
    let saved_in_recovery = word(16, 4) as u32 & SAVED_IN_RECOVERY != 0;
    if recovering && !saved_in_recovery {
        return Err(Refused::FromPrimary);
    }
    Ok(records)
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

/// At shutdown (or when the launcher is stopped): save both tables.
pub fn save_all() {
    let entries = usage::take_all();
    if !entries.is_empty() {
        let mut records = Vec::with_capacity(entries.len() * usage::ENTRY_BYTES);
        for e in &entries {
            // SAFETY: Entry is repr(C) plain data
            records.extend_from_slice(unsafe {
                std::slice::from_raw_parts((e as *const usage::Entry).cast::<u8>(), usage::ENTRY_BYTES)
            });
        }
        if write(USAGE_FILE, &encode(USAGE_MAGIC, usage::ENTRY_BYTES, &records)).is_err() {
            usage::count_discarded(entries.iter().map(|e| e.verified + e.rejected).sum());
            pgrx::warning!("pg_apikeys: could not save pending usage at shutdown");
        }
    }
    let limits = limits::export();
    if !limits.is_empty() && write(LIMITS_FILE, &encode(LIMITS_MAGIC, limits::ENTRY_BYTES, &limits)).is_err()
    {
        pgrx::warning!("pg_apikeys: could not save rate windows and credit debits at shutdown");
    }
}

/// At a launcher's start: take back the usage a shutdown saved.
pub fn load_usage() {
    let Some(bytes) = take_file(USAGE_FILE) else { return };
    let records = match decode(&bytes, USAGE_MAGIC, usage::ENTRY_BYTES, system_identifier(), in_recovery()) {
        Ok(r) => r,
        Err(why) => {
            pgrx::warning!("pg_apikeys: saved usage not loaded ({why:?})");
            return;
        }
    };
    let mut bad = 0u64;
    for chunk in records.chunks_exact(usage::ENTRY_BYTES) {
        // SAFETY: ENTRY_BYTES bytes of a saved Entry (plain data, any bit pattern)
        let e: usage::Entry = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast()) };
        if usage::plausible(&e) {
            usage::restore(&e);
        } else {
            bad += 1;
        }
    }
    if bad > 0 {
        pgrx::warning!("pg_apikeys: {bad} saved usage entries were not plausible and were left out");
    }
}

/// At the first launcher of fresh shared memory: take back the limits table.
pub fn load_limits() {
    let Some(bytes) = take_file(LIMITS_FILE) else { return };
    let records = match decode(&bytes, LIMITS_MAGIC, limits::ENTRY_BYTES, system_identifier(), in_recovery())
    {
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
        out.extend_from_slice(&((records.len() / record) as u64).to_le_bytes());
        out.extend_from_slice(records);
        let crc = token::crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn a_saved_file_loads_only_whole_and_on_its_own_cluster() {
        let records = [7u8; 32];
        let good = file(42, 0, &records, 16);
        assert_eq!(decode(&good, USAGE_MAGIC, 16, 42, false), Ok(&records[..]));
        assert_eq!(decode(&good, USAGE_MAGIC, 16, 43, false), Err(Refused::OtherCluster));
        assert_eq!(decode(&good, LIMITS_MAGIC, 16, 42, false), Err(Refused::Damaged));
        assert_eq!(decode(&good, USAGE_MAGIC, 32, 42, false), Err(Refused::Damaged));
        // a primary's save found by a standby (a copy made into one)
        assert_eq!(decode(&good, USAGE_MAGIC, 16, 42, true), Err(Refused::FromPrimary));
        let standby = file(42, SAVED_IN_RECOVERY, &records, 16);
        assert_eq!(decode(&standby, USAGE_MAGIC, 16, 42, true), Ok(&records[..]));
        // one flipped bit anywhere, or a cut
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert!(decode(&bad, USAGE_MAGIC, 16, 42, false).is_err(), "bit at {i}");
        }
        assert!(decode(&good[..good.len() - 1], USAGE_MAGIC, 16, 42, false).is_err());
        assert!(decode(&[], USAGE_MAGIC, 16, 42, false).is_err());
    }
}
