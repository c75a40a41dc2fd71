//! Path resolution confined to an unpack target: every directory is opened with `openat2`
//! (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`), so `..`, absolute symlinks and
//! symlinked parents all resolve inside the target, and the last component is then handled with
//! `*at` calls that do not follow it.
//!
//! This module must never hand out a directory fd that resolved outside the target, and never
//! follow a symlink or cross a mount point while deleting.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{Error, Result};

/// Lexically clean a tar name into a path relative to the root: empty and `.` components are
/// dropped, `..` climbs but never above the root, a leading `/` is ignored (as containerd does:
/// names are joined to `/` and cleaned).
pub fn clean(name: &[u8]) -> PathBuf {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut p = PathBuf::new();
    for c in parts {
        p.push(OsStr::from_bytes(c));
    }
    p
}

const CACHE_MAX: usize = 512;
const MAX_SYMLINKS: u32 = 40;

/// The unpack target, with a cache of directory fds already resolved inside it.
pub struct Root {
    path: PathBuf,
    fd: Rc<OwnedFd>,
    cache: HashMap<PathBuf, Rc<OwnedFd>>,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root").field("path", &self.path).finish()
    }
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_IN_ROOT
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    )
}

impl Root {
    /// Open the target directory (it must exist).
    pub fn open(path: &Path) -> Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::errno("open target", path, e))?;
        Ok(Root {
            path: path.to_path_buf(),
            fd: Rc::new(fd),
            cache: HashMap::new(),
        })
    }

    /// The target's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Forget cached directory fds (after anything that may have removed or replaced a
    /// directory or a symlink).
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// Open `rel` (a directory, resolved inside the root) with `flags`, following nothing out.
    pub fn open_in(&self, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return openat(
                self.fd.as_fd(),
                ".",
                flags | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
        }
        openat2(self.fd.as_fd(), rel, how(flags))
    }

    /// The directory `rel` (relative, cleaned), created with mode 0755 (and its missing parents)
    /// when absent. A dangling symlink on the way is resolved inside the root and its target
    /// created, as containerd does.
    pub fn dir(&mut self, rel: &Path) -> Result<Rc<OwnedFd>> {
        self.dir_depth(rel, 0)
    }

    fn dir_depth(&mut self, rel: &Path, depth: u32) -> Result<Rc<OwnedFd>> {
        if rel.as_os_str().is_empty() {
            return Ok(self.fd.clone());
        }
        if let Some(fd) = self.cache.get(rel) {
            return Ok(fd.clone());
        }
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        match openat2(self.fd.as_fd(), rel, how(flags)) {
            Ok(fd) => return Ok(self.remember(rel, fd)),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.resolve_err(rel, e)),
        }
        if depth > MAX_SYMLINKS {
            return Err(self.resolve_err(rel, Errno::ELOOP));
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().unwrap_or_default();
        let pfd = self.dir_depth(parent, depth)?;
        match mkdirat(pfd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::errno("mkdir", self.path.join(rel), e)),
        }
        match openat2(self.fd.as_fd(), rel, how(flags)) {
            Ok(fd) => Ok(self.remember(rel, fd)),
            Err(Errno::ENOENT) => {
                // `name` is a dangling symlink: create what it points at, inside the root.
                let target = nix::fcntl::readlinkat(pfd.as_fd(), name)
                    .map_err(|e| self.resolve_err(rel, e))?;
                let t = target.as_bytes();
                let new_rel = if t.starts_with(b"/") {
                    clean(t)
                } else {
                    let mut joined = parent.as_os_str().as_bytes().to_vec();
                    joined.push(b'/');
                    joined.extend_from_slice(t);
                    clean(&joined)
                };
                self.dir_depth(&new_rel, depth + 1)?;
                match openat2(self.fd.as_fd(), rel, how(flags)) {
                    Ok(fd) => Ok(self.remember(rel, fd)),
                    Err(e) => Err(self.resolve_err(rel, e)),
                }
            }
            Err(e) => Err(self.resolve_err(rel, e)),
        }
    }

    fn remember(&mut self, rel: &Path, fd: OwnedFd) -> Rc<OwnedFd> {
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        let fd = Rc::new(fd);
        self.cache.insert(rel.to_path_buf(), fd.clone());
        fd
    }

    fn resolve_err(&self, rel: &Path, e: Errno) -> Error {
        let reason = match e {
            Errno::ENOTDIR => "a parent is not a directory".to_string(),
            Errno::EXDEV => "the path crosses a mount point".to_string(),
            Errno::ELOOP => "too many levels of symlinks".to_string(),
            e => e.to_string(),
        };
        Error::Unsafe {
            entry: rel.to_string_lossy().into_owned(),
            reason: format!(
                "cannot resolve directory inside {}: {reason}",
                self.path.display()
            ),
        }
    }
}

/// Remove `name` in `dir` and, if it is a directory, everything below it, never following a
/// symlink and never descending into another filesystem. Absent is fine. Returns whether a
/// directory or a symlink was removed (cached resolutions may then be stale).
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<bool> {
    let st = match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(Error::errno("stat", shown, e)),
    };
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if fmt == SFlag::S_IFDIR {
        let parent = nix::sys::stat::fstat(dir).map_err(|e| Error::errno("stat", shown, e))?;
        if parent.st_dev != st.st_dev {
            return Err(Error::Unsafe {
                entry: shown.to_string_lossy().into_owned(),
                reason: "refusing to delete across a mount point".into(),
            });
        }
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::errno("open", shown, e))?;
        clear_dir(fd.as_fd(), shown, &mut |_| false)?;
        unlinkat(dir, name, UnlinkatFlags::RemoveDir)
            .map_err(|e| Error::errno("rmdir", shown, e))?;
        Ok(true)
    } else {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| Error::errno("unlink", shown, e))?;
        Ok(fmt == SFlag::S_IFLNK)
    }
}

/// The names in the directory open (readable) as `dir`, without `.` and `..`.
pub fn dir_names(dir: BorrowedFd<'_>, shown: &Path) -> Result<Vec<OsString>> {
    let dup = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::errno("open", shown, e))?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(|e| Error::errno("opendir", shown, e))?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.map_err(|e| Error::errno("readdir", shown, e))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(names)
}

/// Remove everything in `dir` whose name `keep` does not accept.
pub fn clear_dir(
    dir: BorrowedFd<'_>,
    shown: &Path,
    keep: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    for n in dir_names(dir, shown)? {
        if !keep(&n) {
            remove_all_at(dir, &n, &shown.join(&n))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_never_climbs_above_the_root() {
        assert_eq!(clean(b"../../etc/passwd"), PathBuf::from("etc/passwd"));
        assert_eq!(clean(b"/abs/./x/"), PathBuf::from("abs/x"));
        assert_eq!(clean(b"a/../../b"), PathBuf::from("b"));
        assert_eq!(clean(b"./"), PathBuf::new());
        assert_eq!(clean(b"a//b/.."), PathBuf::from("a"));
    }
}
