//! containerd `Content` service: Info, Update, List, Delete, Read, Status, ListStatuses, Write (the resumable,
//! digest-verified bidirectional stream ctr and containerd's clients pull through), Abort.
//!
//! Blobs are shared on disk and visible per namespace through records (`store/content.rs`); ingests are per
//! namespace (`<ns>/<ref>` in the backend). A blob another namespace already has is not written again: the
//! writer reports it complete and COMMIT just records it here, as containerd's shared content policy does.
//! Work on the bytes runs on blocking threads. This module must never record a blob whose digest and size
//! were not verified.

use std::collections::HashMap;
use std::pin::Pin;

use berth_image::{Digest, IngestWriter};
use berth_proto::containerd::content::content_server::Content;
use containerd_client::events::ContentDelete;
use containerd_client::services::v1::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, InfoResponse, ListContentRequest,
    ListContentResponse, ListStatusesRequest, ListStatusesResponse, ReadContentRequest,
    ReadContentResponse, Status as IngestStatusMsg, StatusRequest, StatusResponse, UpdateRequest,
    UpdateResponse, WriteAction, WriteContentRequest, WriteContentResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{mask_paths, parse_filters};
use crate::context::Context;
use crate::images::{status as image_status, Images};
use crate::namespace::{lease_from, namespace_from, validate_labels};
use crate::store::content::ContentRecord;
use crate::store::{blocking, Stamp};

/// Largest chunk Read sends (as containerd).
const READ_CHUNK: u64 = 1 << 20;

/// The Content service.
#[derive(Debug, Clone)]
pub struct ContentService {
    ctx: Context,
}

impl ContentService {
    /// Over the shared context.
    pub fn new(ctx: Context) -> Self {
        ContentService { ctx }
    }

    fn images(&self) -> &Images {
        &self.ctx.images
    }
}

/// A digest from a request: InvalidArgument naming it when malformed.
pub fn parse_digest(s: &str) -> Result<Digest, Status> {
    Digest::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A blob's Info as containerd reports it: the bytes' size, the namespace's labels and times.
struct BlobFields {
    digest: String,
    size: i64,
    labels: HashMap<String, String>,
}
crate::fields!(BlobFields {
    digest,
    size,
    labels
});

fn info_of(digest: String, size: i64, rec: ContentRecord) -> Info {
    Info {
        digest,
        size,
        created_at: Some(rec.created.timestamp()),
        updated_at: Some(rec.updated.timestamp()),
        labels: rec.labels,
    }
}

/// The record and the size of a blob in a namespace (NotFound when the namespace does not have it).
async fn blob_info(ctx: &Context, ns: &str, digest: &Digest) -> Result<Info, Status> {
    let (store, content) = (ctx.store.clone(), ctx.images.content().clone());
    let (ns, d) = (ns.to_string(), digest.clone());
    let (rec, info) = tokio::task::spawn_blocking(move || {
        let rec = store.get_content(&ns, d.as_str())?;
        Ok::<_, Status>((rec, content.info(&d)))
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))??;
    match (rec, info) {
        (Some(rec), Ok(info)) => Ok(info_of(digest.to_string(), info.size as i64, rec)),
        _ => Err(Status::not_found(format!("content {digest}: not found"))),
    }
}

fn ingest_status(client_ref: &str, st: &berth_image::IngestStatus) -> IngestStatusMsg {
    IngestStatusMsg {
        started_at: Some(prost_types::Timestamp::from(st.started_at)),
        updated_at: Some(prost_types::Timestamp::from(st.updated_at)),
        r#ref: client_ref.to_string(),
        offset: st.offset as i64,
        total: st.total.unwrap_or(0) as i64,
        expected: st
            .expected
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default(),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let d = parse_digest(&req.into_inner().digest)?;
        let info = blob_info(&self.ctx, &ns, &d).await?;
        Ok(Response::new(InfoResponse { info: Some(info) }))
    }

    async fn update(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("info is required"))?;
        let d = parse_digest(&info.digest)?;
        validate_labels(&info.labels)?;
        let size = self
            .images()
            .content()
            .info(&d)
            .map(|i| i.size as i64)
            .map_err(|_| Status::not_found(format!("content {d}: not found")))?;
        let rec = self
            .ctx
            .store
            .update_content(&ns, d.as_str(), info.labels, mask_paths(r.update_mask))
            .await?;
        Ok(Response::new(UpdateResponse {
            info: Some(info_of(d.to_string(), size, rec)),
        }))
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(
        &self,
        req: Request<ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace_from(req.metadata())?;
        let filter = parse_filters(&req.into_inner().filters)?;
        let (store, content) = (self.ctx.store.clone(), self.images().content().clone());
        let infos = blocking(move || {
            let mut out = Vec::new();
            for (digest, rec) in store.list_content(&ns)? {
                let Ok(d) = Digest::parse(&digest) else {
                    continue;
                };
                let Ok(blob) = content.info(&d) else { continue };
                let fields = BlobFields {
                    digest: digest.clone(),
                    size: blob.size as i64,
                    labels: rec.labels.clone(),
                };
                if filter.matches(&fields) {
                    out.push(info_of(digest, blob.size as i64, rec));
                }
            }
            Ok(out)
        })
        .await?;
        // containerd sends them in batches; one message per 100 keeps messages small.
        let batches: Vec<Result<ListContentResponse, Status>> = infos
            .chunks(100)
            .map(|c| Ok(ListContentResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn delete(&self, req: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        let d = parse_digest(&req.into_inner().digest)?;
        self.ctx.store.delete_content(&ns, d.as_str()).await?;
        self.images().schedule_gc();
        let ev = berth_proto::to_any(&ContentDelete {
            digest: d.to_string(),
        });
        if let Err(e) = self.ctx.events.publish(&ns, "/content/delete", ev).await {
            tracing::error!(error = %e, "cannot publish /content/delete");
        }
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(
        &self,
        req: Request<ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let d = parse_digest(&r.digest)?;
        let info = blob_info(&self.ctx, &ns, &d).await?;
        let size = info.size as u64;
        if r.offset < 0 || r.offset as u64 > size {
            return Err(Status::out_of_range(format!(
                "read of {d} at offset {} beyond its {size} bytes",
                r.offset
            )));
        }
        let start = r.offset as u64;
        let end = if r.size > 0 {
            (start + r.size as u64).min(size)
        } else {
            size
        };
        let content = self.images().content().clone();
        let stream = futures::stream::unfold(start, move |off| {
            let (content, d) = (content.clone(), d.clone());
            async move {
                if off >= end {
                    return None;
                }
                let len = (end - off).min(READ_CHUNK) as usize;
                let res = tokio::task::spawn_blocking(move || content.read_at(&d, off, len))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))
                    .and_then(|r| r.map_err(image_status));
                match res {
                    Ok(data) if !data.is_empty() => {
                        let next = off + data.len() as u64;
                        Some((
                            Ok(ReadContentResponse {
                                offset: off as i64,
                                data,
                            }),
                            next,
                        ))
                    }
                    Ok(_) => None,
                    Err(e) => Some((Err(e), end)),
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner().r#ref;
        let content = self.images().content().clone();
        let backend = Images::ingest_ref(&ns, &r);
        let st = tokio::task::spawn_blocking(move || content.status(&backend))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|_| Status::not_found(format!("ingest {r:?}: not found")))?;
        Ok(Response::new(StatusResponse {
            status: Some(ingest_status(&r, &st)),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let filter = parse_filters(&req.into_inner().filters)?;
        let content = self.images().content().clone();
        let all = tokio::task::spawn_blocking(move || content.list_statuses())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(image_status)?;
        let prefix = format!("{ns}/");
        let statuses = all
            .iter()
            .filter_map(|st| {
                let r = st.reference.strip_prefix(&prefix)?;
                let fields = IngestFields {
                    r#ref: r.to_string(),
                };
                filter.matches(&fields).then(|| ingest_status(r, st))
            })
            .collect();
        Ok(Response::new(ListStatusesResponse { statuses }))
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        req: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = namespace_from(req.metadata())?;
        let lease = lease_from(req.metadata());
        let mut input = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut session = WriteSession::new(ctx, ns, lease);
            loop {
                let msg = match input.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(s) => {
                        tracing::debug!(status = %s, "content write stream ended");
                        break;
                    }
                };
                let done = msg.action == WriteAction::Commit as i32;
                let reply = session.handle(msg).await;
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed || done {
                    break;
                }
            }
            session.close().await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn abort(&self, req: Request<AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner().r#ref;
        let content = self.images().content().clone();
        let backend = Images::ingest_ref(&ns, &r);
        tokio::task::spawn_blocking(move || content.abort(&backend))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|_| Status::not_found(format!("ingest {r:?}: not found")))?;
        Ok(Response::new(()))
    }
}

struct IngestFields {
    r#ref: String,
}
crate::fields!(IngestFields { r#ref });

/// Where one Write stream is.
enum Writing {
    /// No STAT with a ref yet.
    Start,
    /// An ingest being written.
    Ingest(Box<IngestWriter>),
    /// The blob is stored already (another namespace has it): COMMIT only records it here.
    Stored { digest: Digest, size: u64 },
}

/// One Content.Write stream.
struct WriteSession {
    ctx: Context,
    ns: String,
    lease: Option<String>,
    client_ref: String,
    state: Writing,
}

fn blocking_err(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("content write task failed: {e}"))
}

impl WriteSession {
    fn new(ctx: Context, ns: String, lease: Option<String>) -> Self {
        WriteSession {
            ctx,
            ns,
            lease,
            client_ref: String::new(),
            state: Writing::Start,
        }
    }

    async fn handle(&mut self, m: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        if matches!(self.state, Writing::Start) {
            self.open(&m).await?;
        }
        let action = WriteAction::try_from(m.action)
            .map_err(|_| Status::invalid_argument(format!("unknown write action {}", m.action)))?;
        match action {
            WriteAction::Stat => self.stat(),
            WriteAction::Write => self.write(m).await,
            WriteAction::Commit => self.commit(m).await,
        }
    }

    /// The first message names the ingest: open or resume it (or find the blob stored already).
    async fn open(&mut self, m: &WriteContentRequest) -> Result<(), Status> {
        if m.r#ref.is_empty() {
            return Err(Status::invalid_argument(
                "the first write message must have a ref",
            ));
        }
        self.client_ref = m.r#ref.clone();
        let expected = if m.expected.is_empty() {
            None
        } else {
            Some(parse_digest(&m.expected)?)
        };
        if let Some(d) = &expected {
            let (store, ns, ds) = (self.ctx.store.clone(), self.ns.clone(), d.to_string());
            if blocking(move || store.get_content(&ns, &ds))
                .await?
                .is_some()
            {
                if let Some(l) = &self.lease {
                    self.ctx
                        .store
                        .lease_content(&self.ns, l, d.as_str())
                        .await?;
                }
                return Err(Status::already_exists(format!(
                    "content {d}: already exists"
                )));
            }
        }
        if let Some(l) = &self.lease {
            self.ctx
                .store
                .lease_ingest(&self.ns, l, &self.client_ref)
                .await?;
        }
        let content = self.ctx.images.content().clone();
        let backend = Images::ingest_ref(&self.ns, &self.client_ref);
        let total = (m.total > 0).then_some(m.total as u64);
        let exp = expected.clone();
        let opened = tokio::task::spawn_blocking(move || content.writer(&backend, total, exp))
            .await
            .map_err(blocking_err)?;
        self.state = match opened {
            Ok(w) => Writing::Ingest(Box::new(w)),
            Err(berth_image::Error::AlreadyExists(d)) => {
                let size = self
                    .ctx
                    .images
                    .content()
                    .info(&d)
                    .map_err(image_status)?
                    .size;
                Writing::Stored { digest: d, size }
            }
            Err(berth_image::Error::Locked(_)) => {
                return Err(Status::unavailable(format!(
                    "ref {:?} is locked by another writer",
                    self.client_ref
                )))
            }
            Err(e) => return Err(image_status(e)),
        };
        Ok(())
    }

    fn stat(&self) -> Result<WriteContentResponse, Status> {
        let now = Some(Stamp::now().timestamp());
        Ok(match &self.state {
            Writing::Ingest(w) => WriteContentResponse {
                action: WriteAction::Stat as i32,
                started_at: now,
                updated_at: now,
                offset: w.offset() as i64,
                total: w.total().unwrap_or(0) as i64,
                digest: w.digest().to_string(),
            },
            Writing::Stored { digest, size } => WriteContentResponse {
                action: WriteAction::Stat as i32,
                started_at: now,
                updated_at: now,
                offset: *size as i64,
                total: *size as i64,
                digest: digest.to_string(),
            },
            Writing::Start => return Err(Status::internal("write stream not opened")),
        })
    }

    async fn write(&mut self, m: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        let Writing::Ingest(w) = std::mem::replace(&mut self.state, Writing::Start) else {
            return Err(Status::failed_precondition(format!(
                "ref {:?}: nothing to write, the content is stored already",
                self.client_ref
            )));
        };
        let (offset, total, data) = (m.offset, m.total, m.data);
        let (w, res) = tokio::task::spawn_blocking(move || {
            let mut w = w;
            let res = (|| {
                if total > 0 {
                    w.set_total(total as u64)?;
                }
                if !data.is_empty() {
                    w.write_at(offset.max(0) as u64, &data)?;
                }
                Ok::<_, berth_image::Error>(())
            })();
            (w, res)
        })
        .await
        .map_err(blocking_err)?;
        let reply = WriteContentResponse {
            action: WriteAction::Write as i32,
            offset: w.offset() as i64,
            total: w.total().unwrap_or(0) as i64,
            digest: w.digest().to_string(),
            ..Default::default()
        };
        self.state = Writing::Ingest(w);
        res.map_err(image_status)?;
        Ok(reply)
    }

    async fn commit(&mut self, m: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        if !m.data.is_empty() {
            self.write(WriteContentRequest {
                data: m.data.clone(),
                offset: m.offset,
                total: m.total,
                ..Default::default()
            })
            .await?;
        }
        validate_labels(&m.labels)?;
        let expected = if m.expected.is_empty() {
            None
        } else {
            Some(parse_digest(&m.expected)?)
        };
        let size = (m.total > 0).then_some(m.total as u64);
        // From the blob's commit to its record, GC must not take the blob for garbage.
        let images = self.ctx.images.clone();
        let _hold = images.hold().await;
        let (digest, size) = match std::mem::replace(&mut self.state, Writing::Start) {
            Writing::Ingest(w) => {
                let committed = tokio::task::spawn_blocking(move || w.commit(size, expected))
                    .await
                    .map_err(blocking_err)?;
                let d = match committed {
                    Ok(d) | Err(berth_image::Error::AlreadyExists(d)) => d,
                    Err(e) => return Err(image_status(e)),
                };
                let s = images.content().info(&d).map_err(image_status)?.size;
                (d, s)
            }
            Writing::Stored {
                digest,
                size: stored,
            } => {
                if let Some(e) = &expected {
                    if *e != digest {
                        return Err(Status::failed_precondition(format!(
                            "unexpected commit digest {digest}, expected {e}"
                        )));
                    }
                }
                if let Some(s) = size {
                    if s != stored {
                        return Err(Status::failed_precondition(format!(
                            "unexpected commit size {stored}, expected {s}"
                        )));
                    }
                }
                (digest, stored)
            }
            Writing::Start => return Err(Status::internal("write stream not opened")),
        };
        self.ctx
            .store
            .add_content(
                &self.ns,
                digest.as_str(),
                m.labels,
                self.lease.clone(),
                Some(self.client_ref.clone()),
            )
            .await?;
        Ok(WriteContentResponse {
            action: WriteAction::Commit as i32,
            offset: size as i64,
            total: size as i64,
            digest: digest.to_string(),
            ..Default::default()
        })
    }

    /// The stream ended: an open ingest is kept for a later resume (its writer's lock is released).
    async fn close(self) {
        if let Writing::Ingest(w) = self.state {
            let _ = tokio::task::spawn_blocking(move || drop(w)).await;
        }
    }
}
