//! The crate's error type: one enum whose Display texts are the messages a
//! script sees (`berth-runc: <message>`). It must never hide the failing path
//! or syscall behind a generic text.

use std::path::PathBuf;

use crate::cgroups::CgroupError;
use crate::seccomp::SeccompError;

/// Every failure berth-runc can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No state directory for this id under `--root`.
    #[error("container {0} does not exist")]
    NotExist(String),
    /// A state directory for this id already exists.
    #[error("container {0} already exists")]
    Exists(String),
    /// The id has characters runc refuses.
    #[error(
        "invalid container id {0:?}: only [A-Za-z0-9_+.-] allowed, must not be empty, '.' or '..'"
    )]
    InvalidId(String),
    /// The verb is not allowed in the container's current status.
    #[error("cannot {op} container {id} in status {status}{why}")]
    BadStatus {
        /// The verb.
        op: &'static str,
        /// The container id.
        id: String,
        /// Its current status.
        status: String,
        /// Why it is in that status (`": ..."`), or empty.
        why: String,
    },
    /// config.json is missing, unreadable or invalid.
    #[error("{path}: {msg}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong (serde error with its line/column or field path).
        msg: String,
    },
    /// The spec asks for something invalid or unsupported.
    #[error("invalid spec: {0}")]
    Spec(String),
    /// A command-line argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A syscall failed.
    #[error("{op}: {errno}")]
    Sys {
        /// What was being done (syscall and object).
        op: String,
        /// The errno.
        errno: nix::errno::Errno,
    },
    /// A hook failed or timed out.
    #[error("{kind} hook {path}: {msg}")]
    Hook {
        /// Which hook list.
        kind: &'static str,
        /// The hook's path.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// The container process chain failed (message from the child side).
    #[error("container init: {0}")]
    Init(String),
    /// A JSON document could not be (de)serialised.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The serde error.
        source: serde_json::Error,
    },
    /// The cgroups layer failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The seccomp layer failed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Crate result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap an io::Error with what was done on which path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Wrap an errno with a description of the operation.
    pub fn sys(op: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Error::Sys {
            op: op.into(),
            errno,
        }
    }
}

/// `.sys("...")` on nix results.
pub trait SysContext<T> {
    /// Attach an operation description to an errno.
    fn sys(self, op: impl FnOnce() -> String) -> Result<T>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn sys(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::sys(op(), e))
    }
}
