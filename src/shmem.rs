//! What the two shared-memory tables (usage.rs, limits.rs) share: the hash
//! that places an id in a table, and the partition locks.

use pgrx::pg_sys;

/// A 64-bit hash of a 16-byte id (a key or an owner), its database and a
/// tag (the hour of a usage entry, the kind of a limits entry): the words
/// mixed, then splitmix64's finaliser. The low bits pick the partition, the
/// rest the place inside it.
pub fn mix(dbid: u32, id: &[u8; 16], tag: u64) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&id[..8]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&id[8..]);
    let mut z = u64::from_le_bytes(a)
        ^ u64::from_le_bytes(b).rotate_left(17)
        ^ (u64::from(dbid) << 32)
        ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Take partition `p`'s lock of a tranche.
///
/// # Safety
/// `locks` is a tranche of named LWLocks in shared memory with more than `p` locks.
pub unsafe fn acquire(locks: *mut pg_sys::LWLockPadded, p: usize, exclusive: bool) {
    let mode = if exclusive { pg_sys::LWLockMode::LW_EXCLUSIVE } else { pg_sys::LWLockMode::LW_SHARED };
    // SAFETY: as the caller promises
    unsafe { pg_sys::LWLockAcquire(&mut (*locks.add(p)).lock, mode) };
}

/// Release partition `p`'s lock.
///
/// # Safety
/// As [`acquire`], and this backend holds the lock.
pub unsafe fn release(locks: *mut pg_sys::LWLockPadded, p: usize) {
    // SAFETY: as the caller promises
    unsafe { pg_sys::LWLockRelease(&mut (*locks.add(p)).lock) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_separates_databases_tags_and_ids() {
        let id = [7u8; 16];
        let h = mix(1, &id, 0);
        assert_ne!(h, mix(2, &id, 0));
        assert_ne!(h, mix(1, &id, 1));
        let mut other = id;
        other[15] ^= 1;
        assert_ne!(h, mix(1, &other, 0));
        // the partition bits spread: 32 partitions over 4096 ids
        let mut seen = [0u32; 32];
        for i in 0..4096u32 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            seen[(mix(1, &k, 0) & 31) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 64 && n < 192), "{seen:?}");
    }
}
