//! Diffs: a layer tar from two trees (Diff.Diff, `ctr snapshots diff`, image commits).
//!
//! An active overlay snapshot is diffed from its upperdir alone (0/0 character devices become
//! `.wh.` entries, the opaque xattr becomes `.wh..wh..opq`); anything else by walking the upper tree
//! against the lower one. Entries are emitted in sorted order with their parent directories,
//! hard links once (later names as links), xattrs and long names in PAX records. This module only
//! reads the trees; temporary mounts it makes are read-only views and always unmounted.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::mount::Mount;
use crate::sys;
use crate::tarw::{TarHeader, TarWriter};
use crate::unpack::{with_temp_mount, Compression};

/// One side of a diff.
#[derive(Debug, Clone, Copy)]
pub enum DiffSource<'a> {
    /// A plain directory tree.
    Dir(&'a Path),
    /// Mounts as the Snapshots service returns them (empty: an empty tree).
    Mounts(&'a [Mount]),
}

/// The layer a diff produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffOutput {
    /// Digest of the bytes written (compressed).
    pub digest: Digest,
    /// Number of bytes written.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
}

/// Write the layer that turns `lower` into `upper` to `writer`, compressed as `compression`
/// (zstd output is not supported).
pub fn diff<W: Write>(
    lower: DiffSource<'_>,
    upper: DiffSource<'_>,
    writer: W,
    compression: Compression,
) -> Result<DiffOutput> {
    if let DiffSource::Mounts([m]) = upper {
        if m.kind == "overlay" {
            if let Some(u) = m.option("upperdir") {
                let u = PathBuf::from(u);
                return emit(writer, compression, |tw| walk_overlay_upper(&u, tw));
            }
        }
    }
    two_trees(lower, upper, writer, compression)
}

fn two_trees<W: Write>(
    lower: DiffSource<'_>,
    upper: DiffSource<'_>,
    writer: W,
    compression: Compression,
) -> Result<DiffOutput> {
    let mut writer = Some(writer);
    let mut out = None;
    with_source(lower, &mut |l| {
        with_source(upper, &mut |u| {
            let w = writer
                .take()
                .ok_or_else(|| Error::Unsupported("diff writer reused".into()))?;
            out = Some(emit(w, compression, |tw| {
                let mut walker = Walker::new(tw);
                walker.compare(l, u, Path::new(""))
            })?);
            Ok(())
        })
    })?;
    out.ok_or_else(|| Error::Unsupported("diff produced nothing".into()))
}

/// Run `f` on a directory for `src` (an empty temp dir for no mounts; a bind's source; anything
/// else mounted read-only on a temporary dir).
fn with_source(src: DiffSource<'_>, f: &mut dyn FnMut(Option<&Path>) -> Result<()>) -> Result<()> {
    match src {
        DiffSource::Dir(d) => f(Some(d)),
        DiffSource::Mounts([]) => f(None),
        DiffSource::Mounts([m]) if m.kind == "bind" => f(Some(Path::new(&m.source))),
        DiffSource::Mounts(ms) => {
            let ro: Vec<Mount> = ms
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    if m.kind == "overlay" {
                        // A read-only view: lowerdirs only, upper first.
                        let mut lowers: Vec<String> = Vec::new();
                        if let Some(u) = m.option("upperdir") {
                            lowers.push(u.to_string());
                        }
                        if let Some(l) = m.option("lowerdir") {
                            lowers.extend(l.split(':').map(str::to_string));
                        }
                        m.options = vec![format!("lowerdir={}", lowers.join(":"))];
                        if lowers.len() < 2 {
                            // overlayfs needs two lowers without an upper: bind the only one.
                            return Mount::bind(Path::new(&lowers.concat()), true);
                        }
                        m.options.insert(0, "ro".into());
                    } else if !m.options.iter().any(|o| o == "ro") {
                        m.options.push("ro".into());
                    }
                    m
                })
                .collect();
            with_temp_mount(&ro, |d| f(Some(d)))
        }
    }
}

fn emit<W: Write>(
    writer: W,
    compression: Compression,
    body: impl FnOnce(&mut TarWriter<&mut dyn Write>) -> Result<()>,
) -> Result<DiffOutput> {
    let mut outer = HashingWriter::new(writer);
    let werr = |e: std::io::Error| Error::io("write layer", "<diff output>", e);
    let (diff_id, usize) = match compression {
        Compression::None => {
            let mut inner = HashingWriter::new(BufWriter::with_capacity(1 << 20, &mut outer));
            {
                let mut tw = TarWriter::new(&mut inner as &mut dyn Write);
                body(&mut tw)?;
                tw.finish().map_err(werr)?;
            }
            inner.flush().map_err(werr)?;
            (inner.digest(), inner.count())
        }
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(
                BufWriter::with_capacity(1 << 20, &mut outer),
                flate2::Compression::default(),
            );
            let mut inner = HashingWriter::new(gz);
            {
                let mut tw = TarWriter::new(&mut inner as &mut dyn Write);
                body(&mut tw)?;
                tw.finish().map_err(werr)?;
            }
            let r = (inner.digest(), inner.count());
            inner
                .into_inner()
                .finish()
                .and_then(|mut b| b.flush())
                .map_err(werr)?;
            r
        }
        Compression::Zstd => {
            return Err(Error::Unsupported("zstd-compressed diffs".into()));
        }
    };
    outer.flush().map_err(werr)?;
    Ok(DiffOutput {
        digest: outer.digest(),
        size: outer.count(),
        diff_id,
        uncompressed_size: usize,
    })
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .ctx("read dir", dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .ctx("read dir", dir)?;
    v.sort();
    Ok(v)
}

fn tar_path(rel: &Path, dir: bool) -> Vec<u8> {
    let mut p = rel.as_os_str().as_bytes().to_vec();
    if dir {
        p.push(b'/');
    }
    p
}

struct Walker<'t, 'w> {
    tw: &'t mut TarWriter<&'w mut dyn Write>,
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Directories walked into but not emitted yet (emitted before their first changed child).
    pending: Vec<(PathBuf, PathBuf)>,
}

impl<'t, 'w> Walker<'t, 'w> {
    fn new(tw: &'t mut TarWriter<&'w mut dyn Write>) -> Self {
        Walker {
            tw,
            links: HashMap::new(),
            pending: Vec::new(),
        }
    }

    fn flush_pending(&mut self) -> Result<()> {
        for (full, rel) in std::mem::take(&mut self.pending) {
            self.entry(&full, &rel)?;
        }
        Ok(())
    }

    fn whiteout(&mut self, rel_parent: &Path, name: &OsStr) -> Result<()> {
        self.flush_pending()?;
        let mut n = OsString::from(".wh.");
        n.push(name);
        let h = TarHeader {
            path: tar_path(&rel_parent.join(n), false),
            kind: b'0',
            mode: 0o644,
            ..Default::default()
        };
        self.tw
            .append(&h, Some(&mut std::io::empty()))
            .ctx("write layer", rel_parent)
    }

    /// Emit one node (not its children).
    fn entry(&mut self, full: &Path, rel: &Path) -> Result<()> {
        self.flush_pending()?;
        let m = fs::symlink_metadata(full).ctx("stat", full)?;
        let ft = m.file_type();
        let xattrs: sys::Xattrs = sys::lxattrs(full)
            .ctx("list xattrs", full)?
            .into_iter()
            .filter(|(k, _)| !k.starts_with(b"trusted.overlay."))
            .collect();
        let mut h = TarHeader {
            path: tar_path(rel, ft.is_dir()),
            mode: m.mode() & 0o7777,
            uid: u64::from(m.uid()),
            gid: u64::from(m.gid()),
            mtime: m.mtime(),
            xattrs,
            ..Default::default()
        };
        if !ft.is_dir() && m.nlink() > 1 {
            if let Some(first) = self.links.get(&(m.dev(), m.ino())) {
                h.kind = b'1';
                h.link = first.clone();
                h.xattrs.clear();
                return self.tw.append(&h, None).ctx("write layer", full);
            }
            self.links.insert((m.dev(), m.ino()), h.path.clone());
        }
        if ft.is_dir() {
            h.kind = b'5';
        } else if ft.is_file() {
            h.kind = b'0';
            h.size = m.len();
            let mut f: File = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(full)
                .ctx("open", full)?;
            return self
                .tw
                .append(&h, Some(&mut f as &mut dyn Read))
                .ctx("write layer", full);
        } else if ft.is_symlink() {
            h.kind = b'2';
            h.link = fs::read_link(full)
                .ctx("readlink", full)?
                .as_os_str()
                .as_bytes()
                .to_vec();
        } else if ft.is_char_device() || ft.is_block_device() {
            h.kind = if ft.is_char_device() { b'3' } else { b'4' };
            h.dev = (
                u64::from(nix::sys::stat::major(m.rdev()) as u32),
                u64::from(nix::sys::stat::minor(m.rdev()) as u32),
            );
        } else if ft.is_fifo() {
            h.kind = b'6';
        } else {
            // Sockets cannot be archived.
            return Ok(());
        }
        self.tw.append(&h, None).ctx("write layer", full)
    }

    fn subtree(&mut self, full: &Path, rel: &Path) -> Result<()> {
        self.entry(full, rel)?;
        if fs::symlink_metadata(full).ctx("stat", full)?.is_dir() {
            for n in sorted_names(full)? {
                self.subtree(&full.join(&n), &rel.join(&n))?;
            }
        }
        Ok(())
    }

    /// Emit what changed from `lower/rel` to `upper/rel` (both directories, lower possibly absent).
    fn compare(&mut self, lower: Option<&Path>, upper: Option<&Path>, rel: &Path) -> Result<()> {
        let Some(upper) = upper else {
            return Err(Error::Unsupported("a diff needs an upper tree".into()));
        };
        let ud = upper.join(rel);
        let ld = lower.map(|l| l.join(rel));
        let unames = sorted_names(&ud)?;
        let lnames = match &ld {
            Some(l) if fs::symlink_metadata(l).map(|m| m.is_dir()).unwrap_or(false) => {
                sorted_names(l)?
            }
            _ => Vec::new(),
        };
        let mut all: Vec<&OsString> = unames.iter().chain(lnames.iter()).collect();
        all.sort();
        all.dedup();
        for n in all {
            let r = rel.join(n);
            let u = ud.join(n);
            let in_u = unames.binary_search(n).is_ok();
            let in_l = lnames.binary_search(n).is_ok();
            match (in_l, in_u) {
                (false, true) => self.subtree(&u, &r)?,
                (true, false) => self.whiteout(rel, n)?,
                (true, true) => {
                    let l = ld.as_ref().map(|d| d.join(n)).unwrap_or_default();
                    let um = fs::symlink_metadata(&u).ctx("stat", &u)?;
                    let lm = fs::symlink_metadata(&l).ctx("stat", &l)?;
                    if um.is_dir() && lm.is_dir() {
                        if same(&l, &lm, &u, &um)? {
                            self.pending.push((u.clone(), r.clone()));
                            let depth = self.pending.len();
                            self.compare(lower, Some(upper), &r)?;
                            // Unchanged and nothing below changed: forget it.
                            if self.pending.len() >= depth {
                                self.pending.truncate(depth - 1);
                            }
                        } else {
                            self.entry(&u, &r)?;
                            self.compare(lower, Some(upper), &r)?;
                        }
                    } else if um.is_dir() {
                        self.subtree(&u, &r)?;
                    } else if !same(&l, &lm, &u, &um)? {
                        self.entry(&u, &r)?;
                    }
                }
                (false, false) => {}
            }
        }
        Ok(())
    }
}

fn same(l: &Path, lm: &fs::Metadata, u: &Path, um: &fs::Metadata) -> Result<bool> {
    if lm.mode() != um.mode()
        || lm.uid() != um.uid()
        || lm.gid() != um.gid()
        || lm.rdev() != um.rdev()
        || lm.mtime() != um.mtime()
        || lm.mtime_nsec() != um.mtime_nsec()
        || (!um.is_dir() && lm.len() != um.len())
    {
        return Ok(false);
    }
    if sys::lxattrs(l).ctx("list xattrs", l)? != sys::lxattrs(u).ctx("list xattrs", u)? {
        return Ok(false);
    }
    if um.file_type().is_symlink() {
        return Ok(fs::read_link(l).ctx("readlink", l)? == fs::read_link(u).ctx("readlink", u)?);
    }
    if um.is_file() && um.mtime_nsec() == 0 {
        // Second-granularity times cannot tell a rewrite apart: compare the bytes.
        return same_content(l, u);
    }
    Ok(true)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = File::open(a).ctx("open", a)?;
    let mut fb = File::open(b).ctx("open", b)?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = fa.read(&mut ba).ctx("read", a)?;
        if na == 0 {
            return Ok(fb.read(&mut bb[..1]).ctx("read", b)? == 0);
        }
        fb.read_exact(&mut bb[..na]).map_err(|_| ()).ok();
        if ba[..na] != bb[..na] {
            return Ok(false);
        }
    }
}

/// Emit an overlay upperdir as a layer: whiteout devices and opaque dirs translated.
fn walk_overlay_upper(upper: &Path, tw: &mut TarWriter<&mut dyn Write>) -> Result<()> {
    let mut w = Walker::new(tw);
    walk_upper_dir(&mut w, upper, Path::new(""))
}

fn walk_upper_dir(w: &mut Walker<'_, '_>, upper: &Path, rel: &Path) -> Result<()> {
    let dir = upper.join(rel);
    for n in sorted_names(&dir)? {
        let full = dir.join(&n);
        let r = rel.join(&n);
        let m = fs::symlink_metadata(&full).ctx("stat", &full)?;
        if m.file_type().is_char_device() && m.rdev() == 0 {
            w.whiteout(rel, &n)?;
            continue;
        }
        w.entry(&full, &r)?;
        if m.is_dir() {
            let opaque = sys::lgetxattr(&full, "trusted.overlay.opaque").ctx("getxattr", &full)?;
            if opaque.as_deref() == Some(b"y") {
                w.whiteout(&r, OsStr::new(".wh..opq"))?;
            }
            walk_upper_dir(w, upper, &r)?;
        }
    }
    Ok(())
}
