//! Unpacking an image's layers into snapshots named by chain ids, containerd's way: for layer i with
//! `chain_i`, a chain that exists is skipped; otherwise `Prepare("extract-<nanos>-<rand> <chain_i>", parent
//! chain_{i-1})` under the pull lease, apply the layer with berth-image's one unpacker straight into the
//! snapshot's upper directory, check the result against the config's diff id, `Commit(chain_i)`, and label the
//! layer blob `containerd.io/uncompressed`. Finally the config gets `containerd.io/gc.ref.snapshot.<sn>` = the
//! top chain, which is what keeps the snapshots once the lease is gone.
//!
//! During a pull the layer is read by a [`Follow`] while it downloads; a layer is applied only after the one
//! below it, and nothing is committed before the blob's digest and the diff id were verified. Concurrent
//! unpacks of one chain id (two pulls sharing a base layer) are serialised. A failed apply removes its
//! snapshot. This module must never write a layer by any other means than `berth_image::unpack`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use berth_image::oci::{media, Descriptor, ImageConfig, Index, Manifest};
use berth_image::snapshot::Kind;
use berth_image::unpack::{ApplyOptions, Compression};
use berth_image::{Digest, Mount, Snapshotter};
use berth_proto::to_any;
use containerd_client::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use tonic::Status;

use super::cell::{BlobCell, Follow};
use super::job::{Full, JobCtx};
use super::labels;
use super::{Shared, Unpack};
use crate::images::status as image_status;
use crate::store::leases::{res_snapshots, LeaseResource};
use crate::store::snapshots::SnapshotKind;
use crate::store::StoreError;

/// Where an unpack runs: namespace, lease, who to blame in messages, when to give up.
pub(super) struct Target<'a> {
    pub shared: &'a Shared,
    pub ns: &'a str,
    pub lease: Option<&'a str>,
    pub reference: &'a str,
    pub cancel: Arc<AtomicBool>,
}

fn join_err(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("unpack task failed: {e}"))
}

/// `extract-<nanos>-<random> <chain>`, containerd's unpack key.
fn extract_key(chain: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let rand: String = crate::store::tables::new_uuid()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(4)
        .collect();
    format!("extract-{nanos}-{rand} {chain}")
}

async fn publish(shared: &Shared, ns: &str, topic: &str, ev: prost_types::Any) {
    if let Err(e) = shared.ctx.events.publish(ns, topic, ev).await {
        tracing::error!(namespace = ns, topic, error = %e, "cannot publish event");
    }
}

/// Prepare an active snapshot (record and directory, under the GC lock); returns its number and mounts.
#[allow(clippy::too_many_arguments)]
async fn prepare(
    t: &Target<'_>,
    sn_name: &'static str,
    sn: &Arc<dyn Snapshotter>,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Result<(u64, Vec<Mount>), Status> {
    let store = &t.shared.ctx.store;
    let images = t.shared.ctx.images.clone();
    let hold = images.hold().await;
    let plan = store.plan_snapshot(sn_name, t.ns, key, parent).await?;
    let (id, parents, sn2) = (plan.id, plan.parents.clone(), sn.clone());
    let mounts = tokio::task::spawn_blocking(move || sn2.create(id, Kind::Active, &parents))
        .await
        .map_err(join_err)?
        .map_err(image_status)?;
    let recorded = store
        .insert_snapshot(
            sn_name,
            t.ns,
            key,
            parent,
            id,
            SnapshotKind::Active,
            labels,
            t.lease.map(str::to_string),
        )
        .await;
    if let Err(e) = recorded {
        let sn2 = sn.clone();
        let _ = tokio::task::spawn_blocking(move || sn2.remove(id)).await;
        return Err(e.into());
    }
    drop(hold);
    let ev = SnapshotPrepare {
        key: key.to_string(),
        parent: parent.to_string(),
        snapshotter: sn_name.to_string(),
    };
    publish(t.shared, t.ns, "/snapshot/prepare", to_any(&ev)).await;
    Ok((id, mounts))
}

/// Remove a snapshot (record, then directory) and publish `/snapshot/remove`.
pub(super) async fn remove_snapshot(
    shared: &Shared,
    ns: &str,
    sn_name: &str,
    key: &str,
) -> Result<(), Status> {
    let (sn_name, sn) = shared.ctx.images.snapshotter(sn_name)?;
    let rec = shared.ctx.store.remove_snapshot(sn_name, ns, key).await?;
    let id = rec.id;
    let removed = tokio::task::spawn_blocking(move || sn.remove(id))
        .await
        .map_err(join_err)?;
    if let Err(e) = removed {
        tracing::info!(error = %e, "snapshot directory left for the garbage collector");
    }
    let ev = SnapshotRemove {
        key: key.to_string(),
        snapshotter: sn_name.to_string(),
    };
    publish(shared, ns, "/snapshot/remove", to_any(&ev)).await;
    Ok(())
}

/// Apply one layer (blocking): follow the blob to its verified end.
fn apply_blocking(
    desc: &Descriptor,
    cell: Arc<BlobCell>,
    cancel: Arc<AtomicBool>,
    mounts: &[Mount],
    max_size: u64,
) -> Result<berth_image::Applied, String> {
    let mut follow = Follow::new(cell, cancel);
    let (compression, mut reader) = match Compression::from_media_type(&desc.media_type) {
        Some(c) => (c, std::io::BufReader::with_capacity(1 << 20, &mut follow)),
        None => Compression::detect(&mut follow).map_err(|e| e.to_string())?,
    };
    let applied = berth_image::unpack::apply_to_mounts(
        mounts,
        &mut reader,
        compression,
        &ApplyOptions {
            max_size,
            ..ApplyOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    // To the verified end of the blob (padding after the tar, the end of the download).
    let mut sink = [0u8; 64 << 10];
    loop {
        match reader.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(applied)
}

/// Unpack `layers` (descriptor and source, base first) with `diff_ids` into snapshotter `sn_name`; returns
/// the top chain id.
pub(super) async fn unpack_layers(
    t: &Target<'_>,
    sn_name: &'static str,
    layers: &[(Descriptor, Arc<BlobCell>)],
    diff_ids: &[String],
    config: &Descriptor,
    recorded: &(dyn Fn(LeaseResource) + Send + Sync),
) -> Result<String, Status> {
    if layers.len() != diff_ids.len() {
        return Err(Status::invalid_argument(format!(
            "{}: config {} lists {} diff ids for {} layers",
            t.reference,
            config.digest,
            diff_ids.len(),
            layers.len()
        )));
    }
    let (_, sn) = t.shared.ctx.images.snapshotter(sn_name)?;
    let chains = berth_image::oci::chain_ids(diff_ids);
    let store = &t.shared.ctx.store;
    for (i, (desc, cell)) in layers.iter().enumerate() {
        let chain = chains[i].clone();
        let parent = if i == 0 {
            String::new()
        } else {
            chains[i - 1].clone()
        };
        let lock = t.shared.chain_lock(format!("{}/{sn_name}/{chain}", t.ns));
        let _one = lock.lock().await;
        let exists = {
            let (s, ns, c) = (store.clone(), t.ns.to_string(), chain.clone());
            crate::store::blocking(move || s.get_snapshot(sn_name, &ns, &c)).await?
        };
        if exists.is_some() {
            if let Some(l) = t.lease {
                store
                    .add_lease_resource(
                        t.ns,
                        l,
                        LeaseResource {
                            id: chain.clone(),
                            r#type: res_snapshots(sn_name),
                        },
                    )
                    .await?;
            }
            continue;
        }
        let key = extract_key(&chain);
        let snap_labels = HashMap::from([(labels::SNAPSHOT_REF.to_string(), chain.clone())]);
        let (_, mounts) = prepare(t, sn_name, &sn, &key, &parent, snap_labels.clone()).await?;
        let (d2, c2, cancel) = (desc.clone(), cell.clone(), t.cancel.clone());
        let max_size = t.shared.ctx.config.max_unpacked_layer_size;
        let applied =
            tokio::task::spawn_blocking(move || apply_blocking(&d2, c2, cancel, &mounts, max_size))
                .await
                .map_err(join_err)?;
        let applied = match applied {
            Ok(a) if a.diff_id.as_str() == diff_ids[i] => a,
            Ok(a) => {
                let _ = remove_snapshot(t.shared, t.ns, sn_name, &key).await;
                return Err(Status::failed_precondition(format!(
                    "{}: layer {} unpacked to {}, but the config says {} (wrong diff id)",
                    t.reference, desc.digest, a.diff_id, diff_ids[i]
                )));
            }
            Err(e) => {
                let _ = remove_snapshot(t.shared, t.ns, sn_name, &key).await;
                let status = if e.contains("digest mismatch") || e.contains("size mismatch") {
                    Status::failed_precondition
                } else if e.contains("given up") || e.contains("failed") {
                    Status::aborted
                } else {
                    Status::invalid_argument
                };
                return Err(status(format!(
                    "{}: unpacking layer {} into {sn_name}: {e}",
                    t.reference, desc.digest
                )));
            }
        };
        crate::failpoint::hit_async("pull.unpack.before_commit").await;
        match store
            .commit_snapshot(
                sn_name,
                t.ns,
                &key,
                &chain,
                snap_labels,
                t.lease.map(str::to_string),
            )
            .await
        {
            Ok(rec) => {
                let (id, sn2) = (rec.id, sn.clone());
                tokio::task::spawn_blocking(move || sn2.commit(id))
                    .await
                    .map_err(join_err)?
                    .map_err(image_status)?;
                let ev = SnapshotCommit {
                    key: key.clone(),
                    name: chain.clone(),
                    snapshotter: sn_name.to_string(),
                };
                publish(t.shared, t.ns, "/snapshot/commit", to_any(&ev)).await;
            }
            Err(StoreError::AlreadyExists(_)) => {
                remove_snapshot(t.shared, t.ns, sn_name, &key).await?;
            }
            Err(e) => {
                let _ = remove_snapshot(t.shared, t.ns, sn_name, &key).await;
                return Err(e.into());
            }
        }
        tracing::debug!(chain = %chain, layer = %desc.digest, "layer unpacked");
        store
            .update_content(
                t.ns,
                &desc.digest,
                HashMap::from([(
                    labels::UNCOMPRESSED.to_string(),
                    applied.diff_id.to_string(),
                )]),
                vec![format!("labels.{}", labels::UNCOMPRESSED)],
            )
            .await?;
    }
    let top = chains.last().cloned().unwrap_or_default();
    if !top.is_empty() {
        let key = labels::snapshot_ref(sn_name);
        store
            .update_content(
                t.ns,
                &config.digest,
                HashMap::from([(key.clone(), top.clone())]),
                vec![format!("labels.{key}")],
            )
            .await?;
        recorded(LeaseResource {
            id: top.clone(),
            r#type: res_snapshots(sn_name),
        });
    }
    Ok(top)
}

/// One unpack of a pull (layers followed while they download).
pub(super) async fn unpack_pulled(cx: Arc<JobCtx>, u: Unpack, full: Full) -> Result<(), Status> {
    let layers: Vec<(Descriptor, Arc<BlobCell>)> = {
        let cells = cx.cells.lock().unwrap_or_else(|e| e.into_inner());
        full.manifest
            .layers
            .iter()
            .map(|l| {
                let cell = cells
                    .get(&l.digest)
                    .cloned()
                    .unwrap_or_else(|| BlobCell::new(l.clone()));
                (l.clone(), cell)
            })
            .collect()
    };
    let t = Target {
        shared: &cx.shared,
        ns: &cx.ns,
        lease: Some(&cx.lease),
        reference: &cx.plan.reference,
        cancel: cx.js.cancel_flag(),
    };
    let rec = |r: LeaseResource| cx.recorded(r);
    unpack_layers(
        &t,
        u.snapshotter,
        &layers,
        &full.config.rootfs.diff_ids,
        &full.manifest.config,
        &rec,
    )
    .await
    .map(|_| ())
}

fn read_json<T: serde::de::DeserializeOwned>(shared: &Shared, d: &Descriptor) -> Result<T, Status> {
    let dg = Digest::parse(&d.digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let size = usize::try_from(d.size).unwrap_or(0).max(1);
    let bytes = shared
        .ctx
        .images
        .content()
        .read_at(&dg, 0, size)
        .map_err(image_status)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Status::invalid_argument(format!("{} {}: {e}", d.media_type, d.digest)))
}

/// Unpack an image whose blobs are all stored (an import): the manifest for each unpack's platform.
pub(super) async fn unpack_stored(
    shared: &Shared,
    ns: &str,
    lease: Option<String>,
    root: &Descriptor,
    unpacks: &[Unpack],
) -> Result<(), Status> {
    for u in unpacks {
        let manifest_desc = if media::is_index(&root.media_type) {
            let idx: Index = read_json(shared, root)?;
            match idx.select(&u.platform) {
                Some(d) => d.clone(),
                None => continue,
            }
        } else {
            root.clone()
        };
        let m: Manifest = read_json(shared, &manifest_desc)?;
        let config: ImageConfig = read_json(shared, &m.config)?;
        if !u.platform.matches(&config.platform()) {
            continue;
        }
        let content = shared.ctx.images.content();
        let mut layers = Vec::new();
        for l in &m.layers {
            let cell = BlobCell::new(l.clone());
            let dg =
                Digest::parse(&l.digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
            cell.done(content.blob_path(&dg));
            layers.push((l.clone(), cell));
        }
        let t = Target {
            shared,
            ns,
            lease: lease.as_deref(),
            reference: &manifest_desc.digest,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        unpack_layers(
            &t,
            u.snapshotter,
            &layers,
            &config.rootfs.diff_ids,
            &m.config,
            &|_| {},
        )
        .await?;
    }
    Ok(())
}
