//! PullSupervisor: the "pulls" slot of the supervision tree. It owns the registry of PullActors, one per
//! (namespace, reference): a pull of a reference that has an actor joins it, any other starts one. An actor
//! that has nothing left to do says so ([`Idle`]) and is stopped here, so that no request can slip into an
//! actor that is going away. An actor that fails (a panic in its handlers or in its job) hands back the
//! requests it had ([`Failed`]); they are given to a new actor, at most [`MAX_RESTARTS`] times per
//! [`RESTART_WINDOW`] for one reference, after which their clients get an error naming the reference and the
//! last failure.
//!
//! On start (and restart) it removes the half-unpacked snapshots that pulls of an earlier berthd run left
//! (`lease::sweep_stale`). It must never run a pull itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::actor::{Group, Join, PullActor, Stop};
use super::{PullRequest, Reply, Shared};
use crate::supervision::{RestartLimit, StartChild, SupervisedBy};

/// Restarts of the actor of one reference within [`RESTART_WINDOW`].
pub const MAX_RESTARTS: u32 = 3;
/// Window of the restart limit.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// (namespace, reference).
pub(super) type Key = (String, String);

struct Slot {
    addr: Addr<PullActor>,
    gen: u64,
    /// A Stop is on its way: requests for the key wait here for its answer.
    stopping: Option<Vec<Join>>,
}

/// The supervisor.
pub struct PullSupervisor {
    shared: Arc<Shared>,
    link: SupervisedBy,
    slots: HashMap<Key, Slot>,
    limits: HashMap<Key, RestartLimit>,
    next_gen: u64,
}

/// The factory the tree starts (and restarts) the supervisor with.
pub(super) fn factory(shared: Arc<Shared>) -> StartChild {
    Box::new(move |link| {
        PullSupervisor {
            shared: shared.clone(),
            link,
            slots: HashMap::new(),
            limits: HashMap::new(),
            next_gen: 1,
        }
        .start();
    })
}

impl PullSupervisor {
    fn spawn(&mut self, sup: Addr<PullSupervisor>, key: Key, groups: Vec<Group>) {
        let gen = self.next_gen;
        self.next_gen += 1;
        let addr = PullActor::new(self.shared.clone(), key.clone(), gen, sup, groups).start();
        self.slots.insert(
            key,
            Slot {
                addr,
                gen,
                stopping: None,
            },
        );
    }

    /// Guard a handler: a panic stops the supervisor (its parent restarts it); requests in flight keep their
    /// actors.
    fn guarded(
        &mut self,
        ctx: &mut Context<Self>,
        what: &str,
        f: impl FnOnce(&mut Self, Addr<PullSupervisor>),
    ) {
        let me = ctx.address();
        if let Err(panic) = crate::supervision::catch(|| f(self, me)) {
            tracing::error!(%what, %panic, "pull supervisor panicked; stopping it for a restart");
            self.link.failed();
            ctx.stop();
        }
    }
}

impl Actor for PullSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.set_supervisor(ctx.address());
        let shared = self.shared.clone();
        // Leftovers of a crash: half-unpacked snapshots of pulls of an earlier run.
        self.shared.rt.spawn(async move {
            if let Err(e) = super::lease::sweep_stale(&shared).await {
                tracing::warn!(error = %e, "cleaning up after interrupted pulls");
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.stopped();
    }
}

/// A client's pull.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Submit {
    pub req: PullRequest,
    pub reply: Reply,
}

impl Handler<Submit> for PullSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Submit, ctx: &mut Self::Context) {
        self.guarded(ctx, "submit", |act, me| {
            crate::failpoint::hit("pull_supervisor.submit");
            let key = (msg.req.ns.clone(), msg.req.plan.reference.clone());
            let join = Join::new(msg.req, msg.reply);
            match act.slots.get_mut(&key) {
                Some(Slot {
                    stopping: Some(waiting),
                    ..
                }) => waiting.push(join),
                Some(slot) if slot.addr.connected() => slot.addr.do_send(join),
                _ => {
                    act.limits.remove(&key);
                    act.spawn(me, key, vec![join.into_group()]);
                }
            }
        });
    }
}

/// An actor has nothing left to do (the supervisor answers with a [`Stop`]).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Idle {
    pub key: Key,
    pub gen: u64,
}

impl Handler<Idle> for PullSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Idle, ctx: &mut Self::Context) {
        let Some(slot) = self.slots.get_mut(&msg.key) else {
            return;
        };
        if slot.gen != msg.gen || slot.stopping.is_some() {
            return;
        }
        // Requests for the key wait until the actor says whether it stopped (a Join that reached it before
        // the Stop keeps it running).
        slot.stopping = Some(Vec::new());
        let stop = slot.addr.send(Stop { gen: msg.gen });
        let key = msg.key;
        ctx.spawn(stop.into_actor(self).map(move |res, act, ctx| {
            act.guarded(ctx, "stopped", |act, me| {
                let Some(slot) = act.slots.get_mut(&key) else {
                    return;
                };
                let waiting = slot.stopping.take().unwrap_or_default();
                let still_running = matches!(res, Ok(false)) && slot.addr.connected();
                if still_running {
                    for j in waiting {
                        slot.addr.do_send(j);
                    }
                    return;
                }
                act.slots.remove(&key);
                if !waiting.is_empty() {
                    let groups = waiting.into_iter().map(Join::into_group).collect();
                    act.spawn(me, key.clone(), groups);
                }
            });
        }));
    }
}

/// An actor failed; these are the requests it had.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Failed {
    pub key: Key,
    pub gen: u64,
    pub groups: Vec<Group>,
    pub reason: String,
}

/// An actor stopped after a Stop that came too late (it had work again): its requests go to a new actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Orphans {
    pub key: Key,
    pub groups: Vec<Group>,
}

impl Handler<Orphans> for PullSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Orphans, ctx: &mut Self::Context) {
        self.guarded(ctx, "orphans", |act, me| {
            if msg.groups.is_empty() {
                return;
            }
            match act.slots.get(&msg.key) {
                Some(slot) if slot.addr.connected() => {
                    for g in msg.groups {
                        for j in g.into_joins() {
                            slot.addr.do_send(j);
                        }
                    }
                }
                _ => act.spawn(me, msg.key, msg.groups),
            }
        });
    }
}

impl Handler<Failed> for PullSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Failed, ctx: &mut Self::Context) {
        self.guarded(ctx, "failed", |act, me| {
            if act.slots.get(&msg.key).is_some_and(|s| s.gen == msg.gen) {
                act.slots.remove(&msg.key);
            }
            if msg.groups.is_empty() {
                return;
            }
            let limit = act
                .limits
                .entry(msg.key.clone())
                .or_insert_with(|| RestartLimit::new(MAX_RESTARTS, RESTART_WINDOW));
            if limit.allow() {
                tracing::warn!(reference = %msg.key.1, reason = %msg.reason, "restarting a failed pull");
                match act.slots.get(&msg.key) {
                    Some(slot) if slot.addr.connected() => {
                        for g in msg.groups {
                            for j in g.into_joins() {
                                slot.addr.do_send(j);
                            }
                        }
                    }
                    _ => act.spawn(me, msg.key, msg.groups),
                }
            } else {
                tracing::error!(reference = %msg.key.1, reason = %msg.reason, "a pull kept failing; giving up");
                let err = tonic::Status::internal(format!(
                    "pull of {} failed {} times within {:?} (last failure: {}); giving up",
                    msg.key.1,
                    MAX_RESTARTS + 1,
                    RESTART_WINDOW,
                    msg.reason
                ));
                for g in msg.groups {
                    g.fail(&err);
                }
                act.limits.remove(&msg.key);
            }
        });
    }
}
