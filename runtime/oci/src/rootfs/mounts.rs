//! One spec mount: option parsing (flags, propagation, recursive attributes, fs
//! data) and the mount itself, made on the target as resolved inside the rootfs
//! (openat2 RESOLVE_IN_ROOT, then /proc/self/fd/N). A mount target must never be
//! resolved by a plain path walk that could follow a symlink out of the rootfs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Mount;

use crate::error::{Error, Result, SysContext};
use crate::utils::{fd_path, mkdir_all_in_root, open_in_root};

/// Parsed mount options.
#[derive(Debug, Clone)]
pub struct MountOpts {
    /// Flags to set.
    pub flags: MsFlags,
    /// Propagation changes, applied one by one after the mount.
    pub propagation: Vec<MsFlags>,
    /// Recursive attributes to set (mount_setattr).
    pub attr_set: u64,
    /// Recursive attributes to clear.
    pub attr_clr: u64,
    /// Filesystem data (`size=1m,mode=755`).
    pub data: Vec<String>,
}

impl Default for MountOpts {
    fn default() -> Self {
        MountOpts {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            attr_set: 0,
            attr_clr: 0,
            data: Vec::new(),
        }
    }
}

/// Parse a spec mount's options.
pub fn parse_options(opts: &[String]) -> Result<MountOpts> {
    let mut o = MountOpts::default();
    for opt in opts {
        let (set, clear): (MsFlags, MsFlags) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "tmpcopyup" | "" => (MsFlags::empty(), MsFlags::empty()),
            p @ ("private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
            | "unbindable" | "runbindable") => {
                o.propagation.push(propagation(p)?);
                continue;
            }
            r @ ("rro" | "rrw" | "rnosuid" | "rsuid" | "rnodev" | "rdev" | "rnoexec" | "rexec"
            | "rnoatime" | "ratime" | "rnodiratime" | "rdiratime" | "rrelatime"
            | "rstrictatime") => {
                let (bit, set) = match r {
                    "rro" => (libc::MOUNT_ATTR_RDONLY, true),
                    "rrw" => (libc::MOUNT_ATTR_RDONLY, false),
                    "rnosuid" => (libc::MOUNT_ATTR_NOSUID, true),
                    "rsuid" => (libc::MOUNT_ATTR_NOSUID, false),
                    "rnodev" => (libc::MOUNT_ATTR_NODEV, true),
                    "rdev" => (libc::MOUNT_ATTR_NODEV, false),
                    "rnoexec" => (libc::MOUNT_ATTR_NOEXEC, true),
                    "rexec" => (libc::MOUNT_ATTR_NOEXEC, false),
                    "rnoatime" => (libc::MOUNT_ATTR_NOATIME, true),
                    "ratime" => (libc::MOUNT_ATTR_NOATIME, false),
                    "rnodiratime" => (libc::MOUNT_ATTR_NODIRATIME, true),
                    "rdiratime" => (libc::MOUNT_ATTR_NODIRATIME, false),
                    "rrelatime" => (libc::MOUNT_ATTR_RELATIME, true),
                    _ => (libc::MOUNT_ATTR_STRICTATIME, true),
                };
                if set {
                    o.attr_set |= bit;
                } else {
                    o.attr_clr |= bit;
                }
                continue;
            }
            "idmap" | "ridmap" => {
                return Err(Error::Spec(format!(
                    "mount option {opt:?} is not supported"
                )))
            }
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    Ok(o)
}

/// Flags of a propagation name.
pub fn propagation(p: &str) -> Result<MsFlags> {
    Ok(match p {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return Err(Error::Spec(format!("unknown propagation {p:?}"))),
    })
}

/// Set recursive mount attributes on the mount at `fd`.
pub fn setattr(fd: &OwnedFd, set: u64, clr: u64) -> Result<()> {
    let mut attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: fd is valid, the empty path with AT_EMPTY_PATH designates it, attr is a
    // mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(Error::sys("mount_setattr", nix::errno::Errno::last()));
    }
    Ok(())
}

/// Mount one spec mount below the rootfs `root` (an O_PATH fd of the rootfs mount).
pub fn mount_one(root: &OwnedFd, m: &Mount, bundle: &Path, cgroupns: bool) -> Result<()> {
    let dest = m.destination();
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]))?;
    if typ == "cgroup" || typ == "cgroup2" {
        return super::cgroupfs::mount_cgroup(root, dest, &opts, cgroupns);
    }
    let is_bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let source: Option<PathBuf> = m.source().as_ref().map(|s| {
        if is_bind && s.is_relative() {
            bundle.join(s)
        } else {
            s.clone()
        }
    });
    let ctx = || {
        format!(
            "mount {} on {}",
            source.as_deref().unwrap_or(Path::new("")).display(),
            dest.display()
        )
    };
    let target_is_file = is_bind
        && source
            .as_ref()
            .is_some_and(|s| std::fs::metadata(s).map(|md| !md.is_dir()).unwrap_or(false));
    if is_bind {
        if let Some(s) = &source {
            std::fs::metadata(s).map_err(|e| Error::io("bind mount source", s, e))?;
        }
    }
    let target = mkdir_all_in_root(root, dest, target_is_file)?;
    let data = opts.data.join(",");
    let prop_mask =
        MsFlags::MS_SHARED | MsFlags::MS_PRIVATE | MsFlags::MS_SLAVE | MsFlags::MS_UNBINDABLE;
    if is_bind {
        let bflags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        mount(
            source.as_deref(),
            fd_path(&target).as_str(),
            None::<&str>,
            bflags,
            None::<&str>,
        )
        .sys(ctx)?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            let again = open_in_root(root, dest, libc::O_PATH).sys(ctx)?;
            let rflags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | locked_flags(&again);
            mount(
                None::<&str>,
                fd_path(&again).as_str(),
                None::<&str>,
                rflags,
                None::<&str>,
            )
            .sys(|| format!("remount {} with {extra:?}", dest.display()))?;
        }
    } else {
        let fl = opts.flags & !prop_mask;
        let src = source
            .as_ref()
            .map(|s| s.as_os_str().to_os_string())
            .unwrap_or_else(|| typ.into());
        let r = mount(
            Some(src.as_os_str()),
            fd_path(&target).as_str(),
            Some(typ),
            fl,
            if data.is_empty() {
                None
            } else {
                Some(data.as_str())
            },
        );
        match r {
            // sysfs cannot be mounted without a new net namespace: bind the host's.
            Err(nix::errno::Errno::EPERM) if typ == "sysfs" => {
                mount(
                    Some("/sys"),
                    fd_path(&target).as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .sys(ctx)?;
                let again = open_in_root(root, dest, libc::O_PATH).sys(ctx)?;
                mount(
                    None::<&str>,
                    fd_path(&again).as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | fl,
                    None::<&str>,
                )
                .sys(ctx)?;
            }
            r => r.sys(ctx)?,
        }
    }
    if !opts.propagation.is_empty() || opts.attr_set != 0 || opts.attr_clr != 0 {
        let again = open_in_root(root, dest, libc::O_PATH).sys(ctx)?;
        for p in &opts.propagation {
            mount(
                None::<&str>,
                fd_path(&again).as_str(),
                None::<&str>,
                *p,
                None::<&str>,
            )
            .sys(|| format!("set propagation of {}", dest.display()))?;
        }
        if opts.attr_set != 0 || opts.attr_clr != 0 {
            setattr(&again, opts.attr_set, opts.attr_clr)?;
        }
    }
    Ok(())
}

/// Flags of an existing mount a bind remount must keep (they may be locked).
pub fn locked_flags(fd: &impl AsRawFd) -> MsFlags {
    // SAFETY: statvfs is plain data; fstatvfs fills it for a valid fd.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is valid and st is ours.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) } < 0 {
        return MsFlags::empty();
    }
    let mut f = MsFlags::empty();
    let map = [
        (libc::ST_NOSUID, MsFlags::MS_NOSUID),
        (libc::ST_NODEV, MsFlags::MS_NODEV),
        (libc::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (libc::ST_NOATIME, MsFlags::MS_NOATIME),
        (libc::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (libc::ST_RELATIME, MsFlags::MS_RELATIME),
        (libc::ST_RDONLY, MsFlags::MS_RDONLY),
    ];
    for (st_bit, ms) in map {
        if st.f_flag & st_bit != 0 {
            f |= ms;
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_options(&[
            "nosuid".into(),
            "noexec".into(),
            "ro".into(),
            "rbind".into(),
            "rslave".into(),
            "size=65536k".into(),
            "mode=755".into(),
            "rro".into(),
        ])
        .expect("parse");
        assert!(o.flags.contains(
            MsFlags::MS_NOSUID
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_RDONLY
                | MsFlags::MS_BIND
                | MsFlags::MS_REC
        ));
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(
            o.data,
            vec!["size=65536k".to_string(), "mode=755".to_string()]
        );
        assert_eq!(o.attr_set, libc::MOUNT_ATTR_RDONLY);
        let o = parse_options(&["ro".into(), "rw".into()]).expect("parse");
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert!(parse_options(&["idmap".into()]).is_err());
    }
}
