//! The image subsystem's shared parts: the content store (bytes, `<root>/content`), the snapshotters
//! (directories, `<root>/snapshots/<name>`), and garbage collection (`gc.rs`). Their metadata — which
//! namespace has which blob with which labels, snapshot keys and parents, images — lives in the metadata
//! store (`store/content.rs`, `store/snapshots.rs`, `store/images.rs`); the gRPC services join the two.
//!
//! Ordering against GC: whoever creates bytes or a directory before its record (a blob commit, a snapshot's
//! directory) holds [`Images::hold`] (shared) until the record is written; GC holds it exclusively while it
//! deletes what no record names, so it never deletes something that is about to be recorded. This module
//! must never decide what is garbage itself (store/gc.rs does, in one transaction).

pub mod gc;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use berth_image::{ContentStore, Snapshotter};
use tonic::Status;

pub use gc::{GcActor, GcStats};

/// The snapshotter used when a request names none (containerd's default).
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// Handle to the image subsystem; cheap to clone.
#[derive(Clone)]
pub struct Images {
    inner: Arc<Inner>,
}

struct Inner {
    content: ContentStore,
    snapshotters: BTreeMap<&'static str, Arc<dyn Snapshotter>>,
    gc_lock: tokio::sync::RwLock<()>,
    gc: Mutex<Option<Addr<GcActor>>>,
    ingest_expiry: Duration,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images").finish_non_exhaustive()
    }
}

/// The image subsystem could not open its directories.
#[derive(Debug, thiserror::Error)]
#[error("opening the image store under {root}: {source}")]
pub struct OpenError {
    root: std::path::PathBuf,
    source: berth_image::Error,
}

/// An image-store error as a gRPC status (the message names the digest, ref or path).
pub fn status(e: berth_image::Error) -> Status {
    use berth_image::Error as E;
    let msg = e.to_string();
    match e {
        E::NotFound { .. } => Status::not_found(msg),
        E::AlreadyExists(_) => Status::already_exists(msg),
        E::Locked(_) => Status::unavailable(msg),
        E::OutOfRange { .. } => Status::out_of_range(msg),
        E::InvalidDigest { .. } | E::UnsupportedMounts(_) => Status::invalid_argument(msg),
        E::SizeMismatch { .. } | E::DigestMismatch { .. } => Status::failed_precondition(msg),
        E::Layer { .. } | E::Unsafe { .. } | E::Archive(_) | E::LayerTooLarge { .. } => {
            Status::invalid_argument(msg)
        }
        E::Unsupported(_) => Status::unimplemented(msg),
        E::Io { .. } | E::Snapshot { .. } | E::Mount { .. } => Status::internal(msg),
    }
}

impl Images {
    /// Open (or create) the content store and the snapshotters under `root`.
    pub fn open(root: &Path, ingest_expiry: Duration) -> Result<Images, OpenError> {
        let err = |source| OpenError {
            root: root.to_path_buf(),
            source,
        };
        let content = ContentStore::open(root).map_err(err)?;
        // Each keeps its directories under <root>/snapshots/<name>.
        let mut snapshotters: BTreeMap<&'static str, Arc<dyn Snapshotter>> = BTreeMap::new();
        let overlay = berth_image::Overlay::new(root).map_err(err)?;
        let native = berth_image::Native::new(root).map_err(err)?;
        snapshotters.insert("overlayfs", Arc::new(overlay));
        snapshotters.insert("native", Arc::new(native));
        Ok(Images {
            inner: Arc::new(Inner {
                content,
                snapshotters,
                gc_lock: tokio::sync::RwLock::new(()),
                gc: Mutex::new(None),
                ingest_expiry,
            }),
        })
    }

    /// The content store.
    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    /// A snapshotter by name (empty: the default); InvalidArgument naming an unknown one, as containerd.
    pub fn snapshotter(&self, name: &str) -> Result<(&'static str, Arc<dyn Snapshotter>), Status> {
        let name = if name.is_empty() {
            DEFAULT_SNAPSHOTTER
        } else {
            name
        };
        self.inner
            .snapshotters
            .get_key_value(name)
            .map(|(k, v)| (*k, v.clone()))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "snapshotter not loaded: {name:?} (available: {})",
                    self.snapshotter_names().join(", ")
                ))
            })
    }

    /// Names of the snapshotters.
    pub fn snapshotter_names(&self) -> Vec<&'static str> {
        self.inner.snapshotters.keys().copied().collect()
    }

    /// Held while creating bytes or a directory whose record is not written yet (see the module doc).
    pub async fn hold(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.inner.gc_lock.read().await
    }

    /// How long an ingest no lease holds may sit idle before GC removes it.
    pub fn ingest_expiry(&self) -> Duration {
        self.inner.ingest_expiry
    }

    /// The backend ref of a namespace's ingest (ingests are per namespace, as in containerd).
    pub fn ingest_ref(ns: &str, r#ref: &str) -> String {
        format!("{ns}/{ref}")
    }

    pub(crate) fn set_gc(&self, addr: Addr<GcActor>) {
        *self.inner.gc.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    fn gc_actor(&self) -> Option<Addr<GcActor>> {
        self.inner
            .gc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|a| a.connected())
    }

    /// Ask for a collection soon (coalesced with other requests); returns at once.
    pub fn schedule_gc(&self) {
        if let Some(gc) = self.gc_actor() {
            gc.do_send(gc::Collect { wait: false });
        }
    }

    /// Run a collection that starts after this call and wait for it (`images rm --sync`).
    pub async fn gc_now(&self) -> Result<GcStats, Status> {
        let gc = self
            .gc_actor()
            .ok_or_else(|| Status::unavailable("the garbage collector is not running"))?;
        gc.send(gc::Collect { wait: true })
            .await
            .map_err(|_| Status::unavailable("the garbage collector stopped"))?
            .map_err(Status::from)
    }
}
