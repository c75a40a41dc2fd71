//! Errors of the tasks subsystem and their mapping to gRPC status codes.
//!
//! Every failure a client can see is one variant here, so the service layer only uses `?`.
//! Never put a catch-all string variant here for something that has a proper code.

use tonic::{Code, Status};

/// What can go wrong while serving the Tasks API or supervising a task.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The container record does not exist in the namespace.
    #[error("container {0:?}: not found")]
    ContainerNotFound(String),
    /// The container exists but has no task.
    #[error("task {0:?}: not found")]
    TaskNotFound(String),
    /// No such exec process in the task.
    #[error("process {exec_id:?} of task {id:?}: not found")]
    ExecNotFound {
        /// Container id.
        id: String,
        /// Exec id.
        exec_id: String,
    },
    /// The container already has a task.
    #[error("task {0:?}: already exists")]
    TaskExists(String),
    /// The exec id is already used in the task.
    #[error("exec {exec_id:?} in task {id:?}: already exists")]
    ExecExists {
        /// Container id.
        id: String,
        /// Exec id.
        exec_id: String,
    },
    /// The request is malformed (bad spec, unknown runtime, bad id...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The task is in a state that does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation is not supported by Berth.
    #[error("{0}")]
    Unimplemented(String),
    /// The shim answered an RPC with an error; its code is passed through.
    #[error("shim: {0}")]
    Shim(Status),
    /// The shim could not be started or reached.
    #[error("shim unavailable: {0}")]
    ShimUnavailable(String),
    /// Local file system work on the task directory failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The container actor failed (a panic was caught) or is restarting.
    #[error("container actor failed: {0}")]
    ActorFailed(String),
    /// An actor future panicked (caught; the actor is restarted).
    #[error("panicked: {0}")]
    Panicked(String),
    /// The task's actor failed more often than its restart limit allows.
    #[error("task {id:?}: {reason}")]
    Abandoned {
        /// Container id.
        id: String,
        /// What failed and what to do.
        reason: String,
    },
    /// The metadata store or the event journal failed.
    #[error("{0}")]
    Upstream(Status),
    /// The task's network could not be set up or taken down (its code says why: see `network::error`).
    #[error(transparent)]
    Network(#[from] crate::network::NetError),
}

impl From<crate::events::EventError> for TaskError {
    fn from(e: crate::events::EventError) -> Self {
        TaskError::Upstream(e.into())
    }
}

impl TaskError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TaskError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Status {
        let msg = e.to_string();
        match e {
            TaskError::ContainerNotFound(_)
            | TaskError::TaskNotFound(_)
            | TaskError::ExecNotFound { .. } => Status::not_found(msg),
            TaskError::TaskExists(_) | TaskError::ExecExists { .. } => Status::already_exists(msg),
            TaskError::InvalidArgument(_) => Status::invalid_argument(msg),
            TaskError::FailedPrecondition(_) => Status::failed_precondition(msg),
            TaskError::Unimplemented(_) => Status::unimplemented(msg),
            TaskError::Shim(s) => match s.code() {
                Code::Unknown | Code::Internal | Code::Unavailable => {
                    Status::new(s.code(), format!("shim: {}", s.message()))
                }
                code => Status::new(code, s.message().to_string()),
            },
            TaskError::ShimUnavailable(_) | TaskError::ActorFailed(_) | TaskError::Panicked(_) => {
                Status::unavailable(msg)
            }
            TaskError::Io { .. } | TaskError::Abandoned { .. } => Status::internal(msg),
            TaskError::Upstream(s) => s,
            TaskError::Network(e) => e.status(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_containerd() {
        let c = |e: TaskError| Status::from(e).code();
        assert_eq!(c(TaskError::ContainerNotFound("a".into())), Code::NotFound);
        assert_eq!(c(TaskError::TaskExists("a".into())), Code::AlreadyExists);
        assert_eq!(
            c(TaskError::InvalidArgument("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            c(TaskError::Shim(Status::not_found("exec"))),
            Code::NotFound
        );
        assert_eq!(
            c(TaskError::FailedPrecondition("running".into())),
            Code::FailedPrecondition
        );
    }
}
