//! containerd's `Mount` (a mount described as data) and the one place that turns it into mount(2)
//! calls, as ctr and containerd do with what the Snapshots service returns.
//!
//! This module must never mount anything but what it is given, and never unmount anything but the
//! exact target it is asked to (no recursive or pattern-based unmounts).

use std::path::Path;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

/// A mount as containerd describes it (`containerd.types.Mount`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Filesystem type (`bind`, `overlay`, ...); containerd calls it `type`.
    pub kind: String,
    /// Source (a directory for binds, `overlay` for overlayfs).
    pub source: String,
    /// Sub-path of the mount point (empty: the mount point itself).
    pub target: String,
    /// fstab-style options (`ro`, `rbind`, `lowerdir=...`).
    pub options: Vec<String>,
}

fn flag(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "bind" => (true, MsFlags::MS_BIND),
        "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (true, MsFlags::MS_DIRSYNC),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "atime" => (false, MsFlags::MS_NOATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "diratime" => (false, MsFlags::MS_NODIRATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "norelatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "remount" => (true, MsFlags::MS_REMOUNT),
        "defaults" => (false, MsFlags::empty()),
        _ => return None,
    })
}

impl Mount {
    /// A bind mount of `source` (`rw,rbind` or `ro,rbind`).
    pub fn bind(source: &Path, readonly: bool) -> Mount {
        Mount {
            kind: "bind".into(),
            source: source.to_string_lossy().into_owned(),
            target: String::new(),
            options: vec![if readonly { "ro" } else { "rw" }.into(), "rbind".into()],
        }
    }

    /// The value of a `key=value` option.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find_map(|o| o.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// Whether the mount is read-only.
    pub fn readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// Mount it on `target` with mount(2) (a read-only bind is remounted read-only, as the kernel
    /// ignores `MS_RDONLY` on the first bind).
    pub fn mount_at(&self, target: &Path) -> Result<()> {
        let mut flags = MsFlags::empty();
        let mut data: Vec<&str> = Vec::new();
        for o in &self.options {
            match flag(o) {
                Some((true, f)) => flags |= f,
                Some((false, f)) => flags &= !f,
                None => data.push(o),
            }
        }
        let data = data.join(",");
        let err = |e: nix::errno::Errno| Error::Mount {
            kind: self.kind.clone(),
            source_path: self.source.clone(),
            target: target.to_path_buf(),
            reason: e.to_string(),
        };
        let fstype = if flags.contains(MsFlags::MS_BIND) {
            None
        } else {
            Some(self.kind.as_str())
        };
        nix::mount::mount(
            Some(self.source.as_str()),
            target,
            fstype,
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(err)?;
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            let re = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, re, None::<&str>)
            {
                let _ = unmount(target);
                return Err(err(e));
            }
        }
        Ok(())
    }
}

/// Mount `mounts` in order on `target` (each at `target/<mount.target>`); on failure, what was
/// mounted is unmounted again.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        let at = target.join(m.target.trim_start_matches('/'));
        if let Err(e) = m.mount_at(&at) {
            for done in mounts[..i].iter().rev() {
                let _ = unmount(&target.join(done.target.trim_start_matches('/')));
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmount `target` (retrying while busy for a short while, then detaching lazily).
pub fn unmount(target: &Path) -> Result<()> {
    for _ in 0..20 {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                return Err(Error::Mount {
                    kind: "umount".into(),
                    source_path: String::new(),
                    target: target.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        }
    }
    nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|e| Error::Mount {
        kind: "umount".into(),
        source_path: String::new(),
        target: target.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Whether anything is mounted at or below `dir` (from /proc/self/mountinfo).
pub fn mounted_below(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    let mut out = Vec::new();
    for line in info.lines() {
        let Some(mp) = line.split(' ').nth(4) else {
            continue;
        };
        let mp = unescape(mp);
        let p = Path::new(&mp);
        if p.starts_with(dir) {
            out.push(p.to_path_buf());
        }
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
