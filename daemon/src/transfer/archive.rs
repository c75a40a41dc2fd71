//! Transfer's archive import (`ImageImportStream` → `ImageStore`), export (`ImageStore` →
//! `ImageExportStream`) and tag (`ImageStore` → `ImageStore`), through berth-image's archive module (OCI
//! layout and docker-save tars), streamed over the client's stream with containerd's binary protocol.
//!
//! An import writes every blob (verified) into the content store, records each reachable one in the namespace
//! with containerd's gc labels under a lease, names the images as the ImageStore says (its name and full
//! extra references; prefix references name each image of the archive: a full name is kept, a tag-only
//! name gets the prefix, an unnamed image gets `prefix@digest` when asked), unpacks if asked, then drops the
//! lease. This module must never record a blob that was not verified (berth-image checks every one).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;

use berth_image::archive::{ArchiveImage, ExportOptions};
use berth_image::oci::{media, Descriptor, Index, Manifest, Platform};
use berth_image::Digest;
use containerd_client::services::v1::Image;
use containerd_client::types::transfer::{ImageExportStream, ImageImportStream, ImageStore};
use prost_types::Any;
use tonic::Status;

use super::streams::{decode_any, Streams};
use super::{binary, image_name, platform_of, unpacks_of};
use crate::images::status as image_status;
use crate::pull::progress::{self, ProgressSink};
use crate::pull::Pulls;
use crate::store::gc::LABEL_EXPIRE;
use crate::store::leases::generate_lease_id;
use crate::store::{blocking, StoreError};

fn send(sink: &Option<ProgressSink>, p: containerd_client::types::transfer::Progress) {
    if let Some(s) = sink {
        let _ = s.send(p);
    }
}

fn join_err(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("archive task failed: {e}"))
}

/// A descriptor from the wire (an image's target).
pub fn descriptor_of(d: &containerd_client::types::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..Default::default()
    }
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    content: &berth_image::ContentStore,
    d: &Descriptor,
) -> Result<T, Status> {
    let dg = Digest::parse(&d.digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let size = usize::try_from(d.size).unwrap_or(0).max(1);
    let bytes = content.read_at(&dg, 0, size).map_err(image_status)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Status::invalid_argument(format!("{} {}: {e}", d.media_type, d.digest)))
}

/// The blobs reachable from `d` that are stored, each with the gc labels it gets (blocking).
fn tree(
    content: &berth_image::ContentStore,
    d: &Descriptor,
    out: &mut Vec<(String, BTreeMap<String, String>)>,
    seen: &mut HashSet<String>,
) -> Result<(), Status> {
    if !seen.insert(d.digest.clone()) {
        return Ok(());
    }
    let dg = Digest::parse(&d.digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if !content.exists(&dg) {
        return Ok(());
    }
    let children: Vec<Descriptor> = if media::is_index(&d.media_type) {
        read_json::<Index>(content, d)?.manifests
    } else if media::is_manifest(&d.media_type) {
        let m: Manifest = read_json(content, d)?;
        std::iter::once(m.config).chain(m.layers).collect()
    } else {
        Vec::new()
    };
    let refs: Vec<&Descriptor> = children.iter().collect();
    out.push((
        d.digest.clone(),
        crate::pull::labels::child_gc_labels(&refs),
    ));
    for c in &children {
        tree(content, c, out, seen)?;
    }
    Ok(())
}

/// Record every stored blob reachable from `roots` in `ns` under `lease`, with gc labels.
async fn record_trees(
    pulls: &Pulls,
    ns: &str,
    lease: &str,
    roots: &[Descriptor],
) -> Result<(), Status> {
    let content = pulls.ctx().images.content().clone();
    let roots2 = roots.to_vec();
    let blobs = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for r in &roots2 {
            tree(&content, r, &mut out, &mut seen)?;
        }
        Ok::<_, Status>(out)
    })
    .await
    .map_err(join_err)??;
    let store = &pulls.ctx().store;
    for (digest, labels) in blobs {
        store
            .add_content(ns, &digest, HashMap::new(), Some(lease.to_string()), None)
            .await?;
        if !labels.is_empty() {
            let mask = labels.keys().map(|k| format!("labels.{k}")).collect();
            store
                .update_content(ns, &digest, labels.into_iter().collect(), mask)
                .await?;
        }
    }
    Ok(())
}

/// The names an imported image gets under an ImageStore's prefix references.
fn prefixed_names(store: &ImageStore, img: &ArchiveImage) -> Vec<String> {
    let mut out = Vec::new();
    for r in store.extra_references.iter().filter(|r| r.is_prefix) {
        let named = match &img.name {
            Some(n) if n.contains(['/', ':', '@']) => Some(image_name(n)),
            Some(tag) if !tag.is_empty() => Some(image_name(&format!("{}:{tag}", r.name))),
            _ => None,
        };
        let had_name = named.is_some();
        out.extend(named);
        if r.add_digest && !(had_name && r.skip_named_digest) {
            out.push(format!("{}@{}", r.name, img.descriptor.digest));
        }
    }
    out
}

async fn temp_lease(pulls: &Pulls, ns: &str) -> Result<String, Status> {
    let id = generate_lease_id();
    let expire = prost_types::Timestamp::from(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    );
    let labels = HashMap::from([(
        LABEL_EXPIRE.to_string(),
        crate::util::rfc3339::format(&expire),
    )]);
    pulls.ctx().store.create_lease(ns, &id, labels).await?;
    Ok(id)
}

async fn drop_lease(pulls: &Pulls, ns: &str, id: &str) {
    match pulls.ctx().store.delete_lease(ns, id).await {
        Ok(()) | Err(StoreError::NotFound(_)) => {}
        Err(e) => tracing::warn!(lease = id, error = %e, "deleting an import lease"),
    }
}

/// An archive import.
pub async fn import(
    pulls: &Pulls,
    streams: &Streams,
    ns: &str,
    src: &Any,
    dst: &Any,
    sink: Option<ProgressSink>,
) -> Result<(), Status> {
    let iis: ImageImportStream = decode_any(src)?;
    let store: ImageStore = decode_any(dst)?;
    let unpacks = unpacks_of(pulls, &store)?;
    let stream = streams.take(ns, &iis.stream)?;
    send(&sink, progress::status("Importing"));
    let reader = binary::receive(stream);
    let lease = temp_lease(pulls, ns).await?;
    let res = import_with(pulls, ns, &lease, &store, reader, &unpacks, &sink).await;
    drop_lease(pulls, ns, &lease).await;
    if res.is_ok() {
        send(&sink, progress::status("Completed import"));
    }
    res
}

async fn import_with(
    pulls: &Pulls,
    ns: &str,
    lease: &str,
    store: &ImageStore,
    reader: binary::ChannelReader,
    unpacks: &[crate::pull::Unpack],
    sink: &Option<ProgressSink>,
) -> Result<(), Status> {
    let images = pulls.ctx().images.clone();
    let found = {
        // Blobs land before their records: GC must wait until they are recorded.
        let _hold = images.hold().await;
        let content = images.content().clone();
        let found =
            tokio::task::spawn_blocking(move || berth_image::archive::import(&content, reader))
                .await
                .map_err(join_err)?
                .map_err(|e| Status::invalid_argument(format!("importing the archive: {e}")))?;
        let roots: Vec<Descriptor> = found.iter().map(|i| i.descriptor.clone()).collect();
        record_trees(pulls, ns, lease, &roots).await?;
        found
    };
    let mut named: Vec<(String, Descriptor)> = Vec::new();
    let mut whole: Vec<String> = Vec::new();
    if !store.name.is_empty() {
        whole.push(image_name(&store.name));
    }
    for r in store
        .extra_references
        .iter()
        .filter(|r| !r.is_prefix && !r.name.is_empty())
    {
        whole.push(image_name(&r.name));
    }
    if !whole.is_empty() {
        let target = match found.as_slice() {
            [one] => one.descriptor.clone(),
            _ => index_of(pulls, ns, lease, &found).await?,
        };
        named.extend(whole.into_iter().map(|n| (n, target.clone())));
    }
    for img in &found {
        for n in prefixed_names(store, img) {
            named.push((n, img.descriptor.clone()));
        }
    }
    if named.is_empty() {
        return Err(Status::not_found(
            "no image name found in the archive for the given image store",
        ));
    }
    let labels: HashMap<String, String> = store.labels.clone();
    let mut unpacked = HashSet::new();
    for (name, desc) in &named {
        if !unpacks.is_empty() && unpacked.insert(desc.digest.clone()) {
            pulls
                .unpack_stored(ns, Some(lease.to_string()), desc, unpacks)
                .await?;
        }
        let img = Image {
            name: name.clone(),
            labels: labels.clone(),
            target: Some(progress::proto_descriptor(&Descriptor {
                annotations: Default::default(),
                ..desc.clone()
            })),
            ..Default::default()
        };
        pulls.store_image(ns, img).await?;
        send(sink, progress::node("saved", name, &[], 0, 0, Some(desc)));
    }
    Ok(())
}

/// An OCI index of several imported images, stored and recorded (what an ImageStore name names).
async fn index_of(
    pulls: &Pulls,
    ns: &str,
    lease: &str,
    found: &[ArchiveImage],
) -> Result<Descriptor, Status> {
    let index = Index {
        schema_version: 2,
        media_type: media::OCI_INDEX.into(),
        manifests: found.iter().map(|i| i.descriptor.clone()).collect(),
        ..Default::default()
    };
    let bytes = serde_json::to_vec(&index).map_err(|e| Status::internal(e.to_string()))?;
    let d = Digest::of(&bytes);
    let images = pulls.ctx().images.clone();
    let _hold = images.hold().await;
    let content = images.content().clone();
    let (d2, b2) = (d.clone(), bytes.clone());
    let reference = crate::images::Images::ingest_ref(ns, &format!("index-{d}"));
    tokio::task::spawn_blocking(move || {
        let mut w = content.writer(&reference, Some(b2.len() as u64), Some(d2.clone()))?;
        w.truncate()?;
        w.write(&b2)?;
        w.commit(Some(b2.len() as u64), Some(d2))
    })
    .await
    .map_err(join_err)?
    .or_else(|e| match e {
        berth_image::Error::AlreadyExists(d) => Ok(d),
        e => Err(e),
    })
    .map_err(image_status)?;
    let desc = Descriptor {
        media_type: media::OCI_INDEX.into(),
        digest: d.to_string(),
        size: bytes.len() as i64,
        ..Default::default()
    };
    record_trees(pulls, ns, lease, std::slice::from_ref(&desc)).await?;
    Ok(desc)
}

/// Find the images an ImageStore names (its name and full extra references).
pub(super) async fn lookup(
    pulls: &Pulls,
    ns: &str,
    store: &ImageStore,
) -> Result<Vec<Image>, Status> {
    let mut names: Vec<String> = Vec::new();
    if !store.name.is_empty() {
        names.push(store.name.clone());
    }
    for r in &store.extra_references {
        if r.is_prefix {
            return Err(Status::unimplemented(format!(
                "prefix lookup of {:?} is not implemented",
                r.name
            )));
        }
        names.push(r.name.clone());
    }
    if names.is_empty() {
        return Err(Status::invalid_argument("the image store names no image"));
    }
    let mut out = Vec::new();
    for n in names {
        let (s, nss, n2) = (pulls.ctx().store.clone(), ns.to_string(), n.clone());
        let img = blocking(move || {
            Ok(match s.get_image(&nss, &n2)? {
                Some(i) => Some(i),
                None => s.get_image(&nss, &image_name(&n2))?,
            })
        })
        .await?
        .ok_or_else(|| Status::not_found(format!("image {n:?}: not found")))?;
        out.push(img);
    }
    Ok(out)
}

/// What of an image can be exported: its target if every reachable manifest is complete, else (an index
/// pulled for some platforms only) the manifest of `platforms` (or this host's).
fn exportable(
    content: &berth_image::ContentStore,
    target: &Descriptor,
    platforms: &[Platform],
) -> Result<Descriptor, Status> {
    if !media::is_index(&target.media_type) {
        return Ok(target.clone());
    }
    let idx: Index = read_json(content, target)?;
    let complete = |d: &Descriptor| -> bool {
        let Ok(dg) = Digest::parse(&d.digest) else {
            return false;
        };
        if !content.exists(&dg) {
            return true; // not fetched: berth-image's export skips it
        }
        match read_json::<Manifest>(content, d) {
            Ok(m) => std::iter::once(&m.config)
                .chain(m.layers.iter())
                .all(|b| Digest::parse(&b.digest).is_ok_and(|x| content.exists(&x))),
            Err(_) => media::is_index(&d.media_type),
        }
    };
    if idx.manifests.iter().all(complete) {
        return Ok(target.clone());
    }
    let want = if platforms.is_empty() {
        vec![Platform::host()]
    } else {
        platforms.to_vec()
    };
    want.iter()
        .find_map(|p| idx.select(p).filter(|d| complete(d)).cloned())
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "index {}: no complete manifest for {} to export",
                target.digest,
                want.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// An archive export.
pub async fn export(
    pulls: &Pulls,
    streams: &Streams,
    ns: &str,
    src: &Any,
    dst: &Any,
    sink: Option<ProgressSink>,
) -> Result<(), Status> {
    let store: ImageStore = decode_any(src)?;
    let ies: ImageExportStream = decode_any(dst)?;
    let imgs = lookup(pulls, ns, &store).await?;
    let platforms: Vec<Platform> = if ies.all_platforms {
        Vec::new()
    } else {
        ies.platforms.iter().map(platform_of).collect()
    };
    let stream = streams.take(ns, &ies.stream)?;
    send(&sink, progress::status("Exporting"));
    let images = pulls.ctx().images.clone();
    let hold = images.hold().await;
    let content = images.content().clone();
    let mut archive_images = Vec::new();
    for img in &imgs {
        let target = img.target.as_ref().map(descriptor_of).ok_or_else(|| {
            Status::failed_precondition(format!("image {:?} has no target", img.name))
        })?;
        let (c, p) = (content.clone(), platforms.clone());
        let descriptor = tokio::task::spawn_blocking(move || exportable(&c, &target, &p))
            .await
            .map_err(join_err)??;
        archive_images.push(ArchiveImage {
            name: Some(img.name.clone()),
            descriptor,
        });
    }
    let opts = ExportOptions {
        docker_manifest: !ies.skip_compatibility_manifest,
    };
    let (writer, handle) = binary::send(stream);
    let written = tokio::task::spawn_blocking(move || {
        let mut w = berth_image::archive::export(&content, &archive_images, writer, &opts)
            .map_err(|e| Status::failed_precondition(format!("exporting: {e}")))?;
        w.flush()
            .map_err(|e| Status::unavailable(format!("sending the archive: {e}")))?;
        drop(w);
        Ok::<(), Status>(())
    })
    .await
    .map_err(join_err)?;
    drop(hold);
    let sent = handle.finish().await;
    written?;
    sent?;
    for img in &imgs {
        send(
            &sink,
            progress::node("exported", &img.name, &[], 0, 0, None),
        );
    }
    send(&sink, progress::status("Completed export"));
    Ok(())
}

/// A tag: the source image's target under the destination's names.
pub async fn tag(
    pulls: &Pulls,
    ns: &str,
    src: &Any,
    dst: &Any,
    sink: Option<ProgressSink>,
) -> Result<(), Status> {
    let from: ImageStore = decode_any(src)?;
    let to: ImageStore = decode_any(dst)?;
    let img = lookup(pulls, ns, &from)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Status::not_found("no source image"))?;
    let target = img.target.clone().ok_or_else(|| {
        Status::failed_precondition(format!("image {:?} has no target", img.name))
    })?;
    let mut names: Vec<String> = Vec::new();
    if !to.name.is_empty() {
        names.push(image_name(&to.name));
    }
    for r in to.extra_references.iter().filter(|r| !r.is_prefix) {
        names.push(if r.add_digest {
            format!("{}@{}", r.name, target.digest)
        } else {
            image_name(&r.name)
        });
    }
    if names.is_empty() {
        return Err(Status::not_found("no image name found for the tag"));
    }
    for name in names {
        let new = Image {
            name: name.clone(),
            labels: to.labels.clone(),
            target: Some(target.clone()),
            ..Default::default()
        };
        pulls.store_image(ns, new).await?;
        send(
            &sink,
            progress::node("saved", &name, &[], 0, 0, Some(&descriptor_of(&target))),
        );
    }
    Ok(())
}
