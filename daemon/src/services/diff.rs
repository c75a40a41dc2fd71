//! containerd `Diff` service. Apply: unpack a layer blob (gzip, zstd or plain, by media type or by its magic
//! bytes) onto the mounts a client got from Snapshots.Prepare, through berth-image's one safe unpacker (the
//! same one server-side pulls use), verifying the blob's digest as it is read, and return the uncompressed
//! digest (the diff id, which ctr checks against the image config). Diff: write the layer between two sets of
//! mounts into the content store.
//!
//! This module must never write a layer anywhere but through the unpacker.

use std::collections::HashMap;

use berth_image::unpack::{ApplyOptions, Compression};
use berth_image::{Digest, HashingReader};
use berth_proto::containerd::diff::diff_server::Diff;
use containerd_client::services::v1::{ApplyRequest, ApplyResponse, DiffRequest, DiffResponse};
use containerd_client::types::{Descriptor, Mount};
use tonic::{Request, Response, Status};

use super::content::parse_digest;
use crate::context::Context;
use crate::images::{status as image_status, Images};
use crate::namespace::{lease_from, namespace_from, validate_labels};
use crate::store::blocking;

/// Label containerd puts on a layer with its uncompressed digest.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// The Diff service.
#[derive(Debug, Clone)]
pub struct DiffService {
    ctx: Context,
}

impl DiffService {
    /// Over the shared context.
    pub fn new(ctx: Context) -> Self {
        DiffService { ctx }
    }
}

fn from_mounts(ms: Vec<Mount>) -> Vec<berth_image::Mount> {
    ms.into_iter()
        .map(|m| berth_image::Mount {
            kind: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

/// The compression of a layer blob: from its media type, else from its first bytes.
fn compression_of(media_type: &str, images: &Images, d: &Digest) -> Result<Compression, Status> {
    if let Some(c) = Compression::from_media_type(media_type) {
        return Ok(c);
    }
    let head = images.content().read_at(d, 0, 16).map_err(image_status)?;
    Ok(Compression::sniff(&head))
}

/// Apply a layer blob of namespace `ns` onto `mounts` (blocking). Verifies the blob's digest while reading
/// and, when known, the expected diff id.
pub fn apply_layer(
    images: &Images,
    desc: &Descriptor,
    mounts: &[berth_image::Mount],
    expected_diff_id: Option<&str>,
    max_size: u64,
) -> Result<Descriptor, Status> {
    let d = parse_digest(&desc.digest)?;
    let compression = compression_of(&desc.media_type, images, &d)?;
    let file = images.content().open_blob(&d).map_err(image_status)?;
    let mut reader = HashingReader::new(std::io::BufReader::with_capacity(1 << 20, file));
    let applied = berth_image::unpack::apply_to_mounts(
        mounts,
        &mut reader,
        compression,
        &ApplyOptions {
            max_size,
            ..ApplyOptions::default()
        },
    )
    .map_err(image_status)?;
    // Drain what the decompressor did not need (padding), then check the blob itself.
    std::io::copy(&mut reader, &mut std::io::sink())
        .map_err(|e| Status::internal(format!("reading layer {d}: {e}")))?;
    if reader.digest() != d {
        return Err(Status::failed_precondition(format!(
            "layer {d}: its content has digest {} (corrupt blob)",
            reader.digest()
        )));
    }
    if let Some(want) = expected_diff_id {
        if applied.diff_id.as_str() != want {
            return Err(Status::failed_precondition(format!(
                "layer {d}: uncompressed digest {} differs from the expected {want}",
                applied.diff_id
            )));
        }
    }
    Ok(Descriptor {
        media_type: berth_image::oci::media::OCI_LAYER.to_string(),
        digest: applied.diff_id.to_string(),
        size: applied.size as i64,
        annotations: Default::default(),
    })
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let desc = r
            .diff
            .ok_or_else(|| Status::invalid_argument("diff descriptor is required"))?;
        let d = parse_digest(&desc.digest)?;
        let (store, ns2, ds) = (self.ctx.store.clone(), ns.clone(), d.to_string());
        let rec = blocking(move || store.get_content(&ns2, &ds))
            .await?
            .ok_or_else(|| Status::not_found(format!("content {d}: not found")))?;
        let expected = desc
            .annotations
            .get(LABEL_UNCOMPRESSED)
            .or_else(|| rec.labels.get(LABEL_UNCOMPRESSED))
            .cloned();
        let mounts = from_mounts(r.mounts);
        let images = self.ctx.images.clone();
        let max_size = self.ctx.config.max_unpacked_layer_size;
        let applied = tokio::task::spawn_blocking(move || {
            apply_layer(&images, &desc, &mounts, expected.as_deref(), max_size)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(ApplyResponse {
            applied: Some(applied),
        }))
    }

    async fn diff(&self, req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let lease = lease_from(req.metadata());
        let r = req.into_inner();
        validate_labels(&r.labels)?;
        let compression = if r.media_type.is_empty() {
            Compression::Gzip
        } else {
            Compression::from_media_type(&r.media_type).ok_or_else(|| {
                Status::invalid_argument(format!("unsupported diff media type {:?}", r.media_type))
            })?
        };
        let (left, right) = (from_mounts(r.left), from_mounts(r.right));
        let images = self.ctx.images.clone();
        let ingest = Images::ingest_ref(&ns, if r.r#ref.is_empty() { "diff" } else { &r.r#ref });
        let _hold = images.hold().await;
        let imgs = images.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut w = imgs.content().writer(&ingest, None, None)?;
            w.truncate()?;
            let out = berth_image::diff(
                berth_image::DiffSource::Mounts(&left),
                berth_image::DiffSource::Mounts(&right),
                &mut w,
                compression,
            )?;
            match w.commit(Some(out.size), Some(out.digest.clone())) {
                Ok(_) | Err(berth_image::Error::AlreadyExists(_)) => Ok(out),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(image_status)?;
        let mut labels: HashMap<String, String> = r.labels;
        labels.insert(LABEL_UNCOMPRESSED.into(), out.diff_id.to_string());
        self.ctx
            .store
            .add_content(&ns, out.digest.as_str(), labels, lease, None)
            .await?;
        Ok(Response::new(DiffResponse {
            diff: Some(Descriptor {
                media_type: compression.oci_media_type().to_string(),
                digest: out.digest.to_string(),
                size: out.size as i64,
                annotations: Default::default(),
            }),
        }))
    }
}
