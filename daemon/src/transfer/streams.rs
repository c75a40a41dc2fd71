//! containerd's `Streaming` service and the registry of open streams a Transfer uses.
//!
//! A client opens `Streaming.Stream` (bidirectional, `Any` both ways), sends `StreamInit{id}` first, and waits
//! for an acknowledgement (an `Any` of `google.protobuf.Empty`) before naming the id in a Transfer request
//! (progress stream, auth stream, import or export bytes). Streams are registered per namespace under their id
//! (a second registration of an id is AlreadyExists, as containerd); a Transfer takes a stream out of the
//! registry ([`Streams::take`]) and owns it from then on. Closing a [`StreamHandle`] ends the RPC with OK, which
//! the client sees as the end of the stream; a client that goes away before its stream is used is forgotten.
//!
//! This module must never interpret the messages a stream carries: that is the Transfer's business.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use berth_proto::containerd::streaming::streaming_server::Streaming;
use containerd_client::services::v1::StreamInit;
use futures::Stream;
use prost::Message;
use prost_types::Any;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming as Inbound};

use crate::namespace::namespace_opt;

/// Messages queued towards one client before a sender waits (progress is small and frequent).
const OUT_QUEUE: usize = 256;

/// How often an untaken stream is checked for a client that went away.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The type URL containerd acknowledges a StreamInit with.
const EMPTY_TYPE_URL: &str = "google.protobuf.Empty";

/// Whether `any` carries the proto message `full_name` (containerd sends bare names; accept the
/// `type.googleapis.com/` form too).
pub fn is_type(any: &Any, full_name: &str) -> bool {
    any.type_url == full_name
        || any
            .type_url
            .rsplit_once('/')
            .is_some_and(|(_, n)| n == full_name)
}

/// Decode `any` as `T`, checking its type URL; InvalidArgument naming what arrived otherwise.
pub fn decode_any<T: Message + prost::Name + Default>(any: &Any) -> Result<T, Status> {
    if !is_type(any, &T::full_name()) {
        return Err(Status::invalid_argument(format!(
            "expected {}, got {:?}",
            T::full_name(),
            any.type_url
        )));
    }
    T::decode(any.value.as_slice())
        .map_err(|e| Status::invalid_argument(format!("cannot decode {}: {e}", T::full_name())))
}

type Key = (String, String);

struct Registered {
    out: mpsc::Sender<Result<Any, Status>>,
    inbound: Inbound<Any>,
}

/// The open streams, by (namespace, id). Cheap to clone.
#[derive(Clone, Default)]
pub struct Streams {
    inner: Arc<Mutex<HashMap<Key, Registered>>>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Streams").field("open", &n).finish()
    }
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Registered>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, key: Key, reg: Registered) -> Result<(), Status> {
        let mut map = self.lock();
        if map.contains_key(&key) {
            return Err(Status::already_exists(format!(
                "stream {:?} already exists in namespace {:?}",
                key.1, key.0
            )));
        }
        map.insert(key, reg);
        Ok(())
    }

    /// Take the stream `id` of namespace `ns` for a transfer (NotFound when no such stream is open).
    pub fn take(&self, ns: &str, id: &str) -> Result<StreamHandle, Status> {
        let key = (ns.to_string(), id.to_string());
        let reg = self.lock().remove(&key).ok_or_else(|| {
            Status::not_found(format!(
                "stream {id:?} not found in namespace {ns:?} (open it with Streaming.Stream first)"
            ))
        })?;
        Ok(StreamHandle {
            id: id.to_string(),
            out: reg.out,
            inbound: reg.inbound,
        })
    }

    /// How many streams wait to be used (for tests and debugging).
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    /// Forget a registered stream whose client went away; true while it is still registered and in use.
    fn forget_if_closed(&self, key: &Key) -> bool {
        let mut map = self.lock();
        match map.get(key) {
            Some(r) if r.out.is_closed() => {
                map.remove(key);
                false
            }
            Some(_) => true,
            None => false,
        }
    }
}

/// A stream taken by a transfer: send to the client, receive from it, close it.
#[derive(Debug)]
pub struct StreamHandle {
    id: String,
    out: mpsc::Sender<Result<Any, Status>>,
    inbound: Inbound<Any>,
}

impl StreamHandle {
    /// The stream's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Send one message; Unavailable when the client has gone.
    pub async fn send(&self, any: Any) -> Result<(), Status> {
        self.out
            .send(Ok(any))
            .await
            .map_err(|_| Status::unavailable(format!("stream {:?}: the client went away", self.id)))
    }

    /// The next message from the client; `None` when it closed its side.
    pub async fn recv(&mut self) -> Result<Option<Any>, Status> {
        self.inbound.message().await
    }

    /// A sender for this stream's outgoing side (for a task that forwards progress).
    pub fn sender(&self) -> mpsc::Sender<Result<Any, Status>> {
        self.out.clone()
    }

    /// End the stream (the client's receive side ends with EOF once queued messages are delivered).
    pub fn close(self) {
        drop(self);
    }
}

/// The Streaming service.
#[derive(Debug, Clone)]
pub struct StreamingService {
    streams: Streams,
}

impl StreamingService {
    /// Over the shared registry.
    pub fn new(streams: Streams) -> Self {
        StreamingService { streams }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Streaming for StreamingService {
    type StreamStream = BoxStream<Any>;

    async fn stream(
        &self,
        req: Request<Inbound<Any>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let ns = namespace_opt(req.metadata())?.unwrap_or_default();
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before its StreamInit"))?;
        let init: StreamInit = decode_any(&first)?;
        if init.id.is_empty() {
            return Err(Status::invalid_argument("StreamInit without an id"));
        }
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let key = (ns, init.id);
        self.streams.register(
            key.clone(),
            Registered {
                out: tx.clone(),
                inbound,
            },
        )?;
        // Acknowledge only once registered: the client names the id in a Transfer right after.
        tx.send(Ok(Any {
            type_url: EMPTY_TYPE_URL.to_string(),
            value: Vec::new(),
        }))
        .await
        .map_err(|_| Status::unavailable("the client went away"))?;
        drop(tx);
        // A stream nobody takes is forgotten once its client goes (the watcher holds no sender, so a taken
        // stream still ends when its handle is closed).
        let streams = self.streams.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                if !streams.forget_if_closed(&key) {
                    break;
                }
            }
        });
        tracing::debug!("stream registered");
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_bare_and_prefixed() {
        let a = Any {
            type_url: "containerd.services.streaming.v1.StreamInit".into(),
            value: StreamInit { id: "x".into() }.encode_to_vec(),
        };
        assert!(is_type(&a, "containerd.services.streaming.v1.StreamInit"));
        let init: StreamInit = decode_any(&a).expect("decode");
        assert_eq!(init.id, "x");
        let b = Any {
            type_url: "type.googleapis.com/containerd.services.streaming.v1.StreamInit".into(),
            value: Vec::new(),
        };
        assert!(is_type(&b, "containerd.services.streaming.v1.StreamInit"));
        assert!(!is_type(&b, "containerd.types.transfer.Progress"));
    }
}
