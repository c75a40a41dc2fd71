//! Start-up recovery: [`scan`] lists every task directory `<state>/tasks/<ns>/<id>/` (the TaskSupervisor then
//! starts one rebuilding ContainerActor per task; they reconnect to their shims in parallel, at most
//! [`RECOVERY_PARALLELISM`] at a time, replay unacked events, or reap a dead shim), and [`Progress`] measures
//! how long that took. berthd serves requests meanwhile.
//!
//! Directories without berthd's record are leftovers of a create that never wrote one: they are removed.
//! Never wait here for a shim; the actors do that.

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{bundle, Key};

/// How many tasks are rebuilt at the same time during recovery.
pub const RECOVERY_PARALLELISM: usize = 32;

/// (namespace, id) of every task directory with a record; removes record-less leftovers (blocking).
pub fn scan(root: &std::path::Path) -> Vec<Key> {
    let mut out = Vec::new();
    let Ok(namespaces) = fs::read_dir(root) else {
        return out;
    };
    for ns in namespaces.flatten() {
        let Ok(ids) = fs::read_dir(ns.path()) else {
            continue;
        };
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        for id in ids.flatten() {
            let dir = id.path();
            if !dir.is_dir() {
                continue;
            }
            let id_name = id.file_name().to_string_lossy().into_owned();
            if dir.join(bundle::RECORD_FILE).exists() {
                out.push((ns_name.clone(), id_name));
            } else {
                tracing::warn!(dir = %dir.display(), "removing a task directory without a record");
                if let Err(e) = bundle::remove_task_dir(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "removing a leftover task directory");
                }
            }
        }
    }
    out
}

/// Rebuilds in flight, and how long the first round (berthd's start-up recovery) took.
pub(crate) struct Progress {
    /// Bounds how many actors rebuild at once.
    pub limit: Arc<Semaphore>,
    pending: AtomicUsize,
    started: Mutex<Option<(Instant, usize)>>,
    took: Mutex<Option<Duration>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            limit: Arc::new(Semaphore::new(RECOVERY_PARALLELISM)),
            pending: AtomicUsize::new(0),
            started: Mutex::new(None),
            took: Mutex::new(None),
        }
    }
}

impl Progress {
    /// `n` rebuilds are starting.
    pub fn begin(&self, n: usize) {
        if self.pending.fetch_add(n, Ordering::SeqCst) == 0 {
            let mut s = self.started.lock().unwrap_or_else(|e| e.into_inner());
            if s.is_none() && self.took().is_none() {
                *s = Some((Instant::now(), n));
            }
        }
    }

    /// A rebuild finished (well or not).
    pub fn done(&self) {
        if self.pending.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let started = self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((t0, n)) = started {
            let took = t0.elapsed();
            *self.took.lock().unwrap_or_else(|e| e.into_inner()) = Some(took);
            tracing::info!(
                tasks = n,
                took_ms = took.as_secs_f64() * 1000.0,
                "task recovery complete"
            );
        }
    }

    /// How long start-up recovery took, once it is done.
    pub fn took(&self) -> Option<Duration> {
        *self.took.lock().unwrap_or_else(|e| e.into_inner())
    }
}
