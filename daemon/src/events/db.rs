//! The event journal's handle: the append-only log in `<state>/events/` ([`super::log`]) with its writer
//! thread ([`super::writer`]), and the seq reservation in meta.redb.
//!
//! Why an fsync-free log in the state dir: the journal and the shims' seqs only need to survive berthd crashes
//! and restarts, not kernel crashes or reboots (after those no container or shim survives). The page cache
//! survives a process crash, so a record is safe once `write` returned; an fsync (4–7 ms on the reference
//! VM's disk, where /run is not a tmpfs) protects nothing more. redb's non-durable commits would not do: redb
//! rolls them back on reopen. Exactly-once is kept by putting a shim event and that shim's seq in ONE record,
//! written before berthd acks the shim.
//!
//! Seqs never go backwards, also across a reboot that empties (or, on disk, outlives) the state dir: meta.redb
//! keeps a reserved mark (`journal_reserved`), raised in blocks of [`SEQ_BLOCK`] seqs BEFORE any seq beyond it
//! is handed out (the next block is reserved in the background when half the current one is used, so the disk
//! commit is off the event path). A fresh journal, or one written under another boot, starts above that mark,
//! so any cursor from before the reboot gets OUT_OF_RANGE.
//!
//! This module must never hand out a seq above the durable reserved mark, and never let two berthds write one
//! journal (an exclusive `flock` on `<state>/events/LOCK`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use berth_proto::berth::JournalEvent;
use nix::fcntl::{Flock, FlockArg};

use super::log::record::ShimState;
use super::log::segment::{io_err, Shared};
use super::log::{boot_id, Limits, Log, Opened};
use super::writer::{LogWriter, OpenLog};
use crate::store::{Store, StoreError};

/// Seqs reserved in meta.redb at a time (one disk commit per this many events).
pub const SEQ_BLOCK: u64 = 10_000;

/// The lock file that keeps a second berthd out of the journal.
const LOCK_FILE: &str = "LOCK";

/// Handle to the journal; cheap to clone, Send + Sync.
#[derive(Clone)]
pub struct JournalDb {
    inner: Arc<DbInner>,
}

struct DbInner {
    writer: Arc<LogWriter>,
    shared: Arc<Shared>,
    path: PathBuf,
    seqs: Arc<SeqReservation>,
    /// Held for the life of the journal.
    _lock: Flock<File>,
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
    /// Open (or create) the journal in the directory `path`, start its writer thread, and set up the seq
    /// reservation against `meta`. A fresh journal (first start, or the state dir was emptied by a reboot)
    /// starts above meta.redb's reserved mark (and takes over an older berthd's journal in meta.redb or in
    /// `<state>/events.redb`: its last seq and its shims' seqs).
    ///
    /// Segments hold up to 25,000 events or 4 MiB (a quarter of the default retention), whatever the retention.
    pub fn open(path: &Path, meta: Store, max_batch: usize) -> Result<JournalDb, StoreError> {
        Self::open_with(
            path,
            meta,
            max_batch,
            Limits::for_retention(100_000),
            &boot_id(),
        )
    }

    /// [`JournalDb::open`] with explicit segment limits and boot id (tests).
    pub(crate) fn open_with(
        path: &Path,
        meta: Store,
        max_batch: usize,
        limits: Limits,
        boot: &str,
    ) -> Result<JournalDb, StoreError> {
        let open_err = |reason: String| StoreError::JournalOpen {
            path: path.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(path).map_err(|e| io_err("creating", path, e))?;
        // Every namespace's events are in here: berthd's alone (the state dir is traversable).
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| io_err("chmod", path, e))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("opening", &lock_path, e))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
            .map_err(|_| open_err("already open: another berthd uses this state dir".into()))?;
        let reserved = meta.journal_reserved()?;
        let legacy = meta.legacy_journal()?;
        let old_db = path.with_extension("redb");
        let older = super::legacy::read(&old_db).map_err(|e| open_err(e.to_string()))?;
        let mut fresh_state = ShimState::default();
        let mut fresh_base = reserved;
        if let Some(l) = &legacy {
            fresh_base = fresh_base.max(l.last_seq);
            fresh_state.seqs.extend(l.shim_seqs.iter().cloned());
        }
        if let Some((last, state)) = &older {
            fresh_base = fresh_base.max(*last);
            fresh_state.seqs.extend(state.seqs.clone());
            fresh_state.once.extend(state.once.iter().cloned());
        }
        let seqs = Arc::new(SeqReservation {
            reserved: AtomicU64::new(reserved),
            meta: meta.clone(),
            pending: AtomicBool::new(false),
        });
        let shared = Arc::new(Shared::default());
        let (log, opened) =
            Log::open(path, shared.clone(), limits, boot, fresh_base, &fresh_state)?;
        match &opened {
            Opened::Fresh => {
                tracing::info!(dir = %path.display(), above = fresh_base, "event journal created")
            }
            Opened::Repaired(why) => {
                tracing::warn!(dir = %path.display(), last_seq = log.last(), "event journal repaired: {why}")
            }
            Opened::Clean | Opened::OtherBoot => {}
        }
        if let Some(l) = &legacy {
            meta.drop_legacy_journal(l.last_seq)?;
        }
        if older.is_some() {
            // Taken over: the new journal already holds its last seq and its shims' seqs.
            meta.reserve_journal_seqs(fresh_base)?;
            if let Err(e) = std::fs::remove_file(&old_db) {
                tracing::warn!(file = %old_db.display(), error = %e, "cannot remove the older event journal");
            }
        }
        let reserved = meta.journal_reserved()?;
        seqs.reserved.fetch_max(reserved, Ordering::AcqRel);
        // Reserve the first block now, in the background, so the first event does not wait for a disk commit.
        seqs.prefetch(log.last() + 1, reserved);
        let open = OpenLog {
            dir: path.to_path_buf(),
            limits,
            boot_id: boot.to_string(),
            shared: shared.clone(),
            seqs: seqs.clone(),
        };
        let writer = Arc::new(
            LogWriter::start(log, open, max_batch)
                .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?,
        );
        Ok(JournalDb {
            inner: Arc::new(DbInner {
                writer,
                shared,
                path: path.to_path_buf(),
                seqs,
                _lock: lock,
            }),
        })
    }

    /// The journal's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stop the writer thread after the writes already submitted.
    pub fn close(&self) {
        self.inner.writer.close();
    }

    pub(crate) fn writer(&self) -> &LogWriter {
        &self.inner.writer
    }

    /// The writer, for its watcher in the supervision tree.
    pub(crate) fn writer_handle(&self) -> Arc<LogWriter> {
        self.inner.writer.clone()
    }

    /// Keep `retention` events: older cursors are out of range, and segments wholly older are deleted.
    pub(crate) fn set_retention(&self, retention: u64) {
        self.inner
            .shared
            .retention
            .store(retention.max(1), Ordering::Release);
    }

    /// Highest seq no longer kept (trimmed, or the reserved mark a fresh journal started above; 0 if none):
    /// cursors below it are out of range.
    pub fn journal_floor(&self) -> Result<u64, StoreError> {
        Ok(self.inner.shared.floor())
    }

    /// Seq of the newest journaled event (the floor if none).
    pub fn journal_last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.inner.shared.last.load(Ordering::Acquire))
    }

    /// Up to `limit` events with `after < seq <= upto`, in order (blocking).
    pub fn read_journal(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<JournalEvent>, StoreError> {
        self.inner.shared.read(after, upto, limit)
    }

    /// The last seq journaled for a shim (0 if none); asks the writer thread, after what is queued.
    pub async fn shim_seq(&self, key: &str) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.writer().write(move |b| Ok(b.source_seq(&key))).await
    }

    /// The reserved seq mark as this process knows it (durable in meta.redb).
    pub fn reserved_seq(&self) -> u64 {
        self.inner.seqs.reserved()
    }
}
