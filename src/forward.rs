//! Usage from hot standbys to the primary (docs/operations.md, "Read
//! replicas"; docs/architecture.md, "The usage engine").
//!
//! A standby cannot write, so with `apikeys.primary_conninfo` set its
//! engine sends what it counted to the primary instead. At every interval
//! the launcher starts a flusher per database with pending usage, as on a
//! primary; on a standby that flusher
//!
//! 1. sends the batches left on disk (sent before with no answer, or left
//!    by a crash), oldest first;
//! 2. takes this database's entries out of shared memory, numbers them as
//!    the next batch of this run of the standby (a random `source` made at
//!    each start, and a counter), saves them to
//!    `pg_apikeys_forward.<db>.<source>.<batch>` (synced), and sends them:
//!    `SELECT apikeys.apply_forwarded_usage(source, batch, usage)` on the
//!    primary, over a connection made with the `postgres` client library
//!    (`apikeys.primary_conninfo`, with this database's name);
//! 3. removes the file once the primary answered.
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

/// A connection to the primary, made when first needed.
struct Primary {
    conninfo: String,
    dbname: String,
    client: Option<postgres::Client>,
}

impl Primary {
    fn client(&mut self) -> Result<&mut postgres::Client, String> {
        if self.client.is_none() {
            let mut cfg: postgres::Config = self
                .conninfo
                .parse()
                .map_err(|e| format!("apikeys.primary_conninfo is not a conninfo: {e}"))?;
            cfg.dbname(&self.dbname)
                .application_name("pg_apikeys usage forward")
                .connect_timeout(Duration::from_secs(10))
                .keepalives(true)
                .keepalives_idle(Duration::from_secs(10))
                .options("-c statement_timeout=30s -c lock_timeout=10s");
            let c =
                cfg.connect(postgres::NoTls).map_err(|e| format!("could not connect to the primary: {e}"))?;
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Send one batch: whether the primary applied it now (false: it had
    /// applied it before).
    fn send(&mut self, source: u64, batch: i64, entries: &[usage::Entry]) -> Result<bool, String> {
        let body = payload(entries);
        let c = self.client()?;
        let r = c.query_one(
            "SELECT apikeys.apply_forwarded_usage($1::int8, $2::int8, $3::text)",
            &[&(source as i64), &batch, &body],
        );
        match r {
            Ok(row) => Ok(row.get::<_, bool>(0)),
            Err(e) => {
                // whatever happened, a new connection next time
                self.client = None;
                let why = match e.as_db_error() {
                    Some(db) => format!("{} {}", db.code().code(), db.message()),
                    None => e.to_string(),
                };
                Err(format!("the primary did not take usage batch {batch}: {why}"))
            }
        }
    }
}

fn events(entries: &[usage::Entry]) -> u64 {
    entries.iter().map(|e| e.verified + e.rejected).sum()
}

/// In a flusher connected to `db` on a standby: the batches left on disk,
/// then this database's pending usage as a new batch.
pub fn forward_database(db: u32) {
    let Some(conninfo) = conninfo() else { return };
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
    let mut primary = Primary { conninfo, dbname, client: None };
    for (path, source, batch) in save::batch_files(db) {
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
                usage::warn_forward(&e);
                return; // the rest waits for the next interval, in order
            }
        }
    }
    let taken = usage::take_db(db);
    if taken.is_empty() {
        return;
    }
    let (source, batch) = usage::next_batch();
    if let Err(e) = save::write_batch(db, source, batch, &taken) {
        // not on disk: not sent either; back into the table
        usage::put_back(&taken);
        usage::warn_forward(&format!("could not save usage batch {batch} before sending it: {e}"));
        return;
    }
    match primary.send(source, batch, &taken) {
        Ok(applied) => {
            if let Some((path, _, _)) =
                save::batch_files(db).into_iter().find(|(_, s, b)| *s == source && *b == batch)
            {
                save::forget_batch(&path);
            }
            if applied {
                usage::count_forwarded(events(&taken));
            }
        }
        // kept on disk: sent again (as the same batch) next interval
        Err(e) => usage::warn_forward(&e),
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
