//! The one layer unpacker, used by Diff.Apply and by pulls: a (compressed) tar stream applied onto
//! a directory, with whiteouts, ownership, modes, xattrs, times, devices and links, computing the
//! layer's diff_id on the way.
//!
//! Layers are hostile input. No entry may create, modify, chmod, chown or delete anything outside
//! the target: every parent directory is resolved inside the target ([`root`]), the last component
//! is never followed, files are created with `O_EXCL` after removing whatever was there (so a
//! planted symlink or hard link is replaced, not written through), and hard link targets resolve
//! inside the target too. Names with `..` or a leading `/` are cleaned lexically against the target
//! (`../x` lands at `<target>/x`), as containerd does. This module must never buffer a whole layer
//! or file, and never fsync per file (callers [`sync_dir`] once).

mod apply;
pub mod compression;
pub(crate) mod root;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use compression::Compression;

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};
use crate::mount::Mount;

/// What whiteout entries become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// Writing into a plain tree: `.wh.NAME` removes NAME, `.wh..wh..opq` empties its directory of
    /// what earlier layers put there.
    #[default]
    Delete,
    /// Writing straight into an overlayfs upperdir: `.wh.NAME` becomes a 0/0 character device,
    /// `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.
    Overlay,
}

/// How to apply a layer.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Whiteout handling.
    pub whiteout: WhiteoutMode,
    /// Create character and block devices (true by default: berthd runs as root, as containerd);
    /// when false they are skipped and counted in [`Applied::skipped_devices`].
    pub allow_devices: bool,
    /// lchown entries to their uid/gid (needs root).
    pub preserve_owners: bool,
    /// Read buffer size (1 MiB by default).
    pub buffer_size: usize,
    /// Largest uncompressed tar stream accepted (0: no limit). A decompression bomb stops at this
    /// many bytes with [`Error::LayerTooLarge`] instead of filling the disk.
    pub max_size: u64,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            whiteout: WhiteoutMode::Delete,
            allow_devices: true,
            preserve_owners: true,
            buffer_size: 1 << 20,
            max_size: 0,
        }
    }
}

/// What applying a layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// sha256 of the uncompressed tar stream, trailing blocks included.
    pub diff_id: Digest,
    /// Size of the uncompressed tar stream.
    pub size: u64,
    /// Entries applied (whiteouts included).
    pub entries: u64,
    /// Device entries skipped because devices are not allowed.
    pub skipped_devices: u64,
    /// xattrs not set (namespace not allowed, or refused by the filesystem).
    pub skipped_xattrs: u64,
    /// Entries of kinds that are not applied (e.g. GNU volume headers).
    pub skipped_entries: u64,
    /// The first warnings (at most 100), one line each.
    pub warnings: Vec<String>,
}

/// Apply the layer read from `reader` (compressed as `compression`) onto the directory `target`.
/// After an error the target may hold part of the layer (discard it), but nothing outside it was
/// touched.
pub fn apply<R: Read>(
    target: &Path,
    reader: R,
    compression: Compression,
    opts: &ApplyOptions,
) -> Result<Applied> {
    let decoded =
        compression::decoder(reader, compression, opts.buffer_size).map_err(|e| Error::Layer {
            entry: String::new(),
            offset: 0,
            reason: e.to_string(),
        })?;
    if opts.max_size == 0 {
        return apply::apply_tar(target, HashingReader::new(decoded), opts);
    }
    let hit = std::rc::Rc::new(std::cell::Cell::new(false));
    let limited = SizeLimit {
        inner: decoded,
        left: opts.max_size,
        hit: hit.clone(),
    };
    match apply::apply_tar(target, HashingReader::new(limited), opts) {
        // Whatever the tar reader made of the cut stream, the cause is the limit.
        Err(_) if hit.get() => Err(Error::LayerTooLarge {
            limit: opts.max_size,
        }),
        r => r,
    }
}

/// A reader that fails once more than `left` bytes were asked of it, and says so in `hit`.
struct SizeLimit<R> {
    inner: R,
    left: u64,
    hit: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for SizeLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One more byte would pass the limit: a clean end is only at the limit exactly.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.hit.set(true);
                    Err(std::io::Error::other(
                        "uncompressed layer size limit reached",
                    ))
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Apply a layer onto what `mounts` describe: a single bind mount is applied into its source
/// (Delete whiteouts); an overlay with an `upperdir` into that upperdir (Overlay whiteouts);
/// anything else is mounted on a private temporary dir, applied to (Delete whiteouts, overlayfs
/// makes its own), and unmounted again even on error.
pub fn apply_to_mounts<R: Read>(
    mounts: &[Mount],
    reader: R,
    compression: Compression,
    opts: &ApplyOptions,
) -> Result<Applied> {
    match mounts {
        [m] if m.kind == "bind" && !m.readonly() => {
            let o = ApplyOptions {
                whiteout: WhiteoutMode::Delete,
                ..opts.clone()
            };
            apply(Path::new(&m.source), reader, compression, &o)
        }
        [m] if m.kind == "overlay" && m.option("upperdir").is_some() => {
            let upper = m.option("upperdir").unwrap_or_default();
            let o = ApplyOptions {
                whiteout: WhiteoutMode::Overlay,
                ..opts.clone()
            };
            apply(Path::new(upper), reader, compression, &o)
        }
        [] => Err(Error::UnsupportedMounts("no mounts given".into())),
        _ => {
            let o = ApplyOptions {
                whiteout: WhiteoutMode::Delete,
                ..opts.clone()
            };
            with_temp_mount(mounts, |dir| apply(dir, reader, compression, &o))
        }
    }
}

static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Mount `mounts` on a fresh private dir, run `f` on it, unmount and remove the dir (always).
pub fn with_temp_mount<T>(mounts: &[Mount], f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let n = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir: PathBuf = std::env::temp_dir().join(format!("berth-mount-{}-{n}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| Error::io("mkdir", &dir, e))?;
    let result = match crate::mount::mount_all(mounts, &dir) {
        Ok(()) => {
            let r = f(&dir);
            let mut um = Ok(());
            for m in mounts.iter().rev() {
                let at = dir.join(m.target.trim_start_matches('/'));
                if let Err(e) = crate::mount::unmount(&at) {
                    um = Err(e);
                }
            }
            match (r, um) {
                (Ok(v), Ok(())) => Ok(v),
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = std::fs::remove_dir(&dir) {
        tracing::warn!(dir = %dir.display(), "cannot remove temporary mount dir: {e}");
    }
    result
}

/// syncfs(2) on the filesystem holding `path`: one flush for a whole unpacked snapshot instead of
/// an fsync per file.
pub fn sync_dir(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    nix::unistd::syncfs(&f).map_err(|e| Error::errno("syncfs", path, e))
}
