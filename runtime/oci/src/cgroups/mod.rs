//! Container cgroups for berth-runc on cgroup v1, v2 and hybrid hosts.
//!
//! [`CgroupManager`] owns one container's cgroup: it creates the directories (in every mounted v1 controller, and
//! in the unified hierarchy on v2 and hybrid hosts), writes the OCI resource limits, moves processes in, freezes
//! and thaws, reads the `events --stats` figures and removes what it created. The cgroups path is root-relative in
//! every hierarchy, like runc's cgroupfs driver (no systemd).
//!
//! This module must never mount, remount or move the host's cgroup hierarchies, never write into a cgroup outside
//! the container's own path (the one exception: enabling a controller in the `cgroup.subtree_control` of the
//! levels above the container, which v2 requires for the container to get that controller's files), and never
//! remove a directory it was not asked to manage.

mod bpf_devices;
mod devices;
mod error;
mod fs;
mod stats;
#[cfg(test)]
mod tests;
mod tree;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use devices::default_device_rules;
pub use error::CgroupError;
pub use stats::{
    Blkio, BlkioEntry, Cpu, CpuUsage, Hugetlb, Memory, MemoryEntry, Pids as PidsStats, Stats,
    Throttling,
};
use tree::{collect_pids, create_one, remove_tree};

/// Where cgroup hierarchies are mounted on every distribution Berth supports.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v1 controllers the manager creates a directory in when they are mounted. `name=systemd` is left alone.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Only v1 hierarchies.
    V1,
    /// v1 controllers plus a cgroup2 mount (e.g. /sys/fs/cgroup/unified).
    Hybrid,
    /// /sys/fs/cgroup is cgroup2.
    V2,
}

/// Receiver of debug messages (decisions like "swap limit ignored"); berth-runc points it at its `--debug` log.
static DEBUG_LOGGER: OnceLock<fn(&str)> = OnceLock::new();

/// Sets where this module's debug messages go (first call wins; default: nowhere).
pub fn set_debug_logger(f: fn(&str)) {
    let _ = DEBUG_LOGGER.set(f);
}

pub(crate) fn debug(msg: &str) {
    if let Some(f) = DEBUG_LOGGER.get() {
        f(msg);
    }
}

/// Detects the host's cgroup mode from statfs(/sys/fs/cgroup) and /proc/self/mountinfo.
pub fn detect_mode() -> Result<Mode, CgroupError> {
    detect_mode_and_mounts().map(|(mode, _)| mode)
}

/// detect_mode, also handing back the mount table it read (one read of mountinfo per manager).
fn detect_mode_and_mounts() -> Result<(Mode, Vec<fs::MountInfo>), CgroupError> {
    let fstype = nix::sys::statfs::statfs(CGROUP_ROOT)
        .map_err(|source| CgroupError::Statfs {
            path: PathBuf::from(CGROUP_ROOT),
            source,
        })?
        .filesystem_type();
    // Only the hierarchies under /sys/fs/cgroup: a container without a mount namespace of
    // its own has its cgroupfs view mounted in ours too, below its rootfs (read-only, and
    // rooted at its own cgroup); taking those made every other container's create fail.
    let mounts: Vec<fs::MountInfo> = fs::mountinfo()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(CGROUP_ROOT))
        .collect();
    if fstype == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Ok((Mode::V2, mounts));
    }
    let has_v1 = mounts.iter().any(|m| m.fstype == "cgroup");
    let has_v2 = mounts.iter().any(|m| m.fstype == "cgroup2");
    let mode = match (has_v1, has_v2) {
        (true, true) => Mode::Hybrid,
        (true, false) => Mode::V1,
        (false, true) => Mode::V2,
        (false, false) => return Err(CgroupError::NoHierarchy),
    };
    Ok((mode, mounts))
}

/// One container's cgroup in every hierarchy of the host. Serialisable: berth-runc keeps it in state.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CgroupManager {
    /// Host mode at creation.
    mode: Mode,
    /// Normalised root-relative cgroup path, e.g. "/berth/<id>".
    path: String,
    /// v1 controller name → the container's directory in that controller's hierarchy.
    v1: BTreeMap<String, PathBuf>,
    /// The container's directory in the unified (v2) hierarchy, on V2 and hybrid hosts.
    unified: Option<PathBuf>,
    /// Mount point of the unified hierarchy's root as seen from here (for subtree_control).
    unified_root: Option<PathBuf>,
    /// Parent levels that did not exist when the manager was made, deepest last; removed by `destroy` when empty.
    created_parents: Vec<PathBuf>,
}

/// Normalises a spec cgroupsPath to "/a/b"; refuses "..", empty and the hierarchy root.
fn normalise_path(cgroups_path: Option<&str>, id: &str) -> Result<String, CgroupError> {
    let raw = match cgroups_path {
        Some(p) if !p.trim().is_empty() => p.to_string(),
        _ => format!("/berth/{id}"),
    };
    if raw.contains(':') && !raw.starts_with('/') {
        return Err(CgroupError::InvalidPath {
            path: raw,
            reason: "systemd slice:prefix:name paths need --systemd-cgroup, which berth-runc does not support",
        });
    }
    let mut parts = Vec::new();
    for c in Path::new(&raw).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CgroupError::InvalidPath {
                    path: raw,
                    reason: "\"..\" is not allowed",
                })
            }
        }
    }
    if parts.is_empty() {
        return Err(CgroupError::InvalidPath {
            path: raw,
            reason: "it names the root of the hierarchy",
        });
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Maps a root-relative cgroup path onto a mount whose root may itself be a sub-cgroup (bind mounts, cgroupns).
fn dir_in_mount(mount_point: &Path, mount_root: &str, path: &str) -> PathBuf {
    let rel = if mount_root != "/" {
        path.strip_prefix(mount_root).unwrap_or(path)
    } else {
        path
    };
    mount_point.join(rel.trim_start_matches('/'))
}

impl CgroupManager {
    /// Builds the manager for `cgroups_path` ("/a/b" or "a/b", both root-relative; None = "/berth/<id>").
    pub fn new(cgroups_path: Option<&str>, id: &str) -> Result<Self, CgroupError> {
        let path = normalise_path(cgroups_path, id)?;
        let (mode, mounts) = detect_mode_and_mounts()?;
        let mut v1 = BTreeMap::new();
        let mut unified = None;
        let mut unified_root = None;
        let mut bases: Vec<PathBuf> = Vec::new();
        // Later mounts hide earlier ones on the same path: walk the table from the end.
        if mode != Mode::V2 {
            for m in mounts.iter().rev().filter(|m| m.fstype == "cgroup") {
                for opt in m.super_opts.split(',') {
                    if V1_CONTROLLERS.contains(&opt) && !v1.contains_key(opt) {
                        v1.insert(
                            opt.to_string(),
                            dir_in_mount(&m.mount_point, &m.root, &path),
                        );
                        bases.push(m.mount_point.clone());
                    }
                }
            }
        }
        // The unified hierarchy: /sys/fs/cgroup itself on V2, otherwise the last cgroup2 mount under it.
        let v2_mounts = || mounts.iter().rev().filter(|m| m.fstype == "cgroup2");
        let v2_mount = match mode {
            Mode::V2 => v2_mounts().find(|m| m.mount_point == Path::new(CGROUP_ROOT)),
            _ => None,
        }
        .or_else(|| v2_mounts().find(|m| m.mount_point.starts_with(CGROUP_ROOT)));
        if let Some(m) = v2_mount {
            unified = Some(dir_in_mount(&m.mount_point, &m.root, &path));
            unified_root = Some(m.mount_point.clone());
            bases.push(m.mount_point.clone());
        }
        if v1.is_empty() && unified.is_none() {
            return Err(CgroupError::NoHierarchy);
        }
        bases.sort();
        bases.dedup();
        let mut created_parents = Vec::new();
        let comps: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for base in &bases {
            let mut cur = base.clone();
            for c in &comps[..comps.len() - 1] {
                cur.push(c);
                if !cur.exists() {
                    created_parents.push(cur.clone());
                }
            }
        }
        Ok(Self {
            mode,
            path,
            v1,
            unified,
            unified_root,
            created_parents,
        })
    }

    /// The host mode this manager was made for.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The normalised root-relative cgroup path ("/berth/<id>").
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The container's directory for a v1 controller, if that controller is mounted.
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1.get(controller).map(PathBuf::as_path)
    }

    /// The container's directory in the unified hierarchy (V2 and hybrid).
    pub fn unified_dir(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// Every distinct v1 leaf directory (co-mounted controllers share one).
    fn v1_leaf_dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = self.v1.values().map(PathBuf::as_path).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Every distinct leaf directory: the v1 ones and the unified one.
    fn leaf_dirs(&self) -> Vec<&Path> {
        let mut dirs = self.v1_leaf_dirs();
        dirs.extend(self.unified.as_deref());
        dirs
    }

    /// Creates the container's cgroup in every hierarchy (cpuset levels get their parent's cpus and mems), and
    /// gives a new cgroup the default device policy (deny-all + the default set), so a container is restricted
    /// even when its spec has no resources; `apply` with device rules replaces that policy.
    pub fn create(&self) -> Result<(), CgroupError> {
        let cpuset_dir = self.v1.get("cpuset");
        for leaf in self.leaf_dirs() {
            let is_cpuset = cpuset_dir.map(PathBuf::as_path) == Some(leaf);
            let v2_root = match (self.mode, &self.unified) {
                (Mode::V2, Some(u)) if u == leaf => self.unified_root.as_deref(),
                _ => None,
            };
            create_one(leaf, is_cpuset, v2_root)?;
        }
        if let Some(d) = self.v1.get("devices") {
            devices::apply_v1(Some(d), None)?;
        } else if let (Mode::V2, Some(u)) = (self.mode, &self.unified) {
            devices::apply_v2(u, None)?;
        }
        Ok(())
    }

    /// Writes the resource limits (create and `update`). Fields that are absent are left as they are.
    pub fn apply(&self, r: &oci_spec::runtime::LinuxResources) -> Result<(), CgroupError> {
        match self.mode {
            Mode::V2 => v2::apply(self, r),
            Mode::V1 | Mode::Hybrid => v1::apply(self, r),
        }
    }

    /// Moves the calling thread into the container's cgroup in every v1 hierarchy; the
    /// caller must be single-threaded, so that this moves the whole process.
    ///
    /// Why not the parent writing the pid to cgroup.procs: migrating a whole thread group
    /// takes the kernel's global threadgroup rwsem for writing, whose first writer waits
    /// for an RCU grace period (about 2 ms on this VM, 7 ms and more while another
    /// runtime's teardown keeps the CPUs busy). A thread moving itself through `tasks`
    /// ("0" = the writer) skips that lock.
    pub fn join_v1_self(&self) -> Result<(), CgroupError> {
        for dir in self.v1_leaf_dirs() {
            fs::write(dir, "tasks", "0")?;
        }
        Ok(())
    }

    /// The container's unified cgroup directory, opened for clone3(CLONE_INTO_CGROUP),
    /// which places a new child there without any migration (and so without the
    /// grace-period wait `join_v1_self` explains).
    pub fn unified_fd(&self) -> Result<Option<std::os::fd::OwnedFd>, CgroupError> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(dir) = &self.unified else {
            return Ok(None);
        };
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|source| CgroupError::Read {
                path: dir.clone(),
                source,
            })?;
        Ok(Some(f.into()))
    }

    /// Moves `pid` into the container's unified cgroup only (when clone3 could not).
    pub fn add_pid_unified(&self, pid: i32) -> Result<(), CgroupError> {
        match &self.unified {
            Some(dir) => fs::write(dir, "cgroup.procs", &pid.to_string()),
            None => Ok(()),
        }
    }

    /// This cgroup with `exec --cgroup` sub-cgroups swapped in, in runc's syntax: `path`
    /// for every hierarchy, `ctrl[,ctrl]:path` for those v1 controllers only. A sub-cgroup
    /// must already exist below the container's and may not climb out of it.
    pub fn with_sub_cgroups(&self, specs: &[String]) -> Result<Self, CgroupError> {
        let mut out = self.clone();
        for spec in specs {
            let bad = |reason: String| CgroupError::InvalidValue {
                what: format!("exec --cgroup {spec:?}"),
                reason,
            };
            let (controllers, sub) = match spec.split_once(':') {
                Some((c, p)) => (Some(c), p),
                None => (None, spec.as_str()),
            };
            let rel = Path::new(sub.trim_start_matches('/'));
            if rel.as_os_str().is_empty()
                || rel.components().any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(bad(
                    "want a relative path below the container's cgroup".into()
                ));
            }
            // None stands for the unified hierarchy.
            let targets: Vec<Option<String>> = match controllers {
                None => out
                    .v1
                    .keys()
                    .cloned()
                    .map(Some)
                    .chain(out.unified.is_some().then_some(None))
                    .collect(),
                // Controllers co-mounted with a named one share its hierarchy: they move too.
                Some(list) => {
                    let mut names = Vec::new();
                    for name in list.split(',') {
                        let Some(dir) = out.v1.get(name) else {
                            return Err(bad(format!("no v1 controller {name:?} on this host")));
                        };
                        let shared = out.v1.iter().filter(|(_, d)| *d == dir);
                        names.extend(shared.map(|(n, _)| Some(n.clone())));
                    }
                    names.sort();
                    names.dedup();
                    names
                }
            };
            for target in targets {
                let dir = match &target {
                    Some(name) => out.v1.get_mut(name),
                    None => out.unified.as_mut(),
                };
                let Some(dir) = dir else { continue };
                let sub_dir = dir.join(rel);
                if !sub_dir.is_dir() {
                    return Err(bad(format!("{} does not exist", sub_dir.display())));
                }
                *dir = sub_dir;
            }
        }
        Ok(out)
    }

    /// Moves `pid` into the container's cgroup in every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        let value = pid.to_string();
        for dir in self.leaf_dirs() {
            fs::write(dir, "cgroup.procs", &value)?;
        }
        Ok(())
    }

    /// The directory `pids` and `stats` read processes from.
    fn procs_dir(&self) -> Option<&Path> {
        ["pids", "freezer", "memory", "cpu", "devices"]
            .iter()
            .find_map(|c| self.v1_dir(c))
            .or_else(|| self.v1.values().next().map(PathBuf::as_path))
            .or(self.unified.as_deref())
    }

    /// Every process in the container's cgroup and its sub-cgroups, sorted.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let Some(dir) = self.procs_dir() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        collect_pids(dir, &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The freezer in use: v1 freezer dir, else the unified dir (cgroup.freeze exists in every non-root v2 cgroup).
    fn freezer(&self) -> Result<(&Path, bool), CgroupError> {
        if let Some(d) = self.v1_dir("freezer") {
            return Ok((d, true));
        }
        match &self.unified {
            Some(d) => Ok((d, false)),
            None => Err(CgroupError::MissingController {
                controller: "freezer",
                what: "pause".into(),
            }),
        }
    }

    /// Freezes every process of the container and waits until the kernel reports it frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        let (dir, is_v1) = self.freezer()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        if is_v1 {
            let mut last = String::new();
            let mut next_write = Instant::now();
            while Instant::now() < deadline {
                if Instant::now() >= next_write {
                    // Rewriting FROZEN retries tasks that were in an uninterruptible state.
                    fs::write(dir, "freezer.state", "FROZEN")?;
                    next_write = Instant::now() + Duration::from_millis(50);
                }
                last = fs::read(dir, "freezer.state")?;
                if last == "FROZEN" {
                    return Ok(());
                }
                sleep(Duration::from_millis(1));
            }
            let _ = fs::write(dir, "freezer.state", "THAWED");
            Err(CgroupError::FreezeTimeout {
                path: dir.join("freezer.state"),
                state: last,
            })
        } else {
            fs::write(dir, "cgroup.freeze", "1")?;
            let mut last = String::new();
            while Instant::now() < deadline {
                last = fs::read(dir, "cgroup.events")?;
                if fs::parse_flat_keyed(&last).contains(&("frozen".to_string(), 1)) {
                    return Ok(());
                }
                sleep(Duration::from_millis(1));
            }
            let _ = fs::write(dir, "cgroup.freeze", "0");
            Err(CgroupError::FreezeTimeout {
                path: dir.join("cgroup.events"),
                state: last,
            })
        }
    }

    /// Thaws the container.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        let (dir, is_v1) = self.freezer()?;
        if is_v1 {
            fs::write(dir, "freezer.state", "THAWED")
        } else {
            fs::write(dir, "cgroup.freeze", "0")
        }
    }

    /// Whether the container is frozen (FREEZING counts as not frozen yet).
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        let (dir, is_v1) = self.freezer()?;
        if is_v1 {
            Ok(fs::read(dir, "freezer.state")? == "FROZEN")
        } else {
            Ok(fs::read_opt(dir, "cgroup.freeze")?.as_deref() == Some("1"))
        }
    }

    /// Usage figures in the shape of runc's `events --stats` "data" object.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        match self.mode {
            Mode::V2 => stats::read_v2(self),
            Mode::V1 | Mode::Hybrid => stats::read_v1(self),
        }
    }

    /// Removes the container's cgroup everywhere (and its sub-cgroups), waiting up to ~2 s for exiting tasks to
    /// leave, then the parent levels this manager created when they are empty. Already gone = Ok.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for dir in self.leaf_dirs() {
            if let Err(e) = remove_tree(dir) {
                first_err.get_or_insert(e);
            }
        }
        for parent in self.created_parents.iter().rev() {
            match std::fs::remove_dir(parent) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTEMPTY | libc::EBUSY | libc::EEXIST)
                    ) => {}
                Err(source) => {
                    first_err.get_or_insert(CgroupError::Rmdir {
                        path: parent.clone(),
                        source,
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The directory the shim watches for OOM events: v1 memory cgroup, or the v2 cgroup on V2 hosts.
    pub fn memory_path(&self) -> Option<PathBuf> {
        match self.mode {
            Mode::V2 => self.unified.clone(),
            Mode::V1 | Mode::Hybrid => self.v1.get("memory").cloned(),
        }
    }
}
