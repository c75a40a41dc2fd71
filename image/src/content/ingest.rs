//! An open ingest: appends, restarts, and the verified commit that is the only way a blob appears.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::{write_small, ContentStore};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, IoContext, Result};

/// Releases a ref's in-process lock when dropped.
#[derive(Debug)]
pub(super) struct RefLock {
    pub(super) store: ContentStore,
    pub(super) reference: String,
}

impl Drop for RefLock {
    fn drop(&mut self) {
        self.store
            .inner
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.reference);
    }
}

/// An open ingest. Dropping it without committing keeps the data for a later resume and releases
/// the ref's lock.
#[derive(Debug)]
pub struct IngestWriter {
    pub(super) store: ContentStore,
    pub(super) reference: String,
    pub(super) dir: PathBuf,
    pub(super) file: File,
    pub(super) hasher: Hasher,
    pub(super) total: Option<u64>,
    pub(super) expected: Option<Digest>,
    pub(super) lock: Option<RefLock>,
}

impl IngestWriter {
    /// The ref this writer ingests.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Bytes written so far (where the next write goes).
    pub fn offset(&self) -> u64 {
        self.hasher.count()
    }

    /// Digest of what was written so far.
    pub fn digest(&self) -> Digest {
        self.hasher.digest()
    }

    /// The announced total size.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// The announced digest.
    pub fn expected(&self) -> Option<&Digest> {
        self.expected.as_ref()
    }

    /// Append `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let p = self.dir.join("data");
        self.file.write_all(data).ctx("write", &p)?;
        self.hasher.update(data);
        Ok(())
    }

    /// Write `data` at `offset`, which must be the current offset; offset 0 on a non-empty ingest
    /// starts it over.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let current = self.offset();
        if offset == 0 && current > 0 {
            self.truncate()?;
        } else if offset != current {
            return Err(Error::OutOfRange {
                reference: self.reference.clone(),
                offset,
                current,
            });
        }
        self.write(data)
    }

    /// Throw away what was written and start over.
    pub fn truncate(&mut self) -> Result<()> {
        let p = self.dir.join("data");
        self.file.set_len(0).ctx("truncate", &p)?;
        self.file.seek(SeekFrom::Start(0)).ctx("seek", &p)?;
        self.hasher = Hasher::new();
        Ok(())
    }

    /// Announce the total size.
    pub fn set_total(&mut self, total: u64) -> Result<()> {
        write_small(&self.dir, "total", total.to_string().as_bytes())?;
        self.total = Some(total);
        Ok(())
    }

    fn discard(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(reference = %self.reference, dir = %self.dir.display(), "cannot discard ingest: {e}");
        }
    }

    /// Verify and store the blob. `size` and `expected` (or what the writer was opened with) are
    /// checked; a mismatch discards the ingest and nothing is stored. If the blob appeared
    /// meanwhile, the ingest is removed and `AlreadyExists` returned.
    pub fn commit(mut self, size: Option<u64>, expected: Option<Digest>) -> Result<Digest> {
        let actual_size = self.offset();
        let want_size = size.or(self.total);
        if let Some(want) = want_size {
            if want != actual_size {
                self.discard();
                return Err(Error::SizeMismatch {
                    reference: self.reference.clone(),
                    expected: want,
                    actual: actual_size,
                });
            }
        }
        let actual = self.digest();
        if let Some(want) = expected.or_else(|| self.expected.clone()) {
            if want != actual {
                self.discard();
                return Err(Error::DigestMismatch {
                    what: format!("ingest {:?}", self.reference),
                    expected: want,
                    actual,
                });
            }
        }
        let data = self.dir.join("data");
        self.file.sync_all().ctx("fsync", &data)?;
        self.file
            .set_permissions(fs::Permissions::from_mode(0o444))
            .ctx("chmod", &data)?;
        let dst = self.store.blob_path(&actual);
        match nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &data,
            nix::fcntl::AT_FDCWD,
            &dst,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => {
                self.discard();
                return Err(Error::AlreadyExists(actual));
            }
            Err(e) => return Err(Error::errno("rename into blobs", dst, e)),
        }
        let blobs = &self.store.inner.blobs;
        File::open(blobs)
            .and_then(|d| d.sync_all())
            .ctx("fsync", blobs)?;
        self.discard();
        drop(self.lock.take());
        Ok(actual)
    }
}

/// Lets a writer of bytes (a diff, an archive export) produce an ingest directly.
impl std::io::Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        IngestWriter::write(self, buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
