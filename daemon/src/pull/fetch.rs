//! Fetching blobs into the content store, the way ctr names its ingests (`<kind>-sha256:…`, per namespace).
//!
//! Small blobs (indexes, manifests, configs) are fetched into memory (verified) and written at once. A layer
//! is streamed: the async side reads the registry's response and hands the chunks to a blocking writer that
//! appends them to the ingest (hashing as it goes) and publishes its progress in the layer's [`BlobCell`], so
//! the unpacker can follow it. An ingest left by an interrupted pull is resumed with a Range request from
//! its end (a registry that ignores Range is read from the start and the bytes already there are skipped);
//! a broken connection is resumed the same way, a few times. The commit verifies digest and size; a mismatch
//! discards the ingest, records nothing and fails the pull naming the digest.
//!
//! Every blob is recorded in the namespace under the pull lease, holding the GC lock from commit to record.
//! This module must never record a blob that was not verified, nor keep a whole layer in memory.

use std::sync::Arc;
use std::time::Duration;

use berth_image::oci::{media, Descriptor};
use berth_image::{ContentStore, Digest};
use berth_registry::RegistryError;
use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

use super::cell::{ingest_data_path, BlobCell};
use super::job::{JobCtx, SMALL_LIMIT};
use super::progress;
use crate::images::{status as image_status, Images};
use crate::store::leases::{LeaseResource, RES_CONTENT};

/// Attempts of a layer download without progress before the pull fails.
const MAX_TRIES: u32 = 5;
/// First pause between attempts (doubled each time).
const BACKOFF: Duration = Duration::from_millis(200);
/// How long to wait for another writer of the same ingest before giving up.
const LOCKED_WAIT: Duration = Duration::from_secs(600);
/// Chunks queued between the network and the blob's writer thread (hyper's chunks reach a few hundred KiB:
/// this bounds a download's memory to a few MiB; the socket holds the rest back).
const CHUNK_QUEUE: usize = 8;
/// The writer thread coalesces chunks up to this size per write.
const WRITE_BATCH: usize = 1 << 20;

fn parse_digest(d: &Descriptor) -> Result<Digest, Status> {
    Digest::parse(&d.digest).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn join_err(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("blob task failed: {e}"))
}

impl JobCtx {
    fn backend_ref(&self, desc: &Descriptor) -> (String, String) {
        let client = progress::ref_key(desc);
        (Images::ingest_ref(&self.ns, &client), client)
    }

    fn content(&self) -> &ContentStore {
        self.shared.ctx.images.content()
    }

    /// Whether the namespace has the blob; if so it is leased to this pull.
    async fn have(&self, digest: &str) -> Result<bool, Status> {
        let store = self.shared.ctx.store.clone();
        let (ns, d) = (self.ns.clone(), digest.to_string());
        let rec = crate::store::blocking(move || store.get_content(&ns, &d)).await?;
        let on_disk = Digest::parse(digest)
            .map(|d| self.content().exists(&d))
            .unwrap_or(false);
        if rec.is_none() || !on_disk {
            return Ok(false);
        }
        self.shared
            .ctx
            .store
            .lease_content(&self.ns, &self.lease, digest)
            .await?;
        Ok(true)
    }

    /// Record a committed blob in the namespace under the lease, with its distribution source.
    async fn record(&self, digest: &str, client_ref: &str) -> Result<(), Status> {
        self.shared
            .ctx
            .store
            .add_content(
                &self.ns,
                digest,
                Default::default(),
                Some(self.lease.clone()),
                Some(client_ref.to_string()),
            )
            .await?;
        self.recorded(LeaseResource {
            id: digest.to_string(),
            r#type: RES_CONTENT.into(),
        });
        Ok(())
    }

    /// A blob that failed its digest or size check: the pull is rolled back.
    fn corrupt(&self, desc: &Descriptor, detail: &str) -> Status {
        let s = Status::failed_precondition(format!(
            "{}: blob {} from {}: {detail}; nothing of it was stored",
            self.plan.reference,
            desc.digest,
            self.reference.registry()
        ));
        self.set_corrupt(&s);
        s
    }

    /// Fetch a small blob (index, manifest, config) into memory and the content store; returns its bytes.
    pub(super) async fn fetch_small(
        &self,
        desc: &Descriptor,
        parents: &[String],
    ) -> Result<Bytes, Status> {
        let name = progress::ref_key(desc);
        let declared = u64::try_from(desc.size).unwrap_or(u64::MAX);
        // Manifests and indexes: the configured limit; image configs: the hard in-memory cap.
        let (limit, key) =
            if media::is_manifest(&desc.media_type) || media::is_index(&desc.media_type) {
                (
                    self.shared.ctx.config.max_manifest_size,
                    "max_manifest_size",
                )
            } else {
                (SMALL_LIMIT as u64, "the in-memory limit for configs")
            };
        if declared > limit {
            return Err(Status::invalid_argument(format!(
                "{}: {} {} declares {} bytes, more than the {limit}-byte limit ({key}); nothing was fetched",
                self.plan.reference, desc.media_type, desc.digest, desc.size
            )));
        }
        let size = usize::try_from(declared).unwrap_or(usize::MAX);
        let hub = &self.js.hub;
        hub.send(progress::node(
            "waiting",
            &name,
            parents,
            0,
            desc.size,
            Some(desc),
        ));
        let d = parse_digest(desc)?;
        if self.have(&desc.digest).await? {
            let content = self.content().clone();
            let data = tokio::task::spawn_blocking(move || content.read_at(&d, 0, size))
                .await
                .map_err(join_err)?
                .map_err(image_status)?;
            self.label_source(&desc.digest).await?;
            hub.send(progress::node(
                "already exists",
                &name,
                parents,
                desc.size,
                desc.size,
                Some(desc),
            ));
            return Ok(Bytes::from(data));
        }
        let is_manifest = media::is_manifest(&desc.media_type) || media::is_index(&desc.media_type);
        let data = if is_manifest {
            self.registry(|repo| {
                let desc = desc.clone();
                async move { repo.fetch_manifest(&desc).await }
            })
            .await
        } else {
            self.registry(|repo| {
                let desc = desc.clone();
                async move {
                    let mut s = repo.fetch_blob(&desc, 0).await?.verified()?;
                    let mut buf = Vec::with_capacity(size);
                    while let Some(c) = s.next_chunk().await {
                        buf.extend_from_slice(&c?);
                    }
                    Ok(Bytes::from(buf))
                }
            })
            .await
        };
        let data = match data {
            Ok(d) => d,
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                return Err(self.corrupt(desc, e.message()))
            }
            Err(e) => return Err(e),
        };
        self.store_small(desc, &d, &data).await?;
        self.label_source(&desc.digest).await?;
        hub.send(progress::node(
            "complete",
            &name,
            parents,
            desc.size,
            desc.size,
            Some(desc),
        ));
        Ok(data)
    }

    /// Write a verified small blob into the content store and record it.
    async fn store_small(&self, desc: &Descriptor, d: &Digest, data: &Bytes) -> Result<(), Status> {
        let (backend, client) = self.backend_ref(desc);
        let images = self.shared.ctx.images.clone();
        let deadline = tokio::time::Instant::now() + LOCKED_WAIT;
        loop {
            let hold = images.hold().await;
            let (content, b, dd, bytes) = (
                self.content().clone(),
                backend.clone(),
                d.clone(),
                data.clone(),
            );
            let res = tokio::task::spawn_blocking(move || {
                let size = bytes.len() as u64;
                let mut w = content.writer(&b, Some(size), Some(dd.clone()))?;
                w.truncate()?;
                w.write(&bytes)?;
                w.commit(Some(size), Some(dd))
            })
            .await
            .map_err(join_err)?;
            match res {
                Ok(_) | Err(berth_image::Error::AlreadyExists(_)) => {
                    self.record(&desc.digest, &client).await?;
                    drop(hold);
                    return Ok(());
                }
                Err(berth_image::Error::Locked(_)) if tokio::time::Instant::now() < deadline => {
                    drop(hold);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(image_status(e)),
            }
        }
    }

    /// Fetch a layer into its ingest (resuming it), commit and record it; `cell` tells followers how far it is.
    pub(super) async fn fetch_layer(
        self: Arc<Self>,
        cell: Arc<BlobCell>,
        parents: Vec<String>,
        sem: Arc<Semaphore>,
    ) -> Result<(), Status> {
        let res = self.fetch_layer_inner(&cell, &parents, sem).await;
        if let Err(e) = &res {
            cell.failed(e.message().to_string());
        }
        res
    }

    async fn fetch_layer_inner(
        &self,
        cell: &Arc<BlobCell>,
        parents: &[String],
        sem: Arc<Semaphore>,
    ) -> Result<(), Status> {
        let desc = cell.desc().clone();
        let name = progress::ref_key(&desc);
        let d = parse_digest(&desc)?;
        let size = u64::try_from(desc.size).unwrap_or(0);
        let hub = &self.js.hub;
        let (backend, client) = self.backend_ref(&desc);
        let deadline = tokio::time::Instant::now() + LOCKED_WAIT;
        let writer = loop {
            if self.have(&desc.digest).await? {
                self.label_source(&desc.digest).await?;
                cell.done(self.content().blob_path(&d));
                hub.send(progress::node(
                    "already exists",
                    &name,
                    parents,
                    desc.size,
                    desc.size,
                    Some(&desc),
                ));
                return Ok(());
            }
            let (content, b, dd) = (self.content().clone(), backend.clone(), d.clone());
            let opened =
                tokio::task::spawn_blocking(move || content.writer(&b, Some(size), Some(dd)))
                    .await
                    .map_err(join_err)?;
            match opened {
                Ok(w) => break w,
                Err(berth_image::Error::AlreadyExists(_)) => {
                    // Another namespace has the bytes: record them here.
                    let images = self.shared.ctx.images.clone();
                    let _hold = images.hold().await;
                    if self.content().exists(&d) {
                        self.record(&desc.digest, &client).await?;
                    }
                }
                Err(berth_image::Error::Locked(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(image_status(e)),
            }
        };
        self.shared
            .ctx
            .store
            .lease_ingest(&self.ns, &self.lease, &client)
            .await?;
        let _permit = sem
            .acquire_owned()
            .await
            .map_err(|_| Status::aborted("download slots closed"))?;
        let mut w = writer;
        if w.offset() > size {
            let (r, w2) = tokio::task::spawn_blocking(move || (w.truncate(), w))
                .await
                .map_err(join_err)?;
            w = w2;
            r.map_err(image_status)?;
        }
        let offset = w.offset();
        if offset > 0 {
            tracing::debug!(digest = %desc.digest, offset, "resuming an interrupted download");
        }
        cell.writing(offset, ingest_data_path(self.content(), &backend, offset));
        // The writer thread: appends and hashes what the network side hands it.
        let (tx, rx) = mpsc::channel::<Bytes>(CHUNK_QUEUE);
        let wcell = cell.clone();
        let writer = tokio::task::spawn_blocking(move || write_chunks(w, rx, &wcell));
        let downloaded = self.download(&desc, offset, size, &tx).await;
        drop(tx);
        let (w, written) = writer.await.map_err(join_err)?;
        if let Err(e) = downloaded {
            cell.pending();
            return Err(e);
        }
        written.map_err(image_status)?;
        crate::failpoint::hit("pull.before_commit");
        let images = self.shared.ctx.images.clone();
        let hold = images.hold().await;
        let dd = d.clone();
        let committed = tokio::task::spawn_blocking(move || w.commit(Some(size), Some(dd)))
            .await
            .map_err(join_err)?;
        match committed {
            Ok(_) | Err(berth_image::Error::AlreadyExists(_)) => {
                self.record(&desc.digest, &client).await?;
                drop(hold);
            }
            Err(
                e @ (berth_image::Error::DigestMismatch { .. }
                | berth_image::Error::SizeMismatch { .. }),
            ) => {
                drop(hold);
                let err = self.corrupt(&desc, &e.to_string());
                cell.failed(err.message().to_string());
                return Err(err);
            }
            Err(e) => return Err(image_status(e)),
        }
        cell.done(self.content().blob_path(&d));
        tracing::debug!(digest = %desc.digest, secs = self.started.elapsed().as_secs_f64(), "layer fetched");
        self.label_source(&desc.digest).await?;
        hub.send(progress::node(
            "complete",
            &name,
            parents,
            desc.size,
            desc.size,
            Some(&desc),
        ));
        crate::failpoint::hit("pull.blob_committed");
        Ok(())
    }

    /// Stream the blob from `offset` into `tx`, resuming after broken connections.
    async fn download(
        &self,
        desc: &Descriptor,
        offset: u64,
        size: u64,
        tx: &mpsc::Sender<Bytes>,
    ) -> Result<(), Status> {
        let mut sent = offset;
        let mut failures = 0u32;
        let mut backoff = BACKOFF;
        while sent < size || size == 0 {
            let from = sent;
            let opened = self
                .registry(|repo| {
                    let desc = desc.clone();
                    async move {
                        match repo.fetch_blob(&desc, from).await {
                            Err(RegistryError::RangeNotSupported { .. }) => {
                                Ok((repo.fetch_blob(&desc, 0).await?, from))
                            }
                            other => other.map(|s| (s, 0)),
                        }
                    }
                })
                .await;
            let (mut stream, mut skip) = match opened {
                Ok(s) => s,
                Err(e) if e.code() == tonic::Code::Unavailable && failures + 1 < MAX_TRIES => {
                    failures += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let before = sent;
            let mut broken: Option<RegistryError> = None;
            while let Some(chunk) = stream.next_chunk().await {
                let mut chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                };
                if skip > 0 {
                    let n = (skip as usize).min(chunk.len());
                    let _ = chunk.split_to(n);
                    skip -= n as u64;
                    if chunk.is_empty() {
                        continue;
                    }
                }
                sent += chunk.len() as u64;
                self.downloaded
                    .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if tx.send(chunk).await.is_err() {
                    // The writer failed: its error is reported by the caller.
                    return Ok(());
                }
            }
            match broken {
                None => return Ok(()),
                Some(
                    e @ (RegistryError::SizeMismatch { .. } | RegistryError::DigestMismatch { .. }),
                ) => return Err(self.corrupt(desc, &e.to_string())),
                Some(e) if e.is_retryable() => {
                    if sent > before {
                        failures = 0;
                        backoff = BACKOFF;
                    }
                    failures += 1;
                    if failures >= MAX_TRIES {
                        return Err(self.status(&e));
                    }
                    tracing::debug!(digest = %desc.digest, at = sent, error = %e, "download broke; resuming");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Some(e) => return Err(self.status(&e)),
            }
            if self
                .js
                .cancel_flag()
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(Status::cancelled(format!(
                    "pull of {} cancelled",
                    self.plan.reference
                )));
            }
        }
        Ok(())
    }
}

/// The blob's writer thread: append what arrives (coalesced), publish progress; returns the writer.
fn write_chunks(
    mut w: berth_image::IngestWriter,
    mut rx: mpsc::Receiver<Bytes>,
    cell: &BlobCell,
) -> (berth_image::IngestWriter, berth_image::Result<()>) {
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    let flush = |w: &mut berth_image::IngestWriter, batch: &mut Vec<u8>| {
        if batch.is_empty() {
            return Ok(());
        }
        w.write(batch)?;
        cell.wrote(batch.len() as u64);
        batch.clear();
        Ok(())
    };
    while let Some(first) = rx.blocking_recv() {
        if first.len() >= WRITE_BATCH && batch.is_empty() {
            if let Err(e) = w.write(&first) {
                return (w, Err(e));
            }
            cell.wrote(first.len() as u64);
            continue;
        }
        batch.extend_from_slice(&first);
        // Take what else is queued, up to a batch.
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = flush(&mut w, &mut batch) {
            return (w, Err(e));
        }
    }
    let r = flush(&mut w, &mut batch);
    (w, r)
}
