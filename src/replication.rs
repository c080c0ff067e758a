//! Logical replication: how the triggers recognise a change that a
//! subscription is applying (docs/operations.md, "Logical replication").
//!
//! A replicated change already carries everything its transaction wrote on
//! the publisher: the audit rows, the keys a member removal revoked, the
//! stamped provenance. The triggers that derive writes therefore stand aside
//! for it, while the guards (latches, no DELETE or TRUNCATE) keep firing.
//!
//! The test is the backend's own state, not `session_replication_role`: the
//! apply and table-synchronisation workers of a subscription are the only
//! processes for which PostgreSQL's `IsLogicalWorker()` is true, and no
//! setting, role or client can make an ordinary backend one. A superuser who
//! sets `session_replication_role = replica` by hand still gets every audit
//! row and every latch.

use pgrx::prelude::*;

/// `apikeys.applying_replicated_change()`: whether this backend is a logical
/// replication worker (apply, table synchronisation or, on PostgreSQL 16+,
/// parallel apply) applying a subscription's changes.
#[pg_extern(sql = false)]
fn applying_replicated_change() -> bool {
    // SAFETY: reads a backend-local pointer (MyLogicalRepWorker != NULL);
    // callable in any backend at any time.
    unsafe { pg_sys::IsLogicalWorker() }
}
