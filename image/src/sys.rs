//! Thin safe wrappers over the few system calls nix 0.30 lacks (extended attributes) and over
//! `/proc/self/fd` paths for acting on a node by (dir fd, name) without following its last
//! component.
//!
//! Every unsafe block here only passes valid, NUL-terminated C strings and correctly sized buffers
//! to the kernel. This module must never follow a symlink in the last component of a path: callers
//! rely on the `l*xattr` variants for that.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// The path of `name` inside the directory open as `dir`, through /proc (the dir itself was
/// resolved safely; the kernel resolves the `/proc/self/fd/N` magic link to exactly it).
pub fn fd_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if !name.is_empty() {
        p.push(name);
    }
    p
}

fn cstr(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn cname(n: &OsStr) -> Result<CString, Errno> {
    CString::new(n.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Set an xattr on an open file or directory.
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8]) -> Result<(), Errno> {
    let n = cname(name)?;
    // SAFETY: `n` is a valid NUL-terminated string and `value` a valid buffer of `value.len()`
    // bytes, both alive for the duration of the call; the fd is borrowed, so open.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Set an xattr on `path` without following a symlink in its last component.
pub fn lsetxattr(path: &Path, name: &OsStr, value: &[u8]) -> Result<(), Errno> {
    let p = cstr(path)?;
    let n = cname(name)?;
    // SAFETY: `p` and `n` are valid NUL-terminated strings, `value` a valid buffer, all alive
    // for the duration of the call.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// xattrs as (name, value) pairs, sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Every xattr of `path` (not following a symlink in its last component), name → value.
pub fn lxattrs(path: &Path) -> Result<Xattrs, Errno> {
    let p = cstr(path)?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: `p` is a valid C string; `names` is a writable buffer of `names.len()` bytes.
        let r = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        match Errno::result(r) {
            Ok(n) => break n as usize,
            Err(Errno::ERANGE) => names.resize(names.len() * 4, 0),
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let n = CString::new(name).map_err(|_| Errno::EINVAL)?;
        let mut value = vec![0u8; 256];
        let vlen = loop {
            // SAFETY: valid C strings and a writable buffer of `value.len()` bytes.
            let r = unsafe {
                libc::lgetxattr(
                    p.as_ptr(),
                    n.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            match Errno::result(r) {
                Ok(v) => break Some(v as usize),
                Err(Errno::ERANGE) => value.resize(value.len() * 16, 0),
                // Removed between list and get.
                Err(Errno::ENODATA) => break None,
                Err(e) => return Err(e),
            }
        };
        if let Some(vlen) = vlen {
            value.truncate(vlen);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One xattr of `path` (not following a final symlink), `None` when it is not set.
pub fn lgetxattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    let p = cstr(path)?;
    let n = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let mut value = vec![0u8; 256];
    loop {
        // SAFETY: valid C strings and a writable buffer of `value.len()` bytes.
        let r = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        match Errno::result(r) {
            Ok(v) => {
                value.truncate(v as usize);
                return Ok(Some(value));
            }
            Err(Errno::ERANGE) => value.resize(value.len() * 16, 0),
            Err(Errno::ENODATA) | Err(Errno::ENOTSUP) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}
