//! The messages a ContainerActor handles: one per Tasks verb, each with its own result type, plus what its
//! ShimActor tells it. Plain data; the handlers are in the verb files beside this one.

use actix::prelude::*;
use berth_proto::containerd_client::services::v1::{CreateTaskRequest, DeleteResponse};
use berth_proto::containerd_client::types::v1::{Process, ProcessInfo};
use berth_proto::shim;

use crate::tasks::error::TaskError;
use crate::tasks::state::StdioPaths;

/// Create the task (the actor was just started for it): bundle, shim, runtime create. Replies the init pid.
#[derive(Message)]
#[rtype(result = "Result<u32, TaskError>")]
pub struct CreateTask {
    /// The client's request.
    pub req: CreateTaskRequest,
}

/// Start init (empty exec id) or an exec; replies its pid.
#[derive(Message)]
#[rtype(result = "Result<u32, TaskError>")]
pub struct Start {
    /// Empty for init.
    pub exec_id: String,
}

/// Describe init or an exec.
#[derive(Message)]
#[rtype(result = "Result<Process, TaskError>")]
pub struct Get {
    /// Empty for init.
    pub exec_id: String,
}

/// Send a signal.
#[derive(Message)]
#[rtype(result = "Result<(), TaskError>")]
pub struct Kill {
    /// Empty for init.
    pub exec_id: String,
    /// Signal number.
    pub signal: u32,
    /// Every process of the container.
    pub all: bool,
}

/// Register an exec (Start runs it).
#[derive(Message)]
#[rtype(result = "Result<(), TaskError>")]
pub struct Exec {
    /// The exec id (validated).
    pub exec_id: String,
    /// Its stdio as the client gave it.
    pub stdio: StdioPaths,
    /// OCI Process JSON.
    pub process_json: Vec<u8>,
}

/// Delete the task (init stopped or never started).
#[derive(Message)]
#[rtype(result = "Result<DeleteResponse, TaskError>")]
pub struct Delete;

/// Delete an exited exec.
#[derive(Message)]
#[rtype(result = "Result<DeleteResponse, TaskError>")]
pub struct DeleteProcess {
    /// The exec id.
    pub exec_id: String,
}

/// Resize a pty.
#[derive(Message)]
#[rtype(result = "Result<(), TaskError>")]
pub struct ResizePty {
    /// Empty for init.
    pub exec_id: String,
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

/// Close a process's stdin.
#[derive(Message)]
#[rtype(result = "Result<(), TaskError>")]
pub struct CloseIo {
    /// Empty for init.
    pub exec_id: String,
    /// Close stdin (the only thing containerd's API closes).
    pub stdin: bool,
}

/// Freeze the container.
#[derive(Message)]
#[rtype(result = "Result<(), TaskError>")]
pub struct Pause;

/// Thaw the container.
#[derive(Message)]
#[rtype(result = "Result<(), TaskError>")]
pub struct Resume;

/// Pids of the container's processes.
#[derive(Message)]
#[rtype(result = "Result<Vec<ProcessInfo>, TaskError>")]
pub struct ListPids;

/// Change the container's resources.
#[derive(Message)]
#[rtype(result = "Result<(), TaskError>")]
pub struct Update {
    /// LinuxResources JSON.
    pub resources: Vec<u8>,
}

/// Reopen the init's CRI log at its path (a log rotation renamed it).
#[derive(Message)]
#[rtype(result = "Result<(), TaskError>")]
pub struct ReopenLog;

/// cgroup statistics (`io.containerd.cgroups.v1.Metrics` Any), None when the shim has none.
#[derive(Message)]
#[rtype(result = "Result<Option<prost_types::Any>, TaskError>")]
pub struct Metrics;

/// Stop the actor for good (berthd is shutting down); the shim and the container keep running.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Terminate;

/// An event from the shim, already journaled and acked.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShimEventMsg(pub shim::Event);

/// The shim's connection ended and its process is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShimGone;

/// The ShimActor's pump panicked (caught): the ContainerActor fails and is restarted with a fresh pump.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PumpFailed(pub String);
