//! TaskSupervisor: starts one ContainerActor per task and restarts the ones that fail.
//!
//! Policy: `RestartPolicy::Transient` (restart after a failure — a caught panic or a failed rebuild —, not after a
//! deliberate stop such as Delete), limited per task by a `RestartLimit`; past the limit the task is abandoned
//! (its requests get Unavailable) and the failure is logged loudly. Restarted actors rebuild from disk and the shim.
//! It must never hold task state itself; the registry it maintains is shared with the Tasks handle.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

use super::container::{ContainerActor, Init, Op, Request};
use super::{Entry, Key, Shared};
use crate::supervision::{RestartLimit, RestartPolicy};

/// Restarts allowed per task within [`RESTART_WINDOW`].
const MAX_RESTARTS: u32 = 5;
/// Window of the restart limit.
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The supervisor actor.
pub struct TaskSupervisor {
    shared: Arc<Shared>,
    policy: RestartPolicy,
    limits: HashMap<Key, RestartLimit>,
    next_gen: u64,
}

impl TaskSupervisor {
    /// A supervisor over the shared registry.
    pub fn new(shared: Arc<Shared>) -> Self {
        TaskSupervisor {
            shared,
            policy: RestartPolicy::Transient,
            limits: HashMap::new(),
            next_gen: 1,
        }
    }

    fn spawn(
        &mut self,
        ctx: &mut Context<Self>,
        ns: String,
        id: String,
        init: Init,
        ready: Option<watch::Sender<bool>>,
    ) -> Addr<ContainerActor> {
        let gen = self.next_gen;
        self.next_gen += 1;
        let actor = ContainerActor::new(
            self.shared.clone(),
            ctx.address(),
            ns.clone(),
            id.clone(),
            gen,
            init,
            ready,
        );
        let addr = actor.start();
        self.shared.registry.insert(
            (ns, id),
            Entry {
                addr: addr.clone(),
                gen,
            },
        );
        addr
    }
}

impl Actor for TaskSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Recovery may start many actors at once.
        ctx.set_mailbox_capacity(1024);
    }
}

/// Start the actor of a task (a new one, or one to recover).
#[derive(Message)]
#[rtype(result = "Addr<ContainerActor>")]
pub struct SpawnContainer {
    /// Namespace.
    pub ns: String,
    /// Container id.
    pub id: String,
    /// Fresh or rebuild.
    pub init: Init,
    /// Told once the actor's state is ready.
    pub ready: Option<watch::Sender<bool>>,
}

impl Handler<SpawnContainer> for TaskSupervisor {
    type Result = MessageResult<SpawnContainer>;

    fn handle(&mut self, msg: SpawnContainer, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.spawn(ctx, msg.ns, msg.id, msg.init, msg.ready))
    }
}

/// A ContainerActor stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChildStopped {
    /// Namespace.
    pub ns: String,
    /// Container id.
    pub id: String,
    /// Its generation.
    pub gen: u64,
    /// It stopped because of a failure (not Delete/Terminate).
    pub abnormal: bool,
}

impl Handler<ChildStopped> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildStopped, ctx: &mut Self::Context) {
        let key = (msg.ns.clone(), msg.id.clone());
        let current = self.shared.registry.get(&key).map(|e| e.gen);
        if current != Some(msg.gen) {
            return; // an older generation, or a deleted task
        }
        let restart = self.policy.should_restart(msg.abnormal);
        if !restart || self.shared.shutting_down.load(Ordering::SeqCst) {
            if !msg.abnormal {
                self.shared.registry.remove(&key);
            }
            return;
        }
        let limit = self
            .limits
            .entry(key.clone())
            .or_insert_with(|| RestartLimit::new(MAX_RESTARTS, RESTART_WINDOW));
        if !limit.allow() {
            tracing::error!(namespace = %msg.ns, container_id = %msg.id,
                "container actor keeps failing: restart limit reached, task abandoned until berthd restarts");
            return;
        }
        tracing::warn!(namespace = %msg.ns, container_id = %msg.id, "restarting the container actor");
        self.shared.recovery_begin();
        self.spawn(ctx, msg.ns, msg.id, Init::Rebuild, None);
    }
}

/// Stop every ContainerActor without restarting them (berthd is shutting down; shims keep running).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll;

impl Handler<StopAll> for TaskSupervisor {
    type Result = ();

    fn handle(&mut self, _: StopAll, _ctx: &mut Self::Context) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        for e in self.shared.registry.iter() {
            e.addr.do_send(Request(Op::Terminate));
        }
    }
}
