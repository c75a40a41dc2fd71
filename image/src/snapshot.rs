//! Snapshot STORAGE for the `overlayfs` (default) and `native` snapshotters: the directories
//! `<root>/snapshots/<snapshotter>/<id>/` and the mounts that present them.
//!
//! berthd owns the metadata (keys, parents, kinds, labels) and allocates each snapshot a small
//! numeric id; short numeric dirs keep overlay's mount options within one page. `remove` refuses
//! (with an error naming the mount) while anything is mounted at or below the snapshot's dir: it
//! never detaches a user's rootfs, never follows a symlink out of the snapshot and never crosses a
//! mount point.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
pub use crate::fsutil::Usage;
use crate::mount::Mount;

/// The kind of a snapshot (containerd's `Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read-only view of its parents.
    View,
    /// Writable.
    Active,
    /// Committed (immutable, a parent for others).
    Committed,
}

/// What berthd needs from a snapshotter's storage. `parents` are the ids of the snapshot's
/// parent chain, nearest parent first.
pub trait Snapshotter: Send + Sync {
    /// containerd's snapshotter name (`overlayfs`, `native`).
    fn name(&self) -> &'static str;
    /// Create the snapshot's directories and return its mounts.
    fn create(&self, id: u64, kind: Kind, parents: &[u64]) -> Result<Vec<Mount>>;
    /// The mounts presenting an existing snapshot.
    fn mounts(&self, id: u64, kind: Kind, parents: &[u64]) -> Vec<Mount>;
    /// Make an active snapshot a committed one (its data stays where it is).
    fn commit(&self, id: u64) -> Result<()>;
    /// Remove the snapshot's directory (refused while anything is mounted below it).
    fn remove(&self, id: u64) -> Result<()>;
    /// Disk usage of the snapshot's own data.
    fn usage(&self, id: u64) -> Result<Usage>;
    /// Where a layer can be written directly (the overlay upperdir, the native tree).
    fn upper_dir(&self, id: u64) -> PathBuf;
    /// The snapshot's own directory.
    fn snapshot_dir(&self, id: u64) -> PathBuf;
}

fn mkdir(p: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new().mode(mode).create(p).ctx("mkdir", p)
}

fn create_dirs(name: &'static str, dir: &Path, id: u64, work: bool) -> Result<()> {
    let sdir = dir.join(id.to_string());
    match fs::DirBuilder::new().mode(0o700).create(&sdir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Snapshot {
                snapshotter: name,
                id,
                reason: format!("{} already exists", sdir.display()),
            })
        }
        Err(e) => return Err(Error::io("mkdir", sdir, e)),
    }
    let r = mkdir(&sdir.join("fs"), 0o755).and_then(|()| {
        if work {
            mkdir(&sdir.join("work"), 0o711)
        } else {
            Ok(())
        }
    });
    if r.is_err() {
        let _ = fs::remove_dir_all(&sdir);
    }
    r
}

fn remove_dir(name: &'static str, dir: &Path, id: u64) -> Result<()> {
    let sdir = dir.join(id.to_string());
    let mounted = crate::mount::mounted_below(&sdir)?;
    if let Some(m) = mounted.first() {
        return Err(Error::Snapshot {
            snapshotter: name,
            id,
            reason: format!(
                "refusing to remove while {} is mounted (unmount it first)",
                m.display()
            ),
        });
    }
    match fs::symlink_metadata(&sdir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound {
                what: format!("snapshot {id} ({name})"),
            })
        }
        Err(e) => return Err(Error::io("stat", sdir, e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::Snapshot {
                snapshotter: name,
                id,
                reason: format!("{} is not a directory", sdir.display()),
            })
        }
        Ok(_) => {}
    }
    // std's remove_dir_all does not follow symlinks (it works with *at calls and O_NOFOLLOW).
    fs::remove_dir_all(&sdir).ctx("remove", sdir)
}

fn check_exists(name: &'static str, dir: &Path, id: u64) -> Result<()> {
    if dir.join(id.to_string()).join("fs").is_dir() {
        Ok(())
    } else {
        Err(Error::NotFound {
            what: format!("snapshot {id} ({name})"),
        })
    }
}

/// overlayfs storage: `<id>/fs` is the upperdir (or the whole tree of a parentless snapshot),
/// `<id>/work` overlay's workdir.
#[derive(Debug, Clone)]
pub struct Overlay {
    dir: PathBuf,
    index_off: bool,
}

impl Overlay {
    /// Storage under `<root>/snapshots/overlayfs` (created 0700).
    pub fn new(root: impl AsRef<Path>) -> Result<Overlay> {
        let dir = root.as_ref().join("snapshots").join("overlayfs");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ctx("mkdir", &dir)?;
        Ok(Overlay {
            dir,
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
        })
    }

    fn fs_path(&self, id: u64) -> String {
        self.dir
            .join(id.to_string())
            .join("fs")
            .to_string_lossy()
            .into_owned()
    }
}

impl Snapshotter for Overlay {
    fn name(&self) -> &'static str {
        "overlayfs"
    }

    fn create(&self, id: u64, kind: Kind, parents: &[u64]) -> Result<Vec<Mount>> {
        if kind == Kind::Committed {
            return Err(Error::Snapshot {
                snapshotter: self.name(),
                id,
                reason: "cannot create a committed snapshot (create active, then commit)".into(),
            });
        }
        for p in parents {
            check_exists(self.name(), &self.dir, *p)?;
        }
        create_dirs(self.name(), &self.dir, id, true)?;
        Ok(self.mounts(id, kind, parents))
    }

    /// containerd's rules: no parent → a bind of `<id>/fs` (`rw` or `ro`); a view of one parent →
    /// a read-only bind of that parent; otherwise overlay with the parents as lowerdirs (and
    /// upperdir/workdir when active).
    fn mounts(&self, id: u64, kind: Kind, parents: &[u64]) -> Vec<Mount> {
        if parents.is_empty() {
            let ro = kind != Kind::Active;
            return vec![Mount::bind(Path::new(&self.fs_path(id)), ro)];
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if kind == Kind::Active {
            let work = self.dir.join(id.to_string()).join("work");
            options.push(format!("workdir={}", work.display()));
            options.push(format!("upperdir={}", self.fs_path(id)));
        } else if let [only] = parents {
            return vec![Mount::bind(Path::new(&self.fs_path(*only)), true)];
        }
        let lower: Vec<String> = parents.iter().map(|p| self.fs_path(*p)).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }

    fn commit(&self, id: u64) -> Result<()> {
        check_exists(self.name(), &self.dir, id)
    }

    fn remove(&self, id: u64) -> Result<()> {
        remove_dir(self.name(), &self.dir, id)
    }

    fn usage(&self, id: u64) -> Result<Usage> {
        check_exists(self.name(), &self.dir, id)?;
        crate::fsutil::usage(Path::new(&self.fs_path(id)))
    }

    fn upper_dir(&self, id: u64) -> PathBuf {
        PathBuf::from(self.fs_path(id))
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }
}

/// Native storage: every snapshot is a full copy of its parent in `<id>/fs`, presented by a bind.
#[derive(Debug, Clone)]
pub struct Native {
    dir: PathBuf,
}

impl Native {
    /// Storage under `<root>/snapshots/native` (created 0700).
    pub fn new(root: impl AsRef<Path>) -> Result<Native> {
        let dir = root.as_ref().join("snapshots").join("native");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ctx("mkdir", &dir)?;
        Ok(Native { dir })
    }
}

impl Snapshotter for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn create(&self, id: u64, kind: Kind, parents: &[u64]) -> Result<Vec<Mount>> {
        if kind == Kind::Committed {
            return Err(Error::Snapshot {
                snapshotter: self.name(),
                id,
                reason: "cannot create a committed snapshot (create active, then commit)".into(),
            });
        }
        if let Some(p) = parents.first() {
            check_exists(self.name(), &self.dir, *p)?;
        }
        create_dirs(self.name(), &self.dir, id, false)?;
        if let Some(p) = parents.first() {
            if let Err(e) = crate::fsutil::copy_tree(&self.upper_dir(*p), &self.upper_dir(id)) {
                let _ = fs::remove_dir_all(self.snapshot_dir(id));
                return Err(e);
            }
        }
        Ok(self.mounts(id, kind, parents))
    }

    fn mounts(&self, id: u64, kind: Kind, _parents: &[u64]) -> Vec<Mount> {
        vec![Mount::bind(&self.upper_dir(id), kind != Kind::Active)]
    }

    fn commit(&self, id: u64) -> Result<()> {
        check_exists(self.name(), &self.dir, id)
    }

    fn remove(&self, id: u64) -> Result<()> {
        remove_dir(self.name(), &self.dir, id)
    }

    fn usage(&self, id: u64) -> Result<Usage> {
        check_exists(self.name(), &self.dir, id)?;
        crate::fsutil::usage(&self.upper_dir(id))
    }

    fn upper_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string()).join("fs")
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }
}
