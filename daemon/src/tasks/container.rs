//! ContainerActor: one per container with a task. It owns the task's state (init and execs: pids, statuses, stdio,
//! exit statuses), the shim client and the ShimActor pumping the shim's events.
//!
//! Every handler runs under `supervision::catch`: a panic stops the actor and the TaskSupervisor starts a new one,
//! which rebuilds its state from the task directory and the shim (State RPC), never from the dead actor's memory.
//! Waiters are not here (see `waiters.rs`). Never block the actor thread: shim RPCs run as spawned actor futures.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use berth_proto::containerd_client::services::v1::DeleteResponse;
use berth_proto::containerd_client::types::v1::{Process, ProcessInfo, Status as ProcStatus};
use berth_proto::shim;
use berth_proto::shim::event::Kind;
use tokio::sync::watch;

use super::bundle::{self, DeadShim, TaskRecord};
use super::error::TaskError;
use super::events::{delete_event, exit_event};
use super::shim::{self as shimio, ShimActor, ShimClient, StopPump};
use super::state::{status_from_shim, ExitInfo, ProcState, StdioPaths, TaskState};
use super::supervisor::{ChildStopped, TaskSupervisor};
use super::Shared;

/// How a ContainerActor gets its state.
pub enum Init {
    /// A task being created now: the shim is started and connected, nothing is created in it yet.
    Fresh {
        /// Connected shim client.
        client: Box<ShimClient>,
        /// berthd's record, already written to the task dir.
        record: Box<TaskRecord>,
    },
    /// Recovery or restart: rebuild from the task directory and the shim.
    Rebuild,
}

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

type Resp = ResponseActFuture<ContainerActor, Result<Reply, TaskError>>;

fn done(r: Result<Reply, TaskError>) -> Resp {
    Box::pin(actix::fut::ready(r))
}

/// The per-container actor.
pub struct ContainerActor {
    shared: Arc<Shared>,
    supervisor: Addr<TaskSupervisor>,
    ns: String,
    id: String,
    dir: PathBuf,
    gen: u64,
    init: Option<Init>,
    ready: Option<watch::Sender<bool>>,
    client: Option<ShimClient>,
    pump: Option<Addr<ShimActor>>,
    record: TaskRecord,
    task: TaskState,
    /// The shim is gone; the task is STOPPED with the exit `berth-shim delete` reported.
    dead: bool,
    /// Set when the shim's TaskDeleted event has been journaled.
    deleted_seen: watch::Sender<bool>,
    /// Stopped on purpose: the supervisor must not restart it.
    terminated: bool,
    /// A Delete is in progress: the shim going away is expected.
    deleting: bool,
}

impl ContainerActor {
    /// A new actor for `ns/id` (generation `gen` in the supervisor's registry).
    pub fn new(
        shared: Arc<Shared>,
        supervisor: Addr<TaskSupervisor>,
        ns: String,
        id: String,
        gen: u64,
        init: Init,
        ready: Option<watch::Sender<bool>>,
    ) -> Self {
        let dir = shared.ctx.config.task_dir(&ns, &id);
        ContainerActor {
            shared,
            supervisor,
            ns,
            id,
            dir,
            gen,
            init: Some(init),
            ready,
            client: None,
            pump: None,
            record: TaskRecord::default(),
            task: TaskState::new(StdioPaths::default()),
            dead: false,
            deleted_seen: watch::channel(false).0,
            terminated: false,
            deleting: false,
        }
    }

    fn client(&self) -> Result<ShimClient, TaskError> {
        if self.dead {
            return Err(TaskError::FailedPrecondition(format!(
                "task {:?}: its shim is gone; the task is stopped",
                self.id
            )));
        }
        self.client.clone().ok_or_else(|| {
            TaskError::ShimUnavailable(format!("task {:?}: no shim connection", self.id))
        })
    }

    fn process(&self, exec_id: &str) -> Result<&ProcState, TaskError> {
        self.task
            .process(exec_id)
            .ok_or_else(|| TaskError::ExecNotFound {
                id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    fn fail(&mut self, ctx: &mut Context<Self>, what: &str, panic: String) -> TaskError {
        tracing::error!(namespace = %self.ns, container_id = %self.id, %what, %panic,
            "container actor panicked; stopping it for a restart");
        ctx.stop();
        TaskError::ActorFailed(format!("{what}: {panic}"))
    }

    /// Run a shim call, then `then` on the actor (under catch) with its result.
    fn call<T: 'static>(
        &self,
        name: &'static str,
        fut: impl std::future::Future<Output = Result<T, TaskError>> + 'static,
        then: impl FnOnce(&mut Self, &mut Context<Self>, T) -> Result<Reply, TaskError> + 'static,
    ) -> Resp {
        Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
            let value = res?;
            match crate::supervision::catch(|| then(act, ctx, value)) {
                Ok(r) => r,
                Err(p) => Err(act.fail(ctx, name, p)),
            }
        }))
    }

    fn start_pump(&mut self, ctx: &mut Context<Self>) {
        if let Some(client) = self.client.clone() {
            let pump = ShimActor::new(
                client,
                self.shared.ctx.events.clone(),
                self.ns.clone(),
                self.id.clone(),
                self.dir.clone(),
                ctx.address(),
            );
            self.pump = Some(pump.start());
        }
    }

    fn signal_ready(&mut self) {
        if let Some(r) = self.ready.take() {
            let _ = r.send(true);
        }
    }

    /// Register waiters for every process and wake them for exited ones.
    fn sync_waiters(&self) {
        let w = &self.shared.waiters;
        w.register(&self.ns, &self.id, "");
        if let Some(e) = self.task.init.exit {
            w.exited(&self.ns, &self.id, "", e);
        }
        for (exec_id, p) in &self.task.execs {
            w.register(&self.ns, &self.id, exec_id);
            if let Some(e) = p.exit {
                w.exited(&self.ns, &self.id, exec_id, e);
            }
        }
    }

    fn apply_rebuilt(&mut self, ctx: &mut Context<Self>, rebuilt: Rebuilt) {
        match rebuilt {
            Rebuilt::Live {
                client,
                record,
                task,
            } => {
                self.client = Some(*client);
                self.record = *record;
                self.task = *task;
                self.start_pump(ctx);
            }
            Rebuilt::Dead(record) => {
                self.task = TaskState::new(record.stdio.clone());
                for (exec_id, stdio) in &record.execs {
                    self.task
                        .execs
                        .insert(exec_id.clone(), ProcState::new(stdio.clone()));
                }
                if let Some(d) = record.dead {
                    self.task.init.set_exited(d.exit);
                    for p in self.task.execs.values_mut() {
                        p.set_exited(ExitInfo::new(p.pid, 137, Some(&d.exit.timestamp())));
                    }
                }
                self.record = *record;
                self.dead = true;
            }
        }
        self.sync_waiters();
    }

    fn dispatch(&mut self, op: Op, ctx: &mut Context<Self>) -> Resp {
        let name = op.name();
        match op {
            Op::Get { exec_id } => {
                let id = if exec_id.is_empty() {
                    self.id.clone()
                } else {
                    exec_id.clone()
                };
                done(
                    self.process(&exec_id)
                        .map(|p| Reply::Process(p.to_process(&self.id, &id))),
                )
            }
            Op::Terminate => {
                self.terminated = true;
                ctx.stop();
                done(Ok(Reply::Done))
            }
            Op::Create { rootfs, no_pivot } => {
                let client = match self.client() {
                    Ok(c) => c,
                    Err(e) => return done(Err(e)),
                };
                let req = shim::CreateRequest {
                    id: self.id.clone(),
                    bundle: self.dir.to_string_lossy().into_owned(),
                    rootfs,
                    stdio: Some(self.task.init.stdio.to_shim()),
                    no_pivot,
                };
                self.call(
                    name,
                    async move {
                        let mut c = client;
                        c.create(req)
                            .await
                            .map(|r| r.into_inner().pid)
                            .map_err(TaskError::Shim)
                    },
                    |act, _, pid| {
                        if act.task.init.pid == 0 {
                            act.task.init.pid = pid;
                        }
                        Ok(Reply::Pid(pid))
                    },
                )
            }
            Op::Start { exec_id } => {
                let (client, status) = match self
                    .client()
                    .and_then(|c| Ok((c, self.process(&exec_id)?.status)))
                {
                    Ok(x) => x,
                    Err(e) => return done(Err(e)),
                };
                if status != ProcStatus::Created {
                    return done(Err(TaskError::FailedPrecondition(format!(
                        "process {:?} of task {:?} is {} and cannot be started",
                        exec_id,
                        self.id,
                        status.as_str_name()
                    ))));
                }
                let req = shim::StartRequest {
                    exec_id: exec_id.clone(),
                };
                self.call(
                    name,
                    async move {
                        let mut c = client;
                        c.start(req)
                            .await
                            .map(|r| r.into_inner().pid)
                            .map_err(TaskError::Shim)
                    },
                    move |act, _, pid| {
                        if let Some(p) = act.task.process_mut(&exec_id) {
                            p.pid = pid;
                            p.set_status(ProcStatus::Running);
                        }
                        Ok(Reply::Pid(pid))
                    },
                )
            }
            Op::Kill {
                exec_id,
                signal,
                all,
            } => {
                let status = match self.process(&exec_id) {
                    Ok(p) => p.status,
                    Err(e) => return done(Err(e)),
                };
                if self.dead || (status == ProcStatus::Stopped && !all) {
                    return done(Err(TaskError::TaskNotFound(format!(
                        "{}: process already finished",
                        self.id
                    ))));
                }
                let client = match self.client() {
                    Ok(c) => c,
                    Err(e) => return done(Err(e)),
                };
                let req = shim::KillRequest {
                    exec_id,
                    signal,
                    all,
                };
                self.call(
                    name,
                    async move {
                        let mut c = client;
                        c.kill(req).await.map(|_| ()).map_err(TaskError::Shim)
                    },
                    |_, _, ()| Ok(Reply::Done),
                )
            }
            Op::Exec {
                exec_id,
                stdio,
                process_json,
            } => self.exec(exec_id, stdio, process_json),
            Op::Delete => self.delete(),
            Op::DeleteProcess { exec_id } => self.delete_process(exec_id),
            Op::ResizePty {
                exec_id,
                width,
                height,
            } => {
                let client = match self.process(&exec_id).and_then(|_| self.client()) {
                    Ok(c) => c,
                    Err(e) => return done(Err(e)),
                };
                let req = shim::ResizePtyRequest {
                    exec_id,
                    width,
                    height,
                };
                self.call(
                    name,
                    async move {
                        let mut c = client;
                        c.resize_pty(req).await.map(|_| ()).map_err(TaskError::Shim)
                    },
                    |_, _, ()| Ok(Reply::Done),
                )
            }
            Op::CloseIo { exec_id, stdin } => {
                let client = match self.process(&exec_id).and_then(|_| self.client()) {
                    Ok(c) => c,
                    Err(e) => return done(Err(e)),
                };
                let req = shim::CloseIoRequest { exec_id, stdin };
                self.call(
                    name,
                    async move {
                        let mut c = client;
                        c.close_io(req).await.map(|_| ()).map_err(TaskError::Shim)
                    },
                    |_, _, ()| Ok(Reply::Done),
                )
            }
            Op::Pause => self.pause_resume(true),
            Op::Resume => self.pause_resume(false),
            Op::ListPids => {
                let client = match self.client() {
                    Ok(c) => c,
                    Err(e) => return done(Err(e)),
                };
                self.call(
                    name,
                    async move {
                        let mut c = client;
                        c.pids(shim::PidsRequest {})
                            .await
                            .map(|r| r.into_inner())
                            .map_err(TaskError::Shim)
                    },
                    |_, _, resp| {
                        let pids = resp
                            .processes
                            .into_iter()
                            .map(|p| ProcessInfo {
                                pid: p.pid,
                                info: (!p.exec_id.is_empty()).then(|| {
                                    berth_proto::to_any(&berth_proto::runc::ProcessDetails {
                                        exec_id: p.exec_id,
                                    })
                                }),
                            })
                            .collect();
                        Ok(Reply::Pids(pids))
                    },
                )
            }
            Op::Update { resources_json } => {
                let client = match self.client() {
                    Ok(c) => c,
                    Err(e) => return done(Err(e)),
                };
                self.call(
                    name,
                    async move {
                        let mut c = client;
                        c.update(shim::UpdateRequest { resources_json })
                            .await
                            .map(|_| ())
                            .map_err(TaskError::Shim)
                    },
                    |_, _, ()| Ok(Reply::Done),
                )
            }
            Op::Metrics => {
                let client = match self.client() {
                    Ok(c) => c,
                    Err(e) => return done(Err(e)),
                };
                self.call(
                    name,
                    async move {
                        let mut c = client;
                        c.stats(shim::StatsRequest {})
                            .await
                            .map(|r| r.into_inner().metrics)
                            .map_err(TaskError::Shim)
                    },
                    |_, _, m| Ok(Reply::Metrics(m)),
                )
            }
        }
    }

    fn exec(&mut self, exec_id: String, stdio: StdioPaths, process_json: Vec<u8>) -> Resp {
        if self.task.execs.contains_key(&exec_id) {
            return done(Err(TaskError::ExecExists {
                id: self.id.clone(),
                exec_id,
            }));
        }
        if self.dead || self.task.init.status == ProcStatus::Stopped {
            return done(Err(TaskError::FailedPrecondition(format!(
                "task {:?} is stopped; cannot exec into it",
                self.id
            ))));
        }
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return done(Err(e)),
        };
        // Remember the exec (record first, so a restart knows to ask the shim about it).
        self.record.execs.insert(exec_id.clone(), stdio.clone());
        if let Err(e) = bundle::save_record(&self.dir, &self.record) {
            self.record.execs.remove(&exec_id);
            return done(Err(e));
        }
        self.task
            .execs
            .insert(exec_id.clone(), ProcState::new(stdio.clone()));
        self.shared.waiters.register(&self.ns, &self.id, &exec_id);
        let req = shim::ExecRequest {
            exec_id: exec_id.clone(),
            stdio: Some(stdio.to_shim()),
            process_json,
        };
        Box::pin(
            async move {
                let mut c = client;
                c.exec(req).await.map(|_| ()).map_err(TaskError::Shim)
            }
            .into_actor(self)
            .map(move |res, act, _| match res {
                Ok(()) => Ok(Reply::Done),
                Err(e) => {
                    act.task.execs.remove(&exec_id);
                    act.record.execs.remove(&exec_id);
                    let _ = bundle::save_record(&act.dir, &act.record);
                    act.shared.waiters.remove(&act.ns, &act.id, &exec_id);
                    Err(e)
                }
            }),
        )
    }

    fn pause_resume(&mut self, pause: bool) -> Resp {
        let name = if pause { "pause" } else { "resume" };
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return done(Err(e)),
        };
        self.call(
            name,
            async move {
                let mut c = client;
                let r = if pause {
                    c.pause(shim::Empty {}).await
                } else {
                    c.resume(shim::Empty {}).await
                };
                r.map(|_| ()).map_err(TaskError::Shim)
            },
            move |act, _, ()| {
                if pause {
                    act.task.init.set_status(ProcStatus::Paused);
                } else if act.task.init.status == ProcStatus::Paused {
                    act.task.init.set_status(ProcStatus::Running);
                }
                Ok(Reply::Done)
            },
        )
    }

    fn delete_process(&mut self, exec_id: String) -> Resp {
        if exec_id.is_empty() {
            return done(Err(TaskError::InvalidArgument(
                "exec id is required".into(),
            )));
        }
        let p = match self.process(&exec_id) {
            Ok(p) => p.clone(),
            Err(e) => return done(Err(e)),
        };
        if !matches!(p.status, ProcStatus::Stopped | ProcStatus::Created) {
            return done(Err(TaskError::FailedPrecondition(format!(
                "process {exec_id:?} must be stopped before deletion (it is {})",
                p.status.as_str_name()
            ))));
        }
        let client = if self.dead { None } else { self.client.clone() };
        let req = shim::DeleteRequest {
            exec_id: exec_id.clone(),
        };
        self.call(
            "delete_process",
            async move {
                match client {
                    Some(mut c) => match c.delete(req).await {
                        Ok(r) => Ok(Some(r.into_inner())),
                        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                        Err(s) => Err(TaskError::Shim(s)),
                    },
                    None => Ok(None),
                }
            },
            move |act, _, resp| {
                let exit = match resp {
                    Some(r) => ExitInfo::new(r.pid, r.exit_status, r.exited_at.as_ref()),
                    None => p.exit.unwrap_or_else(|| ExitInfo::new(p.pid, 0, None)),
                };
                act.task.execs.remove(&exec_id);
                act.record.execs.remove(&exec_id);
                let _ = bundle::save_record(&act.dir, &act.record);
                act.shared.waiters.remove(&act.ns, &act.id, &exec_id);
                Ok(Reply::Deleted(DeleteResponse {
                    id: exec_id,
                    pid: exit.pid,
                    exit_status: exit.status,
                    exited_at: Some(exit.timestamp()),
                }))
            },
        )
    }

    fn delete(&mut self) -> Resp {
        let status = self.task.init.status;
        if !matches!(status, ProcStatus::Stopped | ProcStatus::Created) {
            return done(Err(TaskError::FailedPrecondition(format!(
                "task {:?} must be stopped before deletion: it is {}",
                self.id,
                status.as_str_name()
            ))));
        }
        let client = if self.dead { None } else { self.client.clone() };
        let known = self.task.init.exit;
        let pid = self.task.init.pid;
        let mut seen = self.deleted_seen.subscribe();
        let dir = self.dir.clone();
        let events = self.shared.ctx.events.clone();
        let (ns, id) = (self.ns.clone(), self.id.clone());
        let fut = async move {
            let mut exit = known.unwrap_or_else(|| ExitInfo::new(pid, 0, None));
            if let Some(mut c) = client {
                let r = c
                    .delete(shim::DeleteRequest {
                        exec_id: String::new(),
                    })
                    .await
                    .map_err(TaskError::Shim)?
                    .into_inner();
                exit = ExitInfo::new(r.pid, r.exit_status, r.exited_at.as_ref());
                // The shim's TaskDeleted goes through the journal first, so /tasks/delete follows /tasks/exit.
                let waited =
                    tokio::time::timeout(Duration::from_secs(3), seen.wait_for(|s| *s)).await;
                if !matches!(waited, Ok(Ok(_))) {
                    tracing::warn!(namespace = %ns, container_id = %id, "no TaskDeleted from the shim; publishing it");
                    let _ = events
                        .publish(&ns, "/tasks/delete", delete_event(&id, &exit))
                        .await;
                }
                let _ = c.shutdown(shim::ShutdownRequest { now: false }).await;
            }
            remove_dir_retrying(dir).await?;
            let _ = events.forget_shim(&shimio::shim_key(&ns, &id)).await;
            Ok(exit)
        };
        self.deleting = true;
        Box::pin(
            fut.into_actor(self)
                .map(|res: Result<ExitInfo, TaskError>, act, ctx| {
                    let exit = match res {
                        Ok(e) => e,
                        Err(e) => {
                            act.deleting = false;
                            return Err(e);
                        }
                    };
                    act.terminated = true;
                    act.shared
                        .registry
                        .remove(&(act.ns.clone(), act.id.clone()));
                    act.shared.waiters.remove_task(&act.ns, &act.id);
                    ctx.stop();
                    Ok(Reply::Deleted(DeleteResponse {
                        id: act.id.clone(),
                        pid: exit.pid,
                        exit_status: exit.status,
                        exited_at: Some(exit.timestamp()),
                    }))
                }),
        )
    }

    fn on_event(&mut self, ev: shim::Event) {
        let Some(kind) = ev.kind else { return };
        match kind {
            Kind::Created(c) => {
                if self.task.init.pid == 0 {
                    self.task.init.pid = c.pid;
                }
            }
            Kind::Started(s) => {
                self.task.init.pid = s.pid;
                self.task.init.set_status(ProcStatus::Running);
            }
            Kind::Exited(e) => {
                let exit = ExitInfo::new(e.pid, e.exit_status, e.exited_at.as_ref());
                if let Some(p) = self.task.process_mut(&e.exec_id) {
                    p.set_exited(exit);
                }
                self.shared
                    .waiters
                    .exited(&self.ns, &self.id, &e.exec_id, exit);
            }
            Kind::ExecStarted(e) => {
                if let Some(p) = self.task.execs.get_mut(&e.exec_id) {
                    p.pid = e.pid;
                    p.set_status(ProcStatus::Running);
                }
            }
            Kind::Paused(_) => self.task.init.set_status(ProcStatus::Paused),
            Kind::Resumed(_) => {
                if self.task.init.status == ProcStatus::Paused {
                    self.task.init.set_status(ProcStatus::Running);
                }
            }
            Kind::Deleted(_) => {
                let _ = self.deleted_seen.send(true);
            }
            Kind::Oom(_) | Kind::ExecAdded(_) => {}
        }
    }
}

async fn remove_dir_retrying(dir: PathBuf) -> Result<(), TaskError> {
    let mut last = Ok(());
    for _ in 0..10 {
        let d = dir.clone();
        last = tokio::task::spawn_blocking(move || bundle::remove_task_dir(&d))
            .await
            .unwrap_or_else(|e| Err(TaskError::ActorFailed(e.to_string())));
        if last.is_ok() {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

impl Actor for ContainerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match self.init.take() {
            Some(Init::Fresh { client, record }) => {
                self.task = TaskState::new(record.stdio.clone());
                self.record = *record;
                self.client = Some(*client);
                self.start_pump(ctx);
                self.sync_waiters();
                self.signal_ready();
            }
            _ => {
                let fut = rebuild(
                    self.shared.clone(),
                    self.ns.clone(),
                    self.id.clone(),
                    self.dir.clone(),
                );
                ctx.wait(fut.into_actor(self).map(|res, act, ctx| {
                    match res {
                        Ok(rebuilt) => {
                            if let Err(p) =
                                crate::supervision::catch(|| act.apply_rebuilt(ctx, rebuilt))
                            {
                                act.fail(ctx, "rebuild", p);
                            }
                        }
                        Err(e) => {
                            tracing::error!(namespace = %act.ns, container_id = %act.id, error = %e,
                                "rebuilding the task failed");
                            ctx.stop();
                        }
                    }
                    act.signal_ready();
                    act.shared.recovery_done();
                }));
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(p) = self.pump.take() {
            p.do_send(StopPump);
        }
        self.signal_ready();
        self.supervisor.do_send(ChildStopped {
            ns: self.ns.clone(),
            id: self.id.clone(),
            gen: self.gen,
            abnormal: !self.terminated,
        });
    }
}

impl Handler<Request> for ContainerActor {
    type Result = Resp;

    fn handle(&mut self, msg: Request, ctx: &mut Self::Context) -> Resp {
        let name = msg.0.name();
        let point = format!("container_actor.{name}");
        match crate::supervision::catch(|| {
            crate::failpoint::hit(&point);
            self.dispatch(msg.0, ctx)
        }) {
            Ok(fut) => fut,
            Err(p) => done(Err(self.fail(ctx, name, p))),
        }
    }
}

impl Handler<ShimEventMsg> for ContainerActor {
    type Result = ();

    fn handle(&mut self, msg: ShimEventMsg, ctx: &mut Self::Context) {
        if let Err(p) = crate::supervision::catch(|| self.on_event(msg.0)) {
            self.fail(ctx, "shim_event", p);
        }
    }
}

impl Handler<ShimGone> for ContainerActor {
    type Result = ();

    fn handle(&mut self, _: ShimGone, ctx: &mut Self::Context) {
        if self.terminated || self.dead || self.deleting {
            return;
        }
        tracing::warn!(namespace = %self.ns, container_id = %self.id, "shim is gone; marking the task stopped");
        let known = self.task.init.exit;
        let fut = reap_dead_shim(
            self.shared.clone(),
            self.ns.clone(),
            self.id.clone(),
            self.dir.clone(),
            self.record.clone(),
            known,
        );
        ctx.spawn(fut.into_actor(self).map(|res, act, _| match res {
            Ok(record) => {
                act.client = None;
                act.pump = None;
                act.dead = true;
                if let Some(d) = record.dead {
                    act.task.init.set_exited(d.exit);
                    for p in act.task.execs.values_mut() {
                        p.set_exited(ExitInfo::new(p.pid, 137, Some(&d.exit.timestamp())));
                    }
                }
                act.record = record;
                act.sync_waiters();
            }
            Err(e) => {
                tracing::error!(namespace = %act.ns, container_id = %act.id, error = %e, "cleaning up a dead shim");
            }
        }));
    }
}

/// State rebuilt from the task directory and the shim.
pub enum Rebuilt {
    /// The shim answers.
    Live {
        /// Connected client.
        client: Box<ShimClient>,
        /// berthd's record.
        record: Box<TaskRecord>,
        /// State from the shim.
        task: Box<TaskState>,
    },
    /// The shim is gone: the task is stopped with the recorded exit.
    Dead(Box<TaskRecord>),
}

fn apply_state(p: &mut ProcState, st: &shim::StateResponse) {
    p.pid = st.pid;
    let status = status_from_shim(st.status);
    if status == ProcStatus::Stopped {
        p.set_exited(ExitInfo::new(st.pid, st.exit_status, st.exited_at.as_ref()));
    } else {
        p.status = status;
    }
    if p.stdio == StdioPaths::default() {
        if let Some(s) = &st.stdio {
            p.stdio = StdioPaths::from_shim(s);
        }
    }
}

/// Rebuild a task: the record, then the shim (connect, State of init and of each exec berthd registered).
async fn rebuild(
    shared: Arc<Shared>,
    ns: String,
    id: String,
    dir: PathBuf,
) -> Result<Rebuilt, TaskError> {
    let _permit = shared.recovery_limit.clone().acquire_owned().await;
    let d = dir.clone();
    let record = tokio::task::spawn_blocking(move || bundle::load_record(&d))
        .await
        .map_err(|e| TaskError::ActorFailed(e.to_string()))??
        .ok_or_else(|| {
            TaskError::TaskNotFound(format!("{id}: no task record in {}", dir.display()))
        })?;
    if record.dead.is_some() {
        return Ok(Rebuilt::Dead(Box::new(
            reap_dead_shim(shared, ns, id, dir, record, None).await?,
        )));
    }
    let mut client = None;
    if let Some(address) = bundle::read_address(&dir) {
        for _ in 0..50 {
            match shimio::connect(&address, Duration::from_secs(1)).await {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(e) => {
                    if !bundle::read_shim_pid(&dir).is_some_and(bundle::pid_alive) {
                        tracing::debug!(namespace = %ns, container_id = %id, error = %e, "shim is gone");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let Some(mut c) = client else {
        return Ok(Rebuilt::Dead(Box::new(
            reap_dead_shim(shared, ns, id, dir, record, None).await?,
        )));
    };
    let st = c
        .state(shim::StateRequest {
            exec_id: String::new(),
        })
        .await
        .map_err(TaskError::Shim)?
        .into_inner();
    let mut task = TaskState::new(record.stdio.clone());
    apply_state(&mut task.init, &st);
    for (exec_id, stdio) in &record.execs {
        match c
            .state(shim::StateRequest {
                exec_id: exec_id.clone(),
            })
            .await
        {
            Ok(r) => {
                let mut p = ProcState::new(stdio.clone());
                apply_state(&mut p, &r.into_inner());
                task.execs.insert(exec_id.clone(), p);
            }
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(TaskError::Shim(s)),
        }
    }
    Ok(Rebuilt::Live {
        client: Box::new(c),
        record: Box::new(record),
        task: Box::new(task),
    })
}

/// A task whose shim is gone: run `berth-shim delete`, record the exit, journal TaskExit (unless the exit is
/// already known) then TaskDelete exactly once (the seqs are chosen once and kept in the record).
async fn reap_dead_shim(
    shared: Arc<Shared>,
    ns: String,
    id: String,
    dir: PathBuf,
    mut record: TaskRecord,
    known_exit: Option<ExitInfo>,
) -> Result<TaskRecord, TaskError> {
    let key = shimio::shim_key(&ns, &id);
    let events = shared.ctx.events.clone();
    if record.dead.is_none() {
        let args = shared.start_args(&ns, &id, &record);
        let reported = tokio::task::spawn_blocking(move || shimio::delete_shim(&args))
            .await
            .map_err(|e| TaskError::ActorFailed(e.to_string()))?;
        let exit = match (known_exit, reported) {
            (Some(k), _) => k,
            (None, Ok(e)) => e,
            (None, Err(e)) => {
                tracing::warn!(namespace = %ns, container_id = %id, error = %e, "berth-shim delete failed");
                ExitInfo::new(0, 137, None)
            }
        };
        let last = events
            .last_shim_seq(&key)
            .await
            .map_err(|e| TaskError::Upstream(e.into()))?;
        record.dead = Some(DeadShim {
            exit,
            exit_seq: if known_exit.is_some() { 0 } else { last + 1 },
            delete_seq: last + 2,
        });
        let (d, r) = (dir.clone(), record.clone());
        tokio::task::spawn_blocking(move || bundle::save_record(&d, &r))
            .await
            .map_err(|e| TaskError::ActorFailed(e.to_string()))??;
    }
    if let Some(d) = record.dead {
        if d.exit_seq > 0 {
            events
                .publish_from_shim(
                    &key,
                    d.exit_seq,
                    &ns,
                    "/tasks/exit",
                    exit_event(&id, &id, &d.exit),
                )
                .await
                .map_err(|e| TaskError::Upstream(e.into()))?;
        }
        events
            .publish_from_shim(
                &key,
                d.delete_seq,
                &ns,
                "/tasks/delete",
                delete_event(&id, &d.exit),
            )
            .await
            .map_err(|e| TaskError::Upstream(e.into()))?;
    }
    Ok(record)
}
