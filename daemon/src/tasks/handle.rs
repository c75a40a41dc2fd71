//! [`Tasks`]: the typed handle the gRPC layer (and the Containers service) call. Each method finds the task's
//! ContainerActor in the registry and sends it the verb's own message; the answer is the verb's own result.
//!
//! It never writes the registry (the TaskSupervisor does) and never touches an actor's state.

use std::sync::Arc;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Addr, Handler, Message};
use berth_proto::containerd_client::services::v1::{
    CreateTaskRequest, CreateTaskResponse, DeleteResponse, MetricsResponse,
};
use berth_proto::containerd_client::types::v1::{Process, ProcessInfo};
use berth_proto::containerd_client::types::Metric;

use super::container::{messages as m, ContainerActor};
use super::error::TaskError;
use super::state::{self, ExitInfo, StdioPaths};
use super::supervisor::{HoldContainerDelete, ReleaseContainerDelete, Slot, SpawnTask};
use super::{waiters, Key, Shared, TaskSupervisor};
use crate::events::Filter;

/// How long a call waits for a TaskSupervisor that is restarting.
const SUPERVISOR_WAIT: Duration = Duration::from_secs(5);

/// The handle; cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    shared: Arc<Shared>,
}

/// Keeps Tasks.Create away from a container while Containers.Delete removes it; released on drop.
pub struct ContainerDeleteHold {
    shared: Arc<Shared>,
    key: Key,
}

impl Drop for ContainerDeleteHold {
    fn drop(&mut self) {
        if let Some(s) = self.shared.supervisor() {
            s.do_send(ReleaseContainerDelete {
                key: self.key.clone(),
            });
        }
    }
}

// Filter fields of a task (Tasks.List's filter, Tasks.Metrics' filters).
crate::fields!(Process {
    id,
    container_id,
    pid,
    status,
    exit_status
});

fn key(ns: &str, id: &str) -> Key {
    (ns.to_string(), id.to_string())
}

impl Tasks {
    pub(super) fn new(shared: Arc<Shared>) -> Tasks {
        Tasks { shared }
    }

    /// The containerd Tasks service to register.
    pub fn service(
        &self,
    ) -> berth_proto::containerd::tasks::tasks_server::TasksServer<super::service::TasksService>
    {
        berth_proto::containerd::tasks::tasks_server::TasksServer::new(
            super::service::TasksService::new(self.clone()),
        )
        .max_decoding_message_size(crate::server::MAX_MESSAGE)
        .max_encoding_message_size(crate::server::MAX_MESSAGE)
    }

    /// The TaskSupervisor, waiting a little while it restarts.
    async fn supervisor(&self) -> Result<Addr<TaskSupervisor>, TaskError> {
        let deadline = tokio::time::Instant::now() + SUPERVISOR_WAIT;
        loop {
            if let Some(s) = self.shared.supervisor() {
                return Ok(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TaskError::ActorFailed(
                    "the task supervisor is not running".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The task's actor, or why there is none.
    fn actor(&self, ns: &str, id: &str) -> Result<Addr<ContainerActor>, TaskError> {
        match self.shared.registry.get(&key(ns, id)) {
            Some(Slot::Live { addr, .. }) => Ok(addr),
            Some(Slot::Abandoned { reason }) => Err(TaskError::Abandoned {
                id: id.to_string(),
                reason,
            }),
            Some(Slot::ContainerDeleting) | None => Err(TaskError::TaskNotFound(id.to_string())),
        }
    }

    /// Send a verb to the task's actor. An actor that stopped before answering was either deleted (NotFound)
    /// or failed and is being restarted (Unavailable: retry).
    async fn call<M>(&self, ns: &str, id: &str, msg: M) -> Result<M::Result, TaskError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        ContainerActor: Handler<M>,
        <ContainerActor as actix::Actor>::Context: ToEnvelope<ContainerActor, M>,
    {
        let addr = self.actor(ns, id)?;
        addr.send(msg).await.map_err(|_| match self.actor(ns, id) {
            Err(e) => e,
            Ok(_) => TaskError::ActorFailed(format!(
                "task {id:?}: its actor stopped during the call and is restarting; retry"
            )),
        })
    }

    /// Tasks.Create: the TaskSupervisor starts the task's actor (AlreadyExists if the container has a task),
    /// which creates it (and undoes its own work if that fails).
    pub async fn create(
        &self,
        ns: &str,
        req: CreateTaskRequest,
    ) -> Result<CreateTaskResponse, TaskError> {
        crate::namespace::validate_id("container", &req.container_id)
            .map_err(TaskError::Upstream)?;
        if req.checkpoint.is_some() {
            return Err(TaskError::Unimplemented(
                "checkpoint restore is not supported".into(),
            ));
        }
        let id = req.container_id.clone();
        let addr = self
            .supervisor()
            .await?
            .send(SpawnTask { key: key(ns, &id) })
            .await
            .map_err(|_| TaskError::ActorFailed("the task supervisor stopped".into()))??;
        let pid = addr
            .send(m::CreateTask { req })
            .await
            .map_err(|_| TaskError::ActorFailed(format!("task {id:?}: its actor failed")))??;
        Ok(CreateTaskResponse {
            container_id: id,
            pid,
        })
    }

    /// Tasks.Start of init (empty exec id) or an exec.
    pub async fn start(&self, ns: &str, id: &str, exec_id: String) -> Result<u32, TaskError> {
        self.call(ns, id, m::Start { exec_id }).await?
    }

    /// Tasks.Get.
    pub async fn get(&self, ns: &str, id: &str, exec_id: String) -> Result<Process, TaskError> {
        self.call(ns, id, m::Get { exec_id }).await?
    }

    /// Tasks.Kill.
    pub async fn kill(&self, ns: &str, id: &str, msg: m::Kill) -> Result<(), TaskError> {
        self.call(ns, id, msg).await?
    }

    /// Tasks.Exec (registers the exec; Start runs it).
    pub async fn exec(
        &self,
        ns: &str,
        id: &str,
        exec_id: String,
        stdio: StdioPaths,
        process_json: Vec<u8>,
    ) -> Result<(), TaskError> {
        let msg = m::Exec {
            exec_id,
            stdio,
            process_json,
        };
        self.call(ns, id, msg).await?
    }

    /// Tasks.Delete.
    pub async fn delete(&self, ns: &str, id: &str) -> Result<DeleteResponse, TaskError> {
        self.call(ns, id, m::Delete).await?
    }

    /// Tasks.DeleteProcess.
    pub async fn delete_process(
        &self,
        ns: &str,
        id: &str,
        exec_id: String,
    ) -> Result<DeleteResponse, TaskError> {
        self.call(ns, id, m::DeleteProcess { exec_id }).await?
    }

    /// Tasks.ResizePty.
    pub async fn resize_pty(&self, ns: &str, id: &str, msg: m::ResizePty) -> Result<(), TaskError> {
        self.call(ns, id, msg).await?
    }

    /// Tasks.CloseIO.
    pub async fn close_io(&self, ns: &str, id: &str, msg: m::CloseIo) -> Result<(), TaskError> {
        self.call(ns, id, msg).await?
    }

    /// Tasks.Pause.
    pub async fn pause(&self, ns: &str, id: &str) -> Result<(), TaskError> {
        self.call(ns, id, m::Pause).await?
    }

    /// Tasks.Resume.
    pub async fn resume(&self, ns: &str, id: &str) -> Result<(), TaskError> {
        self.call(ns, id, m::Resume).await?
    }

    /// Tasks.ListPids.
    pub async fn list_pids(&self, ns: &str, id: &str) -> Result<Vec<ProcessInfo>, TaskError> {
        self.call(ns, id, m::ListPids).await?
    }

    /// Tasks.Update (LinuxResources JSON).
    pub async fn update(&self, ns: &str, id: &str, resources: Vec<u8>) -> Result<(), TaskError> {
        self.call(ns, id, m::Update { resources }).await?
    }

    /// Reopen the task's CRI log at its path (CRI's ReopenContainerLog).
    pub async fn reopen_log(&self, ns: &str, id: &str) -> Result<(), TaskError> {
        self.call(ns, id, m::ReopenLog).await?
    }

    /// Tasks.Wait: long poll until the process exits (at once if it has). The waiter lives outside the actor,
    /// so it survives the actor's restart.
    pub async fn wait(&self, ns: &str, id: &str, exec_id: &str) -> Result<ExitInfo, TaskError> {
        // Validates that the task and the process exist (and waits for a rebuilding actor).
        self.get(ns, id, exec_id.to_string()).await?;
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

    /// Tasks.List: every task of the namespace passing `filter`; a task whose actor cannot answer is listed
    /// with status UNKNOWN rather than hidden.
    pub async fn list(&self, ns: &str, filter: &Filter) -> Result<Vec<Process>, TaskError> {
        let slots = self.shared.registry.in_namespace(ns);
        let replies = futures::future::join_all(slots.into_iter().map(|(id, slot)| async move {
            let r = match slot {
                Slot::Live { addr, .. } => addr
                    .send(m::Get {
                        exec_id: String::new(),
                    })
                    .await
                    .ok(),
                _ => None,
            };
            (id, r)
        }))
        .await;
        let mut out: Vec<Process> = replies
            .into_iter()
            .filter_map(|(id, r)| match r {
                Some(Ok(p)) => Some(p),
                Some(Err(TaskError::TaskNotFound(_))) => None,
                _ => Some(Process {
                    container_id: id.clone(),
                    id,
                    ..Default::default()
                }),
            })
            .filter(|p| filter.matches(p))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Tasks.Metrics for the tasks of the namespace passing `filter`.
    pub async fn metrics(&self, ns: &str, filter: &Filter) -> Result<MetricsResponse, TaskError> {
        let tasks = self.list(ns, filter).await?;
        let mut metrics = Vec::new();
        for p in tasks {
            // A task that went away or cannot answer is left out, as containerd does.
            if let Ok(Ok(Some(data))) = self.call(ns, &p.id, m::Metrics).await {
                let (seconds, nanos) = state::now();
                metrics.push(Metric {
                    timestamp: Some(prost_types::Timestamp { seconds, nanos }),
                    id: p.id,
                    data: Some(data),
                });
            }
        }
        Ok(MetricsResponse { metrics })
    }

    /// One task's cgroup statistics (`io.containerd.cgroups.v1.Metrics`), None when the shim has none.
    pub async fn metrics_of(
        &self,
        ns: &str,
        id: &str,
    ) -> Result<Option<prost_types::Any>, TaskError> {
        self.call(ns, id, m::Metrics).await?
    }

    /// For Containers.Delete: hold the container id so no task can be created for it until the hold drops;
    /// FailedPrecondition when it has a task.
    pub async fn hold_for_container_delete(
        &self,
        ns: &str,
        id: &str,
    ) -> Result<ContainerDeleteHold, TaskError> {
        let k = key(ns, id);
        self.supervisor()
            .await?
            .send(HoldContainerDelete { key: k.clone() })
            .await
            .map_err(|_| TaskError::ActorFailed("the task supervisor stopped".into()))??;
        Ok(ContainerDeleteHold {
            shared: self.shared.clone(),
            key: k,
        })
    }

    /// Whether the container has a task (in any state, also while it is being created).
    pub fn has_task(&self, ns: &str, id: &str) -> bool {
        matches!(
            self.shared.registry.get(&key(ns, id)),
            Some(Slot::Live { .. } | Slot::Abandoned { .. })
        )
    }

    /// Graceful stop on SIGTERM: close shim connections, leave shims and containers running.
    pub async fn shutdown(&self) {
        self.shared
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(s) = self.shared.supervisor() {
            let _ = s.send(super::supervisor::StopAll).await;
        }
        // Give the actors a moment to stop their pumps.
        for _ in 0..50 {
            if self.shared.registry.all_stopped() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until every task on disk is registered (its actor may still be rebuilding): berthd serves the
    /// Tasks API only after this, so no call right after a restart is told a live task does not exist.
    pub async fn ready(&self) -> Result<(), TaskError> {
        self.supervisor()
            .await?
            .send(super::supervisor::Ready)
            .await
            .map_err(|_| TaskError::ActorFailed("the task supervisor stopped".into()))
    }

    /// How long start-up recovery took (None while it runs or when there was nothing to recover).
    pub fn recovery_took(&self) -> Option<Duration> {
        self.shared.recovery.took()
    }
}
