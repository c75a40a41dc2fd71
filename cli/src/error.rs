//! The CLI's one error type: every failure a person can meet, worded as one line that says
//! what berth was doing and what went wrong, with berthd's status code when berthd refused.
//!
//! This module must never print or exit: `main` prints `berth: <error>` once and picks the
//! exit code from [`Error::exit_code`].

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// berthd answered a call with an error status.
    #[error("{what}: {} ({})", status_message(.status), code_name(.status.code()))]
    Rpc {
        /// What berth asked for (`get image busybox`).
        what: String,
        /// berthd's answer.
        status: tonic::Status,
    },
    /// The socket is missing or refuses connections.
    #[error("cannot connect to berthd at {}: {reason}", .path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why, in words a person can act on.
        reason: String,
    },
    /// A flag or argument has a value berth cannot use.
    #[error("{0}")]
    Usage(String),
    /// A local file operation failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What berth was doing.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A local system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What berth was doing.
        what: String,
        /// Why.
        source: nix::Error,
    },
    /// Data from berthd or a file did not have the expected shape.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was being read.
        what: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Something berthd does not offer (yet).
    #[error("{0}")]
    Unsupported(String),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The exit code berth ends with for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// A `with_context`-style constructor for RPC errors.
    pub fn rpc(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> Error {
        let what = what.into();
        move |status| Error::Rpc { what, status }
    }

    /// An I/O error on `path`.
    pub fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    /// A failed system call.
    pub fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
        let what = what.into();
        move |source| Error::Sys { what, source }
    }

    /// Data that did not parse.
    pub fn invalid(what: impl Into<String>, reason: impl ToString) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// berthd's message, or a description of the code when the message is empty; transport
/// failures (berthd went away mid-call) say so in words.
fn status_message(status: &tonic::Status) -> String {
    let msg = status.message().trim();
    if status.code() == tonic::Code::Unavailable
        && (msg.is_empty() || msg.contains("transport") || msg.contains("connection"))
    {
        return "berthd closed the connection (did it stop?)".into();
    }
    if msg.is_empty() {
        return status.code().description().into();
    }
    msg.lines().next().unwrap_or(msg).to_string()
}

/// The code's name as gRPC spells it (`NotFound`).
pub fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_are_one_line_with_the_code() {
        let e = Error::rpc("get image busybox")(tonic::Status::not_found(
            "image \"busybox\": not found\nmore",
        ));
        assert_eq!(
            e.to_string(),
            "get image busybox: image \"busybox\": not found (NotFound)"
        );
        assert_eq!(e.exit_code(), 1);
        let e = Error::rpc("version")(tonic::Status::unavailable(""));
        assert!(e.to_string().contains("closed the connection"), "{e}");
    }
}
