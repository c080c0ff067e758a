//! Usage from hot standbys to the primary (docs/operations.md, "Read
//! replicas"; docs/architecture.md, "The usage engine").
//!
//! A standby cannot write, so with `apikeys.primary_conninfo` set its
//! engine sends what it counted to the primary instead. At every interval
//! the launcher starts a flusher per database with pending usage, as on a
//! primary; on a standby that flusher
//!
//! 1. takes this database's entries out of shared memory, numbers them as
//!    the next batch of this run of the standby (a random `source` made at
//!    each start, and a counter) and saves them to
//!    `pg_apikeys_forward.<db>.<source>.<batch>` (synced);
//! 2. sends every batch on disk, oldest first (sent before with no answer,
//!    or left by a crash, then the new one):
//!    `SELECT apikeys.apply_forwarded_usage(source, batch, usage)` on the
//!    primary, over a connection made with the `tokio-postgres` client
//!    library (`apikeys.primary_conninfo`, with this database's name), on a
//!    runtime of this thread: every wait is bounded, ends on shutdown or
//!    the postmaster's death, and saves what is counted meanwhile at every
//!    interval;
//! 3. removes each file once the primary answered.
//!
//! The primary applies a (source, batch) once (`apikeys.usage_sources`
//! records the last batch of each source in the same transaction), so a
//! batch sent again after its answer was lost counts once; a batch is on
//! disk before it leaves shared memory, so a crash loses only what was
//! counted since the last batch (one interval). A standby that forwards
//! keeps no copy of its table between intervals (an older copy could bring
//! back what was sent); its copy saved at a clean shutdown holds only what
//! was not taken, and the next start puts that back into the table. After a
//! promotion the batches left on disk are applied here, through the same
//! function: `usage_sources` came with the replicated data, so a batch the
//! old primary applied and replicated is not applied twice.

use std::time::Duration;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

use crate::{gucs, save, usage};

/// Seconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_UNIX: i64 = 946_684_800;

/// The conninfo the engine forwards with (None: not set; the standby keeps
/// its usage until it is promoted).
pub fn conninfo() -> Option<String> {
    let c = gucs::PRIMARY_CONNINFO.get()?;
    let c = c.to_str().ok()?.trim().to_owned();
    (!c.is_empty()).then_some(c)
}

pub fn configured() -> bool {
    conninfo().is_some()
}

/// A batch as the primary's `apply_forwarded_usage` reads it: a JSON array
/// of {k: key, h: the hour (Unix seconds), v: verified, r: rejected, rl,
/// ue, sc, rf: rejected by outcome, u: the latest accepted use (Unix
/// microseconds, 0: none)}.
pub fn payload(entries: &[usage::Entry]) -> String {
    let mut out = String::with_capacity(entries.len() * 160 + 2);
    out.push('[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let k = uuid_text(&e.key);
        let hour = e.hour.saturating_mul(3600).saturating_add(PG_EPOCH_UNIX);
        let used = if e.last_used == 0 { 0 } else { e.last_used.saturating_add(PG_EPOCH_UNIX * 1_000_000) };
        out.push_str(&format!(
            r#"{{"k":"{k}","h":{hour},"v":{},"r":{},"rl":{},"ue":{},"sc":{},"rf":{},"u":{used}}}"#,
            e.verified, e.rejected, e.why[0], e.why[1], e.why[2], e.why[3]
        ));
    }
    out.push(']');
    out
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// How long connecting (with the login) and one batch may take; the
/// standby's shutdown and the postmaster's death end a wait at once.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
const SEND_LIMIT: Duration = Duration::from_secs(30);

/// A connection to the primary, made when first needed, on a runtime of
/// this worker's own thread.
struct Primary {
    db: u32,
    conninfo: String,
    dbname: String,
    /// when this database's pending usage was last saved as a batch
    saved: std::time::Instant,
    rt: tokio::runtime::Runtime,
    client: Option<tokio_postgres::Client>,
}

/// Why a wait ended early.
fn stop_reason() -> Option<&'static str> {
    // SAFETY: reads of this process's interrupt flag and the postmaster's pid
    let (dying, postmaster) = unsafe { (pg_sys::ProcDiePending != 0, pg_sys::PostmasterPid) };
    if dying {
        return Some("the standby is shutting down");
    }
    // (an orphan's parent is no longer the postmaster)
    if std::os::unix::process::parent_id() as i32 != postmaster {
        return Some("the postmaster is gone");
    }
    None
}

/// Run `fut` on `rt` for at most `limit`, a quarter second at a time,
/// giving up when the server shuts down or the postmaster dies; `tick` runs
/// between the quarter seconds (it saves what is counted meanwhile).
fn bounded<F: std::future::Future>(
    rt: &tokio::runtime::Runtime,
    fut: F,
    limit: Duration,
    tick: &mut dyn FnMut(),
) -> Result<F::Output, String> {
    let mut fut = Box::pin(fut);
    let deadline = std::time::Instant::now() + limit;
    loop {
        tick();
        // (the timer is made inside the runtime, as tokio requires)
        if let Ok(v) = rt.block_on(async { tokio::time::timeout(Duration::from_millis(250), &mut fut).await })
        {
            return Ok(v);
        }
        if let Some(why) = stop_reason() {
            return Err(why.to_owned());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("no answer within {} s", limit.as_secs()));
        }
    }
}

fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        // (the server's words: no conninfo, no password, no batch)
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => {
            let mut out = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                out.push_str(&format!(": {s}"));
                src = s.source();
            }
            out
        }
    }
}

/// This database's pending usage, if any, to disk as the next batch.
fn save_pending(db: u32) {
    let taken = usage::take_db(db);
    if taken.is_empty() {
        return;
    }
    let (source, batch) = usage::next_batch();
    if let Err(e) = save::write_batch(db, source, batch, &taken) {
        // not on disk: not sent either; back into the table
        usage::put_back(&taken);
        usage::warn_forward(&format!("could not save usage batch {batch} before sending it: {e}"));
    }
}

impl Primary {
    /// While a wait for the primary lasts, what is counted meanwhile still
    /// goes to disk at every interval.
    fn tick(db: u32, saved: &mut std::time::Instant) {
        let every = Duration::from_secs(gucs::USAGE_FLUSH_INTERVAL.get().max(1) as u64);
        if saved.elapsed() >= every {
            save_pending(db);
            *saved = std::time::Instant::now();
        }
    }

    fn client(&mut self) -> Result<(), String> {
        if self.client.is_some() {
            return Ok(());
        }
        let rt = &self.rt;
        let mut cfg: tokio_postgres::Config =
            self.conninfo.parse().map_err(|e| format!("apikeys.primary_conninfo is not a conninfo: {e}"))?;
        cfg.dbname(&self.dbname)
            .application_name("pg_apikeys usage forward")
            .connect_timeout(CONNECT_LIMIT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .options("-c statement_timeout=30s -c lock_timeout=10s");
        let (db, saved) = (self.db, &mut self.saved);
        let (client, connection) =
            bounded(rt, cfg.connect(tokio_postgres::NoTls), CONNECT_LIMIT, &mut || Self::tick(db, saved))
                .map_err(|why| format!("could not connect to the primary: {why}"))?
                .map_err(|e| format!("could not connect to the primary: {}", db_error(&e)))?;
        // the connection's own task: it runs while this thread waits in
        // `bounded`, and ends with the runtime
        rt.spawn(connection);
        self.client = Some(client);
        Ok(())
    }

    /// Send one batch: whether the primary applied it now (false: it had
    /// applied it before).
    fn send(&mut self, source: u64, batch: i64, entries: &[usage::Entry]) -> Result<bool, String> {
        let body = payload(entries);
        self.client()?;
        let Some(client) = self.client.as_ref() else {
            return Err("no connection to the primary".to_owned()); // (client() made one or failed)
        };
        let source = source as i64;
        let (rt, db, saved) = (&self.rt, self.db, &mut self.saved);
        let r = bounded(
            rt,
            client.query_one(
                "SELECT apikeys.apply_forwarded_usage($1::int8, $2::int8, $3::text)",
                &[&source, &batch, &body],
            ),
            SEND_LIMIT,
            &mut || Self::tick(db, saved),
        );
        match r {
            Ok(Ok(row)) => Ok(row.get::<_, bool>(0)),
            Ok(Err(e)) => {
                // whatever happened, a new connection next time
                self.client = None;
                Err(format!("the primary did not take usage batch {batch}: {}", db_error(&e)))
            }
            Err(why) => {
                self.client = None;
                Err(format!("the primary did not take usage batch {batch}: {why}"))
            }
        }
    }
}

fn events(entries: &[usage::Entry]) -> u64 {
    entries.iter().map(|e| e.verified + e.rejected).sum()
}

/// In a flusher connected to `db` on a standby: this database's pending
/// usage to disk as a new batch, then every batch on disk to the primary,
/// oldest first. Everything counted before this round is on disk before
/// any wait for the primary, so a crash while the primary is slow or away
/// loses at most what came after.
pub fn forward_database(db: u32) {
    let Some(conninfo) = conninfo() else { return };
    save_pending(db);
    let files = save::batch_files(db);
    if files.is_empty() {
        return;
    }
    // (no SPI: its writable statements would take a transaction id, which
    // a standby has none to give)
    let dbname = BackgroundWorker::transaction(|| {
        // SAFETY: a catalog read of this worker's own database, in a transaction
        unsafe {
            let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
            (!name.is_null()).then(|| std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned())
        }
    });
    let Some(dbname) = dbname else { return };
    // the connection's runtime, on this thread
    let rt = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            usage::warn_forward(&format!("no runtime for the connection to the primary: {e}"));
            return;
        }
    };
    let mut primary = Primary { db, conninfo, dbname, saved: std::time::Instant::now(), rt, client: None };
    for (path, source, batch) in files {
        let Some(entries) = save::read_batch(&path) else {
            pgrx::warning!("pg_apikeys: a usage batch on disk is damaged and not sent: {}", path.display());
            save::forget_batch(&path);
            continue;
        };
        match primary.send(source, batch, &entries) {
            Ok(applied) => {
                save::forget_batch(&path);
                if applied {
                    usage::count_forwarded(events(&entries));
                }
            }
            Err(e) => {
                // kept on disk: sent again (as the same batch), in order,
                // next interval
                usage::warn_forward(&format!("database {}: {e}", primary.dbname));
                return;
            }
        }
    }
}

/// In a flusher connected to `db` on a primary (a promoted standby): apply
/// here the batches a standby left unanswered, as the old primary would
/// have. A batch it applied and replicated here is not applied twice.
pub fn apply_left_batches(db: u32) {
    let files = save::batch_files(db);
    if files.is_empty() {
        return;
    }
    for (path, source, batch) in files {
        let Some(entries) = save::read_batch(&path) else {
            save::forget_batch(&path);
            continue;
        };
        let body = payload(&entries);
        let applied = BackgroundWorker::transaction(|| {
            let present = Spi::get_one::<bool>(
                "SELECT pg_catalog.to_regprocedure('apikeys.apply_forwarded_usage(bigint,bigint,text)') IS NOT NULL",
            )
            .ok()
            .flatten()
            .unwrap_or(false);
            if !present {
                return None; // the extension is gone: nothing to apply to
            }
            Spi::get_one_with_args::<bool>(
                "SELECT apikeys.apply_forwarded_usage($1, $2, $3)",
                &[(source as i64).into(), batch.into(), body.as_str().into()],
            )
            .ok()
            .flatten()
        });
        match applied {
            Some(true) => usage::count_forwarded(events(&entries)),
            Some(false) => {}
            None => usage::count_discarded(events(&entries)),
        }
        save::forget_batch(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_json_the_primary_reads() {
        let e = usage::Entry {
            used: 1,
            dbid: 5,
            key: [0xab; 16],
            hour: 236_000,
            verified: 3,
            rejected: 2,
            why: [1, 0, 0, 1],
            last_used: 1_000_000,
            ..usage::Entry::default()
        };
        let p = payload(&[e, usage::Entry { last_used: 0, ..e }]);
        let v: serde_json::Value = serde_json::from_str(&p).expect("valid JSON");
        assert_eq!(v[0]["k"], "abababab-abab-abab-abab-abababababab");
        assert_eq!(v[0]["h"], 236_000 * 3600 + PG_EPOCH_UNIX);
        assert_eq!(v[0]["r"], 2);
        assert_eq!(v[0]["rl"], 1);
        assert_eq!(v[0]["rf"], 1);
        assert_eq!(v[0]["u"], 1_000_000 + PG_EPOCH_UNIX * 1_000_000);
        assert_eq!(v[1]["u"], 0);
        assert_eq!(payload(&[]), "[]");
    }
}
