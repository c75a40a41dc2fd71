//! The container's view of /sys/fs/cgroup for a `cgroup` mount: a tmpfs holding
//! one entry per host hierarchy (v1 controllers and the cgroup2 "unified" one),
//! each either a fresh cgroup mount (new cgroup namespace) or a bind of the
//! container's own cgroup directory. It must never expose a host cgroup above the
//! container's own.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::mounts::MountOpts;
use crate::error::{Error, Result, SysContext};
use crate::utils::{fd_path, mkdir_all_in_root, open_in_root};

struct Hierarchy {
    mountpoint: PathBuf,
    root: String,
    v2: bool,
    controllers: Vec<String>,
}

fn hierarchies() -> Result<Vec<Hierarchy>> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    let mut out = Vec::new();
    for line in mi.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let v2 = match post[0] {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        // The host's hierarchies only: another container without a mount namespace of its
        // own has its cgroupfs view mounted below its rootfs, in our mount table too.
        if !Path::new(pre[4]).starts_with(crate::cgroups::CGROUP_ROOT) {
            continue;
        }
        let controllers = if v2 {
            vec![]
        } else {
            post[2]
                .split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro") && !o.contains("xattr") && *o != "clone_children"
                })
                .map(str::to_string)
                .collect()
        };
        out.push(Hierarchy {
            mountpoint: PathBuf::from(pre[4]),
            root: pre[3].to_string(),
            v2,
            controllers,
        });
    }
    Ok(out)
}

fn own_path(h: &Hierarchy, cg: &str) -> Option<String> {
    for line in cg.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        if h.v2 && ctrls.is_empty() {
            return Some(path.to_string());
        }
        if !h.v2 && !ctrls.is_empty() {
            let mut a: Vec<&str> = ctrls.split(',').collect();
            let mut b: Vec<&str> = h.controllers.iter().map(String::as_str).collect();
            a.sort_unstable();
            b.sort_unstable();
            if a == b {
                return Some(path.to_string());
            }
        }
    }
    None
}

/// Mount the cgroup view at `dest` below `root`.
pub fn mount_cgroup(root: &OwnedFd, dest: &Path, opts: &MountOpts, cgroupns: bool) -> Result<()> {
    let flags = opts.flags
        & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let target = mkdir_all_in_root(root, dest, false)?;
    mount(
        Some("tmpfs"),
        fd_path(&target).as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .sys(|| format!("mount tmpfs on {}", dest.display()))?;
    let dir = open_in_root(root, dest, libc::O_PATH | libc::O_DIRECTORY)
        .sys(|| format!("open {}", dest.display()))?;
    let cg = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| Error::io("read", "/proc/self/cgroup", e))?;
    for h in hierarchies()? {
        let Some(name) = h.mountpoint.file_name() else {
            continue;
        };
        let sub = dest.join(name);
        let Ok(cname) = CString::new(name.as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: dir is a valid dirfd, cname a valid C string.
        unsafe { libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), 0o755) };
        let t = open_in_root(root, &sub, libc::O_PATH).sys(|| format!("open {}", sub.display()))?;
        if cgroupns {
            let (fstype, data) = if h.v2 {
                ("cgroup2", String::new())
            } else {
                ("cgroup", h.controllers.join(","))
            };
            mount(
                Some(fstype),
                fd_path(&t).as_str(),
                Some(fstype),
                flags,
                if data.is_empty() {
                    None
                } else {
                    Some(data.as_str())
                },
            )
            .sys(|| format!("mount {fstype} on {}", sub.display()))?;
        } else {
            let Some(own) = own_path(&h, &cg) else {
                continue;
            };
            let rel = own
                .strip_prefix(&h.root)
                .unwrap_or(&own)
                .trim_start_matches('/');
            let src = h.mountpoint.join(rel);
            mount(
                Some(&src),
                fd_path(&t).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .sys(|| format!("bind {} on {}", src.display(), sub.display()))?;
            let again =
                open_in_root(root, &sub, libc::O_PATH).sys(|| format!("open {}", sub.display()))?;
            mount(
                None::<&str>,
                fd_path(&again).as_str(),
                None::<&str>,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | flags
                    | super::mounts::locked_flags(&again),
                None::<&str>,
            )
            .sys(|| format!("remount {}", sub.display()))?;
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            fd_path(&dir).as_str(),
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_RDONLY,
            Some("mode=755"),
        )
        .sys(|| format!("remount {} ro", dest.display()))?;
    }
    Ok(())
}
