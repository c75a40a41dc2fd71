//! Device nodes in the container's /dev: the default set runc creates, the spec's
//! devices (mknod, or a bind of the host node inside a user namespace) and the
//! /dev symlinks. It must never create a node outside the rootfs.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use crate::error::{Error, Result, SysContext};
use crate::utils::{fd_path, mkdir_all_in_root, open_in_root};

struct Dev {
    path: PathBuf,
    kind: libc::mode_t,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
}

const DEFAULTS: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Create default and spec devices and the /dev symlinks below `root`.
pub fn create(root: &OwnedFd, spec_devs: &[LinuxDevice], in_userns: bool) -> Result<()> {
    let mut devs: Vec<Dev> = DEFAULTS
        .iter()
        .map(|(p, ma, mi)| Dev {
            path: PathBuf::from(p),
            kind: libc::S_IFCHR,
            major: *ma,
            minor: *mi,
            mode: 0o666,
            uid: None,
            gid: None,
        })
        .collect();
    for d in spec_devs {
        let kind = match d.typ() {
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::A => {
                return Err(Error::Spec(format!(
                    "device {}: type a is not a node",
                    d.path().display()
                )))
            }
        };
        devs.retain(|x| x.path != *d.path());
        devs.push(Dev {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid(),
            gid: d.gid(),
        });
    }
    for d in &devs {
        make(root, d, in_userns)?;
    }
    symlinks(root)
}

fn make(root: &OwnedFd, d: &Dev, in_userns: bool) -> Result<()> {
    let parent = d.path.parent().unwrap_or(Path::new("/"));
    let name = d
        .path
        .file_name()
        .ok_or_else(|| Error::Spec(format!("device path {:?}", d.path)))?;
    let pfd = mkdir_all_in_root(root, parent, false)?;
    let dir = open_in_root(root, parent, libc::O_PATH | libc::O_DIRECTORY)
        .sys(|| format!("open {}", parent.display()))?;
    drop(pfd);
    let cname =
        CString::new(name.as_encoded_bytes()).map_err(|_| Error::Spec("device name".into()))?;
    if in_userns {
        let t = mkdir_all_in_root(root, &d.path, true)?;
        mount(
            Some(&d.path),
            fd_path(&t).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .sys(|| format!("bind device {}", d.path.display()))?;
        return Ok(());
    }
    let dev = libc::makedev(d.major as u32, d.minor as u32);
    // SAFETY: dir is a valid dirfd and cname a valid C string.
    let r = unsafe { libc::mknodat(dir.as_raw_fd(), cname.as_ptr(), d.kind | d.mode, dev) };
    if r < 0 && Errno::last() != Errno::EEXIST {
        return Err(Error::sys(
            format!("mknod {}", d.path.display()),
            Errno::last(),
        ));
    }
    // SAFETY: as above; AT_SYMLINK_NOFOLLOW keeps a planted symlink from redirecting.
    unsafe {
        libc::fchmodat(dir.as_raw_fd(), cname.as_ptr(), d.mode, 0);
        if d.uid.is_some() || d.gid.is_some() {
            libc::fchownat(
                dir.as_raw_fd(),
                cname.as_ptr(),
                d.uid.unwrap_or(u32::MAX),
                d.gid.unwrap_or(u32::MAX),
                libc::AT_SYMLINK_NOFOLLOW,
            );
        }
    }
    Ok(())
}

fn symlinks(root: &OwnedFd) -> Result<()> {
    let dev = open_in_root(root, Path::new("/dev"), libc::O_PATH | libc::O_DIRECTORY)
        .sys(|| "open /dev".into())?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        let (Ok(t), Ok(n)) = (CString::new(target), CString::new(name)) else {
            continue;
        };
        if name == "ptmx" {
            // SAFETY: dev is a valid dirfd and n a valid C string; a missing entry is fine.
            unsafe { libc::unlinkat(dev.as_raw_fd(), n.as_ptr(), 0) };
        }
        // SAFETY: dev is a valid dirfd; both strings are valid C strings.
        let r = unsafe { libc::symlinkat(t.as_ptr(), dev.as_raw_fd(), n.as_ptr()) };
        if r < 0 && Errno::last() != Errno::EEXIST {
            return Err(Error::sys(format!("symlink /dev/{name}"), Errno::last()));
        }
    }
    Ok(())
}
