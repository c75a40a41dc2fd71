//! Mounting the rootfs mounts a client gives (snapshotter mounts) at `<bundle>/rootfs`,
//! and unmounting them. A marker file `<bundle>/rootfs.mounted` records that the shim
//! mounted it, so `berth-shim delete` can clean up after a dead shim. This module never
//! unmounts anything it did not mount.

use std::path::Path;

use berth_proto::shim::Mount;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

/// Marker written once the rootfs is mounted.
pub const MARKER: &str = "rootfs.mounted";

/// Split mount options into flags and the data string.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other.to_string());
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, data.join(","))
}

/// Mount `mounts` in order at `bundle/rootfs`, then write the marker.
pub fn mount_rootfs(bundle: &Path, mounts: &[Mount]) -> Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|e| Error::path("creating", &target, e))?;
    for (i, m) in mounts.iter().enumerate() {
        let (flags, data) = parse_options(&m.options);
        let data = (!data.is_empty()).then_some(data.as_str());
        let fstype = (!m.r#type.is_empty() && !flags.contains(MsFlags::MS_BIND))
            .then_some(m.r#type.as_str());
        if let Err(e) = mount(Some(m.source.as_str()), &target, fstype, flags, data) {
            if i > 0 {
                let _ = unmount_all(&target);
            }
            return Err(Error::sys(
                format!(
                    "mounting {} ({}) at {}",
                    m.source,
                    m.r#type,
                    target.display()
                ),
                e,
            ));
        }
        // A read-only bind needs a remount to take effect.
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            let _ = mount(
                None::<&str>,
                &target,
                None::<&str>,
                flags | MsFlags::MS_REMOUNT,
                None::<&str>,
            );
        }
    }
    std::fs::write(bundle.join(MARKER), b"")
        .map_err(|e| Error::path("writing", &bundle.join(MARKER), e))
}

/// Unmount everything stacked at `target` (lazily, so a busy mount cannot block deletion).
fn unmount_all(target: &Path) -> Result<()> {
    for _ in 0..64 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::sys(format!("unmounting {}", target.display()), e)),
        }
    }
    Ok(())
}

/// Unmount `bundle/rootfs` if the shim mounted it, and remove the marker.
pub fn unmount_rootfs(bundle: &Path) -> Result<()> {
    let marker = bundle.join(MARKER);
    if !marker.exists() {
        return Ok(());
    }
    unmount_all(&bundle.join("rootfs"))?;
    let _ = std::fs::remove_file(&marker);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["rbind", "ro", "lowerdir=/a:/b", "upperdir=/u"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(data, "lowerdir=/a:/b,upperdir=/u");
    }
}
