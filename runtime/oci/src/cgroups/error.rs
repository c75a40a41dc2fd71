//! The cgroup manager's error type. Every message names the file, directory or controller involved; this file
//! must never hold logic.

use std::io;
use std::path::PathBuf;

use super::CGROUP_ROOT;

/// Errors of the cgroup manager; every message names the file, directory or controller involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// statfs(2) on the cgroup mount point failed.
    #[error("cgroups: cannot statfs {path}: {source}")]
    Statfs {
        /// The path given to statfs.
        path: PathBuf,
        /// The error.
        source: nix::Error,
    },
    /// Reading a cgroup file failed.
    #[error("cgroups: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Writing a cgroup file failed.
    #[error("cgroups: cannot write {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The error.
        source: io::Error,
    },
    /// Creating a cgroup directory failed.
    #[error("cgroups: cannot create {path}: {source}")]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Removing a cgroup directory failed.
    #[error("cgroups: cannot remove {path}: {source}")]
    Rmdir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The spec's cgroupsPath is not usable.
    #[error("cgroups: invalid cgroupsPath {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The spec asks for a limit of a controller this host does not have.
    #[error("cgroups: the spec sets {what} but the {controller} controller is not available on this host")]
    MissingController {
        /// The controller (e.g. "hugetlb").
        controller: &'static str,
        /// The spec field (e.g. "hugepageLimits").
        what: String,
    },
    /// A resource value is invalid or unsupported here.
    #[error("cgroups: invalid {what}: {reason}")]
    InvalidValue {
        /// The spec field.
        what: String,
        /// Why.
        reason: String,
    },
    /// A cgroup file has unexpected contents.
    #[error("cgroups: cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The freezer did not reach FROZEN in time (the cgroup is thawed again).
    #[error("cgroups: timed out freezing {path} (last state {state:?})")]
    FreezeTimeout {
        /// The freezer file.
        path: PathBuf,
        /// The last state read.
        state: String,
    },
    /// No cgroup hierarchy is mounted where expected.
    #[error("cgroups: no cgroup hierarchy is mounted under {CGROUP_ROOT}")]
    NoHierarchy,
}
