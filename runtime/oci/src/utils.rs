//! Small helpers shared by the verbs: id validation, /proc/PID/stat parsing,
//! RFC 3339 time, signal names, fd hygiene and root-confined path resolution.
//! Nothing here may follow a symlink out of a container rootfs.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::error::{Error, Result};

/// Check a container id the way runc does.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

/// What /proc/PID/stat says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Single-letter state (R, S, D, Z, X, T, ...).
    pub state: char,
    /// Start time in clock ticks since boot (field 22).
    pub start_time: u64,
    /// Kernel per-process flags (field 9, `PF_*`).
    pub flags: u64,
}

/// `PF_EXITING`: the process has called exit and is tearing down; a pid namespace's init
/// stays in this state (sleeping, not yet a zombie) until every other process of its
/// namespace has been reaped, which an orphan's lazy reaper can delay indefinitely.
const PF_EXITING: u64 = 0x4;

impl ProcStat {
    /// Whether the process has exited: a zombie, dead, or past the point of no return.
    pub fn exited(&self) -> bool {
        self.state == 'Z' || self.state == 'X' || self.flags & PF_EXITING != 0
    }
}

/// Read /proc/PID/stat; None when the process is gone.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields restart after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split(' ');
    let state = it.next()?.chars().next()?;
    // after state (field 3) come fields 4..; flags is field 9, start_time field 22.
    let flags = it.nth(5)?.parse().ok()?;
    let start_time = it.nth(12)?.parse().ok()?;
    Some(ProcStat {
        state,
        start_time,
        flags,
    })
}

/// Whether PID is a live process (not a zombie), optionally with a given start time.
pub fn pid_alive(pid: i32, start_time: Option<u64>) -> bool {
    if pid <= 0 {
        return false;
    }
    match proc_stat(pid) {
        Some(st) => {
            st.state != 'Z' && st.state != 'X' && start_time.is_none_or(|t| t == st.start_time)
        }
        None => false,
    }
}

/// Whether PID (with that start time) is gone or has exited (see [`ProcStat::exited`]):
/// what a container's status calls stopped.
pub fn pid_exited(pid: i32, start_time: u64) -> bool {
    match proc_stat(pid) {
        Some(st) => st.start_time != start_time || st.exited(),
        None => true,
    }
}

/// Current time as RFC 3339 with nanoseconds, UTC (`2026-11-27T20:38:47.123456789Z`).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Format seconds + nanos since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Parse a signal given as a name (KILL, SIGKILL, kill) or a number.
pub fn parse_signal(s: &str) -> Result<Signal> {
    let bad = || Error::Usage(format!("unknown signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>().map_err(|_| bad())
}

/// Mark every fd >= `from` close-on-exec (close_range with CLOSE_RANGE_CLOEXEC).
pub fn cloexec_from(from: u32) -> Result<()> {
    // SAFETY: close_range only changes fd flags of this process; no memory is touched.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(Error::sys("close_range", Errno::last()));
    }
    Ok(())
}

/// Clear FD_CLOEXEC on fd.
pub fn clear_cloexec(fd: RawFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // SAFETY: fd is an fd number of this process given by the caller; fcntl on a bad
    // fd fails with EBADF.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(b, FcntlArg::F_SETFD(FdFlag::empty()))
        .map_err(|e| Error::sys(format!("fcntl {fd}"), e))?;
    Ok(())
}

/// Open `path` below the directory `root` the way a chroot would resolve it:
/// absolute symlinks and `..` stay inside `root` (openat2 RESOLVE_IN_ROOT).
pub fn open_in_root(root: &impl AsRawFd, path: &Path, flags: i32) -> Result<OwnedFd, Errno> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = CString::new(rel.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: open_how is plain data; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // With RESOLVE_IN_ROOT the kernel answers EAGAIN when a rename or mount anywhere on the host raced
    // with the lookup (other containers starting): retry, as openat2(2) asks, a bounded number of times.
    let mut tries = 0;
    loop {
        // SAFETY: `c` is a valid NUL-terminated string and `how` a valid open_how of the
        // size passed; the kernel only reads them.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &mut how as *mut libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the syscall returned a new fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = Errno::last();
        tries += 1;
        if e != Errno::EAGAIN || tries >= 128 {
            return Err(e);
        }
    }
}

/// Make sure `path` exists below `root` (creating missing directories, and the last
/// component as a file when `file` is set) without leaving `root`, and return an
/// O_PATH fd to it.
pub fn mkdir_all_in_root(root: &impl AsRawFd, path: &Path, file: bool) -> Result<OwnedFd> {
    let err = |op: &str, e| Error::sys(format!("{op} {} in rootfs", path.display()), e);
    match open_in_root(root, path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(err("open", e)),
    }
    let comps: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut prefix = std::path::PathBuf::from("/");
    for (i, name) in comps.iter().enumerate() {
        let parent = open_in_root(root, &prefix, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| err("open parent of", e))?;
        prefix.push(name);
        match open_in_root(root, &prefix, libc::O_PATH) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(err("open", e)),
        }
        let last = i + 1 == comps.len();
        let cname =
            CString::new(name.as_encoded_bytes()).map_err(|_| err("name", Errno::EINVAL))?;
        // SAFETY: parent is a valid dirfd and cname a valid C string.
        let r = unsafe {
            if last && file {
                let fd = libc::openat(
                    parent.as_raw_fd(),
                    cname.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_WRONLY
                        | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
                fd
            } else {
                libc::mkdirat(parent.as_raw_fd(), cname.as_ptr(), 0o755)
            }
        };
        if r < 0 && Errno::last() != Errno::EEXIST {
            return Err(err("create", Errno::last()));
        }
    }
    open_in_root(root, path, libc::O_PATH).map_err(|e| err("open", e))
}

/// The /proc/self/fd path of an fd (a mount target that is exactly that inode).
pub fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Write `--pid-file` atomically; a failure names the file the caller gave, not the
/// temp file beside it.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    write_atomic(path, pid.to_string().as_bytes()).map_err(|e| match e {
        Error::Io { source, .. } => Error::io("write pid file", path, source),
        e => e,
    })
}

/// Write a file atomically (temp file in the same dir + rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-1_2+3.x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "a\n"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(0, 5), "1970-01-01T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_795_804_727, 0), "2026-11-27T18:38:47.000000000Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL").ok(), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("sigterm").ok(), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9").ok(), Some(Signal::SIGKILL));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn own_stat() {
        let st = proc_stat(std::process::id() as i32).expect("own stat");
        assert!(st.start_time > 0);
        assert!(!st.exited());
        assert!(!pid_exited(std::process::id() as i32, st.start_time));
        // field 22 of a process started at boot is small: the parse picked the right field
        let one = proc_stat(1).expect("pid 1");
        assert!(one.start_time <= st.start_time);
        assert!(pid_alive(std::process::id() as i32, Some(st.start_time)));
        assert!(!pid_alive(
            std::process::id() as i32,
            Some(st.start_time + 1)
        ));
    }
}
