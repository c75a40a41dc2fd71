//! berth-image: content store, snapshot storage, safe layer unpacking and diffs (a synchronous library).
//!
//! berthd keeps all metadata (namespaces, labels, snapshot keys, leases, GC) in its own database; this crate
//! owns the bytes on disk and the dangerous file-system work. It must never write outside the directory it
//! was given. Everything here blocks: callers run it on blocking threads.

pub mod archive;
pub mod content;
pub mod diff;
pub mod digest;
pub mod error;
mod fsutil;
pub mod mount;
pub mod oci;
pub mod snapshot;
mod sys;
pub mod tarw;
pub mod unpack;

pub use content::{BlobInfo, ContentStore, IngestStatus, IngestWriter};
pub use diff::{diff, DiffOutput, DiffSource};
pub use digest::{Digest, Hasher, HashingReader, HashingWriter};
pub use error::{Error, Result};
pub use mount::Mount;
pub use snapshot::{Kind, Native, Overlay, Snapshotter, Usage};
pub use unpack::{
    apply, apply_to_mounts, sync_dir, Applied, ApplyOptions, Compression, WhiteoutMode,
};
