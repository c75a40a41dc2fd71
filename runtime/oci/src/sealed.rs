//! CVE-2019-5736 defence: before entering a container, re-execute berth-runc from
//! a file nobody can write, so that /proc/PID/exe of any process the container can
//! see is that file and never the writable binary on disk. This must never loop (an
//! environment marker stops it) and must never leave the marker in a container's
//! environment.
//!
//! First choice: the binary opened through a private read-only overlayfs mount of its
//! own directory, created with fsopen/fsmount and never attached anywhere, so it lives
//! exactly as long as the processes that run from it. Writing through such an exe link
//! fails with EROFS, and exec shares the on-disk binary's page cache: no copy. Fallback
//! (no overlayfs, no new mount API, odd directory): a sealed memfd copy, which costs a
//! 4 MiB copy and fresh page faults on every invocation.

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
    // BERTH_RUNC_SEAL=memfd forces the fallback (tests, and kernels whose overlayfs
    // misbehaves).
    let memfd_only = std::env::var_os("BERTH_RUNC_SEAL").is_some_and(|v| v == "memfd");
    let overlay = if memfd_only {
        Err(Error::Usage("BERTH_RUNC_SEAL=memfd".into()))
    } else {
        overlay_self()
    };
    let exe = match overlay {
        Ok(fd) => fd,
        Err(e) => {
            crate::logging::debug(&format!("overlay seal unavailable ({e}); copying to memfd"));
            copy_self_pinned()?
        }
    };
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
    // call; exe is a valid fd; on success this never returns.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            exe.as_raw_fd(),
            c"".as_ptr(),
            argv_p.as_ptr(),
            envp_p.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(Error::sys("execveat sealed copy", Errno::last()))
}

// The new mount API (Linux 5.2); the libc crate lacks the flag values.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;

fn new_fd(what: &'static str, ret: libc::c_long) -> Result<OwnedFd> {
    if ret < 0 {
        return Err(Error::sys(what, Errno::last()));
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

fn fsconfig(
    fs: &OwnedFd,
    cmd: libc::c_uint,
    key: Option<&CString>,
    value: Option<&CString>,
) -> Result<()> {
    let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
    let value = value.map_or(std::ptr::null(), |v| v.as_ptr());
    // SAFETY: valid fd; key/value are NUL-terminated strings or null as the command wants.
    if unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, key, value, 0) } < 0 {
        return Err(Error::sys("fsconfig", Errno::last()));
    }
    Ok(())
}

/// A new mount of `fstype`, read-only and attached nowhere.
fn detached_mount(fstype: &std::ffi::CStr, options: &[(&CString, &CString)]) -> Result<OwnedFd> {
    // SAFETY: fsopen with a NUL-terminated fs name and integer flags.
    let fs = new_fd("fsopen", unsafe {
        libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC)
    })?;
    for (key, value) in options {
        fsconfig(&fs, FSCONFIG_SET_STRING, Some(key), Some(value))?;
    }
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: valid fs context fd and integer flags.
    new_fd("fsmount", unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
    })
}

/// Our own binary, opened read-only through a detached read-only overlayfs whose top
/// layer is the binary's directory.
fn overlay_self() -> Result<OwnedFd> {
    let path = std::fs::read_link("/proc/self/exe")
        .map_err(|e| Error::io("readlink", "/proc/self/exe", e))?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::Usage(format!(
            "odd executable path {}",
            path.display()
        )));
    };
    let cstr =
        |b: &[u8]| CString::new(b).map_err(|_| Error::Usage("NUL in executable path".into()));
    let (dir, name) = (cstr(dir.as_os_str().as_bytes())?, cstr(name.as_bytes())?);
    // Overlayfs without an upper layer wants two lower ones: under the binary's directory
    // goes an empty detached tmpfs, which no path names and which dies with the overlay.
    let empty = detached_mount(c"tmpfs", &[])?;
    let empty = cstr(format!("/proc/self/fd/{}", empty.as_raw_fd()).as_bytes())?;
    // "lowerdir+" (Linux 6.8) takes each path as is, whatever characters it holds.
    let lower = cstr(b"lowerdir+")?;
    let mnt = detached_mount(c"overlay", &[(&lower, &dir), (&lower, &empty)])?;
    // SAFETY: valid dir fd and NUL-terminated relative name.
    new_fd("open binary in overlay", unsafe {
        libc::openat(
            mnt.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        ) as libc::c_long
    })
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
