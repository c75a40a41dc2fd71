//! The shim's error type and its mapping to gRPC statuses.
//!
//! Every handler returns [`Error`]; `From<Error> for tonic::Status` picks the code, so a
//! broken request gets a clear status and the shim keeps serving. Never put payloads
//! (stdio contents, process specs) into messages.

use std::path::Path;

/// What went wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (bad id, bad bundle, bad JSON).
    #[error("{0}")]
    InvalidArgument(String),
    /// A named thing (exec id, stdio path) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The process is not in a state that allows the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The thing to add exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The OCI runtime reported a failure.
    #[error("runtime {cmd} failed: {msg}")]
    Runtime {
        /// The runtime verb (create, start, ...).
        cmd: String,
        /// The runtime's own error message.
        msg: String,
    },
    /// A file or socket operation failed.
    #[error("{ctx}: {source}")]
    Io {
        /// What the shim was doing.
        ctx: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{ctx}: {source}")]
    Sys {
        /// What the shim was doing.
        ctx: String,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
}

/// Result alias of the shim.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with what was being done.
    pub fn io(ctx: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            ctx: ctx.into(),
            source,
        }
    }

    /// A syscall error with what was being done.
    pub fn sys(ctx: impl Into<String>, source: nix::errno::Errno) -> Self {
        Error::Sys {
            ctx: ctx.into(),
            source,
        }
    }

    /// An I/O error about a path.
    pub fn path(what: &str, path: &Path, source: std::io::Error) -> Self {
        Error::io(format!("{what} {}", path.display()), source)
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::Runtime { .. } => tonic::Status::unknown(msg),
            Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                tonic::Status::not_found(msg)
            }
            Error::Io { .. } | Error::Sys { .. } => tonic::Status::internal(msg),
        }
    }
}
