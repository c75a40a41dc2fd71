//! Small, error-annotated file helpers for cgroupfs and the mount table parser.
//!
//! Every cgroup file is written with one `write(2)` of the whole value (the kernel parses a value per write) and
//! never created: a missing interface file is an error naming it, not a new regular file. These helpers must never
//! follow a path outside the cgroup mounts they are handed, and never change a mount.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::CgroupError;

/// Writes `value` to `dir/file` in a single write, without creating the file.
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    write_path(&path, value)
}

/// Writes `value` to `path` in a single write, without creating the file.
pub(crate) fn write_path(path: &Path, value: &str) -> Result<(), CgroupError> {
    let err = |source: io::Error| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    let mut f = OpenOptions::new().write(true).open(path).map_err(err)?;
    let n = f.write(value.as_bytes()).map_err(err)?;
    if n != value.len() {
        return Err(err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write ({n} of {} bytes)", value.len()),
        )));
    }
    Ok(())
}

/// Reads `dir/file` as a string with surrounding whitespace removed.
pub(crate) fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CgroupError::Read { path, source })
}

/// Reads `dir/file` if it exists; `Ok(None)` when it does not.
pub(crate) fn read_opt(dir: &Path, file: &str) -> Result<Option<String>, CgroupError> {
    let path = dir.join(file);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path, source }),
    }
}

/// Parses a cgroup number; "max" (and v1's huge "unlimited" values) read as `u64::MAX` by the caller's choice.
pub(crate) fn parse_u64(path: &Path, s: &str) -> Result<u64, CgroupError> {
    s.trim().parse::<u64>().map_err(|e| CgroupError::Parse {
        path: path.to_path_buf(),
        reason: format!("{s:?} is not a number: {e}"),
    })
}

/// Reads a numeric file; missing file = `None`; "max" = `Some(0)` when `max_as_zero` (runc reports "max" as 0).
pub(crate) fn read_u64_opt(dir: &Path, file: &str) -> Result<Option<u64>, CgroupError> {
    match read_opt(dir, file)? {
        None => Ok(None),
        Some(s) if s == "max" => Ok(Some(0)),
        Some(s) => parse_u64(&dir.join(file), &s).map(Some),
    }
}

/// Parses "key value" lines (memory.stat, cpu.stat, memory.events) into pairs; bad lines are skipped.
pub(crate) fn parse_flat_keyed(s: &str) -> Vec<(String, u64)> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse::<u64>().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// One line of /proc/self/mountinfo, the parts this module needs.
#[derive(Debug, Clone)]
pub(crate) struct MountInfo {
    /// Root of the mount within its filesystem (a cgroup path for cgroupfs).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type ("cgroup", "cgroup2", ...).
    pub fstype: String,
    /// Superblock options (for v1 cgroupfs: the controllers, e.g. "rw,cpu,cpuacct").
    pub super_opts: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, etc.).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                return None;
            }
            Some(MountInfo {
                root: unescape(pre[3]),
                mount_point: PathBuf::from(unescape(pre[4])),
                fstype: post[0].to_string(),
                super_opts: post[2].to_string(),
            })
        })
        .collect()
}

/// Reads and parses /proc/self/mountinfo.
pub(crate) fn mountinfo() -> Result<Vec<MountInfo>, CgroupError> {
    let path = PathBuf::from("/proc/self/mountinfo");
    let text = fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
    Ok(parse_mountinfo(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    50 31 0:40 /a\\040b /mnt/with\\040space rw shared:1 - tmpfs tmpfs rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].fstype, "cgroup");
        assert_eq!(m[0].super_opts, "rw,cpu");
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(m[2].root, "/a b");
        assert_eq!(m[2].mount_point, PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn parses_flat_keyed() {
        let v = parse_flat_keyed("usage_usec 10\nuser_usec 4\nbad\nx y\n");
        assert_eq!(v, vec![("usage_usec".into(), 10), ("user_usec".into(), 4)]);
    }
}
