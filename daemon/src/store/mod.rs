//! berthd's metadata store: one redb file (`<root>/meta.redb`, on the root dir's disk) holding namespaces,
//! containers, leases, network attachments, and the event journal's reserved seq mark. The event journal itself and the shims' seqs
//! live in `<state>/events/`, an fsync-free log (see `events::db`): they only need to survive berthd restarts, not reboots.
//!
//! Reads run on the caller's thread (blocking: call them from `spawn_blocking` or a blocking thread, never hold
//! them across `.await`). Every write runs on the single writer thread (redb has one writer), batched with others
//! into one transaction (group commit); see [`writer`]. A write job must check everything before it writes: a
//! logical error (NotFound, AlreadyExists...) must leave the transaction untouched, because the batch commits.
//!
//! This module must never open the database twice, never drop data it cannot read (it refuses to start
//! instead), and never block the writer thread on anything but redb.

pub mod containers;
pub mod content;
pub mod gc;
pub mod images;
pub mod journal_marks;
pub mod leases;
pub mod namespaces;
pub mod networks;
mod pins;
pub mod snapshots;
pub mod tables;
pub mod writer;

pub use pins::SnapshotPin;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase};
use tonic::Status;

pub use leases::LeaseRecord;
pub use networks::NetAttachmentRecord;
pub use tables::SCHEMA_VERSION;

/// Store errors; each maps to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// The object already exists.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The operation is refused in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// A stored record cannot be decoded.
    #[error("corrupt record in the metadata store: {0}")]
    Corrupt(String),
    /// redb failed.
    #[error("metadata store: {0}")]
    Db(#[from] redb::Error),
    /// The batch this write was part of failed to commit.
    #[error("metadata store transaction failed: {0}")]
    Batch(String),
    /// The writer thread is gone (berthd is shutting down).
    #[error("metadata store is closed")]
    Closed,
    /// Another berthd holds the database.
    #[error("the metadata database {0} is already open: another berthd is running on this root")]
    AlreadyOpen(PathBuf),
    /// The database file cannot be opened (corrupt, not a redb file, unreadable).
    #[error("cannot open the metadata database {path}: {reason}; refusing to start (the file was left untouched)")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The event journal database cannot be opened.
    #[error("cannot open the event journal {path}: {reason}; refusing to start (the file was left untouched)")]
    JournalOpen {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing an event journal file failed.
    #[error("cannot {what} the event journal file {path}: {source}")]
    JournalIo {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer berthd.
    #[error("the metadata database {path} has schema version {found}, newer than the {supported} this berthd supports; refusing to start")]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u32,
    },
}

impl StoreError {
    /// Whether this error means the transaction itself is broken (the batch must be aborted).
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Db(_) | StoreError::Corrupt(_))
    }
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(redb::Error::from(e))
            }
        }
    )*};
}
redb_from!(
    redb::TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError
);

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        let msg = e.to_string();
        match e {
            StoreError::NotFound(_) => Status::not_found(msg),
            StoreError::AlreadyExists(_) => Status::already_exists(msg),
            StoreError::FailedPrecondition(_) => Status::failed_precondition(msg),
            StoreError::InvalidArgument(_) => Status::invalid_argument(msg),
            StoreError::Closed => Status::unavailable(msg),
            _ => Status::internal(msg),
        }
    }
}

/// Handle to the metadata store; cheap to clone, Send + Sync.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    writer: Arc<writer::Writer>,
    path: PathBuf,
    server_uuid: String,
    /// Snapshot numbers reserved in meta.redb and not yet handed out.
    snapshot_ids: std::sync::Mutex<snapshots::IdBlock>,
    /// Snapshots GC must keep although no record names them yet (see `pins.rs`).
    pins: Arc<pins::Pins>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Store {
    /// Open (or create) the database at `path`, check its schema, and start the writer thread.
    /// `max_batch` bounds the writes committed in one transaction.
    pub fn open(path: &Path, max_batch: usize) -> Result<Store, StoreError> {
        let mut builder = Database::builder();
        builder.set_cache_size(16 << 20);
        let shown = path.display().to_string();
        builder.set_repair_callback(move |s| {
            tracing::warn!(file = %shown, progress = s.progress(), "repairing the metadata database");
        });
        let db = builder.create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen(path.to_path_buf()),
            other => StoreError::Open {
                path: path.to_path_buf(),
                reason: other.to_string(),
            },
        })?;
        let server_uuid = tables::initialise(&db, path)?;
        let db = Arc::new(db);
        let writer = writer::Writer::start(db.clone(), max_batch, "store").map_err(|e| {
            StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("cannot start the writer thread: {e}"),
            }
        })?;
        let writer = Arc::new(writer);
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                writer,
                path: path.to_path_buf(),
                server_uuid,
                snapshot_ids: Default::default(),
                pins: Default::default(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The server's persistent uuid (Introspection.Server).
    pub fn server_uuid(&self) -> &str {
        &self.inner.server_uuid
    }

    /// A read transaction (blocking).
    pub(crate) fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        Ok(self.inner.db.begin_read()?)
    }

    /// The writer (to submit write jobs).
    /// Keep a snapshot out of GC until the pin is dropped (take it before preparing the snapshot).
    pub fn pin_snapshot(&self, ns: &str, snapshotter: &str, key: &str) -> pins::SnapshotPin {
        pins::SnapshotPin::new(self.inner.pins.clone(), ns, snapshotter, key)
    }

    pub(crate) fn writer(&self) -> &writer::Writer {
        &self.inner.writer
    }

    /// The snapshot-number block (poison is ignored: the block is two plain numbers).
    pub(crate) fn id_block(&self) -> std::sync::MutexGuard<'_, snapshots::IdBlock> {
        self.inner
            .snapshot_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The writer, for its watcher in the supervision tree.
    pub(crate) fn writer_handle(&self) -> Arc<writer::Writer> {
        self.inner.writer.clone()
    }

    /// Stop the writer thread after the writes already submitted; later writes fail with Closed.
    pub fn close(&self) {
        self.inner.writer.close();
    }

    /// A value from the meta table.
    pub(crate) fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(tables::META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }
}

/// Run a blocking store call from async code.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Batch(format!("store task failed: {e}")))?
}

/// Now as a protobuf timestamp.
pub fn now_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

/// A point in time as records store it (JSON-friendly).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds.
    pub nanos: i32,
}

impl Stamp {
    /// Now.
    pub fn now() -> Stamp {
        let t = now_timestamp();
        Stamp {
            secs: t.seconds,
            nanos: t.nanos,
        }
    }

    /// As a protobuf timestamp.
    pub fn timestamp(self) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: self.secs,
            nanos: self.nanos,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// A fresh store in a unique temp dir (removed on drop).
    pub struct TempStore {
        store: Option<Store>,
        pub dir: PathBuf,
    }

    impl TempStore {
        pub fn new(name: &str) -> TempStore {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir()
                .join(format!("berthd-unit-{name}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let store = Store::open(&dir.join("meta.redb"), 64).expect("open store");
            TempStore {
                store: Some(store),
                dir,
            }
        }

        pub fn store(&self) -> &Store {
            self.store.as_ref().expect("open")
        }

        /// Close the database and open it again.
        pub fn reopen(&mut self) {
            if let Some(s) = self.store.take() {
                s.close();
            }
            self.store = Some(Store::open(&self.dir.join("meta.redb"), 64).expect("reopen store"));
        }
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            if let Some(s) = self.store.take() {
                s.close();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_file_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("berthd-unit-garbage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("meta.redb");
        std::fs::write(&p, vec![0x5au8; 8192]).expect("write");
        let e = Store::open(&p, 8).expect_err("garbage refused");
        assert!(e.to_string().contains("meta.redb"), "{e}");
        assert_eq!(std::fs::read(&p).expect("read"), vec![0x5au8; 8192]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn uuid_persists_and_second_open_is_refused() {
        let mut t = test_util::TempStore::new("uuid");
        let uuid = t.store().server_uuid().to_string();
        assert_eq!(uuid.len(), 36);
        let again = Store::open(&t.dir.join("meta.redb"), 8).expect_err("second open");
        assert!(matches!(again, StoreError::AlreadyOpen(_)), "{again}");
        t.reopen();
        assert_eq!(t.store().server_uuid(), uuid);
    }
}
