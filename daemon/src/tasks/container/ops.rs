//! The messages a ContainerActor handles: one [`Request`] per Tasks API operation ([`Op`] → [`Reply`]), the shim's
//! events ([`ShimEventMsg`]) and the loss of the shim ([`ShimGone`]). Plain data only; no behaviour here.

use actix::prelude::*;
use berth_proto::containerd_client::services::v1::DeleteResponse;
use berth_proto::containerd_client::types::v1::{Process, ProcessInfo};
use berth_proto::shim;

use super::super::error::TaskError;
use super::super::state::StdioPaths;

/// Operations a ContainerActor performs (the Tasks API, per task).
#[derive(Debug)]
pub enum Op {
    /// Shim Create: runtime create with the client's stdio.
    Create {
        /// Rootfs mounts from the request.
        rootfs: Vec<shim::Mount>,
        /// `--no-pivot`.
        no_pivot: bool,
    },
    /// Start init or an exec.
    Start {
        /// Empty for init.
        exec_id: String,
    },
    /// Describe a process.
    Get {
        /// Empty for init.
        exec_id: String,
    },
    /// Send a signal.
    Kill {
        /// Empty for init.
        exec_id: String,
        /// Signal number.
        signal: u32,
        /// Every process of the container.
        all: bool,
    },
    /// Register an exec.
    Exec {
        /// The exec id (validated).
        exec_id: String,
        /// Its stdio.
        stdio: StdioPaths,
        /// OCI Process JSON.
        process_json: Vec<u8>,
    },
    /// Delete the task (init stopped or created).
    Delete,
    /// Delete an exited exec.
    DeleteProcess {
        /// The exec id.
        exec_id: String,
    },
    /// Resize a pty.
    ResizePty {
        /// Empty for init.
        exec_id: String,
        /// Columns.
        width: u32,
        /// Rows.
        height: u32,
    },
    /// Close a process's stdin.
    CloseIo {
        /// Empty for init.
        exec_id: String,
        /// Close stdin.
        stdin: bool,
    },
    /// Freeze the container.
    Pause,
    /// Thaw the container.
    Resume,
    /// Pids of the container.
    ListPids,
    /// Change resources.
    Update {
        /// LinuxResources JSON.
        resources_json: Vec<u8>,
    },
    /// cgroup statistics.
    Metrics,
    /// Stop the actor for good (a failed create, or berthd shutting down); the shim is left alone.
    Terminate,
}

impl Op {
    /// Name used in failpoints (`container_actor.<name>`) and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Start { .. } => "start",
            Op::Get { .. } => "get",
            Op::Kill { .. } => "kill",
            Op::Exec { .. } => "exec",
            Op::Delete => "delete",
            Op::DeleteProcess { .. } => "delete_process",
            Op::ResizePty { .. } => "resize_pty",
            Op::CloseIo { .. } => "close_io",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::ListPids => "list_pids",
            Op::Update { .. } => "update",
            Op::Metrics => "metrics",
            Op::Terminate => "terminate",
        }
    }
}

/// What an operation returns.
#[derive(Debug)]
pub enum Reply {
    /// A pid (Create, Start).
    Pid(u32),
    /// A process description (Get).
    Process(Process),
    /// Nothing to return.
    Done,
    /// Delete / DeleteProcess.
    Deleted(DeleteResponse),
    /// ListPids.
    Pids(Vec<ProcessInfo>),
    /// Metrics (the shim's Stats Any).
    Metrics(Option<prost_types::Any>),
}

/// One operation on the task.
#[derive(Message)]
#[rtype(result = "Result<Reply, TaskError>")]
pub struct Request(pub Op);

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
