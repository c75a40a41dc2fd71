//! Transfer's push (`ImageStore` → `OCIRegistry`): every stored blob reachable from the image's target goes to
//! the registry (blobs first, then manifests, children before their index), the root under the reference's
//! tag (or its digest). Credentials come from the client's auth stream when the registry asks for them.
//!
//! berth-registry pushes a blob in one request, from memory: this is for images of reasonable size, and
//! must never be used for a blob that is not in the content store.

use std::sync::Arc;

use berth_image::oci::{media, Descriptor, Index, Manifest};
use berth_image::Digest;
use berth_registry::{Reference, RegistryError, RequestOptions};
use bytes::Bytes;
use containerd_client::types::transfer::{ImageStore, OciRegistry};
use prost_types::Any;
use tonic::Status;

use super::archive::{descriptor_of, lookup, read_json};
use super::auth::AuthStream;
use super::streams::{decode_any, Streams};
use crate::images::status as image_status;
use crate::pull::job_status;
use crate::pull::progress::{self, ProgressSink};
use crate::pull::{CredentialSource, Pulls};

fn send(sink: &Option<ProgressSink>, p: containerd_client::types::transfer::Progress) {
    if let Some(s) = sink {
        let _ = s.send(p);
    }
}

/// Blobs to push, in order: what a manifest needs before the manifest, manifests before their index.
fn order(
    content: &berth_image::ContentStore,
    d: &Descriptor,
    out: &mut Vec<Descriptor>,
) -> Result<(), Status> {
    if out.iter().any(|o| o.digest == d.digest) {
        return Ok(());
    }
    let dg = Digest::parse(&d.digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if media::is_index(&d.media_type) {
        let idx: Index = read_json(content, d)?;
        for c in &idx.manifests {
            let cd =
                Digest::parse(&c.digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if content.exists(&cd) {
                order(content, c, out)?;
            }
        }
    } else if media::is_manifest(&d.media_type) {
        let m: Manifest = read_json(content, d)?;
        for c in std::iter::once(&m.config).chain(m.layers.iter()) {
            let cd =
                Digest::parse(&c.digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if !content.exists(&cd) {
                return Err(Status::failed_precondition(format!(
                    "cannot push manifest {}: blob {} is not in the content store",
                    d.digest, c.digest
                )));
            }
            order(content, c, out)?;
        }
    } else if !content.exists(&dg) {
        return Err(Status::failed_precondition(format!(
            "cannot push blob {}: not in the content store",
            d.digest
        )));
    }
    out.push(d.clone());
    Ok(())
}

/// A push.
pub async fn push(
    pulls: &Pulls,
    streams: &Streams,
    ns: &str,
    src: &Any,
    dst: &Any,
    sink: Option<ProgressSink>,
) -> Result<(), Status> {
    let store: ImageStore = decode_any(src)?;
    let reg: OciRegistry = decode_any(dst)?;
    let reference =
        Reference::parse(&reg.reference).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let resolver = reg.resolver.unwrap_or_default();
    let auth: Option<Arc<dyn CredentialSource>> = if resolver.auth_stream.is_empty() {
        None
    } else {
        Some(Arc::new(AuthStream::new(
            streams.take(ns, &resolver.auth_stream)?,
        )))
    };
    let img = lookup(pulls, ns, &store)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Status::not_found("no image to push"))?;
    let target = img.target.as_ref().map(descriptor_of).ok_or_else(|| {
        Status::failed_precondition(format!("image {:?} has no target", img.name))
    })?;
    let hosts_dir =
        (!resolver.host_dir.is_empty()).then(|| std::path::PathBuf::from(&resolver.host_dir));
    let client = pulls.client(hosts_dir.as_ref());
    let mut opts = RequestOptions {
        plain_http: resolver.default_scheme == "http",
        ..Default::default()
    };
    let name = reference.to_string();
    let mut repo = client
        .repository(&reference, &opts)
        .map_err(|e| job_status(&name, &e))?;
    let ir = format!("OCI Registry ({name})");
    send(&sink, progress::status(format!("Pushing to {ir}")));
    send(
        &sink,
        progress::node("pushing content", &img.name, &[], 0, 0, Some(&target)),
    );
    let images = pulls.ctx().images.clone();
    let _hold = images.hold().await;
    let content = images.content().clone();
    let (c2, t2) = (content.clone(), target.clone());
    let blobs = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        order(&c2, &t2, &mut out)?;
        Ok::<_, Status>(out)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))??;
    let mut asked = false;
    for d in &blobs {
        let key = progress::ref_key(d);
        send(
            &sink,
            progress::node("uploading", &key, &[], 0, d.size, Some(d)),
        );
        let dg = Digest::parse(&d.digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let size = usize::try_from(d.size).unwrap_or(0);
        let c = content.clone();
        let bytes = Bytes::from(
            tokio::task::spawn_blocking(move || c.read_at(&dg, 0, size))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(image_status)?,
        );
        let is_root = d.digest == target.digest;
        let is_manifest = media::is_manifest(&d.media_type) || media::is_index(&d.media_type);
        let tag = if is_root {
            reference.tag().unwrap_or(&d.digest).to_string()
        } else {
            d.digest.clone()
        };
        loop {
            let res = if is_manifest {
                repo.push_manifest(&tag, &d.media_type, bytes.clone()).await
            } else {
                repo.push_blob(&d.media_type, bytes.clone()).await
            };
            match res {
                Ok(_) => break,
                Err(e @ RegistryError::Unauthorized { .. }) if !asked => {
                    asked = true;
                    match credentials(&auth, &reference, &name).await? {
                        Some(c) => {
                            opts.credentials = Some(c);
                            repo = client
                                .repository(&reference, &opts)
                                .map_err(|e| job_status(&name, &e))?;
                        }
                        None => return Err(job_status(&name, &e)),
                    }
                }
                Err(e) => return Err(job_status(&name, &e)),
            }
        }
        send(
            &sink,
            progress::node("complete", &key, &[], d.size, d.size, Some(d)),
        );
    }
    send(
        &sink,
        progress::node("pushed content", &img.name, &[], 0, 0, Some(&target)),
    );
    send(&sink, progress::status(format!("Completed push to {ir}")));
    Ok(())
}

async fn credentials(
    auth: &Option<Arc<dyn CredentialSource>>,
    reference: &Reference,
    name: &str,
) -> Result<Option<berth_registry::Credentials>, Status> {
    match auth {
        Some(a) => a.credentials(reference.registry(), name).await,
        None => Ok(None),
    }
}
