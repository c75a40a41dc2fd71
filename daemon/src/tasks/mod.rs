//! Tasks: everything about running containers' processes in berthd.
//!
//! - [`Tasks`]: the handle daemon-core holds (the containerd Tasks gRPC service, `has_task`, `shutdown`).
//! - `supervisor`: TaskSupervisor, one ContainerActor per task, restarted on failure (Transient, limited).
//! - `container`: ContainerActor, the task state and the shim connection; `shim`: berth-shim process and the
//!   ShimActor pumping its acked event stream into the journal (journal before ack, exactly once).
//! - `recovery`: on start, reconnect every shim under `<state>/tasks/<ns>/<id>/` in the background.
//! - `waiters`: Tasks.Wait long polls, outside the actors so they survive restarts.
//!
//! This module must never block an actor or a tonic worker on I/O of a child process (blocking work goes to
//! `spawn_blocking`), and never ack a shim event before it is journaled.

mod bundle;
mod container;
mod create;
mod error;
mod events;
mod recovery;
mod service;
mod shim;
mod state;
mod supervisor;
mod waiters;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use berth_proto::containerd::tasks::tasks_server::TasksServer;
use berth_proto::containerd_client::services::v1::MetricsResponse;
use berth_proto::containerd_client::types::v1::Process;
use berth_proto::containerd_client::types::Metric;
use dashmap::DashMap;
use tokio::sync::Semaphore;

pub use error::TaskError;

use crate::context::Context as DaemonContext;
use container::{ContainerActor, Op, Reply, Request};
use supervisor::{StopAll, TaskSupervisor};

/// (namespace, container id).
pub(crate) type Key = (String, String);

/// How many tasks are rebuilt at the same time during recovery.
const RECOVERY_PARALLELISM: usize = 32;

/// A registry entry: the task's actor and its generation.
pub(crate) struct Entry {
    pub addr: Addr<ContainerActor>,
    pub gen: u64,
}

/// State shared by the handle, the supervisor and the actors.
pub(crate) struct Shared {
    pub ctx: DaemonContext,
    pub waiters: waiters::Waiters,
    pub registry: DashMap<Key, Entry>,
    /// Tasks being created right now (duplicate Creates get AlreadyExists).
    pub creating: DashMap<Key, ()>,
    pub recovery_limit: Arc<Semaphore>,
    pub shutting_down: AtomicBool,
    recovery_pending: AtomicUsize,
    recovery_started: Mutex<Option<(Instant, usize)>>,
    /// How long the start-up recovery took, once it is done.
    pub recovery_took: Mutex<Option<Duration>>,
}

impl Shared {
    fn new(ctx: DaemonContext) -> Self {
        Shared {
            ctx,
            waiters: waiters::Waiters::default(),
            registry: DashMap::new(),
            creating: DashMap::new(),
            recovery_limit: Arc::new(Semaphore::new(RECOVERY_PARALLELISM)),
            shutting_down: AtomicBool::new(false),
            recovery_pending: AtomicUsize::new(0),
            recovery_started: Mutex::new(None),
            recovery_took: Mutex::new(None),
        }
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

    /// A rebuild (recovery or restart) is starting.
    pub fn recovery_begin(&self) {
        self.recovery_pending.fetch_add(1, Ordering::SeqCst);
    }

    /// A rebuild finished (well or not).
    pub fn recovery_done(&self) {
        if self.recovery_pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            let started = self.recovery_started.lock().ok().and_then(|mut s| s.take());
            if let Some((t0, n)) = started {
                let took = t0.elapsed();
                if let Ok(mut t) = self.recovery_took.lock() {
                    *t = Some(took);
                }
                tracing::info!(
                    tasks = n,
                    took_ms = took.as_secs_f64() * 1000.0,
                    "task recovery complete"
                );
            }
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

/// The handle daemon-core holds; cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    shared: Arc<Shared>,
    supervisor: Addr<TaskSupervisor>,
}

/// Start the TaskSupervisor on `ctx.actors` and begin recovery in the background (serving requests meanwhile).
pub async fn start(ctx: DaemonContext) -> Result<Tasks, TaskError> {
    let shared = Arc::new(Shared::new(ctx));
    let sh = shared.clone();
    let supervisor =
        TaskSupervisor::start_in_arbiter(&shared.ctx.actors, move |_| TaskSupervisor::new(sh));
    let tasks = Tasks { shared, supervisor };
    recovery::recover(&tasks).await;
    Ok(tasks)
}

impl Tasks {
    /// The containerd Tasks service to register.
    pub fn service(&self) -> TasksServer<service::TasksService> {
        TasksServer::new(service::TasksService::new(self.clone()))
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    /// Whether the container has a task (Containers.Delete refuses with FailedPrecondition when it does).
    pub async fn has_task(&self, ns: &str, id: &str) -> bool {
        let key = (ns.to_string(), id.to_string());
        self.shared.registry.contains_key(&key) || self.shared.creating.contains_key(&key)
    }

    /// Graceful stop on SIGTERM: close shim connections, leave shims and containers running.
    pub async fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.supervisor.send(StopAll).await;
        // Give the actors a moment to stop their pumps.
        for _ in 0..50 {
            if self.shared.registry.iter().all(|e| !e.addr.connected()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How long start-up recovery took (None while it runs or when there was nothing to recover).
    pub fn recovery_took(&self) -> Option<Duration> {
        self.shared.recovery_took.lock().ok().and_then(|t| *t)
    }

    fn actor(&self, ns: &str, id: &str) -> Result<Addr<ContainerActor>, TaskError> {
        self.shared
            .registry
            .get(&(ns.to_string(), id.to_string()))
            .map(|e| e.addr.clone())
            .ok_or_else(|| TaskError::TaskNotFound(id.to_string()))
    }

    /// Perform an operation on a task's actor.
    pub(crate) async fn op(&self, ns: &str, id: &str, op: Op) -> Result<Reply, TaskError> {
        let addr = self.actor(ns, id)?;
        match addr.send(Request(op)).await {
            Ok(r) => r,
            Err(e) => Err(TaskError::ActorFailed(format!(
                "task {id:?}: {e}; the container actor is restarting, retry"
            ))),
        }
    }

    /// Tasks.Wait: long poll until the process exits (at once if it has).
    pub(crate) async fn wait(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
    ) -> Result<state::ExitInfo, TaskError> {
        // Validates that the task and process exist (and waits for a rebuilding actor).
        self.op(
            ns,
            id,
            Op::Get {
                exec_id: exec_id.to_string(),
            },
        )
        .await?;
        let rx = self
            .shared
            .waiters
            .subscribe(ns, id, exec_id)
            .ok_or_else(|| TaskError::ExecNotFound {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
            })?;
        waiters::wait_exit(rx)
            .await
            .ok_or_else(|| TaskError::TaskNotFound(format!("{id}: deleted while waiting")))
    }

    /// Tasks.List: every task of the namespace.
    pub(crate) async fn list(&self, ns: &str) -> Result<Vec<Process>, TaskError> {
        let addrs: Vec<(String, Addr<ContainerActor>)> = self
            .shared
            .registry
            .iter()
            .filter(|e| e.key().0 == ns)
            .map(|e| (e.key().1.clone(), e.addr.clone()))
            .collect();
        let replies = futures::future::join_all(addrs.into_iter().map(|(id, addr)| async move {
            (
                id,
                addr.send(Request(Op::Get {
                    exec_id: String::new(),
                }))
                .await,
            )
        }))
        .await;
        let mut out = Vec::new();
        for (id, r) in replies {
            match r {
                Ok(Ok(Reply::Process(p))) => out.push(p),
                Ok(Err(TaskError::TaskNotFound(_))) => {}
                Ok(Ok(_)) | Ok(Err(_)) | Err(_) => out.push(Process {
                    container_id: id.clone(),
                    id,
                    ..Default::default()
                }),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Tasks.Metrics with `id==X` filters (none = all tasks of the namespace).
    pub(crate) async fn metrics(
        &self,
        ns: &str,
        filters: &[String],
    ) -> Result<MetricsResponse, TaskError> {
        let ids: Vec<String> = self
            .shared
            .registry
            .iter()
            .filter(|e| e.key().0 == ns)
            .map(|e| e.key().1.clone())
            .filter(|id| service::filters_match(filters, id))
            .collect();
        let mut metrics = Vec::new();
        for id in ids {
            if let Ok(Reply::Metrics(Some(data))) = self.op(ns, &id, Op::Metrics).await {
                let (secs, nanos) = state::now();
                metrics.push(Metric {
                    timestamp: Some(prost_types::Timestamp {
                        seconds: secs,
                        nanos,
                    }),
                    id,
                    data: Some(data),
                });
            }
        }
        Ok(MetricsResponse { metrics })
    }
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
