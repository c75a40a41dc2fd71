//! The event journal's own redb database, `<state>/events.redb` (tmpfs on a normal host: /run), with its own
//! writer thread (group commit, `Durability::Immediate`, quick repair).
//!
//! Why here and not in `<root>/meta.redb`: the journal and the shims' seqs only need to survive berthd crashes
//! and restarts, not host reboots (after a reboot no container or shim survives, and /run is a tmpfs). A durable
//! commit on tmpfs costs microseconds instead of one disk fsync (4–7 ms on the reference VM), which is what the
//! exit-to-subscriber latency was made of. Exactly-once is unchanged: a shim event and that shim's seq are
//! written in one transaction of THIS database, before berthd acks the shim.
//!
//! Seqs never go backwards, also across a reboot that empties the state dir: meta.redb keeps a reserved mark
//! (`journal_reserved`), raised in blocks of [`SEQ_BLOCK`] seqs BEFORE any seq beyond it is handed out (the
//! next block is reserved in the background when half the current one is used, so the disk commit is off the
//! event path). A fresh events.redb starts its journal above that mark, with its floor AT the mark, so any
//! cursor from before the reboot gets OUT_OF_RANGE.
//!
//! Layout: `meta` (`schema_version` u32 LE, `journal_floor` u64 LE: highest trimmed seq, or the reserved mark
//! a fresh journal started from), `journal` (seq → prost `berth.v1.JournalEvent`), `shim_seqs` ("<ns>/<id>" →
//! last shim seq journaled), `shim_once` (("<ns>/<id>", "init-exit" | "delete") → (): the task's init exit or
//! delete is journaled, so a second one — from a shim, or synthesised for a dead shim — is dropped).
//!
//! This module must never hand out a seq above the durable reserved mark, never open the database twice, and
//! never drop a journal it cannot read (berthd refuses to start instead).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use berth_proto::berth::JournalEvent;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::store::writer::Writer;
use crate::store::{Store, StoreError};

/// Seqs reserved in meta.redb at a time (one disk commit per this many events).
pub const SEQ_BLOCK: u64 = 10_000;

/// The schema of events.redb this berthd reads and writes.
pub const JOURNAL_SCHEMA_VERSION: u32 = 1;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
pub(crate) const SHIM_SEQS: TableDefinition<&str, u64> = TableDefinition::new("shim_seqs");
/// (shim key, [`super::Once`] name) → (): which once-per-task events a shim key has journaled.
pub(crate) const SHIM_ONCE: TableDefinition<(&str, &str), ()> = TableDefinition::new("shim_once");
const META_SCHEMA: &str = "schema_version";
pub(crate) const META_JOURNAL_FLOOR: &str = "journal_floor";

/// Handle to the journal database; cheap to clone, Send + Sync.
#[derive(Clone)]
pub struct JournalDb {
    inner: Arc<DbInner>,
}

struct DbInner {
    db: Arc<Database>,
    writer: Arc<Writer>,
    path: PathBuf,
    seqs: Arc<SeqReservation>,
}

impl std::fmt::Debug for JournalDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalDb")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// The reserved seq mark, durable in meta.redb; used on the journal's writer thread.
pub(crate) struct SeqReservation {
    meta: Store,
    /// Durable mark: seqs up to it may be handed out.
    reserved: AtomicU64,
    /// A background reservation is in flight.
    pending: AtomicBool,
}

impl SeqReservation {
    /// Make sure `seq` may be handed out: wait for a reservation when it is beyond the durable mark (rare: the
    /// background one normally landed long before), and start the next one in the background past half a
    /// block. Runs on the journal's writer thread (it may block on the metadata writer, never the reverse).
    pub(crate) fn ensure(self: &Arc<Self>, seq: u64) -> Result<(), StoreError> {
        let mut reserved = self.reserved.load(Ordering::Acquire);
        if seq > reserved {
            let mark = self.meta.reserve_journal_seqs(seq + SEQ_BLOCK)?;
            reserved = self.reserved.fetch_max(mark, Ordering::AcqRel).max(mark);
            // A failed background reservation left `pending` set: allow the next one.
            self.pending.store(false, Ordering::Release);
        }
        self.prefetch(seq, reserved);
        Ok(())
    }

    /// Start raising the mark in the background (not awaited) when `seq` is within half a block of it.
    fn prefetch(self: &Arc<Self>, seq: u64, reserved: u64) {
        if seq + SEQ_BLOCK / 2 <= reserved || self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let target = reserved.max(seq) + SEQ_BLOCK;
        // The hook runs once the new mark is durable; only then may seqs up to it be handed out. The reply is
        // not awaited (dropping its receiver does not cancel the write).
        let reply = self.meta.writer().submit(
            move |wtx| crate::store::journal_marks::raise_reserved(wtx, target),
            move |mark: &u64| {
                me.reserved.fetch_max(*mark, Ordering::AcqRel);
                me.pending.store(false, Ordering::Release);
            },
        );
        drop(reply);
    }

    /// The durable mark as this process knows it.
    pub(crate) fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }
}

impl JournalDb {
    /// Open (or create) `<state>/events.redb`, start its writer thread, and set up the seq reservation against
    /// `meta`. A fresh file (first start, or the state dir was emptied by a reboot) starts above meta.redb's
    /// reserved mark (and above an older berthd's journal in meta.redb, whose shim seqs it takes over).
    pub fn open(path: &Path, meta: Store, max_batch: usize) -> Result<JournalDb, StoreError> {
        let open_err = |reason: String| StoreError::JournalOpen {
            path: path.to_path_buf(),
            reason,
        };
        let mut builder = Database::builder();
        builder.set_cache_size(8 << 20);
        let shown = path.display().to_string();
        builder.set_repair_callback(move |s| {
            tracing::warn!(file = %shown, progress = s.progress(), "repairing the event journal");
        });
        let db = builder.create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                open_err("already open: another berthd uses this state dir".into())
            }
            other => open_err(other.to_string()),
        })?;
        let reserved = meta.journal_reserved()?;
        let legacy = meta.legacy_journal()?;
        let fresh =
            initialise(&db, reserved, legacy.as_ref()).map_err(|e| open_err(e.to_string()))?;
        if fresh {
            tracing::info!(file = %path.display(), above = reserved, "event journal created");
        }
        if let Some(l) = &legacy {
            meta.drop_legacy_journal(l.last_seq)?;
        }
        let db = Arc::new(db);
        let writer = Arc::new(
            Writer::start(db.clone(), max_batch, "events")
                .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?,
        );
        let reserved = meta.journal_reserved()?;
        let seqs = Arc::new(SeqReservation {
            reserved: AtomicU64::new(reserved),
            meta,
            pending: AtomicBool::new(false),
        });
        // Reserve the first block now, in the background, so the first event does not wait for a disk commit.
        let next = last_seq(&db).map_err(|e| open_err(e.to_string()))? + 1;
        seqs.prefetch(next, reserved);
        Ok(JournalDb {
            inner: Arc::new(DbInner {
                db,
                writer,
                path: path.to_path_buf(),
                seqs,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stop the writer thread after the writes already submitted.
    pub fn close(&self) {
        self.inner.writer.close();
    }

    pub(crate) fn writer(&self) -> &Writer {
        &self.inner.writer
    }

    /// The writer, for its watcher in the supervision tree.
    pub(crate) fn writer_handle(&self) -> Arc<Writer> {
        self.inner.writer.clone()
    }

    pub(crate) fn seqs(&self) -> &Arc<SeqReservation> {
        &self.inner.seqs
    }

    pub(crate) fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        Ok(self.inner.db.begin_read()?)
    }
}

/// Create the tables; on a fresh file set the floor to `reserved` (and migrate `legacy`). Returns whether the
/// file was fresh. Refuses a newer schema.
fn initialise(
    db: &Database,
    reserved: u64,
    legacy: Option<&crate::store::journal_marks::LegacyJournal>,
) -> Result<bool, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut wtx = db.begin_write().map_err(|x| e(&x))?;
    wtx.set_quick_repair(true);
    let fresh;
    {
        let mut meta = wtx.open_table(META).map_err(|x| e(&x))?;
        let found = meta
            .get(META_SCHEMA)
            .map_err(|x| e(&x))?
            .map(|v| v.value().to_vec());
        match found {
            Some(bytes) => {
                fresh = false;
                let v = bytes
                    .as_slice()
                    .try_into()
                    .map(u32::from_le_bytes)
                    .map_err(|_| "the schema version record is malformed".to_string())?;
                if v > JOURNAL_SCHEMA_VERSION {
                    return Err(format!(
                        "schema version {v}, newer than the {JOURNAL_SCHEMA_VERSION} this berthd supports"
                    ));
                }
            }
            None => {
                fresh = true;
                let floor = reserved.max(legacy.map(|l| l.last_seq).unwrap_or(0));
                meta.insert(META_SCHEMA, JOURNAL_SCHEMA_VERSION.to_le_bytes().as_slice())
                    .map_err(|x| e(&x))?;
                meta.insert(META_JOURNAL_FLOOR, floor.to_le_bytes().as_slice())
                    .map_err(|x| e(&x))?;
            }
        }
    }
    wtx.open_table(JOURNAL).map_err(|x| e(&x))?;
    wtx.open_table(SHIM_ONCE).map_err(|x| e(&x))?;
    {
        let mut shims = wtx.open_table(SHIM_SEQS).map_err(|x| e(&x))?;
        if fresh {
            for (k, v) in legacy.map(|l| l.shim_seqs.as_slice()).unwrap_or(&[]) {
                shims.insert(k.as_str(), *v).map_err(|x| e(&x))?;
            }
        }
    }
    wtx.commit().map_err(|x| e(&x))?;
    Ok(fresh)
}

/// The newest journaled seq, or the floor when the journal is empty.
fn last_seq(db: &Database) -> Result<u64, StoreError> {
    let rtx = db.begin_read()?;
    let last = rtx.open_table(JOURNAL)?.last()?.map(|(k, _)| k.value());
    match last {
        Some(l) => Ok(l),
        None => Ok(rtx
            .open_table(META)?
            .get(META_JOURNAL_FLOOR)?
            .and_then(|v| crate::store::tables::u64_le(v.value()))
            .unwrap_or(0)),
    }
}

/// Decode a journal record.
pub(crate) fn decode(seq: u64, bytes: &[u8]) -> Result<JournalEvent, StoreError> {
    JournalEvent::decode(bytes)
        .map_err(|e| StoreError::Corrupt(format!("journal event {seq}: {e}")))
}
