//! Tasks: the running processes of containers, in berthd.
//!
//! How a verb travels (read in this order):
//! - `service.rs`: the containerd Tasks gRPC service; each handler converts, calls the [`Tasks`] handle, maps
//!   the error.
//! - `handle.rs`: [`Tasks`], the typed API: finds the task's ContainerActor in the registry and sends it one
//!   message per verb (`container/messages.rs`), each with its own result type.
//! - `supervisor.rs`: TaskSupervisor, the only writer of the registry: starts a ContainerActor per task
//!   (create, recovery), restarts failed ones within a limit (Transient, 5 a minute), gives up on the rest
//!   with a clear error, and keeps Containers.Delete and Tasks.Create of one id apart.
//! - `container/`: ContainerActor, one per task: its state, its shim connection and event pump, and every
//!   verb (`create.rs`, `verbs.rs`, `exec.rs`, `delete.rs`, `rebuild.rs` after a restart or a dead shim).
//! - `shim/`: starting berth-shim, cleaning up after a dead one, its client, and the ShimActor pumping its
//!   acked event stream into the journal (journal before ack: exactly once).
//! - `waiters.rs`: Tasks.Wait long polls, kept outside the actors so they survive restarts.
//! - `recovery.rs`: at start-up, one rebuilding ContainerActor per task directory.
//!
//! This module must never block an actor or a tonic worker on I/O (blocking work goes to `spawn_blocking`),
//! and never ack a shim event before it is journaled.

mod bundle;
mod container;
mod error;
mod events;
mod handle;
mod recovery;
mod service;
mod shim;
mod state;
mod supervisor;
mod waiters;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::Addr;

pub use container::messages::{CloseIo, Kill, ResizePty};
pub use error::TaskError;
pub use handle::{ContainerDeleteHold, Tasks};
pub use state::{ExitInfo, StdioPaths};
pub use supervisor::TaskSupervisor;

use crate::context::Context as DaemonContext;

/// (namespace, container id).
pub(crate) type Key = (String, String);

/// The events journal's key for a task: `<ns>/<id>` (also the shim's event source).
pub(crate) fn task_key(ns: &str, id: &str) -> String {
    format!("{ns}/{id}")
}

/// What the handle, the supervisor and the actors share. Only the TaskSupervisor writes `registry`.
pub(crate) struct Shared {
    pub ctx: DaemonContext,
    /// The network layer: a task's netns and attachments are set up in its create and torn down in its delete.
    pub networks: crate::network::Networks,
    pub waiters: waiters::Waiters,
    pub registry: supervisor::Registry,
    pub recovery: recovery::Progress,
    pub shutting_down: AtomicBool,
    /// Generations of ContainerActors, unique across TaskSupervisor restarts.
    next_gen: AtomicU64,
    /// The current TaskSupervisor (replaced when it restarts).
    supervisor: Mutex<Option<Addr<TaskSupervisor>>>,
}

impl Shared {
    fn new(ctx: DaemonContext, networks: crate::network::Networks) -> Self {
        Shared {
            ctx,
            networks,
            waiters: waiters::Waiters::default(),
            registry: supervisor::Registry::default(),
            recovery: recovery::Progress::default(),
            shutting_down: AtomicBool::new(false),
            next_gen: AtomicU64::new(1),
            supervisor: Mutex::new(None),
        }
    }

    /// The running TaskSupervisor, if one is up.
    pub fn supervisor(&self) -> Option<Addr<TaskSupervisor>> {
        self.supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|a| a.connected())
    }

    fn set_supervisor(&self, addr: Addr<TaskSupervisor>) {
        *self.supervisor.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    fn next_gen(&self) -> u64 {
        self.next_gen.fetch_add(1, Ordering::Relaxed)
    }

    /// Arguments for `berth-shim start|delete` for a task.
    pub fn start_args(&self, ns: &str, id: &str, record: &bundle::TaskRecord) -> shim::StartArgs {
        let config = &self.ctx.config;
        let runtime = if record.runtime.as_os_str().is_empty() {
            resolve_binary(config.runtime_binary_path())
        } else {
            record.runtime.clone()
        };
        shim::StartArgs {
            shim_binary: config.shim_binary_path(),
            namespace: ns.to_string(),
            id: id.to_string(),
            bundle: config.task_dir(ns, id),
            daemon_address: config.address.clone(),
            state: config.state.clone(),
            runtime,
            runtime_root: record.runtime_root.clone(),
        }
    }
}

/// An actor whose handler bodies run under `supervision::catch`: a panic becomes [`Guarded::fail`] (log, stop
/// for a restart by the supervisor) and an error for the caller, never an unwinding arbiter.
pub(crate) trait Guarded: actix::Actor<Context = actix::Context<Self>> {
    /// Record a caught panic and stop; returns the caller's error.
    fn fail(&mut self, ctx: &mut actix::Context<Self>, what: &str, panic: String) -> TaskError;

    /// Run `f` under `catch`.
    fn guard<R>(
        &mut self,
        ctx: &mut actix::Context<Self>,
        what: &str,
        f: impl FnOnce(&mut Self, &mut actix::Context<Self>) -> Result<R, TaskError>,
    ) -> Result<R, TaskError> {
        match crate::supervision::catch(|| f(self, ctx)) {
            Ok(r) => r,
            Err(p) => Err(self.fail(ctx, what, p)),
        }
    }
}

/// A bare binary name (`runc`) resolved against PATH, as the shim wants an existing path; others unchanged.
pub(crate) fn resolve_binary(bin: std::path::PathBuf) -> std::path::PathBuf {
    if bin.components().count() != 1 || bin.is_absolute() {
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(&bin))
        .find(|p| p.is_file())
        .unwrap_or(bin)
}

/// Whether the task `<ns>/<id>` exists: its directory holds berthd's record (written before the shim starts,
/// removed last by a delete). The network layer's recovery asks this about the owners of attachments it finds.
pub fn task_recorded(config: &crate::config::Config, ns: &str, id: &str) -> bool {
    config.task_dir(ns, id).join(bundle::RECORD_FILE).exists()
}

/// Build the task subsystem: the handle, and the factory the supervision tree uses to start (and restart)
/// the TaskSupervisor. Recovery starts when the first TaskSupervisor does. Tasks reach the network layer
/// through `networks`.
pub fn new(
    ctx: DaemonContext,
    networks: crate::network::Networks,
) -> (Tasks, crate::supervision::StartChild) {
    let shared = Arc::new(Shared::new(ctx, networks));
    let factory = supervisor::factory(shared.clone());
    (Tasks::new(shared), factory)
}

#[cfg(test)]
mod tests {
    use super::resolve_binary;
    use std::path::PathBuf;

    #[test]
    fn bare_binaries_resolve_against_path() {
        let sh = resolve_binary(PathBuf::from("sh"));
        assert!(sh.is_absolute() && sh.is_file(), "{sh:?}");
        assert_eq!(
            resolve_binary(PathBuf::from("/x/runc")),
            PathBuf::from("/x/runc")
        );
        assert_eq!(
            resolve_binary(PathBuf::from("no-such-binary-xyz")),
            PathBuf::from("no-such-binary-xyz")
        );
    }
}
