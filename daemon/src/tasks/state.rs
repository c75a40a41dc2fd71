//! In-memory state of one task (its init process and its execs), owned by its ContainerActor.
//!
//! This state is a cache that a restart throws away: it must always be rebuildable from the task directory record
//! and the shim's State RPC. Never keep anything here that exists nowhere else (waiters live in `waiters.rs`).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::containerd_client::types::v1::{Process, Status as ProcStatus};
use prost_types::Timestamp;
use serde::{Deserialize, Serialize};

/// Stdio paths exactly as the client gave them (echoed by Get/List; ctr removes its FIFOs from them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioPaths {
    /// Path of the stdin FIFO or file, empty for none.
    pub stdin: String,
    /// Path of the stdout FIFO or file, empty for /dev/null.
    pub stdout: String,
    /// Path of the stderr FIFO or file, empty for /dev/null.
    pub stderr: String,
    /// Whether the process has a pty.
    pub terminal: bool,
}

impl StdioPaths {
    /// As the shim API carries them.
    pub fn to_shim(&self) -> berth_proto::shim::Stdio {
        berth_proto::shim::Stdio {
            stdin: self.stdin.clone(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            terminal: self.terminal,
        }
    }

    /// From the shim API.
    pub fn from_shim(s: &berth_proto::shim::Stdio) -> Self {
        StdioPaths {
            stdin: s.stdin.clone(),
            stdout: s.stdout.clone(),
            stderr: s.stderr.clone(),
            terminal: s.terminal,
        }
    }
}

/// How and when a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Pid the process had.
    pub pid: u32,
    /// Exit code, or 128 + signal number.
    pub status: u32,
    /// Exit time, seconds since the epoch.
    pub secs: i64,
    /// Exit time, nanoseconds part.
    pub nanos: i32,
}

impl ExitInfo {
    /// The exit time as a protobuf timestamp.
    pub fn timestamp(&self) -> Timestamp {
        Timestamp {
            seconds: self.secs,
            nanos: self.nanos,
        }
    }

    /// Build from a pid, a status and an optional protobuf timestamp (now when absent).
    pub fn new(pid: u32, status: u32, at: Option<&Timestamp>) -> Self {
        let (secs, nanos) = match at {
            Some(t) if t.seconds > 0 => (t.seconds, t.nanos),
            _ => now(),
        };
        ExitInfo {
            pid,
            status,
            secs,
            nanos,
        }
    }
}

/// The current time as (seconds, nanoseconds) since the epoch.
pub fn now() -> (i64, i32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i32)
}

/// One process of the task: init or an exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcState {
    /// Host pid, 0 before the runtime created it.
    pub pid: u32,
    /// containerd's status enum value.
    pub status: ProcStatus,
    /// The client's stdio paths.
    pub stdio: StdioPaths,
    /// Set once the process has exited.
    pub exit: Option<ExitInfo>,
}

impl ProcState {
    /// A process that is registered but not created yet.
    pub fn new(stdio: StdioPaths) -> Self {
        ProcState {
            pid: 0,
            status: ProcStatus::Created,
            stdio,
            exit: None,
        }
    }

    /// Record a status change; STOPPED is final (replayed older events never revive a process).
    pub fn set_status(&mut self, status: ProcStatus) {
        if self.status != ProcStatus::Stopped {
            self.status = status;
        }
    }

    /// Record the exit.
    pub fn set_exited(&mut self, exit: ExitInfo) {
        if self.exit.is_none() {
            self.exit = Some(exit);
        }
        if self.pid == 0 {
            self.pid = exit.pid;
        }
        self.status = ProcStatus::Stopped;
    }

    /// The containerd `Process` message; `id` is the container id for init or the exec id.
    pub fn to_process(&self, container_id: &str, id: &str) -> Process {
        Process {
            container_id: container_id.to_string(),
            id: id.to_string(),
            pid: self.pid,
            status: self.status as i32,
            stdin: self.stdio.stdin.clone(),
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            terminal: self.stdio.terminal,
            exit_status: self.exit.map(|e| e.status).unwrap_or(0),
            exited_at: self.exit.map(|e| e.timestamp()),
        }
    }
}

/// Map the shim's status enum (same numbering as containerd's) to containerd's.
pub fn status_from_shim(s: i32) -> ProcStatus {
    ProcStatus::try_from(s).unwrap_or(ProcStatus::Unknown)
}

/// The whole task.
#[derive(Clone, Debug)]
pub struct TaskState {
    /// The init process.
    pub init: ProcState,
    /// Exec processes by exec id.
    pub execs: BTreeMap<String, ProcState>,
}

impl TaskState {
    /// A task whose init is registered with the given stdio.
    pub fn new(stdio: StdioPaths) -> Self {
        TaskState {
            init: ProcState::new(stdio),
            execs: BTreeMap::new(),
        }
    }

    /// The process with this exec id (empty = init).
    pub fn process(&self, exec_id: &str) -> Option<&ProcState> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    /// Mutable access to the process with this exec id (empty = init).
    pub fn process_mut(&mut self, exec_id: &str) -> Option<&mut ProcState> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_is_final() {
        let mut p = ProcState::new(StdioPaths::default());
        p.set_status(ProcStatus::Running);
        p.set_exited(ExitInfo::new(5, 3, None));
        p.set_status(ProcStatus::Running);
        assert_eq!(p.status, ProcStatus::Stopped);
        let proc = p.to_process("c", "c");
        assert_eq!(proc.exit_status, 3);
        assert_eq!(proc.status, ProcStatus::Stopped as i32);
        assert_eq!(proc.pid, 5);
    }

    #[test]
    fn shim_status_numbers_match() {
        assert_eq!(
            status_from_shim(berth_proto::shim::Status::Paused as i32),
            ProcStatus::Paused
        );
        assert_eq!(status_from_shim(99), ProcStatus::Unknown);
    }
}
