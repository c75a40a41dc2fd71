//! AttachmentActor: one per attachment (owner, network). It runs that attachment's ADD, DEL and CHECK one at
//! a time (each handler holds the actor until its plugins are done: `AtomicResponse`), on blocking threads
//! through the shared `berth_net::Cni`, and keeps what the last of them said of it.
//!
//! It holds nothing that is not also in berth-net's cache (and, once recorded, the store), so a failed actor
//! loses nothing: a caught panic stops it and the supervisor starts a fresh one for the next operation. It is
//! only ever reached through the NetworkSupervisor, which makes sure an attachment has one actor at a time.
//! It must never run a plugin on the actor thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use berth_net::{AttachResult, Attachment, Network};

use super::error::NetError;
use super::handle::Shared;
use super::supervisor::{AttachmentStopped, NetworkSupervisor};

/// (owner key, network name).
pub(crate) type Key = (String, String);

/// ADD the attachment; replies the chain's result and how long berth-net took (plugins included).
#[derive(Message)]
#[rtype(result = "Result<(AttachResult, Duration), NetError>")]
pub(crate) struct Attach {
    pub key: Key,
    pub network: Network,
    pub attachment: Attachment,
}

/// DEL the attachment (idempotent).
#[derive(Message)]
#[rtype(result = "Result<(), NetError>")]
pub(crate) struct Detach {
    pub key: Key,
    /// The config as ADDed (from the cache or the store record).
    pub network: Network,
    pub attachment: Attachment,
}

/// CHECK the attachment.
#[derive(Message)]
#[rtype(result = "Result<(), NetError>")]
pub(crate) struct Check {
    pub key: Key,
    pub network: Network,
    pub attachment: Attachment,
}

/// Stop once the mailbox is drained (the supervisor dropped it from the registry).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Stop;

/// What the actor last knew of its attachment.
enum State {
    /// Not known yet (a fresh actor for a recorded attachment).
    Unknown,
    /// ADDed.
    Attached,
    /// DELeted (or never made).
    Detached,
}

/// The actor of one attachment.
pub(crate) struct AttachmentActor {
    shared: Arc<Shared>,
    key: Key,
    gen: u64,
    supervisor: Addr<NetworkSupervisor>,
    state: State,
    span: tracing::Span,
    failed: bool,
}

impl AttachmentActor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        key: Key,
        gen: u64,
        supervisor: Addr<NetworkSupervisor>,
        adopted: Option<AttachResult>,
    ) -> AttachmentActor {
        let span = tracing::info_span!("attachment", owner = %key.0, network = %key.1);
        AttachmentActor {
            shared,
            key,
            gen,
            supervisor,
            state: if adopted.is_some() {
                State::Attached
            } else {
                State::Unknown
            },
            span,
            failed: false,
        }
    }

    /// Run `f` (berth-net, blocking) off the actor thread; a panic there stops this actor for a fresh one.
    fn run<T: Send + 'static>(
        &mut self,
        verb: &'static str,
        f: impl FnOnce(&berth_net::Cni) -> Result<T, NetError> + Send + 'static,
        apply: impl FnOnce(&mut Self, &Result<T, NetError>) + 'static,
    ) -> AtomicResponse<Self, Result<T, NetError>> {
        let cni = self.shared.cni.clone();
        let span = self.span.clone();
        let point = format!("attachment_actor.{verb}");
        // The failpoint fires on the blocking thread: a `panic` action is then caught like a plugin-side panic.
        let work = tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            crate::failpoint::hit(&point);
            let res = f(&cni);
            crate::failpoint::hit(&format!("{point}.after")); // the plugins ran; berthd has not recorded it
            res
        });
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |joined, act, ctx| match joined {
                Ok(res) => {
                    apply(act, &res);
                    res
                }
                Err(e) => {
                    let why = if e.is_panic() {
                        crate::supervision::panic_message(&*e.into_panic())
                    } else {
                        e.to_string()
                    };
                    let _e = act.span.enter();
                    tracing::error!(%verb, %why, "attachment actor failed; stopping it");
                    act.failed = true;
                    ctx.stop();
                    Err(NetError::ActorFailed(format!(
                        "{} on network {}: {verb} failed: {why}",
                        act.key.0, act.key.1
                    )))
                }
            },
        )))
    }
}

impl Actor for AttachmentActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.supervisor.do_send(AttachmentStopped {
            key: self.key.clone(),
            gen: self.gen,
            failed: self.failed,
        });
    }
}

impl Handler<Attach> for AttachmentActor {
    type Result = AtomicResponse<Self, Result<(AttachResult, Duration), NetError>>;

    fn handle(&mut self, m: Attach, _: &mut Self::Context) -> Self::Result {
        self.run(
            "attach",
            move |cni| {
                let t0 = Instant::now();
                let r = cni.attach(&m.network, &m.attachment)?;
                Ok((r, t0.elapsed()))
            },
            |act, res| {
                act.state = match res {
                    Ok(_) => State::Attached,
                    Err(_) => State::Detached,
                };
            },
        )
    }
}

impl Handler<Detach> for AttachmentActor {
    type Result = AtomicResponse<Self, Result<(), NetError>>;

    fn handle(&mut self, m: Detach, _: &mut Self::Context) -> Self::Result {
        self.run(
            "detach",
            move |cni| Ok(cni.detach(&m.network, &m.attachment)?),
            |act, res| {
                if res.is_ok() {
                    act.state = State::Detached;
                }
            },
        )
    }
}

impl Handler<Check> for AttachmentActor {
    type Result = AtomicResponse<Self, Result<(), NetError>>;

    fn handle(&mut self, m: Check, _: &mut Self::Context) -> Self::Result {
        let known = matches!(self.state, State::Attached | State::Unknown);
        self.run(
            "check",
            move |cni| {
                if !known {
                    return Err(NetError::Cni(berth_net::Error::NotAttached {
                        network: m.network.name.clone(),
                        container_id: m.attachment.container_id.clone(),
                        ifname: m.attachment.ifname.clone(),
                    }));
                }
                Ok(cni.check(&m.network, &m.attachment)?)
            },
            |_, _| {},
        )
    }
}

impl Handler<Stop> for AttachmentActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
