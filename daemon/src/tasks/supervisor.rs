//! TaskSupervisor: the one writer of the task registry. It starts a ContainerActor per task (for Tasks.Create
//! and for every task directory found at start-up), restarts the ones that fail, and keeps Containers.Delete
//! and Tasks.Create of one container id apart.
//!
//! Policy: `RestartPolicy::Transient` — a ContainerActor that stopped after a failure (a caught panic, a failed
//! rebuild) is started again in rebuild mode, at most [`MAX_RESTARTS`] times per [`RESTART_WINDOW`]; past that
//! its slot becomes `Abandoned` and every call gets an error naming the task and the last failure. An actor
//! that stopped on purpose (deleted, failed create, shutdown) is not restarted. Its own handlers run under
//! `catch`: a panic stops it, its RootSupervisor starts a new one, and the new one reconciles the registry
//! with the task directories on disk (what is on disk is the truth; the registry only points at actors).
//! It must never hold task state itself.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use dashmap::DashMap;

use super::container::{ContainerActor, Init};
use super::error::TaskError;
use super::{Guarded, Key, Shared};
use crate::supervision::{RestartLimit, RestartPolicy, StartChild, SupervisedBy};

/// Restarts allowed per task within [`RESTART_WINDOW`].
pub const MAX_RESTARTS: u32 = 5;
/// Window of the restart limit.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// What the registry holds for a container id.
#[derive(Clone)]
pub(crate) enum Slot {
    /// A running actor of generation `gen`.
    Live {
        /// Its address.
        addr: Addr<ContainerActor>,
        /// Its generation (unique across restarts).
        gen: u64,
    },
    /// Its actor failed more often than the restart limit allows; calls get `reason`.
    Abandoned {
        /// What failed last.
        reason: String,
    },
    /// Containers.Delete is removing the container record: no task may be created meanwhile.
    ContainerDeleting,
}

/// The registry of tasks: read by anyone, written only in this module (by the TaskSupervisor).
#[derive(Default)]
pub(crate) struct Registry {
    map: DashMap<Key, Slot>,
}

impl Registry {
    /// The slot of a container id.
    pub fn get(&self, key: &Key) -> Option<Slot> {
        self.map.get(key).map(|s| s.clone())
    }

    /// Every slot of a namespace, by container id.
    pub fn in_namespace(&self, ns: &str) -> Vec<(String, Slot)> {
        self.map
            .iter()
            .filter(|e| e.key().0 == ns)
            .map(|e| (e.key().1.clone(), e.value().clone()))
            .collect()
    }

    /// Whether every actor has stopped (shutdown).
    pub fn all_stopped(&self) -> bool {
        self.map
            .iter()
            .all(|e| !matches!(e.value(), Slot::Live { addr, .. } if addr.connected()))
    }

    fn live(&self) -> Vec<(Key, Addr<ContainerActor>, u64)> {
        self.map
            .iter()
            .filter_map(|e| match e.value() {
                Slot::Live { addr, gen } => Some((e.key().clone(), addr.clone(), *gen)),
                _ => None,
            })
            .collect()
    }

    fn gen_of(&self, key: &Key) -> Option<u64> {
        match self.map.get(key).as_deref() {
            Some(Slot::Live { gen, .. }) => Some(*gen),
            _ => None,
        }
    }
}

/// The factory the supervision tree calls to start (and restart) the TaskSupervisor.
pub(super) fn factory(shared: Arc<Shared>) -> StartChild {
    Box::new(move |link| {
        TaskSupervisor {
            shared: shared.clone(),
            link,
            limits: HashMap::new(),
        }
        .start();
    })
}

/// The supervisor actor.
pub struct TaskSupervisor {
    shared: Arc<Shared>,
    link: SupervisedBy,
    limits: HashMap<Key, RestartLimit>,
}

impl Guarded for TaskSupervisor {
    fn fail(&mut self, ctx: &mut Context<Self>, what: &str, panic: String) -> TaskError {
        tracing::error!(%what, %panic, "task supervisor panicked; stopping it for a restart");
        self.link.failed();
        ctx.stop();
        TaskError::ActorFailed(format!("the task supervisor failed ({panic}); retry"))
    }
}

impl TaskSupervisor {
    /// [`Guarded::guard`] with the handler's failpoint, `task_supervisor.<what>`.
    fn handle_guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        what: &str,
        f: impl FnOnce(&mut Self, &mut Context<Self>) -> Result<R, TaskError>,
    ) -> Result<R, TaskError> {
        let point = format!("task_supervisor.{what}");
        self.guard(ctx, what, |act, ctx| {
            crate::failpoint::hit(&point);
            f(act, ctx)
        })
    }

    fn spawn(&mut self, key: Key, init: Init) -> Addr<ContainerActor> {
        let gen = self.shared.next_gen();
        let addr = ContainerActor::new(self.shared.clone(), key.clone(), gen, init).start();
        self.shared.registry.map.insert(
            key,
            Slot::Live {
                addr: addr.clone(),
                gen,
            },
        );
        addr
    }

    /// Make the registry agree with the task directories: an actor for every task directory, none for a task
    /// without one. Runs when a TaskSupervisor starts: at berthd's start that is the recovery of every task;
    /// after a restart it picks up actors that stopped while no supervisor was listening.
    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let root = self.shared.ctx.config.state.join("tasks");
        let scan = async move {
            tokio::task::spawn_blocking(move || {
                crate::failpoint::hit("task_supervisor.scan");
                super::recovery::scan(&root)
            })
            .await
            .unwrap_or_default()
        };
        // `wait`: no message is handled before every task on disk has its slot, so a call right after
        // berthd's start finds a (possibly still rebuilding) actor instead of NotFound.
        ctx.wait(scan.into_actor(self).map(|found, act, ctx| {
            let _ = act.handle_guarded(ctx, "reconcile", |act, _| {
                act.apply_scan(found);
                Ok(())
            });
        }));
    }

    fn apply_scan(&mut self, found: Vec<Key>) {
        let on_disk: std::collections::HashSet<Key> = found.iter().cloned().collect();
        for (key, addr, _) in self.shared.registry.live() {
            if !addr.connected() && !on_disk.contains(&key) {
                self.shared.registry.map.remove(&key);
            }
        }
        let mut rebuilding = Vec::new();
        for key in found {
            let running = matches!(
                self.shared.registry.get(&key),
                Some(Slot::Live { addr, .. }) if addr.connected()
            );
            if !running {
                rebuilding.push(key);
            }
        }
        if rebuilding.is_empty() {
            return;
        }
        tracing::info!(tasks = rebuilding.len(), "recovering tasks");
        self.shared.recovery.begin(rebuilding.len());
        for key in rebuilding {
            self.spawn(key, Init::Rebuild);
        }
    }
}

impl Actor for TaskSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Recovery may start many actors at once.
        ctx.set_mailbox_capacity(1024);
        self.shared.set_supervisor(ctx.address());
        self.reconcile(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.stopped();
    }
}

/// Answered once the supervisor has registered every task found on disk (see `reconcile`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ready;

impl Handler<Ready> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, _: Ready, _: &mut Self::Context) {}
}

/// Start the actor of a new task (Tasks.Create); it then gets [`CreateTask`](super::container::messages::CreateTask).
#[derive(Message)]
#[rtype(result = "Result<Addr<ContainerActor>, TaskError>")]
pub struct SpawnTask {
    /// (namespace, container id).
    pub key: Key,
}

impl Handler<SpawnTask> for TaskSupervisor {
    type Result = Result<Addr<ContainerActor>, TaskError>;

    fn handle(&mut self, msg: SpawnTask, ctx: &mut Self::Context) -> Self::Result {
        self.handle_guarded(ctx, "spawn", |act, _| {
            match act.shared.registry.get(&msg.key) {
                Some(Slot::Live { .. } | Slot::Abandoned { .. }) => {
                    return Err(TaskError::TaskExists(msg.key.1))
                }
                Some(Slot::ContainerDeleting) => {
                    return Err(TaskError::ContainerNotFound(format!(
                        "{}: being deleted",
                        msg.key.1
                    )))
                }
                None => {}
            }
            act.limits.remove(&msg.key);
            Ok(act.spawn(msg.key, Init::New))
        })
    }
}

/// A ContainerActor is done with its task (deleted, or its create failed): forget it now, before the client
/// hears back, so the id is free at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    /// (namespace, container id).
    pub key: Key,
    /// The releasing actor's generation (an older actor cannot release a newer one's slot).
    pub gen: u64,
}

impl Handler<Release> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Self::Context) {
        let _ = self.handle_guarded(ctx, "release", |act, _| {
            if act.shared.registry.gen_of(&msg.key) == Some(msg.gen) {
                act.shared.registry.map.remove(&msg.key);
                act.limits.remove(&msg.key);
            }
            Ok(())
        });
    }
}

/// A ContainerActor stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChildStopped {
    /// (namespace, container id).
    pub key: Key,
    /// Its generation.
    pub gen: u64,
    /// It stopped because of a failure (not Delete, a failed create or shutdown).
    pub abnormal: bool,
    /// What failed, for the log and for an abandoned slot.
    pub reason: String,
}

impl Handler<ChildStopped> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildStopped, ctx: &mut Self::Context) {
        let _ = self.handle_guarded(ctx, "child_stopped", |act, _| {
            act.child_stopped(msg);
            Ok(())
        });
    }
}

impl TaskSupervisor {
    fn child_stopped(&mut self, msg: ChildStopped) {
        let ChildStopped {
            key,
            gen,
            abnormal,
            reason,
        } = msg;
        if self.shared.registry.gen_of(&key) != Some(gen) {
            return; // an older generation, or already released
        }
        let restart = RestartPolicy::Transient.should_restart(abnormal)
            && !self.shared.shutting_down.load(Ordering::SeqCst);
        if !restart {
            if !abnormal {
                self.shared.registry.map.remove(&key);
            }
            return;
        }
        let limit = self
            .limits
            .entry(key.clone())
            .or_insert_with(|| RestartLimit::new(MAX_RESTARTS, RESTART_WINDOW));
        if !limit.allow() {
            tracing::error!(namespace = %key.0, container_id = %key.1, %reason,
                "container actor keeps failing: restart limit reached, task abandoned until berthd restarts");
            let reason = format!(
                "its actor failed more than {MAX_RESTARTS} times in {}s (last: {reason}); berthd gave up on it \
                 until it restarts",
                RESTART_WINDOW.as_secs()
            );
            self.shared
                .registry
                .map
                .insert(key, Slot::Abandoned { reason });
            return;
        }
        tracing::warn!(namespace = %key.0, container_id = %key.1, %reason, "restarting the container actor");
        self.shared.recovery.begin(1);
        self.spawn(key, Init::Rebuild);
    }
}

/// Containers.Delete wants to remove a container record: refuse when it has a task, else keep Tasks.Create
/// away until [`ReleaseContainerDelete`].
#[derive(Message)]
#[rtype(result = "Result<(), TaskError>")]
pub struct HoldContainerDelete {
    /// (namespace, container id).
    pub key: Key,
}

impl Handler<HoldContainerDelete> for TaskSupervisor {
    type Result = Result<(), TaskError>;

    fn handle(&mut self, msg: HoldContainerDelete, ctx: &mut Self::Context) -> Self::Result {
        self.handle_guarded(ctx, "hold_container_delete", |act, _| {
            match act.shared.registry.get(&msg.key) {
                None => {
                    act.shared
                        .registry
                        .map
                        .insert(msg.key, Slot::ContainerDeleting);
                    Ok(())
                }
                Some(Slot::ContainerDeleting) => Err(TaskError::FailedPrecondition(format!(
                    "container {:?} is already being deleted",
                    msg.key.1
                ))),
                Some(_) => Err(TaskError::FailedPrecondition(format!(
                    "cannot delete container {:?}: it has a task (delete the task first)",
                    msg.key.1
                ))),
            }
        })
    }
}

/// The container record's deletion is over (done or failed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReleaseContainerDelete {
    /// (namespace, container id).
    pub key: Key,
}

impl Handler<ReleaseContainerDelete> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ReleaseContainerDelete, ctx: &mut Self::Context) {
        let _ = self.handle_guarded(ctx, "release_container_delete", |act, _| {
            act.shared
                .registry
                .map
                .remove_if(&msg.key, |_, s| matches!(s, Slot::ContainerDeleting));
            Ok(())
        });
    }
}

/// Stop every ContainerActor without restarting them (berthd is shutting down; shims keep running).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll;

impl Handler<StopAll> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, _: StopAll, ctx: &mut Self::Context) {
        let _ = self.handle_guarded(ctx, "stop_all", |act, _| {
            act.shared.shutting_down.store(true, Ordering::SeqCst);
            for (_, addr, _) in act.shared.registry.live() {
                addr.do_send(super::container::messages::Terminate);
            }
            Ok(())
        });
    }
}
