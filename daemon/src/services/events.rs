//! containerd `Events` service (Publish, Forward, Subscribe) and berth.v1 `Journal` (Subscribe from a cursor:
//! replay, then live).
//!
//! Subscribe is not restricted by the caller's namespace header (as in containerd); filters select. This module
//! must never buffer events itself: queues and cut-off live in the EventBus.

use std::pin::Pin;

use berth_proto::berth::journal_server::Journal;
use berth_proto::berth::{JournalEvent, JournalSubscribeRequest};
use berth_proto::containerd::events::events_server::Events;
use containerd_client::services::v1::{ForwardRequest, PublishRequest, SubscribeRequest};
use containerd_client::types::Envelope;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::parse_filters;
use crate::context::Context;
use crate::namespace::{namespace_from, validate_id, validate_topic};

/// The Events service.
#[derive(Debug, Clone)]
pub struct EventsService {
    ctx: Context,
}

impl EventsService {
    /// Over the shared context.
    pub fn new(ctx: Context) -> Self {
        EventsService { ctx }
    }
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;
type JournalStream = Pin<Box<dyn Stream<Item = Result<JournalEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        validate_topic(&r.topic)?;
        let event = r
            .event
            .ok_or_else(|| Status::invalid_argument("event is required"))?;
        self.ctx.events.publish(&ns, &r.topic, event).await?;
        Ok(Response::new(()))
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let env = req
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope is required"))?;
        validate_id("namespace", &env.namespace)?;
        validate_topic(&env.topic)?;
        let event = env
            .event
            .ok_or_else(|| Status::invalid_argument("event is required"))?;
        let ts = env
            .timestamp
            .filter(|t| t.seconds > 0)
            .unwrap_or_else(crate::store::now_timestamp);
        self.ctx
            .events
            .publish_at(&env.namespace, &env.topic, event, ts)
            .await?;
        Ok(Response::new(()))
    }

    type SubscribeStream = EnvelopeStream;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<EnvelopeStream>, Status> {
        let filter = parse_filters(&req.get_ref().filters)?;
        let sub = self.ctx.events.subscribe(filter)?;
        let stream = sub.map(|item| {
            item.map(|ev| Envelope {
                timestamp: ev.timestamp,
                namespace: ev.namespace.clone(),
                topic: ev.topic.clone(),
                event: ev.event.clone(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// berth.v1 Journal service.
#[derive(Debug, Clone)]
pub struct JournalService {
    ctx: Context,
}

impl JournalService {
    /// Over the shared context.
    pub fn new(ctx: Context) -> Self {
        JournalService { ctx }
    }
}

#[tonic::async_trait]
impl Journal for JournalService {
    type SubscribeStream = JournalStream;

    async fn subscribe(
        &self,
        req: Request<JournalSubscribeRequest>,
    ) -> Result<Response<JournalStream>, Status> {
        let r = req.into_inner();
        let filter = parse_filters(&r.filters)?;
        let stream = self
            .ctx
            .events
            .subscribe_from(filter, r.after_seq, r.from_oldest)
            .await?;
        Ok(Response::new(Box::pin(
            stream.map(|item| item.map(|ev| (*ev).clone())),
        )))
    }
}
