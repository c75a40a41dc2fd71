//! CVE-2019-5736 defence: before entering a container, re-execute berth-runc from
//! a sealed memfd copy of its own binary, so that /proc/PID/exe of any process
//! the container can see is that sealed copy and never the binary on disk. This
//! must never loop (an environment marker stops it) and must never leave the
//! marker in a container's environment.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;

use crate::error::{Error, Result};

const MARKER: &str = "_BERTH_RUNC_SEALED";

/// Whether this process already runs from the sealed copy.
pub fn is_sealed() -> bool {
    std::env::var_os(MARKER).is_some()
}

/// Re-exec from a sealed memfd copy unless already done; on return the process
/// runs sealed and the marker is removed from the environment.
pub fn ensure_sealed() -> Result<()> {
    if is_sealed() {
        std::env::remove_var(MARKER);
        return Ok(());
    }
    let memfd = copy_self_pinned()?;
    let argv: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| Error::Usage("NUL in argument".into())))
        .collect::<Result<_>>()?;
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            CString::new(kv.as_bytes()).ok()
        })
        .collect();
    envp.push(CString::new(format!("{MARKER}=1")).map_err(|_| Error::Usage("marker".into()))?);
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: argv/envp are NUL-terminated arrays of valid C strings that outlive the
    // call; memfd is a valid fd; on success this never returns.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            memfd.as_raw_fd(),
            c"".as_ptr(),
            argv_p.as_ptr(),
            envp_p.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(Error::sys("execveat sealed copy", Errno::last()))
}

/// [`copy_self`] while this process stays on one CPU.
///
/// Sealing with F_SEAL_WRITE fails with EBUSY while any page of the memfd holds an extra
/// reference, and freshly written pages sit in the per-CPU LRU batch of the CPU that wrote
/// them until it is drained; the kernel drains only the sealing CPU's batch. If the
/// scheduler moved us mid-copy (seen under load), sealing failed. Pinning keeps writer and
/// sealer on one CPU; a couple of retries cover whatever else holds a page briefly.
fn copy_self_pinned() -> Result<OwnedFd> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let previous = sched_getaffinity(Pid::from_raw(0)).ok();
    // SAFETY: sched_getcpu has no arguments and no side effects.
    let cpu = unsafe { libc::sched_getcpu() };
    if let (Some(_), Ok(cpu)) = (&previous, usize::try_from(cpu)) {
        let mut one = CpuSet::new();
        if one.set(cpu).is_ok() {
            let _ = sched_setaffinity(Pid::from_raw(0), &one);
        }
    }
    let mut result = copy_self();
    for _ in 0..3 {
        match &result {
            Err(Error::Sys {
                errno: Errno::EBUSY,
                ..
            }) => {
                std::thread::sleep(std::time::Duration::from_millis(2));
                result = copy_self();
            }
            _ => break,
        }
    }
    if let Some(previous) = previous {
        let _ = sched_setaffinity(Pid::from_raw(0), &previous);
    }
    result
}

fn copy_self() -> Result<OwnedFd> {
    // SAFETY: memfd_create with a static name; the result is wrapped at once.
    let fd = unsafe {
        libc::memfd_create(
            c"berth-runc".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(Error::sys("memfd_create", Errno::last()));
    }
    // SAFETY: fd is a new fd nobody else owns.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let exe = std::fs::File::open("/proc/self/exe")
        .map_err(|e| Error::io("open", "/proc/self/exe", e))?;
    let len = exe
        .metadata()
        .map_err(|e| Error::io("stat", "/proc/self/exe", e))?
        .len() as usize;
    let mut left = len;
    while left > 0 {
        // SAFETY: both fds are valid; a null offset uses the file positions.
        let n = unsafe {
            libc::sendfile(
                memfd.as_raw_fd(),
                exe.as_raw_fd(),
                std::ptr::null_mut(),
                left,
            )
        };
        if n < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(Error::sys("copy binary into memfd", e));
        }
        if n == 0 {
            break;
        }
        left -= n as usize;
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl with integer arguments on our memfd.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(Error::sys("seal memfd", Errno::last()));
    }
    Ok(memfd)
}
