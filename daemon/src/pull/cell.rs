//! One layer blob of a pull as it arrives, and the reader that lets the unpacker follow it: the fetcher writes
//! the blob into its ingest file and publishes how many bytes are there ([`BlobCell`]); [`Follow`] reads the
//! same file from the start, waiting for more, and ends only once the blob was committed (its digest and size
//! verified). So a layer is unpacked while it downloads, streamed through the page cache, and a blob that
//! turns out corrupt fails the unpack before anything of it is committed.
//!
//! The ingest's data file is found through berth-image's documented layout (`content/ingest/<sha256(ref)>`)
//! and checked (its `ref` file and size) before it is followed; if it does not check out, the unpacker waits
//! for the committed blob instead. This module must never let a reader see the end of a blob that was not
//! verified.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use berth_image::oci::Descriptor;
use berth_image::{ContentStore, Digest};

/// Where a blob is.
#[derive(Debug, Clone)]
enum Phase {
    /// Not started (or another writer has its ingest).
    Pending,
    /// Being written; `path` is its ingest data file when it may be followed.
    Writing { path: Option<PathBuf> },
    /// Committed and verified at `path`.
    Done { path: PathBuf },
    /// Failed: why.
    Failed(String),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    written: u64,
}

/// One blob being fetched, shared by its fetcher, the unpackers following it and the progress reporter.
#[derive(Debug)]
pub struct BlobCell {
    desc: Descriptor,
    state: Mutex<State>,
    cv: Condvar,
}

impl BlobCell {
    /// A cell for `desc`, not started.
    pub fn new(desc: Descriptor) -> Arc<BlobCell> {
        Arc::new(BlobCell {
            desc,
            state: Mutex::new(State {
                phase: Phase::Pending,
                written: 0,
            }),
            cv: Condvar::new(),
        })
    }

    /// The blob's descriptor.
    pub fn desc(&self) -> &Descriptor {
        &self.desc
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.cv.notify_all();
    }

    /// The ingest is open with `offset` bytes in it; `path` is its data file if it may be followed.
    pub fn writing(&self, offset: u64, path: Option<PathBuf>) {
        self.update(|s| {
            s.phase = Phase::Writing { path };
            s.written = offset;
        });
    }

    /// `n` more bytes are in the ingest file.
    pub fn wrote(&self, n: u64) {
        self.update(|s| s.written += n);
    }

    /// The blob is committed (verified) at `path`.
    pub fn done(&self, path: PathBuf) {
        let size = u64::try_from(self.desc.size).unwrap_or(0);
        self.update(|s| {
            s.phase = Phase::Done { path };
            s.written = size;
        });
    }

    /// The fetch failed (followers fail too).
    pub fn failed(&self, why: String) {
        self.update(|s| {
            if !matches!(s.phase, Phase::Done { .. }) {
                s.phase = Phase::Failed(why);
            }
        });
    }

    /// Bytes present so far.
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    /// Whether the blob is committed.
    pub fn is_done(&self) -> bool {
        matches!(self.lock().phase, Phase::Done { .. })
    }

    /// Back to "not started" after an interrupted attempt whose data stays in the ingest.
    pub fn pending(&self) {
        self.update(|s| {
            if matches!(s.phase, Phase::Writing { .. }) {
                s.phase = Phase::Pending;
            }
        });
    }
}

/// The data file of ingest `backend_ref` in `content` if berth-image's layout is what this module expects:
/// `<content>/ingest/<sha256(ref)>/data`, with a `ref` file naming the ref and `offset` bytes of data.
pub fn ingest_data_path(content: &ContentStore, backend_ref: &str, offset: u64) -> Option<PathBuf> {
    let probe = Digest::of(b"");
    let blobs = content.blob_path(&probe);
    // <croot>/blobs/sha256/<hex>
    let croot = blobs.parent()?.parent()?.parent()?;
    let dir = croot
        .join("ingest")
        .join(Digest::of(backend_ref.as_bytes()).hex());
    let named = std::fs::read_to_string(dir.join("ref")).ok()?;
    let data = dir.join("data");
    let len = std::fs::metadata(&data).ok()?.len();
    (named == backend_ref && len == offset).then_some(data)
}

/// Reads a blob from its start as it arrives (see the module doc). Blocking: use it on a blocking thread.
pub struct Follow {
    cell: Arc<BlobCell>,
    cancel: Arc<AtomicBool>,
    file: Option<File>,
    pos: u64,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("digest", &self.cell.desc.digest)
            .field("pos", &self.pos)
            .finish()
    }
}

impl Follow {
    /// Follow `cell`; `cancel` set means the pull gave up (reads fail).
    pub fn new(cell: Arc<BlobCell>, cancel: Arc<AtomicBool>) -> Follow {
        Follow {
            cell,
            cancel,
            file: None,
            pos: 0,
        }
    }

    fn open(&mut self, path: &Path) -> std::io::Result<()> {
        if self.file.is_none() {
            self.file = Some(File::open(path)?);
        }
        Ok(())
    }
}

fn failed(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

impl Read for Follow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let avail = loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(failed(format!(
                    "pull of {} given up",
                    self.cell.desc.digest
                )));
            }
            let st = self.cell.lock();
            match st.phase.clone() {
                Phase::Failed(why) => return Err(failed(why)),
                Phase::Done { path } => {
                    let size = st.written;
                    drop(st);
                    self.open(&path)?;
                    break size.saturating_sub(self.pos);
                }
                Phase::Writing { path: Some(path) } if st.written > self.pos => {
                    let n = st.written - self.pos;
                    drop(st);
                    match self.open(&path) {
                        Ok(()) => break n,
                        // Committed meanwhile (renamed into blobs/): the next look finds it Done.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => {
                    let _ = self
                        .cell
                        .cv
                        .wait_timeout(st, Duration::from_millis(200))
                        .unwrap_or_else(|e| e.into_inner());
                }
            }
        };
        if avail == 0 {
            return Ok(0); // the verified end
        }
        let Some(file) = self.file.as_ref() else {
            return Err(failed("blob file not open".into()));
        };
        let want = usize::try_from(avail).unwrap_or(usize::MAX).min(buf.len());
        let n = file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(failed(format!(
                "blob {} is shorter than announced at byte {}",
                self.cell.desc.digest, self.pos
            )));
        }
        if self.pos > 0 {
            crate::failpoint::hit("pull.unpack.mid_layer"); // part of the layer is in the snapshot already
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "berthd-cell-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    #[test]
    fn follower_reads_as_data_arrives_and_ends_only_when_done() {
        let dir = tmp("follow");
        let data = dir.join("data");
        let mut f = File::create(&data).expect("create");
        let cell = BlobCell::new(Descriptor {
            digest: "sha256:x".into(),
            size: 6,
            ..Default::default()
        });
        cell.writing(0, Some(data.clone()));
        let cancel = Arc::new(AtomicBool::new(false));
        let mut follow = Follow::new(cell.clone(), cancel);
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            follow.read_to_end(&mut out).map(|_| out)
        });
        f.write_all(b"abc").expect("write");
        cell.wrote(3);
        std::thread::sleep(Duration::from_millis(50));
        f.write_all(b"def").expect("write");
        cell.wrote(3);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reader.is_finished(), "no end before the commit");
        cell.done(data);
        let out = reader.join().expect("join").expect("read");
        assert_eq!(out, b"abcdef");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn follower_fails_with_the_fetch() {
        let cell = BlobCell::new(Descriptor::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let mut follow = Follow::new(cell.clone(), cancel);
        let t = std::thread::spawn(move || follow.read(&mut [0u8; 4]).map_err(|e| e.to_string()));
        std::thread::sleep(Duration::from_millis(20));
        cell.failed("digest mismatch for blob sha256:x".into());
        let err = t.join().expect("join").expect_err("fails");
        assert!(err.contains("digest mismatch"), "{err}");
    }
}
