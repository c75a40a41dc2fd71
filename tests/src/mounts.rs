//! Mount table helpers (from /proc/self/mountinfo) and lazy unmounting below a test's dir.
//!
//! Only this process's mount namespace is visible here. Nothing in this module may unmount
//! anything outside the dir it is given.

use std::path::{Path, PathBuf};

/// Undo the octal escapes (`\040` for a space, ...) of a /proc/self/mountinfo field.
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Mount points in this process's mount namespace, from /proc/self/mountinfo, in mount order,
/// each with its filesystem type.
pub fn mounts() -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?;
            Some((unescape_mountinfo(mount_point), fstype.to_string()))
        })
        .collect()
}

/// True when `path` is a mount point in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    mounts().iter().any(|(m, _)| m == path)
}

/// Mount points at or below `dir`, deepest (and latest) first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|(m, _)| m)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.reverse(); // later mounts first (stacked mounts)
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// Lazily unmount (`MNT_DETACH`) every mount at or below `dir`, deepest first; returns what
/// is still mounted afterwards.
pub fn unmount_below(dir: &Path) -> Vec<PathBuf> {
    // Stacked mounts need one umount per layer: loop a few times.
    for _ in 0..8 {
        let found = mounts_below(dir);
        if found.is_empty() {
            return found;
        }
        for m in &found {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    mounts_below(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b\\c"), PathBuf::from(r"/a b\\c"));
        assert_eq!(unescape_mountinfo(r"/a\134b"), PathBuf::from(r"/a\b"));
    }
}
