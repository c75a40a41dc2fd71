//! The entry loop of the unpacker (see the parent module for the safety rules it follows).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{futimens, makedev, mkdirat, mknodat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{linkat, symlinkat};
use tar::EntryType;

mod meta;

use super::root::{clean, clear_dir, remove_all_at, Root};
use super::{Applied, ApplyOptions, WhiteoutMode};
use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};
use crate::sys;

const MAX_WARNINGS: usize = 100;
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Ownership, mode, times and xattrs of one entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Unpacker<'o> {
    opts: &'o ApplyOptions,
    root: Root,
    buf: Vec<u8>,
    /// Paths this layer created (Delete mode: an opaque marker keeps them).
    created: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, TimeSpec, TimeSpec)>,
    out: Applied,
}

fn parse_time(s: &str) -> Option<TimeSpec> {
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut nanos: i64 = 0;
    let digits: String = frac.chars().take(9).collect();
    if !digits.is_empty() {
        nanos = format!("{digits:0<9}").parse().ok()?;
        if sec < 0 {
            nanos = -nanos;
        }
    }
    Some(TimeSpec::new(sec, nanos))
}

fn xattr_allowed(name: &str) -> bool {
    (name.starts_with("user.") || name.starts_with("trusted.") || name == "security.capability")
        && !name.starts_with("trusted.overlay.")
}

pub(super) fn apply_tar<R: Read>(
    target: &Path,
    hashing: HashingReader<R>,
    opts: &ApplyOptions,
) -> Result<Applied> {
    let mut u = Unpacker {
        opts,
        root: Root::open(target)?,
        buf: vec![0u8; opts.buffer_size.max(4096)],
        created: HashSet::new(),
        dir_times: Vec::new(),
        out: Applied {
            diff_id: Digest::of(b""),
            size: 0,
            entries: 0,
            skipped_devices: 0,
            skipped_xattrs: 0,
            skipped_entries: 0,
            warnings: Vec::new(),
        },
    };
    let mut archive = tar::Archive::new(BufReader::with_capacity(opts.buffer_size, hashing));
    let mut last_name = String::new();
    let mut last_end: u64 = 0;
    {
        let entries = archive.entries().map_err(|e| Error::Layer {
            entry: String::new(),
            offset: 0,
            reason: e.to_string(),
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Error::Layer {
                entry: if last_name.is_empty() {
                    String::new()
                } else {
                    format!("after {last_name}")
                },
                offset: last_end,
                reason: e.to_string(),
            })?;
            last_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let stored = entry.header().entry_size().unwrap_or(0);
            last_end = entry.raw_file_position() + stored.div_ceil(512) * 512;
            u.entry(&mut entry)?;
            u.out.entries += 1;
        }
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| Error::Layer {
        entry: format!("after {last_name}"),
        offset: last_end,
        reason: e.to_string(),
    })?;
    let hashing = rest.into_inner();
    if hashing.count() < last_end + 512 {
        return Err(Error::Layer {
            entry: if last_name.is_empty() {
                String::new()
            } else {
                format!("after {last_name}")
            },
            offset: hashing.count(),
            reason: "truncated tar: the stream ends without the end-of-archive blocks".into(),
        });
    }
    u.finish()?;
    u.out.diff_id = hashing.digest();
    u.out.size = hashing.count();
    Ok(u.out)
}

impl Unpacker<'_> {
    fn warn(&mut self, msg: String) {
        tracing::warn!("layer: {msg}");
        if self.out.warnings.len() < MAX_WARNINGS {
            self.out.warnings.push(msg);
        }
    }

    fn shown(&self, rel: &Path) -> PathBuf {
        self.root.path().join(rel)
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = e.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let rel = clean(&raw);
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            if kind.is_dir() {
                let meta = self.meta(e, &shown)?;
                let fd = self
                    .root
                    .open_in(Path::new(""), OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                    .map_err(|x| Error::errno("open", self.root.path(), x))?;
                self.set_meta_fd(fd.as_fd(), Path::new(""), &meta)?;
                self.dir_times
                    .push((PathBuf::new(), meta.atime, meta.mtime));
            } else {
                self.out.skipped_entries += 1;
                self.warn(format!(
                    "skipped {shown:?}: a non-directory entry for the root"
                ));
            }
            return Ok(());
        };
        if let Some(wh) = name.as_bytes().strip_prefix(b".wh.") {
            return self.whiteout(&parent, wh, &shown);
        }
        let meta = self.meta(e, &shown)?;
        let pfd = self.root.dir(&parent)?;
        let pfd = pfd.as_fd();
        let path = self.shown(&rel);
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let fd = self.create(pfd, &name, &path, false, |d, n| {
                    openat(
                        d,
                        n,
                        OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    )
                })?;
                let Some(fd) = fd else { return Ok(()) };
                let mut file = File::from(fd);
                self.copy_data(e, &mut file, &shown)?;
                self.set_meta_fd(file.as_fd(), &rel, &meta)?;
                futimens(&file, &meta.atime, &meta.mtime)
                    .map_err(|x| Error::errno("set times", &path, x))?;
            }
            EntryType::Directory => {
                // An existing directory is kept (create returns None): only its metadata changes.
                self.create(pfd, &name, &path, true, |d, n| {
                    mkdirat(d, n, Mode::from_bits_truncate(0o700))
                })?;
                let fd = openat(
                    pfd,
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|x| Error::errno("open", &path, x))?;
                self.set_meta_fd(fd.as_fd(), &rel, &meta)?;
                self.dir_times.push((rel.clone(), meta.atime, meta.mtime));
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                let target = OsStr::from_bytes(&target).to_os_string();
                self.create(pfd, &name, &path, false, |d, n| {
                    symlinkat(target.as_os_str(), d, n)
                })?;
                self.set_meta_at(pfd, &name, &rel, &meta, false)?;
            }
            EntryType::Link => {
                let link = e
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                let trel = clean(&link);
                if trel == rel {
                    return Ok(());
                }
                let (Some(tname), tparent) =
                    (trel.file_name(), trel.parent().unwrap_or(Path::new("")))
                else {
                    return Err(Error::Unsafe {
                        entry: shown,
                        reason: "hard link to the root directory".into(),
                    });
                };
                let tpfd = self
                    .root
                    .open_in(tparent, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(|x| Error::Unsafe {
                        entry: shown.clone(),
                        reason: format!(
                            "hard link target {:?} not found inside the target: {x}",
                            String::from_utf8_lossy(&link)
                        ),
                    })?;
                let tname = tname.to_os_string();
                self.create(pfd, &name, &path, false, |d, n| {
                    linkat(tpfd.as_fd(), tname.as_os_str(), d, n, AtFlags::empty())
                })
                .map_err(|x| Error::Unsafe {
                    entry: shown.clone(),
                    reason: format!(
                        "hard link to {:?} (resolved inside the target): {x}",
                        String::from_utf8_lossy(&link)
                    ),
                })?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    k => {
                        if !self.opts.allow_devices {
                            self.out.skipped_devices += 1;
                            self.warn(format!("skipped device {shown:?}: devices not allowed"));
                            return Ok(());
                        }
                        let h = e.header();
                        let major = h.device_major().ok().flatten().unwrap_or(0);
                        let minor = h.device_minor().ok().flatten().unwrap_or(0);
                        let f = if k == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (f, makedev(u64::from(major), u64::from(minor)))
                    }
                };
                self.create(pfd, &name, &path, false, |d, n| {
                    mknodat(d, n, sflag, Mode::from_bits_truncate(0o600), dev)
                })?;
                self.set_meta_at(pfd, &name, &rel, &meta, true)?;
            }
            other => {
                self.out.skipped_entries += 1;
                self.warn(format!(
                    "skipped {shown:?}: unsupported entry type {other:?}"
                ));
                return Ok(());
            }
        }
        if self.opts.whiteout == WhiteoutMode::Delete {
            self.created.insert(rel);
        }
        Ok(())
    }

    /// Run `make` on (dir, name); if something is in the way, remove it (a directory is kept when
    /// `keep_dir`, returning `None`) and try once more.
    fn create<T>(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        keep_dir: bool,
        make: impl Fn(BorrowedFd<'_>, &OsStr) -> nix::Result<T>,
    ) -> Result<Option<T>> {
        match make(dir, name) {
            Ok(v) => return Ok(Some(v)),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::errno("create", path, e)),
        }
        if keep_dir {
            let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| Error::errno("stat", path, e))?;
            if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
                return Ok(None);
            }
        }
        if remove_all_at(dir, name, path)? {
            self.root.invalidate();
        }
        make(dir, name)
            .map(Some)
            .map_err(|e| Error::errno("create", path, e))
    }

    fn copy_data<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        file: &mut File,
        shown: &str,
    ) -> Result<()> {
        let want = e.size();
        let mut done: u64 = 0;
        loop {
            let n = match e.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(x) if x.kind() == io::ErrorKind::Interrupted => continue,
                Err(x) => {
                    return Err(Error::Layer {
                        entry: shown.to_string(),
                        offset: e.raw_file_position() + done,
                        reason: format!("reading file data: {x}"),
                    })
                }
            };
            file.write_all(&self.buf[..n]).map_err(|x| {
                Error::io("write", self.root.path().join(clean(shown.as_bytes())), x)
            })?;
            done += n as u64;
        }
        if done != want {
            return Err(Error::Layer {
                entry: shown.to_string(),
                offset: e.raw_file_position() + done,
                reason: format!("truncated file data: {done} of {want} bytes"),
            });
        }
        Ok(())
    }

    fn whiteout(&mut self, parent: &Path, wh: &[u8], shown: &str) -> Result<()> {
        let overlay = self.opts.whiteout == WhiteoutMode::Overlay;
        let pfd: OwnedFd = if overlay {
            let d = self.root.dir(parent)?;
            nix::unistd::dup(d.as_fd()).map_err(|e| Error::errno("dup", self.shown(parent), e))?
        } else {
            match self
                .root
                .open_in(parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
            {
                Ok(fd) => fd,
                // Nothing there to delete.
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => {
                    return Err(Error::Unsafe {
                        entry: shown.to_string(),
                        reason: format!("whiteout parent not resolvable inside the target: {e}"),
                    })
                }
            }
        };
        let ppath = self.shown(parent);
        if wh == b".wh..opq" {
            let dir = openat(
                pfd.as_fd(),
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::errno("open", &ppath, e))?;
            if overlay {
                sys::fsetxattr(dir.as_fd(), OsStr::new(OPAQUE_XATTR), b"y")
                    .map_err(|e| Error::errno("set opaque xattr", &ppath, e))?;
            } else {
                let created = &self.created;
                clear_dir(dir.as_fd(), &ppath, &mut |n| {
                    created.contains(&parent.join(n))
                })?;
                self.root.invalidate();
            }
            return Ok(());
        }
        let name = OsStr::from_bytes(wh);
        if wh.is_empty() || wh == b"." || wh == b".." || wh.contains(&b'/') {
            return Err(Error::Unsafe {
                entry: shown.to_string(),
                reason: "whiteout of an invalid name".into(),
            });
        }
        let path = ppath.join(name);
        if remove_all_at(pfd.as_fd(), name, &path)? {
            self.root.invalidate();
        }
        if overlay {
            mknodat(
                pfd.as_fd(),
                name,
                SFlag::S_IFCHR,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(|e| Error::errno("create whiteout", &path, e))?;
        }
        Ok(())
    }

    /// Directory times last: creating entries inside a directory changes its mtime.
    fn finish(&mut self) -> Result<()> {
        for (rel, atime, mtime) in std::mem::take(&mut self.dir_times) {
            let fd = match self.root.open_in(
                &rel,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            ) {
                Ok(fd) => fd,
                // Replaced by a later entry: its times were set with it.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(Error::errno("open", self.shown(&rel), e)),
            };
            futimens(&fd, &atime, &mtime)
                .map_err(|e| Error::errno("set times", self.shown(&rel), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse_fractions() {
        assert_eq!(parse_time("12.5"), Some(TimeSpec::new(12, 500_000_000)));
        assert_eq!(parse_time("7"), Some(TimeSpec::new(7, 0)));
        assert_eq!(parse_time("x"), None);
    }

    #[test]
    fn overlay_and_unknown_xattrs_are_refused() {
        assert!(xattr_allowed("user.a"));
        assert!(xattr_allowed("security.capability"));
        assert!(xattr_allowed("trusted.x"));
        assert!(!xattr_allowed("trusted.overlay.opaque"));
        assert!(!xattr_allowed("security.selinux"));
    }
}
