//! NetworkSupervisor: the network layer's supervisor in the tree's "networks" slot, and the only writer of the
//! attachment registry (owner, network) → AttachmentActor.
//!
//! Every operation on an attachment comes here and is forwarded to that attachment's actor, which is started
//! on demand (for a recorded attachment: with its result, "adopted") and stopped once the attachment is
//! detached and no operation on it is pending. Routing and that bookkeeping happen on this actor alone, so an
//! attachment never has two actors and two operations on it never overlap. Forwarded calls run concurrently
//! (a slow plugin of one attachment does not hold up another).
//!
//! Policy for AttachmentActors: Transient, restarted on demand — a failed one (a caught panic) is dropped and
//! the next operation on the attachment gets a fresh actor, rebuilt from berth-net's cache; nothing is lost
//! because an actor holds nothing that is not on disk. The NetworkSupervisor itself is Permanent under the
//! RootSupervisor; its handlers run under `catch` and a restarted one re-adopts the recorded attachments from
//! the store. At its first start it also removes what start-up recovery found of gone owners.
//!
//! It must never run a plugin or any blocking call on its own thread.

use std::collections::HashMap;
use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use futures::StreamExt;

use super::attachment::{Attach, AttachmentActor, Check, Detach, Key, Stop};
use super::error::NetError;
use super::handle::{blocking, Networks, Shared};
use super::owner::Owner;
use crate::supervision::{catch, StartChild, SupervisedBy};

/// How many gone owners recovery tears down at once (plugins are CPU-heavy; the host has few cores).
const RECOVERY_PARALLELISM: usize = 4;

/// The factory the supervision tree calls to start (and restart) the NetworkSupervisor.
pub(super) fn factory(shared: Arc<Shared>) -> StartChild {
    Box::new(move |link| {
        NetworkSupervisor {
            shared: shared.clone(),
            link,
            actors: HashMap::new(),
        }
        .start();
    })
}

struct Slot {
    addr: Addr<AttachmentActor>,
    gen: u64,
    /// Operations forwarded and not answered yet.
    pending: usize,
    /// Whether the attachment exists as far as the last answer said.
    attached: bool,
}

/// The supervisor actor.
pub struct NetworkSupervisor {
    shared: Arc<Shared>,
    link: SupervisedBy,
    actors: HashMap<Key, Slot>,
}

/// An AttachmentActor stopped (on `Stop`, or after a failure).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AttachmentStopped {
    pub key: Key,
    pub gen: u64,
    pub failed: bool,
}

/// Recorded attachments to give actors (after a start or a restart).
#[derive(Message)]
#[rtype(result = "()")]
struct Adopt(Vec<(Key, berth_net::AttachResult)>);

impl NetworkSupervisor {
    /// Run a handler body under `catch`: a panic marks this supervisor failed and stops it for a restart.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        what: &str,
        f: impl FnOnce(&mut Self, &mut Context<Self>) -> R,
    ) -> Option<R> {
        match catch(|| f(self, ctx)) {
            Ok(r) => Some(r),
            Err(panic) => {
                tracing::error!(%what, %panic, "network supervisor panicked; stopping it for a restart");
                self.link.failed();
                ctx.stop();
                None
            }
        }
    }

    /// The actor of `key`, started if there is none.
    fn slot(
        &mut self,
        ctx: &mut Context<Self>,
        key: &Key,
        adopted: Option<berth_net::AttachResult>,
    ) -> &mut Slot {
        let shared = self.shared.clone();
        let me = ctx.address();
        self.actors
            .entry(key.clone())
            .and_modify(|s| {
                if !s.addr.connected() {
                    let gen = shared.next_gen();
                    s.addr =
                        AttachmentActor::new(shared.clone(), key.clone(), gen, me.clone(), None)
                            .start();
                    s.gen = gen;
                    s.pending = 0;
                }
            })
            .or_insert_with(|| {
                let gen = shared.next_gen();
                let attached = adopted.is_some();
                let addr =
                    AttachmentActor::new(shared.clone(), key.clone(), gen, me, adopted).start();
                Slot {
                    addr,
                    gen,
                    pending: 0,
                    attached,
                }
            })
    }

    /// Forward `msg` to the actor of `key`; `after` says whether the attachment exists after the answer (None:
    /// unchanged).
    fn forward<M, T>(
        &mut self,
        ctx: &mut Context<Self>,
        key: Key,
        msg: M,
        after: fn(&Result<T, NetError>) -> Option<bool>,
    ) -> ResponseActFuture<Self, Result<T, NetError>>
    where
        M: Message<Result = Result<T, NetError>> + Send + 'static,
        T: Send + 'static,
        AttachmentActor: Handler<M>,
        <AttachmentActor as Actor>::Context: ToEnvelope<AttachmentActor, M>,
    {
        let routed = self.guarded(ctx, "forward", |act, ctx| {
            let slot = act.slot(ctx, &key, None);
            slot.pending += 1;
            (slot.addr.clone(), slot.gen)
        });
        let Some((addr, gen)) = routed else {
            return Box::pin(actix::fut::ready(Err(NetError::ActorFailed(
                "the network supervisor failed; retry".into(),
            ))));
        };
        Box::pin(
            async move { addr.send(msg).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let res = res.unwrap_or_else(|_| {
                        Err(NetError::ActorFailed(format!(
                            "the actor of {} on network {} stopped during the call; retry",
                            key.0, key.1
                        )))
                    });
                    let attached = after(&res);
                    act.guarded(ctx, "settle", |act, _| act.settle(&key, gen, attached));
                    res
                }),
        )
    }

    /// An answer came back: stop the actor when its attachment is gone and nothing else is pending.
    fn settle(&mut self, key: &Key, gen: u64, attached: Option<bool>) {
        let Some(slot) = self.actors.get_mut(key) else {
            return;
        };
        if slot.gen != gen {
            return;
        }
        slot.pending = slot.pending.saturating_sub(1);
        if let Some(a) = attached {
            slot.attached = a;
        }
        if slot.pending == 0 && !slot.attached {
            if let Some(s) = self.actors.remove(key) {
                s.addr.do_send(Stop);
            }
        }
    }

    /// Give every recorded attachment of a live owner its actor (after a start or a restart).
    fn adopt_recorded(&mut self, ctx: &mut Context<Self>) {
        let shared = self.shared.clone();
        let read = blocking(move || {
            let records = shared.ctx.store.list_net_attachments()?;
            Ok(records
                .into_iter()
                .filter(|r| r.boot_id == shared.boot_id)
                .filter(|r| Owner::from_key(&r.owner).is_some_and(|o| o.exists(&shared.ctx.config)))
                .filter_map(|r| {
                    let result = berth_net::AttachResult::from_json(r.result).ok()?;
                    Some(((r.owner, r.network), result))
                })
                .collect::<Vec<_>>())
        });
        let me = ctx.address();
        ctx.spawn(
            async move {
                match read.await {
                    Ok(found) => me.do_send(Adopt(found)),
                    Err(e) => tracing::error!(error = %e, "cannot read the network records"),
                }
            }
            .into_actor(self),
        );
    }

    /// Remove what start-up recovery found of gone owners (first start only).
    fn remove_stale(&mut self, ctx: &mut Context<Self>) {
        let Some(stale) = self.shared.take_stale() else {
            return;
        };
        if stale.is_empty() {
            return;
        }
        let networks = Networks::new(self.shared.clone());
        let shared = self.shared.clone();
        let n = stale.len();
        tracing::info!(
            owners = n,
            "removing network leftovers of tasks that are gone"
        );
        let t0 = std::time::Instant::now();
        ctx.spawn(
            async move {
                futures::stream::iter(stale)
                    .for_each_concurrent(RECOVERY_PARALLELISM, |l| {
                        let networks = networks.clone();
                        let shared = shared.clone();
                        async move {
                            let key = l.key.clone();
                            if let Err(e) = networks.remove_leftovers(l).await {
                                tracing::error!(owner = %key, error = %e,
                                    "cannot remove network leftovers; the next berthd start retries");
                            }
                            shared.recovered(&key);
                        }
                    })
                    .await;
                tracing::info!(
                    owners = n,
                    took_ms = t0.elapsed().as_millis() as u64,
                    "network leftovers removed"
                );
            }
            .into_actor(self),
        );
    }
}

impl Actor for NetworkSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.shared.set_supervisor(ctx.address());
        self.remove_stale(ctx);
        self.adopt_recorded(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for (_, s) in self.actors.drain() {
            s.addr.do_send(Stop);
        }
        self.link.stopped();
    }
}

impl Handler<Attach> for NetworkSupervisor {
    type Result =
        ResponseActFuture<Self, Result<(berth_net::AttachResult, std::time::Duration), NetError>>;

    fn handle(&mut self, m: Attach, ctx: &mut Self::Context) -> Self::Result {
        let key = m.key.clone();
        self.forward(ctx, key, m, |r| Some(r.is_ok()))
    }
}

impl Handler<Detach> for NetworkSupervisor {
    type Result = ResponseActFuture<Self, Result<(), NetError>>;

    fn handle(&mut self, m: Detach, ctx: &mut Self::Context) -> Self::Result {
        let key = m.key.clone();
        // A failed DEL leaves the attachment (and its actor) in place.
        self.forward(ctx, key, m, |r| Some(r.is_err()))
    }
}

impl Handler<Check> for NetworkSupervisor {
    type Result = ResponseActFuture<Self, Result<(), NetError>>;

    fn handle(&mut self, m: Check, ctx: &mut Self::Context) -> Self::Result {
        let key = m.key.clone();
        self.forward(ctx, key, m, |_| None)
    }
}

impl Handler<AttachmentStopped> for NetworkSupervisor {
    type Result = ();

    fn handle(&mut self, m: AttachmentStopped, ctx: &mut Self::Context) {
        self.guarded(ctx, "attachment_stopped", |act, _| {
            if act.actors.get(&m.key).is_some_and(|s| s.gen == m.gen) {
                act.actors.remove(&m.key);
                if m.failed {
                    tracing::warn!(owner = %m.key.0, network = %m.key.1,
                        "attachment actor failed; the next operation on it starts a fresh one");
                }
            }
        });
    }
}

impl Handler<Adopt> for NetworkSupervisor {
    type Result = ();

    fn handle(&mut self, m: Adopt, ctx: &mut Self::Context) {
        self.guarded(ctx, "adopt", |act, ctx| {
            let n = m.0.len();
            for (key, result) in m.0 {
                if !act.actors.contains_key(&key) {
                    act.slot(ctx, &key, Some(result));
                }
            }
            if n > 0 {
                tracing::info!(attachments = n, "adopted recorded network attachments");
            }
        });
    }
}
