//! ContainerActor: one per container with a task. It owns the task's state (init and execs: pids, statuses,
//! stdio, exit statuses), the shim client and the ShimActor pumping the shim's events, and performs every verb.
//!
//! Ordering: lifecycle verbs (Create, Start, Kill, Exec, Delete, DeleteProcess, Pause, Resume, Update, CloseIO,
//! ResizePty) hold the actor's `gate`, a one-permit semaphore, from their state check until their result is
//! written into the state, so two of them never act on the same state at once (a Kill and a Delete, or two
//! Starts, run one after the other, and the second sees what the first did). Queries (Get, ListPids,
//! Metrics) and the shim's events do not take the gate: events only move a process forward (CREATED →
//! RUNNING → STOPPED; STOPPED is final), so a verb that checked RUNNING and then sees its shim call fail
//! because the process just exited returns a clean error, never a half state.
//!
//! Every handler and every future runs under `catch`: a panic stops the actor and the TaskSupervisor starts a
//! new one, which rebuilds its state from the task directory and the shim (`rebuild.rs`), never from the dead
//! actor's memory. Waiters are not here (`waiters.rs`). The actor thread never blocks: shim calls and file
//! writes run in futures and on blocking threads.

pub mod messages;

mod create;
mod delete;
mod exec;
mod rebuild;
mod shim_events;
mod verbs;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use actix::prelude::*;
use berth_proto::containerd_client::types::v1::Status as ProcStatus;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use super::bundle::TaskRecord;
use super::error::TaskError;
use super::shim::{Pump, ShimActor, ShimClient, StopPump};
use super::state::{ProcState, StdioPaths, TaskState};
use super::supervisor::{ChildStopped, Release};
use super::{Guarded, Key, Shared};

/// How a ContainerActor gets its state.
pub enum Init {
    /// A task to create: the actor waits for [`messages::CreateTask`].
    New,
    /// Recovery or a restart: rebuild from the task directory and the shim.
    Rebuild,
}

/// Where the task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not created yet (or its create failed): only CreateTask is accepted, the task does not exist.
    New,
    /// The shim runs it.
    Live,
    /// The shim is gone: the task is STOPPED with the exit recorded when it was reaped.
    Dead,
}

/// What a verb handler returns.
pub(crate) type Reply<T> = ResponseActFuture<ContainerActor, Result<T, TaskError>>;

type Boxed<T> = Pin<Box<dyn ActorFuture<ContainerActor, Output = Result<T, TaskError>>>>;

/// A future whose panic becomes `Err(TaskError::Panicked)` instead of unwinding through the actix arbiter (which
/// would take every actor on it down); the actor then stops and its supervisor restarts it.
pub(crate) fn guarded<T>(
    fut: impl Future<Output = Result<T, TaskError>>,
) -> impl Future<Output = Result<T, TaskError>> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(fut).catch_unwind().map(|r| {
        r.unwrap_or_else(|p| Err(TaskError::Panicked(crate::supervision::panic_message(&*p))))
    })
}

/// The per-container actor.
pub struct ContainerActor {
    shared: Arc<Shared>,
    ns: String,
    id: String,
    dir: PathBuf,
    gen: u64,
    /// `task{namespace, container_id}`: every log line of this actor and its futures is inside it.
    span: tracing::Span,
    init: Option<Init>,
    phase: Phase,
    /// Held by lifecycle verbs (see the module doc).
    gate: Arc<Semaphore>,
    client: Option<ShimClient>,
    pump: Option<Addr<ShimActor>>,
    record: TaskRecord,
    task: TaskState,
    /// Set when the shim's TaskDeleted has been journaled.
    deleted_seen: watch::Sender<bool>,
    /// Set when the shim's process is gone.
    shim_gone: watch::Sender<bool>,
    /// Stopped on purpose (deleted, failed create, shutdown): the supervisor must not restart it.
    terminated: bool,
    /// Why it failed, for the supervisor's log and an abandoned slot.
    failure: String,
}

impl ContainerActor {
    /// A new actor for `key`, generation `gen` in the registry.
    pub(crate) fn new(shared: Arc<Shared>, key: Key, gen: u64, init: Init) -> Self {
        let (ns, id) = key;
        let dir = shared.ctx.config.task_dir(&ns, &id);
        let span = tracing::info_span!("task", namespace = %ns, container_id = %id);
        ContainerActor {
            shared,
            ns,
            id,
            dir,
            gen,
            span,
            init: Some(init),
            phase: Phase::New,
            gate: Arc::new(Semaphore::new(1)),
            client: None,
            pump: None,
            record: TaskRecord::default(),
            task: TaskState::new(StdioPaths::default()),
            deleted_seen: watch::channel(false).0,
            shim_gone: watch::channel(false).0,
            terminated: false,
            failure: String::new(),
        }
    }

    fn key(&self) -> Key {
        (self.ns.clone(), self.id.clone())
    }

    /// The task must exist (created, not deleted).
    fn require_task(&self) -> Result<(), TaskError> {
        match self.phase {
            Phase::New => Err(TaskError::TaskNotFound(self.id.clone())),
            Phase::Live | Phase::Dead => Ok(()),
        }
    }

    /// The shim client of a live task.
    fn client(&self) -> Result<ShimClient, TaskError> {
        self.require_task()?;
        if self.phase == Phase::Dead {
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
        self.require_task()?;
        self.task
            .process(exec_id)
            .ok_or_else(|| TaskError::ExecNotFound {
                id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    fn status(&self, exec_id: &str) -> Result<ProcStatus, TaskError> {
        self.process(exec_id).map(|p| p.status)
    }

    /// The one shape of every verb: `check` runs on the actor (state checks, building the shim request) and
    /// returns the work; the work runs off the actor thread (inside the actor's span); `apply` writes its
    /// result into the state. A `gated` verb holds the gate from `check` to `apply`. Failpoint:
    /// `container_actor.<verb>`, hit before `check`.
    fn verb<W, T, F>(
        &mut self,
        verb: &'static str,
        gated: bool,
        check: impl FnOnce(&mut Self) -> Result<F, TaskError> + 'static,
        apply: impl FnOnce(&mut Self, &mut Context<Self>, W) -> Result<T, TaskError> + 'static,
    ) -> Reply<T>
    where
        F: Future<Output = Result<W, TaskError>> + 'static,
        W: 'static,
        T: 'static,
    {
        let gate = gated.then(|| self.gate.clone());
        let acquire = async move {
            match gate {
                Some(g) => g.acquire_owned().await.ok(),
                None => None,
            }
        };
        Box::pin(acquire.into_actor(self).then(move |permit, act, ctx| {
            let work = act.guard(ctx, verb, |act, _| {
                crate::failpoint::hit(&format!("container_actor.{verb}"));
                check(act)
            });
            let fut: Boxed<T> = match work {
                Err(e) => Box::pin(actix::fut::ready(Err(e))),
                Ok(work) => {
                    let work = guarded(work.instrument(act.span.clone()));
                    Box::pin(work.into_actor(act).map(move |res, act, ctx| {
                        let _permit = permit;
                        let value = match res {
                            Err(TaskError::Panicked(p)) => return Err(act.fail(ctx, verb, p)),
                            other => other?,
                        };
                        act.guard(ctx, verb, |act, ctx| apply(act, ctx, value))
                    }))
                }
            };
            fut
        }))
    }

    /// A verb that is only a state check and a shim call whose answer needs no bookkeeping.
    fn shim_call<W, T, F>(
        &mut self,
        verb: &'static str,
        gated: bool,
        check: impl FnOnce(&mut Self) -> Result<F, TaskError> + 'static,
        answer: impl FnOnce(W) -> T + 'static,
    ) -> Reply<T>
    where
        F: Future<Output = Result<W, TaskError>> + 'static,
        W: 'static,
        T: 'static,
    {
        self.verb(verb, gated, check, move |_, _, w| Ok(answer(w)))
    }

    fn start_pump(&mut self, ctx: &mut Context<Self>) {
        if let Some(client) = self.client.clone() {
            let pump = ShimActor::new(
                Pump {
                    client,
                    events: self.shared.ctx.events.clone(),
                    namespace: self.ns.clone(),
                    id: self.id.clone(),
                    bundle: self.dir.clone(),
                    container: ctx.address(),
                },
                self.span.clone(),
            );
            self.pump = Some(pump.start());
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

    /// Forget this task in the registry before the client hears the outcome (the id is free at once), then
    /// stop for good. For Delete and a failed create.
    fn release(&self) -> impl Future<Output = ()> + 'static {
        let shared = self.shared.clone();
        let (key, gen) = (self.key(), self.gen);
        async move {
            if let Some(s) = shared.supervisor() {
                let _ = s.send(Release { key, gen }).await;
            }
        }
    }

    fn terminate(&mut self, ctx: &mut Context<Self>) {
        self.terminated = true;
        ctx.stop();
    }
}

impl Guarded for ContainerActor {
    /// Stop for a restart after a caught panic.
    fn fail(&mut self, ctx: &mut Context<Self>, what: &str, panic: String) -> TaskError {
        let _e = self.span.enter();
        tracing::error!(%what, %panic, "container actor panicked; stopping it for a restart");
        self.failure = format!("{what}: {panic}");
        ctx.stop();
        TaskError::ActorFailed(format!("task {:?}: {what} panicked: {panic}", self.id))
    }
}

impl Actor for ContainerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(Init::Rebuild) = self.init.take() {
            self.rebuild(ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(p) = self.pump.take() {
            p.do_send(StopPump);
        }
        if let Some(s) = self.shared.supervisor() {
            s.do_send(ChildStopped {
                key: self.key(),
                gen: self.gen,
                abnormal: !self.terminated,
                reason: std::mem::take(&mut self.failure),
            });
        }
    }
}

impl Handler<messages::Terminate> for ContainerActor {
    type Result = ();

    fn handle(&mut self, _: messages::Terminate, ctx: &mut Self::Context) {
        self.terminate(ctx);
    }
}
