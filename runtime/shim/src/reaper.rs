//! The one reaper: the shim is child subreaper, and this SIGCHLD-driven loop is the ONLY
//! place that calls `waitpid`. Each exit goes to whoever subscribed to that pid; exits
//! nobody has claimed yet are kept by pid, so a late subscriber (the container's init,
//! known only from runc's pid file; an exec that exits before `runc exec` returns) still
//! gets its status.
//!
//! Never use `std::process::Child::wait`, `.output()` or `tokio::process` in the shim:
//! they would race this loop and lose statuses.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How many unclaimed exits to keep (runtime helpers and orphans nobody asks about).
const MAX_UNCLAIMED: usize = 1024;

/// One reaped child.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// Its pid.
    pub pid: i32,
    /// Exit code, or 128 + signal number.
    pub status: u32,
    /// When the shim reaped it.
    pub at: SystemTime,
}

#[derive(Default)]
struct Inner {
    /// Subscribers waiting for a pid's exit.
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    /// Exits nobody asked for yet, oldest first in `order`.
    unclaimed: HashMap<i32, Exit>,
    order: VecDeque<i32>,
}

/// Handle to the reaper; cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Get `pid`'s exit: at once if it was already reaped, else when it happens.
    /// Subscribe right after spawning, with no `.await` in between.
    pub fn subscribe(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if let Some(exit) = inner.unclaimed.remove(&pid) {
            inner.order.retain(|p| *p != pid);
            let _ = tx.send(exit);
        } else {
            inner.waiters.insert(pid, tx);
        }
        rx
    }

    /// Start the SIGCHLD loop on the current tokio runtime.
    pub fn start(&self) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.reap_all();
                if sigchld.recv().await.is_none() {
                    crate::log!("reaper: SIGCHLD stream ended");
                    return;
                }
            }
        });
        Ok(())
    }

    /// Reap every child that has exited, until none is left.
    fn reap_all(&self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code as u32),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as u32),
                Ok(WaitStatus::StillAlive) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return,
                Err(e) => {
                    crate::log!("reaper: waitpid: {e}");
                    return;
                }
            };
            self.deliver(Exit {
                pid,
                status,
                at: SystemTime::now(),
            });
        }
    }

    fn deliver(&self, exit: Exit) {
        let mut inner = self.lock();
        if let Some(tx) = inner.waiters.remove(&exit.pid) {
            // A dropped receiver means nobody cares any more; nothing to keep.
            let _ = tx.send(exit);
            return;
        }
        if inner.unclaimed.insert(exit.pid, exit).is_none() {
            inner.order.push_back(exit.pid);
        }
        while inner.order.len() > MAX_UNCLAIMED {
            if let Some(old) = inner.order.pop_front() {
                inner.unclaimed.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_subscriber_gets_kept_exit() {
        let r = Reaper::default();
        r.deliver(Exit {
            pid: 42,
            status: 3,
            at: SystemTime::now(),
        });
        let mut rx = r.subscribe(42);
        assert_eq!(rx.try_recv().map(|e| e.status).ok(), Some(3));
        let mut rx = r.subscribe(43);
        assert!(rx.try_recv().is_err());
        r.deliver(Exit {
            pid: 43,
            status: 137,
            at: SystemTime::now(),
        });
        assert_eq!(rx.try_recv().map(|e| e.status).ok(), Some(137));
    }

    #[test]
    fn unclaimed_is_bounded() {
        let r = Reaper::default();
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            r.deliver(Exit {
                pid,
                status: 0,
                at: SystemTime::now(),
            });
        }
        assert_eq!(r.lock().unclaimed.len(), MAX_UNCLAIMED);
        assert!(!r.lock().unclaimed.contains_key(&0));
    }
}
