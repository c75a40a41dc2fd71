//! Reading files of a container's rootfs (its /etc/passwd and /etc/group) from the snapshot mounts a
//! snapshotter returns, before the container exists: the mounts go read-only on a private temporary
//! directory for the time of the read, as containerd's `WithTempMount` does.
//!
//! Only the given mounts are mounted, at a directory this module made; it must never unmount anything it
//! did not mount, and it reads every path with symlinks resolved inside the rootfs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::mount::{MntFlags, MsFlags};

/// One snapshot mount as containerd's `Mount` type describes it.
#[derive(Debug, Clone, Copy)]
pub struct MountRef<'a> {
    /// Filesystem type (`overlay`, `bind`, ...).
    pub kind: &'a str,
    pub source: &'a str,
    /// fstab-style options; flags are split from filesystem data here.
    pub options: &'a [String],
}

/// A mount or a read that failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// mount(2) or umount(2) failed.
    #[error("{what}: {errno}")]
    Mount {
        what: String,
        errno: nix::errno::Errno,
    },
    /// The temporary mount point could not be made.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Mount `mounts` (one, as snapshotters return) at `target`; `readonly` adds MS_RDONLY.
pub fn mount_all(
    mounts: &[MountRef<'_>],
    target: &Path,
    readonly: bool,
) -> Result<(), RootfsError> {
    for m in mounts {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        let mut bind = false;
        for o in m.options {
            match o.as_str() {
                "ro" => flags |= MsFlags::MS_RDONLY,
                "rw" => {}
                "bind" => bind = true,
                "rbind" => {
                    bind = true;
                    flags |= MsFlags::MS_REC;
                }
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                other => data.push(other.to_string()),
            }
        }
        if readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        let fstype = if bind || m.kind == "bind" {
            flags |= MsFlags::MS_BIND;
            None
        } else {
            Some(m.kind)
        };
        let data = data.join(",");
        nix::mount::mount(
            Some(m.source),
            target,
            fstype,
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(|errno| RootfsError::Mount {
            what: format!("mount {} ({}) at {}", m.source, m.kind, target.display()),
            errno,
        })?;
        if flags.contains(MsFlags::MS_BIND) && readonly {
            // A bind mount ignores MS_RDONLY until remounted.
            let _ = nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
    Ok(())
}

/// Unmount `target` (lazily, so a busy mount still goes).
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|errno| RootfsError::Mount {
        what: format!("unmount {}", target.display()),
        errno,
    })
}

/// Read `files` (absolute paths inside the rootfs) from `mounts`, mounted read-only on a fresh directory
/// below `scratch` for the time of the read. A missing or unreadable file reads as empty (an image without
/// /etc/group has no groups), at most 1 MiB of each.
pub fn read_files(
    mounts: &[MountRef<'_>],
    files: &[&str],
    scratch: &Path,
) -> Result<Vec<String>, RootfsError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = scratch.join(format!(
        "berth-rootfs-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|source| RootfsError::Io {
        what: "create mount point",
        path: dir.clone(),
        source,
    })?;
    let result = mount_all(mounts, &dir, true).map(|()| {
        let out = files
            .iter()
            .map(|f| read_in_root(&dir, f).unwrap_or_default())
            .collect();
        let _ = unmount(&dir);
        out
    });
    let _ = std::fs::remove_dir(&dir);
    result
}

/// Read `file` below `root` with every symlink resolved inside `root` (an image's
/// `/etc/passwd -> /etc/shadow` must not read the host's shadow file).
fn read_in_root(root: &Path, file: &str) -> Option<String> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    let dir = std::fs::File::open(root).ok()?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(&dir, file.trim_start_matches('/'), how).ok()?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bind mount of a directory tree: /etc/passwd reads, a symlink escaping the root stays inside it, a
    /// missing file is empty, and nothing is left mounted or on disk. Root only.
    #[test]
    fn reads_through_a_bind_mount_and_cleans_up() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("berth-rootfs-test-{}", std::process::id()));
        let root = base.join("root");
        let scratch = base.join("scratch");
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::write(root.join("etc/passwd"), "app:x:1:2::/h:/bin/sh\n").expect("passwd");
        std::os::unix::fs::symlink("/../../../etc/hostname", root.join("etc/group"))
            .expect("symlink");
        let opts = vec!["rbind".to_string(), "ro".to_string()];
        let source = root.display().to_string();
        let mounts = [MountRef {
            kind: "bind",
            source: &source,
            options: &opts,
        }];
        let files = read_files(&mounts, &["/etc/passwd", "/etc/group", "/nope"], &scratch);
        let leftovers = std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0);
        let _ = std::fs::remove_dir_all(&base);
        let files = files.expect("read");
        assert_eq!(files, vec!["app:x:1:2::/h:/bin/sh\n", "", ""]);
        assert_eq!(leftovers, 0, "a mount point was left behind");
    }
}
