//! ShimActor: pumps one shim's acked event stream: journal (exactly once) → failpoint → ack → tell the
//! ContainerActor (an exit: tell it first, so no subscriber sees an exit the task does not know yet). Owned by the ContainerActor that started it and stopped with it; a restarted
//! ContainerActor starts a new one, which resumes after the last seq the journal recorded.
//!
//! It must never ack an event before the journal has it.

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use berth_proto::shim::{AckRequest, Event, EventsRequest};
use tracing::Instrument;

use super::ShimClient;
use crate::events::{EventBus, ShimEvent};
use crate::tasks::bundle;
use crate::tasks::container::messages::{PumpFailed, ShimEventMsg, ShimGone};
use crate::tasks::container::ContainerActor;
use crate::tasks::events::to_containerd;
use crate::tasks::task_key;

/// The pump actor.
pub struct ShimActor {
    pump: Option<Pump>,
    span: tracing::Span,
    container: Addr<ContainerActor>,
}

/// What a pump needs: the shim of `namespace/id` (bundle `bundle`) and where its events go.
pub struct Pump {
    /// The shim's client.
    pub client: ShimClient,
    /// Where events are journaled.
    pub events: EventBus,
    /// Namespace of the task.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// The task directory (holds `shim.pid`).
    pub bundle: PathBuf,
    /// Told about every journaled event and the shim's death.
    pub container: Addr<ContainerActor>,
}

impl ShimActor {
    /// A pump logging inside the task's `span`.
    pub fn new(pump: Pump, span: tracing::Span) -> Self {
        ShimActor {
            container: pump.container.clone(),
            pump: Some(pump),
            span,
        }
    }
}

/// Stop the pump (the ContainerActor is going away or shutting down).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPump;

impl Actor for ShimActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(pump) = self.pump.take() else { return };
        let run = pump.run().instrument(self.span.clone());
        // A panic in the pump must not unwind through the arbiter: report it, and the ContainerActor restarts.
        let run = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run));
        ctx.spawn(run.into_actor(self).map(|res, act, ctx| {
            if let Err(p) = res {
                let msg = crate::supervision::panic_message(&*p);
                let _e = act.span.enter();
                tracing::error!(panic = %msg, "shim event pump panicked");
                act.container.do_send(PumpFailed(msg));
            }
            ctx.stop()
        }));
    }
}

impl Handler<StopPump> for ShimActor {
    type Result = ();
    fn handle(&mut self, _: StopPump, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Pump {
    async fn run(self) {
        let key = task_key(&self.namespace, &self.id);
        let mut backoff = Duration::from_millis(20);
        loop {
            let after = match self.events.last_shim_seq(&key).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the last shim seq");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match self
                .client
                .clone()
                .events(EventsRequest { after_seq: after })
                .await
            {
                Ok(resp) => {
                    backoff = Duration::from_millis(20);
                    let mut stream = resp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(ev)) => self.handle_event(&key, ev).await,
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(%status, "shim event stream ended");
                                break;
                            }
                        }
                    }
                }
                Err(status) => tracing::debug!(%status, "opening the shim event stream"),
            }
            // The stream ended: the shim exited (after Delete) or the connection broke.
            if !bundle::read_shim_pid(&self.bundle).is_some_and(bundle::pid_alive) {
                self.container.do_send(ShimGone);
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn handle_event(&self, key: &str, ev: Event) {
        let seq = ev.seq;
        // An exit reaches the ContainerActor BEFORE subscribers see it: a client that deletes the task on its
        // `/tasks/exit` must find it stopped (as containerd does). If berthd dies before the journal has the
        // exit, the shim still holds it unacked and replays it; the journal keeps it once.
        let exited_first = matches!(ev.kind, Some(berth_proto::shim::event::Kind::Exited(_)));
        if exited_first {
            let _ = self.container.send(ShimEventMsg(ev.clone())).await;
        }
        if let Some(mapped) = ev.kind.as_ref().map(|k| to_containerd(&self.id, k)) {
            if mapped.once == Some(crate::events::Once::Delete) {
                // Tests slow the shim's TaskDeleted down here (Delete must not publish a second one).
                crate::failpoint::hit_async("shim_actor.before_journal_delete").await;
            }
            let shim_event = ShimEvent {
                source: key.to_string(),
                task: key.to_string(),
                seq,
                namespace: self.namespace.clone(),
                topic: mapped.topic,
                event: mapped.event,
                once: mapped.once,
            };
            let mut delay = Duration::from_millis(10);
            while let Err(e) = self.events.publish_from_shim(shim_event.clone()).await {
                tracing::error!(seq, error = %e, "journaling a shim event; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
        crate::failpoint::hit("shim_actor.after_journal_before_ack");
        if let Err(status) = self.client.clone().ack(AckRequest { seq }).await {
            tracing::debug!(seq, %status, "acking a shim event");
        }
        if !exited_first {
            self.container.do_send(ShimEventMsg(ev));
        }
    }
}
