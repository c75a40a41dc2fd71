//! Mounting snapshot mounts on this host, as ctr does for `images mount` and to read an
//! image's /etc/passwd and /etc/group while building a spec.
//!
//! Only the mounts berthd returned are mounted, at targets berth was given or made; this
//! module must never unmount anything it did not mount.

use std::path::Path;

use containerd_client::types::Mount;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

/// Mount `mounts` (one, as snapshotters return) at `target`; `readonly` adds MS_RDONLY.
pub fn mount_all(mounts: &[Mount], target: &Path, readonly: bool) -> Result<()> {
    for m in mounts {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        let mut bind = false;
        for o in &m.options {
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
        let fstype = if bind || m.r#type == "bind" {
            flags |= MsFlags::MS_BIND;
            None
        } else {
            Some(m.r#type.as_str())
        };
        let data = data.join(",");
        nix::mount::mount(
            Some(m.source.as_str()),
            target,
            fstype,
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(Error::sys(format!(
            "mount {} ({}) at {}",
            m.source,
            m.r#type,
            target.display()
        )))?;
        if flags.contains(MsFlags::MS_BIND) && readonly {
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
pub fn unmount(target: &Path) -> Result<()> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH)
        .map_err(Error::sys(format!("unmount {}", target.display())))
}

/// Read `files` (paths inside the rootfs) from `mounts`, mounted read-only on a private
/// temporary directory for the time of the read. Missing files read as empty.
pub fn read_files(mounts: &[Mount], files: &[&str]) -> Result<Vec<String>> {
    let dir = std::env::temp_dir().join(format!("berth-mnt-{}", crate::image::unique_suffix()));
    std::fs::create_dir(&dir).map_err(Error::io("create mount point", &dir))?;
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
