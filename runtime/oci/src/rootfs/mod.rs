//! The container's root filesystem, set up by init inside its new mount
//! namespace: propagation, the rootfs bind, spec mounts in order, devices,
//! pivot_root (or MS_MOVE + chroot), then masked paths, read-only paths and a
//! read-only root. Every mount target is resolved inside the rootfs; this module
//! must never mount onto a path that a symlink could move to the host.

pub mod cgroupfs;
pub mod devices;
pub mod mounts;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, chroot, pivot_root};
use oci_spec::runtime::Spec;

use crate::error::{Error, Result, SysContext};

/// Propagation for "/" from rootfsPropagation (default rprivate, like runc).
fn root_propagation(spec: &Spec) -> Result<MsFlags> {
    match spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
    {
        None | Some("") => Ok(MsFlags::MS_REC | MsFlags::MS_PRIVATE),
        Some(p) => mounts::propagation(p),
    }
}

/// Propagation changes that must wait until the rootfs is "/": a shared "/" would make
/// pivot_root fail, an unbindable one the rootfs bind (EINVAL, which runc 1.1 hits).
fn after_pivot(prop: MsFlags) -> bool {
    prop.intersects(MsFlags::MS_SHARED | MsFlags::MS_UNBINDABLE)
}

/// Before pivot: propagation, rootfs bind, spec mounts, devices. Without a mount
/// namespace of its own (`own_mntns` false) this runs in the caller's, as runc does: the
/// propagation of the caller's "/" is then left alone, and everything is mounted below
/// the rootfs bind that `create` made (see [`bind_shared_rootfs`]) and `delete` detaches.
pub fn prepare(
    spec: &Spec,
    rootfs: &Path,
    bundle: &Path,
    in_userns: bool,
    cgroupns: bool,
    own_mntns: bool,
) -> Result<()> {
    if own_mntns {
        let prop = root_propagation(spec)?;
        let first = if after_pivot(prop) {
            MsFlags::MS_REC | MsFlags::MS_SLAVE
        } else {
            prop
        };
        mount(None::<&str>, "/", None::<&str>, first, None::<&str>)
            .sys(|| "set propagation of /".into())?;
        bind_rootfs(rootfs)?;
    }
    let root = open_dir(rootfs)?;
    let mut dev_is_bind = false;
    for m in spec.mounts().iter().flatten() {
        mounts::mount_one(&root, m, bundle, cgroupns)?;
        if m.destination() == Path::new("/dev")
            && (m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind"))
        {
            dev_is_bind = true;
        }
    }
    if !dev_is_bind {
        let devs = spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().clone())
            .unwrap_or_default();
        devices::create(&root, &devs, in_userns)?;
    }
    Ok(())
}

fn open_dir(p: &Path) -> Result<OwnedFd> {
    open_path(p, libc::O_DIRECTORY)
}

/// An O_PATH fd of `p` (never opens the file itself: no device open, no fifo block).
fn open_path(p: &Path, flags: i32) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Spec(format!("path {} has a NUL byte", p.display())))?;
    // SAFETY: c is a valid C string; the fd is wrapped at once.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::sys(
            format!("open {}", p.display()),
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: fd is a new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make the rootfs "/" (pivot_root, or MS_MOVE + chroot with `no_pivot`; only chroot in
/// the caller's mount namespace, whose "/" must never move).
pub fn pivot(rootfs: &Path, no_pivot: bool, own_mntns: bool) -> Result<()> {
    chdir(rootfs).sys(|| format!("chdir {}", rootfs.display()))?;
    if !own_mntns {
        chroot(".").sys(|| "chroot".into())?;
    } else if no_pivot {
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .sys(|| "move rootfs to /".into())?;
        chroot(".").sys(|| "chroot".into())?;
    } else {
        pivot_root(".", ".").sys(|| "pivot_root".into())?;
        // The old root is stacked on "." and is never shared here ("/" was made rprivate
        // or rslave in `prepare`), so detaching it cannot propagate to the host. A
        // MS_SLAVE|MS_REC on "." would hit the new root instead (mount(2) does not
        // follow to the top mount) and undo the spec's shared mounts.
        umount2(".", MntFlags::MNT_DETACH).sys(|| "detach old root".into())?;
    }
    chdir("/").sys(|| "chdir /".into())
}

/// After pivot: masked and read-only paths, read-only root, shared propagation.
pub fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        mask(Path::new(p))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        readonly(Path::new(p))?;
    }
    if spec
        .root()
        .as_ref()
        .is_some_and(|r| r.readonly().unwrap_or(false))
    {
        let fd = open_dir(Path::new("/"))?;
        let fl =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | mounts::locked_flags(&fd);
        mount(None::<&str>, "/", None::<&str>, fl, None::<&str>)
            .sys(|| "remount / read-only".into())?;
    }
    let prop = root_propagation(spec)?;
    if after_pivot(prop) {
        mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
            .sys(|| "set propagation of /".into())?;
    }
    Ok(())
}

fn bind_rootfs(rootfs: &Path) -> Result<()> {
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .sys(|| format!("bind rootfs {}", rootfs.display()))
}

/// For a container without a mount namespace of its own: bind the rootfs onto itself in
/// the caller's namespace, from `create` itself, so that what is ours to detach at
/// `delete` is known for sure (a rootfs that already was a mount point stays mounted).
pub fn bind_shared_rootfs(rootfs: &Path) -> Result<()> {
    bind_rootfs(rootfs)
}

/// Detach the rootfs bind (and every mount below it) that a container without a mount
/// namespace of its own left in the caller's namespace. Must run in that namespace.
pub fn detach_shared_rootfs(rootfs: &Path) -> Result<()> {
    match umount2(rootfs, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::sys(format!("detach rootfs {}", rootfs.display()), e)),
    }
}

fn mask(p: &Path) -> Result<()> {
    match std::fs::metadata(p) {
        Err(_) => Ok(()),
        Ok(md) if md.is_dir() => mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0,mode=0"),
        )
        .sys(|| format!("mask {}", p.display())),
        Ok(_) => mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .sys(|| format!("mask {}", p.display())),
    }
}

fn readonly(p: &Path) -> Result<()> {
    if std::fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .sys(|| format!("bind {} read-only", p.display()))?;
    // O_PATH: reading the flags must not open the file itself, which for a device node
    // the devices cgroup denies (EPERM), as runc's read-only remount of one shows.
    let f = open_path(p, 0)?;
    let fl = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | mounts::locked_flags(&f);
    mount(None::<&str>, p, None::<&str>, fl, None::<&str>)
        .sys(|| format!("remount {} read-only", p.display()))
}
