//! What the two shared-memory tables (usage.rs, limits.rs) share: the hash
//! that places an id in a table, the partition locks, and the count of
//! entries each workspace holds in a partition (its share).

use pgrx::pg_sys;

/// The secret key of [`mix`], in shared memory: random at every start of
/// fresh shared memory (null until then, and in a backend without the
/// preload, which has no tables to place anything in).
static SEED: std::sync::atomic::AtomicPtr<[u64; 2]> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Use `seed` (in shared memory, set before any entry is placed) as the
/// key of [`mix`].
pub fn set_seed(seed: *mut [u64; 2]) {
    SEED.store(seed, std::sync::atomic::Ordering::Release);
}

/// A 64-bit hash of a 16-byte id (a key or an owner), its database and a
/// tag (the hour of a usage entry, the kind of a limits entry): SipHash-2-4
/// keyed with a secret drawn at server start, so no tenant can compute
/// where its entries land and pack them into the probe run that other
/// tenants' entries need. The low bits pick the partition, the rest the
/// place inside it. (Without a key, in unit tests: splitmix64's finaliser
/// over the words.)
pub fn mix(dbid: u32, id: &[u8; 16], tag: u64) -> u64 {
    let seed = SEED.load(std::sync::atomic::Ordering::Acquire);
    if !seed.is_null() {
        use std::hash::Hasher;
        // SAFETY: a pointer into shared memory, set once at start-up
        let [k0, k1] = unsafe { *seed };
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
        h.write(id);
        h.write_u32(dbid);
        h.write_u64(tag);
        return h.finish();
    }
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

/// Empty place `at` of a table with linear probing (no tombstones) and
/// shift the later entries of its run back into the hole, each only when
/// the hole lies between its own place (`home`) and where it sits: no entry
/// is ever separated from its place by an empty one, and none moves further
/// from it.
pub fn shift_back<T: Copy + Default>(
    slots: &mut [T],
    at: usize,
    used: impl Fn(&T) -> bool,
    home: impl Fn(&T) -> usize,
) {
    let per = slots.len();
    let mut hole = at;
    slots[hole] = T::default();
    let mut j = hole;
    for _ in 1..per {
        j = (j + 1) % per;
        if !used(&slots[j]) {
            break;
        }
        let h = home(&slots[j]);
        if (hole + per - h) % per < (j + per - h) % per {
            slots[hole] = slots[j];
            slots[j] = T::default();
            hole = j;
        }
    }
}

/// How many entries one workspace (of one database) holds in one
/// partition of a table. Each partition keeps as many of these as it has
/// entries, so they can never run out: at most one workspace per entry.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// 0: this place was never used (a probe run ends here)
    pub dbid: u32,
    pub count: u32,
    pub workspace: [u8; 16],
}

fn tenant_home(dbid: u32, ws: &[u8; 16], len: usize) -> usize {
    ((mix(dbid, ws, 0x007e_4a47_u64) >> 7) as usize) % len
}

/// Count one more entry for (dbid, ws) in a partition's tenants, unless it
/// holds `limit` already: false then (the workspace has used its share).
pub fn tenant_add(tenants: &mut [Tenant], dbid: u32, ws: &[u8; 16], limit: u32) -> bool {
    let len = tenants.len();
    let start = tenant_home(dbid, ws, len);
    let mut reuse = None;
    for i in 0..len {
        let at = (start + i) % len;
        let t = &tenants[at];
        if t.dbid == 0 {
            // the end of the run: (dbid, ws) holds nothing here
            let at = reuse.unwrap_or(at);
            if limit == 0 {
                return false;
            }
            tenants[at] = Tenant { dbid, count: 1, workspace: *ws };
            return true;
        }
        if t.dbid == dbid && t.workspace == *ws {
            if t.count >= limit {
                return false;
            }
            tenants[at].count += 1;
            return true;
        }
        if t.count == 0 && reuse.is_none() {
            reuse = Some(at);
        }
    }
    // every place used: take a free one (there is one: at most one
    // workspace per entry, and this entry is not placed yet)
    match reuse {
        Some(at) if limit > 0 => {
            tenants[at] = Tenant { dbid, count: 1, workspace: *ws };
            true
        }
        _ => false,
    }
}

/// Count one entry less for (dbid, ws).
pub fn tenant_sub(tenants: &mut [Tenant], dbid: u32, ws: &[u8; 16]) {
    let len = tenants.len();
    let start = tenant_home(dbid, ws, len);
    for i in 0..len {
        let at = (start + i) % len;
        let t = tenants[at];
        if t.dbid == 0 {
            return;
        }
        if t.dbid == dbid && t.workspace == *ws {
            tenants[at].count = t.count.saturating_sub(1);
            if tenants[at].count == 0 && tenants[(at + 1) % len].dbid == 0 {
                // the end of its run: free it, and the free places before it
                let mut j = at;
                while tenants[j].dbid != 0 && tenants[j].count == 0 {
                    tenants[j] = Tenant::default();
                    j = (j + len - 1) % len;
                }
            }
            return;
        }
    }
}

/// How many entries a workspace may hold in a partition of `per` entries
/// with a share of `percent` (at least one).
pub fn share_limit(per: usize, percent: i32) -> u32 {
    ((per as u64 * percent.clamp(1, 100) as u64 / 100).max(1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_count_and_refuse_past_their_share() {
        let mut t = vec![Tenant::default(); 8];
        let (a, b) = ([1u8; 16], [2u8; 16]);
        assert!(tenant_add(&mut t, 1, &a, 3));
        assert!(tenant_add(&mut t, 1, &a, 3));
        assert!(tenant_add(&mut t, 1, &a, 3));
        assert!(!tenant_add(&mut t, 1, &a, 3), "a's share is 3");
        assert!(tenant_add(&mut t, 1, &b, 3), "b is not a");
        assert!(tenant_add(&mut t, 2, &a, 3), "another database's a is not a");
        tenant_sub(&mut t, 1, &a);
        assert!(tenant_add(&mut t, 1, &a, 3), "room again after one left");
        // counts come and go without losing anyone
        for _ in 0..3 {
            tenant_sub(&mut t, 1, &a);
        }
        tenant_sub(&mut t, 1, &b);
        tenant_sub(&mut t, 2, &a);
        assert!(t.iter().all(|x| x.count == 0));
        // many workspaces, one entry each, in a full array
        let mut t = vec![Tenant::default(); 16];
        for i in 0..16u8 {
            assert!(tenant_add(&mut t, 1, &[i; 16], 1), "{i}");
        }
        for i in 0..16u8 {
            assert!(!tenant_add(&mut t, 1, &[i; 16], 1), "{i} is at its share");
        }
        for i in (0..16u8).step_by(2) {
            tenant_sub(&mut t, 1, &[i; 16]);
        }
        for i in (0..16u8).step_by(2) {
            assert!(tenant_add(&mut t, 1, &[i + 100; 16], 1), "{i}: a freed place is taken");
        }
        for i in (1..16u8).step_by(2) {
            assert!(!tenant_add(&mut t, 1, &[i; 16], 1), "{i} still counts");
        }
        assert_eq!(share_limit(2048, 50), 1024);
        assert_eq!(share_limit(10, 1), 1);
        assert_eq!(share_limit(10, 500), 10);
    }

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
