//! Taking over a container after the shim itself restarted (`berth-shim start` again on the
//! same bundle after a crash): the journal continues on its own (see [`crate::journal`]); this
//! module rebuilds the init from `init.pid`, `init.exit` and `runtime state`.
//!
//! The init is no longer the shim's child (it was reparented when the old shim died), so its
//! exit is noticed through a pidfd and its status is unknown: it is recorded as 137, the same
//! as `berth-shim delete` reports. Execs of the old shim are not restored. This module never
//! signals anything.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::SystemTime;

use berth_proto::shim::Stdio;
use tokio::sync::oneshot;

use crate::args;
use crate::cgroup::Cgroups;
use crate::container::{read_pid, Inner};
use crate::process::{exit_file, watch_exit, ExitRecord, Phase, Proc};
use crate::reaper::Exit;

/// Marker: the init was deleted through this bundle's shim; nothing to take over.
pub const DELETED: &str = berth_proto::shim::journal::DELETED_MARKER;

/// The exit status recorded when the shim could not observe it.
const UNKNOWN_STATUS: u32 = 137;

/// A recorded exit from `<bundle>/init.exit`.
fn read_exit(inner: &Inner) -> Option<ExitRecord> {
    let text = std::fs::read_to_string(exit_file(&inner.bundle, "")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(ExitRecord {
        pid: v.get("pid")?.as_u64()? as u32,
        status: v.get("exit_status")?.as_u64()? as u32,
        at: crate::log::parse_rfc3339(v.get("exited_at")?.as_str()?)?,
    })
}

/// A pidfd for a process that is not our child.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes two integers; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0) };
    // SAFETY: `fd` was just returned by pidfd_open and nothing else owns it.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Feed a oneshot with the (unknown-status) exit of a non-child, seen through its pidfd.
fn follow(pid: u32) -> oneshot::Receiver<Exit> {
    let (tx, rx) = oneshot::channel();
    let exited = move |tx: oneshot::Sender<Exit>| {
        let _ = tx.send(Exit {
            pid: pid as i32,
            status: UNKNOWN_STATUS,
            at: SystemTime::now(),
        });
    };
    let Some(fd) = pidfd(pid) else {
        exited(tx);
        return rx;
    };
    tokio::spawn(async move {
        if let Ok(afd) = crate::stdio::async_fd(fd) {
            // A pidfd turns readable when the process exits.
            let _ = afd.readable().await;
        }
        exited(tx);
    });
    rx
}

impl Inner {
    /// Rebuild the init from disk, if this bundle has a container the old shim left behind.
    pub async fn restore(self: &Arc<Self>) {
        if self.bundle.join(DELETED).exists() {
            return;
        }
        let Ok(pid) = read_pid(&self.bundle.join("init.pid")) else {
            return;
        };
        let mut proc = Proc::new("", Stdio::default());
        proc.pid = pid;
        if let Some(rec) = read_exit(self) {
            proc.phase = Phase::Stopped;
            proc.exit.send_replace(Some(rec));
            proc.gate.send_replace(true);
            self.state().init = Some(proc);
            crate::log!("restored stopped init pid {pid} (exit {})", rec.status);
            return;
        }
        let status = match self.runtime.run(args!["state", &self.id], None).await {
            Ok(out) => serde_json::from_slice::<serde_json::Value>(&out)
                .ok()
                .and_then(|v| {
                    let same = v.get("pid")?.as_u64()? == pid as u64;
                    same.then(|| v.get("status")?.as_str().map(str::to_string))?
                })
                .unwrap_or_else(|| "stopped".into()),
            Err(e) => {
                crate::log!("restore: runtime state: {e}");
                return;
            }
        };
        let paused = status == "paused";
        proc.phase = match status.as_str() {
            "created" => Phase::Created,
            _ => Phase::Running,
        };
        if proc.phase == Phase::Running {
            proc.gate.send_replace(true);
        }
        let gate = proc.gate.subscribe();
        let exit = follow(pid);
        let cgroups = Cgroups::of_pid(pid);
        if let Some(cg) = &cgroups {
            cg.watch_oom(self.journal.clone());
        }
        {
            let mut st = self.state();
            st.init = Some(proc);
            st.paused = paused;
            st.cgroups = cgroups;
        }
        watch_exit(self.clone(), String::new(), exit, gate, None);
        crate::log!("restored init pid {pid} ({status}); its exit status will be unknown");
    }
}
