//! Named network namespaces: a fresh netns bind-mounted onto a file (`<state>/netns/<ns>/<id>`),
//! with `lo` up, that a pod sandbox's containers join and CNI plugins configure.
//!
//! The namespace is created by `unshare(CLONE_NEWNET)` on a dedicated, short-lived thread that
//! mounts `/proc/thread-self/ns/net` onto the file, brings `lo` up over rtnetlink (not the
//! loopback plugin: one syscall instead of an exec), and exits. This module must never
//! change the network namespace of a caller's thread, and never unmount anything but the
//! path it is given.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Why a network namespace could not be created or removed; names the path.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace path {path}: {why}")]
    InvalidPath { path: PathBuf, why: String },
    #[error("network namespace {path} already exists")]
    Exists { path: PathBuf },
    #[error("cannot create network namespace at {path}: {op}: {source}")]
    Create {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("cannot remove network namespace {path}: {op}: {source}")]
    Remove {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

/// `<state_dir>/netns/<namespace>/<id>`: where berthd keeps a container's or pod's netns.
/// `namespace` and `id` must be single path components.
pub fn netns_path(state_dir: &Path, namespace: &str, id: &str) -> Result<PathBuf, NetnsError> {
    for (what, part) in [("namespace", namespace), ("id", id)] {
        if part.is_empty() || part == "." || part == ".." || part.contains(['/', '\0']) {
            return Err(NetnsError::InvalidPath {
                path: state_dir.join("netns").join(namespace).join(id),
                why: format!("{what} {part:?} is not a single path component"),
            });
        }
    }
    Ok(state_dir.join("netns").join(namespace).join(id))
}

/// True when `path` is (a bind mount of) a network namespace. Only nsfs files are checked for:
/// any other namespace type there would also answer true.
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Create a fresh network namespace bound at `path` (parent dirs created), with `lo` up.
///
/// `path` must be absolute. An existing empty file left by a crash is reused; an existing
/// namespace is an error ([`NetnsError::Exists`]).
pub fn create_netns(path: &Path) -> Result<(), NetnsError> {
    if !path.is_absolute() {
        return Err(NetnsError::InvalidPath {
            path: path.to_path_buf(),
            why: "not an absolute path".into(),
        });
    }
    let create = |op: &'static str| {
        move |source: io::Error| NetnsError::Create {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(create("create parent dirs"))?;
    }
    let created_file = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {
            if is_netns(path) {
                return Err(NetnsError::Exists {
                    path: path.to_path_buf(),
                });
            }
            false
        }
        Ok(_) => {
            return Err(NetnsError::InvalidPath {
                path: path.to_path_buf(),
                why: "exists and is not a regular file".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(path)
                .map_err(create("create mount point file"))?;
            true
        }
        Err(e) => return Err(create("stat")(e)),
    };

    let target = path.to_path_buf();
    let joined = std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || new_netns_on_this_thread(&target))
        .map_err(create("spawn thread"))?
        .join();
    let result = match joined {
        Ok(r) => r,
        Err(_) => Err(NetnsError::Create {
            path: path.to_path_buf(),
            op: "netns thread",
            source: io::Error::other("the thread panicked"),
        }),
    };
    if result.is_err() && created_file {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Runs on the dedicated thread only: this thread's netns is replaced, and the thread ends
/// right after, so no caller ever runs in the new namespace.
fn new_netns_on_this_thread(path: &Path) -> Result<(), NetnsError> {
    let fail = |op: &'static str, source: io::Error| NetnsError::Create {
        path: path.to_path_buf(),
        op,
        source,
    };
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| fail("unshare(CLONE_NEWNET)", e.into()))?;
    mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail("bind mount", e.into()))?;
    if let Err(e) = crate::netlink::set_link_up("lo") {
        let _ = umount2(path, MntFlags::MNT_DETACH);
        return Err(fail("bring lo up", e));
    }
    Ok(())
}

/// Unmount (lazily, every stacked mount) and unlink the netns at `path`. Idempotent: a
/// missing path, or a file that is no longer mounted, is fine. Processes still inside the
/// namespace keep it alive; only the name goes.
pub fn remove_netns(path: &Path) -> Result<(), NetnsError> {
    let fail = |op: &'static str, source: io::Error| NetnsError::Remove {
        path: path.to_path_buf(),
        op,
        source,
    };
    for _ in 0..16 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            // EINVAL: not a mount point (any more); ENOENT: gone.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(e) => return Err(fail("unmount", e.into())),
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail("unlink", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_path_refuses_bad_components() {
        let s = Path::new("/run/berth");
        assert_eq!(
            netns_path(s, "default", "c1").expect("netns_path"),
            Path::new("/run/berth/netns/default/c1")
        );
        for (ns, id) in [
            ("", "x"),
            ("a/b", "x"),
            ("..", "x"),
            ("a", "."),
            ("a", "b/../c"),
        ] {
            let e = netns_path(s, ns, id)
                .expect_err("netns_path should fail")
                .to_string();
            assert!(e.contains("single path component"), "{e}");
        }
    }

    #[test]
    fn relative_paths_are_refused_and_missing_ones_remove_fine() {
        assert!(matches!(
            create_netns(Path::new("rel/ns")),
            Err(NetnsError::InvalidPath { .. })
        ));
        remove_netns(Path::new("/nonexistent/berth-net/ns")).expect("remove_netns");
        assert!(!is_netns(Path::new("/nonexistent")));
    }
}
