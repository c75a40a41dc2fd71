//! The content store: verified, immutable blobs under `<root>/content/blobs/sha256/<hex>` and
//! resumable ingests under `<root>/content/ingest/<sha256(ref)>/`.
//!
//! A blob appears only through [`IngestWriter::commit`]: the data is fsynced in its ingest dir, made
//! read-only and renamed into place (refusing to replace an existing blob), so a crash at any point
//! leaves either no blob or a complete verified one. This module must never expose a blob whose
//! digest was not checked, and never write into `blobs/` except by that rename. Metadata (labels,
//! namespaces, leases) is berthd's business, not this store's.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod ingest;

pub use ingest::IngestWriter;
use ingest::RefLock;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, IoContext, Result};

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was committed (birth time where the filesystem keeps one, else its mtime).
    pub created_at: SystemTime,
    /// Last modification (the commit, in practice).
    pub updated_at: SystemTime,
}

/// An ingest in progress (or interrupted, waiting to be resumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStatus {
    /// The client's ref.
    pub reference: String,
    /// Bytes written so far (where a resumed write continues).
    pub offset: u64,
    /// The announced total size, if any.
    pub total: Option<u64>,
    /// The announced digest, if any.
    pub expected: Option<Digest>,
    /// When the ingest was first opened.
    pub started_at: SystemTime,
    /// When data was last written.
    pub updated_at: SystemTime,
}

/// The content store. Cheap to clone; clones share the in-process lock table of open writers, so
/// open the store once per root and clone it (a second `open` of the same root would not see the
/// first one's locks).
#[derive(Debug, Clone)]
pub struct ContentStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) blobs: PathBuf,
    ingest: PathBuf,
    pub(crate) locks: Mutex<HashSet<String>>,
}

fn mkdir_0700(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .ctx("mkdir", p)
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn from_nanos(n: u128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// Write a small file atomically (temp + rename), so a crash never leaves it half written.
pub(crate) fn write_small(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, data).ctx("write", &tmp)?;
    let dst = dir.join(name);
    fs::rename(&tmp, &dst).ctx("rename", &dst)
}

fn read_small(dir: &Path, name: &str) -> Result<Option<String>> {
    let p = dir.join(name);
    match fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", p, e)),
    }
}

impl ContentStore {
    /// Open (creating with mode 0700) the store under `<root>/content`.
    pub fn open(root: impl AsRef<Path>) -> Result<ContentStore> {
        let content = root.as_ref().join("content");
        let blobs = content.join("blobs").join("sha256");
        let ingest = content.join("ingest");
        mkdir_0700(&content)?;
        mkdir_0700(&blobs)?;
        mkdir_0700(&ingest)?;
        Ok(ContentStore {
            inner: Arc::new(Inner {
                blobs,
                ingest,
                locks: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// Where the blob `d` lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.blobs.join(d.hex())
    }

    /// Size and times of a stored blob.
    pub fn info(&self, d: &Digest) -> Result<BlobInfo> {
        let p = self.blob_path(d);
        match fs::metadata(&p) {
            Ok(m) => Ok(blob_info(d.clone(), &m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound {
                what: format!("blob {d}"),
            }),
            Err(e) => Err(Error::io("stat", p, e)),
        }
    }

    /// Whether the blob `d` is stored.
    pub fn exists(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    /// Open a stored blob for reading.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound {
                    what: format!("blob {d}"),
                }
            } else {
                Error::io("open", p, e)
            }
        })
    }

    /// Read up to `len` bytes of blob `d` at `offset` (fewer at the end of the blob).
    pub fn read_at(&self, d: &Digest, offset: u64, len: usize) -> Result<Vec<u8>> {
        let f = self.open_blob(d)?;
        let p = self.blob_path(d);
        let size = f.metadata().ctx("stat", &p)?.len();
        let want = usize::try_from(size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(len);
        let mut buf = vec![0u8; want];
        f.read_exact_at(&mut buf, offset).ctx("read", &p)?;
        Ok(buf)
    }

    /// Delete a stored blob (NotFound when absent).
    pub fn delete(&self, d: &Digest) -> Result<()> {
        let p = self.blob_path(d);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound {
                what: format!("blob {d}"),
            }),
            Err(e) => Err(Error::io("remove", p, e)),
        }
    }

    /// Every stored blob (files under blobs/ whose names are not digests are ignored).
    pub fn list(&self) -> Result<Vec<BlobInfo>> {
        let mut out = Vec::new();
        let dir = &self.inner.blobs;
        for e in fs::read_dir(dir).ctx("read dir", dir)? {
            let e = e.ctx("read dir", dir)?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            match e.metadata() {
                Ok(m) => out.push(blob_info(d, &m)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io("stat", e.path(), err)),
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    fn ingest_dir(&self, reference: &str) -> PathBuf {
        self.inner
            .ingest
            .join(Digest::of(reference.as_bytes()).hex())
    }

    fn lock(&self, reference: &str) -> Result<RefLock> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        if !locks.insert(reference.to_string()) {
            return Err(Error::Locked(reference.to_string()));
        }
        Ok(RefLock {
            store: self.clone(),
            reference: reference.to_string(),
        })
    }

    fn is_locked(&self, reference: &str) -> bool {
        self.inner
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(reference)
    }

    /// Open or resume the ingest for `reference`. `AlreadyExists` when `expected` is stored already,
    /// `Locked` while another writer of the same ref is open. A resumed ingest continues at its
    /// current size; its running hash is rebuilt by reading what is there.
    pub fn writer(
        &self,
        reference: &str,
        total: Option<u64>,
        expected: Option<Digest>,
    ) -> Result<IngestWriter> {
        if let Some(d) = &expected {
            if self.exists(d) {
                return Err(Error::AlreadyExists(d.clone()));
            }
        }
        let lock = self.lock(reference)?;
        let dir = self.ingest_dir(reference);
        let fresh = !dir.join("ref").exists();
        if fresh {
            mkdir_0700(&dir)?;
            write_small(
                &dir,
                "startedat",
                nanos(SystemTime::now()).to_string().as_bytes(),
            )?;
            write_small(&dir, "ref", reference.as_bytes())?;
        }
        if let Some(t) = total {
            write_small(&dir, "total", t.to_string().as_bytes())?;
        }
        if let Some(d) = &expected {
            write_small(&dir, "expected", d.as_str().as_bytes())?;
        }
        let status = read_status(&dir)?;
        let data = dir.join("data");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&data)
            .ctx("open", &data)?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).ctx("read", &data)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        file.seek(SeekFrom::End(0)).ctx("seek", &data)?;
        Ok(IngestWriter {
            store: self.clone(),
            reference: reference.to_string(),
            dir,
            file,
            hasher,
            total: status.total,
            expected: status.expected,
            lock: Some(lock),
        })
    }

    /// Status of the ingest for `reference`.
    pub fn status(&self, reference: &str) -> Result<IngestStatus> {
        let dir = self.ingest_dir(reference);
        if !dir.join("ref").exists() {
            return Err(Error::NotFound {
                what: format!("ingest {reference:?}"),
            });
        }
        read_status(&dir)
    }

    /// Status of every ingest.
    pub fn list_statuses(&self) -> Result<Vec<IngestStatus>> {
        let dir = &self.inner.ingest;
        let mut out = Vec::new();
        for e in fs::read_dir(dir).ctx("read dir", dir)? {
            let e = e.ctx("read dir", dir)?;
            match read_status(&e.path()) {
                Ok(s) => out.push(s),
                // Half-created or concurrently removed ingest dirs are not statuses.
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(err),
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Discard the ingest for `reference` (`Locked` while a writer has it open).
    pub fn abort(&self, reference: &str) -> Result<()> {
        let _lock = self.lock(reference)?;
        let dir = self.ingest_dir(reference);
        if !dir.exists() {
            return Err(Error::NotFound {
                what: format!("ingest {reference:?}"),
            });
        }
        fs::remove_dir_all(&dir).ctx("remove", &dir)
    }

    /// Remove ingests not written to for `older_than` and not open (for GC); returns how many.
    /// Half-created ingest dirs (a crash before their `ref` file was written) go too.
    pub fn remove_stale_ingests(&self, older_than: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        let dir = &self.inner.ingest;
        for e in fs::read_dir(dir).ctx("read dir", dir)? {
            let p = e.ctx("read dir", dir)?.path();
            if p.join("ref").exists() {
                continue;
            }
            let age = fs::symlink_metadata(&p)
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default())
                .unwrap_or_default();
            if age >= older_than.max(Duration::from_secs(1)) {
                fs::remove_dir_all(&p).ctx("remove", &p)?;
                removed += 1;
            }
        }
        for s in self.list_statuses()? {
            let age = now.duration_since(s.updated_at).unwrap_or_default();
            if age < older_than || self.is_locked(&s.reference) {
                continue;
            }
            if let Ok(_lock) = self.lock(&s.reference) {
                let dir = self.ingest_dir(&s.reference);
                fs::remove_dir_all(&dir).ctx("remove", &dir)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn blob_info(digest: Digest, m: &fs::Metadata) -> BlobInfo {
    let updated_at = m.modified().unwrap_or(UNIX_EPOCH);
    BlobInfo {
        digest,
        size: m.len(),
        created_at: m.created().unwrap_or(updated_at),
        updated_at,
    }
}

fn read_status(dir: &Path) -> Result<IngestStatus> {
    let reference = read_small(dir, "ref")?.ok_or_else(|| Error::NotFound {
        what: format!("ingest ref in {}", dir.display()),
    })?;
    let total = read_small(dir, "total")?.and_then(|s| s.trim().parse().ok());
    let expected = read_small(dir, "expected")?.and_then(|s| Digest::parse(s.trim()).ok());
    let started_at = read_small(dir, "startedat")?
        .and_then(|s| s.trim().parse::<u128>().ok())
        .map(from_nanos)
        .unwrap_or(UNIX_EPOCH);
    let data = dir.join("data");
    let (offset, updated_at) = match fs::metadata(&data) {
        Ok(m) => (m.len(), m.modified().unwrap_or(started_at)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, started_at),
        Err(e) => return Err(Error::io("stat", data, e)),
    };
    Ok(IngestStatus {
        reference,
        offset,
        total,
        expected,
        started_at,
        updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "berth-image-unit-{name}-{}-{}",
            std::process::id(),
            nanos(SystemTime::now())
        ));
        fs::create_dir_all(&p).expect("mkdir");
        p
    }

    #[test]
    fn ingest_keys_are_hashed_refs() {
        let root = tmp("content-keys");
        let cs = ContentStore::open(&root).expect("open");
        let w = cs.writer("../../etc/x", None, None).expect("writer");
        assert!(w.dir.starts_with(root.join("content/ingest")));
        assert_eq!(w.dir.file_name().map(|n| n.len()), Some(64));
        drop(w);
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
