//! The crate's error type: every message names the digest, ref, path or entry that was wrong, so a
//! gRPC status built from it tells the client what to fix. It must never carry a bare `io::Error`
//! without the path it happened on.

use std::path::PathBuf;

use crate::digest::Digest;

/// Errors of berth-image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A digest string that is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {value:?}: {reason}")]
    InvalidDigest {
        /// What was given.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A blob, ingest or snapshot that does not exist.
    #[error("{what} not found")]
    NotFound {
        /// `blob sha256:...`, `ingest "ref"`, ...
        what: String,
    },
    /// The content is already stored (a writer for it is pointless; a commit found it there).
    #[error("content {0} already exists")]
    AlreadyExists(Digest),
    /// Another writer holds the ingest for this ref.
    #[error("ingest {0:?} is locked by another writer")]
    Locked(String),
    /// A write at an offset that is not the ingest's current end.
    #[error("ingest {reference:?}: write at offset {offset} but the ingest holds {current} bytes")]
    OutOfRange {
        /// The ingest's ref.
        reference: String,
        /// The offset asked for.
        offset: u64,
        /// The ingest's current size.
        current: u64,
    },
    /// A commit whose size does not match what the client announced.
    #[error("ingest {reference:?}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The ingest's ref.
        reference: String,
        /// Announced size.
        expected: u64,
        /// Bytes written.
        actual: u64,
    },
    /// Content whose digest does not match the expected one (nothing was stored).
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// `ingest "ref"`, `blob at blobs/sha256/...`, ...
        what: String,
        /// The digest that was announced.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// A system call on a path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`open`, `rename`, `mkdir`, ...).
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A malformed or unreadable layer (bad tar header, truncated data, bad compression).
    #[error("layer: entry {entry:?} (uncompressed offset {offset}): {reason}")]
    Layer {
        /// The entry being read (empty before the first one).
        entry: String,
        /// Bytes of the uncompressed stream read so far.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A layer whose uncompressed stream is larger than the unpacker may write (a decompression bomb).
    #[error(
        "layer: uncompressed size exceeds the limit of {limit} bytes (max_unpacked_layer_size)"
    )]
    LayerTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// A layer entry refused because it would act outside the target or is otherwise unsafe.
    #[error("layer: refused entry {entry:?}: {reason}")]
    Unsafe {
        /// The entry's name as stored.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A snapshot directory operation refused or failed.
    #[error("snapshot {id} ({snapshotter}): {reason}")]
    Snapshot {
        /// Snapshotter name.
        snapshotter: &'static str,
        /// Snapshot id.
        id: u64,
        /// What went wrong.
        reason: String,
    },
    /// A mount (or unmount) failed.
    #[error("mount {kind} {source_path} on {}: {reason}", target.display())]
    Mount {
        /// Mount type.
        kind: String,
        /// Mount source.
        source_path: String,
        /// Mount point.
        target: PathBuf,
        /// Why.
        reason: String,
    },
    /// Mounts this crate cannot handle.
    #[error("unsupported mounts: {0}")]
    UnsupportedMounts(String),
    /// An OCI layout or docker-save archive that cannot be imported, or content that cannot be exported.
    #[error("archive: {0}")]
    Archive(String),
    /// A feature not implemented (e.g. zstd output for diffs).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An `Io` error for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// An `Io` error from a nix errno.
    pub fn errno(op: &'static str, path: impl Into<PathBuf>, e: nix::errno::Errno) -> Error {
        Error::io(op, path, std::io::Error::from(e))
    }

    /// Whether this is a `NotFound` (or an `Io` error with ENOENT).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound { .. } => true,
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// Attach a path and an operation to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::errno(op, path, e))
    }
}
