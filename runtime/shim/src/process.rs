//! One supervised process (the container's init or an exec): its state, its stdio handles,
//! and the exit path: reaper exit → (after the start event and the last terminal output)
//! exit record on disk → TaskExited journaled → waiters woken. The event is journaled
//! before any waiter sees the exit, so berthd always gets exit before delete.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_proto::shim::{event::Kind, Status, Stdio, TaskExited};
use tokio::sync::{oneshot, watch};

use crate::console::Console;
use crate::journal::write_atomic;
use crate::reaper::Exit;
use crate::stdio::Holders;
use crate::Inner;

/// How long an exit waits for the terminal output copy to drain.
const IO_DRAIN: Duration = Duration::from_secs(2);

/// A process's recorded exit.
#[derive(Debug, Clone, Copy)]
pub struct ExitRecord {
    /// Its pid.
    pub pid: u32,
    /// Code or 128 + signal.
    pub status: u32,
    /// When it was reaped.
    pub at: SystemTime,
}

impl ExitRecord {
    /// The JSON kept on disk (what `berth-shim delete` prints).
    pub fn to_json(self) -> String {
        serde_json::json!({
            "exit_status": self.status,
            "exited_at": crate::log::rfc3339(self.at),
            "pid": self.pid,
        })
        .to_string()
    }
}

/// Where a process's exit is recorded: `<bundle>/init.exit` or `<bundle>/execs/<id>.exit`.
pub fn exit_file(bundle: &Path, exec_id: &str) -> PathBuf {
    if exec_id.is_empty() {
        bundle.join("init.exit")
    } else {
        bundle.join("execs").join(format!("{exec_id}.exit"))
    }
}

/// Lifecycle of one process as the shim sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Registered (exec) or created (init), not started.
    Created,
    /// Started.
    Running,
    /// Exited and recorded.
    Stopped,
}

/// One process.
pub struct Proc {
    /// Empty for init.
    pub exec_id: String,
    /// 0 until known.
    pub pid: u32,
    /// Where it is in its life.
    pub phase: Phase,
    /// The client's stdio paths.
    pub stdio: Stdio,
    /// Held FIFO ends (stdin's dropped by CloseIO or at exit, outputs' at Delete).
    pub holders: Holders,
    /// The pty master when terminal.
    pub console: Option<Console>,
    /// Set once the exit is recorded; Wait subscribes.
    pub exit: watch::Sender<Option<ExitRecord>>,
    /// Opened once the start event is journaled (or the process will never start).
    pub gate: watch::Sender<bool>,
    /// The exec's process spec (JSON), kept until Start.
    pub spec: Vec<u8>,
}

impl Proc {
    /// A new process record.
    pub fn new(exec_id: &str, stdio: Stdio) -> Self {
        Proc {
            exec_id: exec_id.to_string(),
            pid: 0,
            phase: Phase::Created,
            stdio,
            holders: Holders::default(),
            console: None,
            exit: watch::channel(None).0,
            gate: watch::channel(false).0,
            spec: Vec::new(),
        }
    }

    /// The recorded exit, if any.
    pub fn exited(&self) -> Option<ExitRecord> {
        *self.exit.borrow()
    }

    /// Status as the API reports it.
    pub fn status(&self, paused: bool) -> Status {
        match self.phase {
            Phase::Created => Status::Created,
            Phase::Running if paused => Status::Paused,
            Phase::Running => Status::Running,
            Phase::Stopped => Status::Stopped,
        }
    }
}

/// Follow a process's exit: spawned once its pid is known and subscribed.
pub fn watch_exit(
    inner: Arc<Inner>,
    exec_id: String,
    exit: oneshot::Receiver<Exit>,
    mut gate: watch::Receiver<bool>,
    io_done: Option<watch::Receiver<bool>>,
) {
    tokio::spawn(async move {
        let Ok(exit) = exit.await else {
            crate::log!("exit of {exec_id:?} lost: reaper gone");
            return;
        };
        let _ = gate.wait_for(|open| *open).await;
        if let Some(mut io) = io_done {
            let _ = tokio::time::timeout(IO_DRAIN, io.wait_for(|d| *d)).await;
        }
        let rec = ExitRecord {
            pid: exit.pid as u32,
            status: exit.status,
            at: exit.at,
        };
        crate::log!(
            "process {exec_id:?} pid {} exited with {}",
            rec.pid,
            rec.status
        );
        let file = exit_file(&inner.bundle, &exec_id);
        if let Err(e) = write_atomic(&file, rec.to_json().as_bytes()) {
            crate::log!("recording exit: {e}");
        }
        if let Err(e) = inner.journal.emit(Kind::Exited(TaskExited {
            exec_id: exec_id.clone(),
            pid: rec.pid,
            exit_status: rec.status,
            exited_at: Some(crate::log::timestamp(rec.at)),
        })) {
            crate::log!("journaling exit: {e}");
        }
        let mut st = inner.state();
        let proc = if exec_id.is_empty() {
            st.init.as_mut()
        } else {
            st.execs.get_mut(&exec_id)
        };
        if let Some(p) = proc {
            p.phase = Phase::Stopped;
            // Output FIFO read ends stay until Delete so unread output survives.
            p.holders.stdin = None;
            p.exit.send_replace(Some(rec));
        }
    });
}
