//! ContainerActor: one per container with a task. It owns the task's state (init and execs: pids, statuses, stdio,
//! exit statuses), the shim client and the ShimActor pumping the shim's events.
//!
//! Every handler runs under `supervision::catch`: a panic stops the actor and the TaskSupervisor starts a new one,
//! which rebuilds its state from the task directory and the shim (State RPC), never from the dead actor's memory.
//! Waiters are not here (see `waiters.rs`). Never block the actor thread: shim RPCs run as spawned actor futures.

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use berth_proto::containerd_client::types::v1::{ProcessInfo, Status as ProcStatus};
use berth_proto::shim;
use tokio::sync::watch;

use super::bundle::TaskRecord;
use super::error::TaskError;
use super::shim::{ShimActor, ShimClient, StopPump};
use super::state::{ExitInfo, ProcState, StdioPaths, TaskState};
use super::supervisor::{ChildStopped, TaskSupervisor};
use super::Shared;

mod ops;
mod rebuild;
mod verbs;

pub use ops::{Op, PumpFailed, Reply, Request, ShimEventMsg, ShimGone};
use rebuild::{reap_dead_shim, rebuild, Rebuilt};

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

type Resp = ResponseActFuture<ContainerActor, Result<Reply, TaskError>>;

/// A future whose panic becomes `Err(TaskError::Panicked)` instead of unwinding through the actix arbiter (which
/// would take every actor on it down); the actor then stops and its supervisor restarts it.
pub(crate) fn guarded<T>(
    fut: impl std::future::Future<Output = Result<T, TaskError>>,
) -> impl std::future::Future<Output = Result<T, TaskError>> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(fut).catch_unwind().map(|r| {
        r.unwrap_or_else(|p| Err(TaskError::Panicked(crate::supervision::panic_message(&*p))))
    })
}

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

    /// Stop on a future's caught panic; other results pass through.
    fn check_panic<T>(
        &mut self,
        ctx: &mut Context<Self>,
        what: &str,
        res: Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        match res {
            Err(TaskError::Panicked(p)) => Err(self.fail(ctx, what, p)),
            other => other,
        }
    }

    /// Run a shim call, then `then` on the actor (under catch) with its result.
    fn call<T: 'static>(
        &self,
        name: &'static str,
        fut: impl std::future::Future<Output = Result<T, TaskError>> + 'static,
        then: impl FnOnce(&mut Self, &mut Context<Self>, T) -> Result<Reply, TaskError> + 'static,
    ) -> Resp {
        Box::pin(guarded(fut).into_actor(self).map(move |res, act, ctx| {
            let value = act.check_panic(ctx, name, res)?;
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
            Rebuilt::Dead(record, journaled) => {
                self.task = TaskState::new(record.stdio.clone());
                for (exec_id, stdio) in &record.execs {
                    self.task
                        .execs
                        .insert(exec_id.clone(), ProcState::new(stdio.clone()));
                }
                for ev in journaled {
                    self.on_event(ev);
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
                ctx.wait(guarded(fut).into_actor(self).map(|res, act, ctx| {
                    match act.check_panic(ctx, "rebuild", res) {
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
        ctx.spawn(guarded(fut).into_actor(self).map(|res, act, ctx| match act.check_panic(ctx, "reap", res) {
            Ok((record, journaled)) => {
                act.client = None;
                act.pump = None;
                act.dead = true;
                for ev in journaled {
                    act.on_event(ev);
                }
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

impl Handler<PumpFailed> for ContainerActor {
    type Result = ();

    fn handle(&mut self, msg: PumpFailed, ctx: &mut Self::Context) {
        self.fail(ctx, "shim event pump", msg.0);
    }
}
