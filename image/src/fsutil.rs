//! Whole-tree file-system helpers for snapshots: a faithful copy (native snapshotter) and disk usage.
//!
//! Both walk with lstat and never follow a symlink; the copy writes only below its destination,
//! which must be a fresh directory this crate created.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::error::{Error, IoContext, Result};
use crate::sys;

/// Disk usage of a tree: bytes allocated and inodes (hard links counted once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated on disk (`st_blocks * 512`).
    pub size: u64,
    /// Inodes.
    pub inodes: u64,
}

/// Usage of everything at and below `dir`, not following symlinks, not crossing into other
/// filesystems.
pub fn usage(dir: &Path) -> Result<Usage> {
    let mut seen = std::collections::HashSet::new();
    let mut u = Usage::default();
    let root = fs::symlink_metadata(dir).ctx("stat", dir)?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).ctx("stat", &p)?;
        if m.dev() != root.dev() {
            continue;
        }
        if seen.insert((m.dev(), m.ino())) {
            u.inodes += 1;
            u.size += m.blocks() * 512;
        }
        if m.is_dir() {
            for e in fs::read_dir(&p).ctx("read dir", &p)? {
                stack.push(e.ctx("read dir", &p)?.path());
            }
        }
    }
    Ok(u)
}

fn set_meta(dst: &Path, m: &fs::Metadata, src: &Path) -> Result<()> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        dst,
        Some(Uid::from_raw(m.uid())),
        Some(Gid::from_raw(m.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx("chown", dst)?;
    if !m.file_type().is_symlink() {
        // chmod after chown: chown clears setuid/setgid.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            dst,
            Mode::from_bits_truncate(m.mode() & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .ctx("chmod", dst)?;
    }
    // xattrs after chown: chown clears security.capability.
    for (name, value) in sys::lxattrs(src).ctx("list xattrs", src)? {
        let name = std::ffi::OsStr::new(std::str::from_utf8(&name).unwrap_or(""));
        match sys::lsetxattr(dst, name, &value) {
            Ok(()) => {}
            Err(nix::errno::Errno::EPERM | nix::errno::Errno::ENOTSUP) => {
                tracing::warn!(path = %dst.display(), "xattr {name:?} not copied");
            }
            Err(e) => return Err(Error::errno("setxattr", dst, e)),
        }
    }
    Ok(())
}

fn set_times(dst: &Path, m: &fs::Metadata) -> Result<()> {
    let at = TimeSpec::new(m.atime(), m.atime_nsec());
    let mt = TimeSpec::new(m.mtime(), m.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &at,
        &mt,
        UtimensatFlags::NoFollowSymlink,
    )
    .ctx("set times", dst)
}

/// Copy the tree `src` into the existing, empty directory `dst`: files, directories, symlinks,
/// hard links (kept as links), devices, fifos, sockets, modes, owners, xattrs and times (the root's
/// metadata too).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    let root_meta = fs::symlink_metadata(src).ctx("stat", src)?;
    copy_children(src, dst, root_meta.dev(), &mut links, &mut dirs)?;
    set_meta(dst, &root_meta, src)?;
    dirs.push((dst.to_path_buf(), root_meta));
    for (d, m) in dirs.iter().rev() {
        set_times(d, m)?;
    }
    Ok(())
}

fn copy_children(
    src: &Path,
    dst: &Path,
    dev: u64,
    links: &mut HashMap<(u64, u64), PathBuf>,
    dirs: &mut Vec<(PathBuf, fs::Metadata)>,
) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(src)
        .ctx("read dir", src)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .ctx("read dir", src)?;
    names.sort();
    for name in names {
        let s = src.join(&name);
        let d = dst.join(&name);
        let m = fs::symlink_metadata(&s).ctx("stat", &s)?;
        let ft = m.file_type();
        if ft.is_dir() {
            if m.dev() != dev {
                return Err(Error::Unsupported(format!(
                    "copy of {}: a mount point inside a snapshot",
                    s.display()
                )));
            }
            fs::create_dir(&d).ctx("mkdir", &d)?;
            copy_children(&s, &d, dev, links, dirs)?;
            set_meta(&d, &m, &s)?;
            dirs.push((d, m));
            continue;
        }
        if m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                fs::hard_link(first, &d).ctx("link", &d)?;
                continue;
            }
            links.insert((m.dev(), m.ino()), d.clone());
        }
        if ft.is_file() {
            let mut from = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&s)
                .ctx("open", &s)?;
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&d)
                .ctx("create", &d)?;
            std::io::copy(&mut from, &mut to).ctx("copy", &d)?;
            drop::<File>(to);
        } else if ft.is_symlink() {
            let t = fs::read_link(&s).ctx("readlink", &s)?;
            std::os::unix::fs::symlink(&t, &d).ctx("symlink", &d)?;
        } else {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else if ft.is_fifo() {
                SFlag::S_IFIFO
            } else {
                SFlag::S_IFSOCK
            };
            mknod(&d, kind, Mode::from_bits_truncate(0o600), m.rdev()).ctx("mknod", &d)?;
        }
        set_meta(&d, &m, &s)?;
        set_times(&d, &m)?;
    }
    Ok(())
}
