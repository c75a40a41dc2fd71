//! `images check` and `images mount`: what berth learns and does with an image locally, from
//! the content and snapshot stores (no Transfer).
//!
//! A mount is held by a lease named after its target until `images unmount`; this module must
//! never remove a snapshot it did not create for a mount.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    PrepareSnapshotRequest, RemoveSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::{
    CreateRequest, DeleteRequest, InfoRequest, ListImagesRequest,
};
use serde_json::json;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::image;
use crate::output::{labels_cell, ListOpts, Listing};

/// `images check`: every blob present? unpacked?
pub async fn check(client: &Client, snapshotter: &str, list: &ListOpts) -> Result<()> {
    let mut all = client
        .images()
        .list(client.req(ListImagesRequest::default()))
        .await
        .map_err(Error::rpc("list images"))?
        .into_inner()
        .images;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Listing::new(&["REF", "STATUS", "BLOBS", "UNPACKED", "LABELS"]);
    for img in all {
        let name = img.name.clone();
        let labels = labels_cell(&img.labels);
        let (status, present, total, unpacked) = match image::resolve(client, img).await {
            Ok(r) => {
                let mut present = 0;
                let blobs: Vec<&str> = std::iter::once(r.config_desc.digest.as_str())
                    .chain(r.layers.iter().map(|l| l.digest.as_str()))
                    .collect();
                for d in &blobs {
                    let info = client
                        .content()
                        .info(client.req(InfoRequest {
                            digest: d.to_string(),
                        }))
                        .await;
                    if info.is_ok() {
                        present += 1;
                    }
                }
                let unpacked = image::snapshot_exists(client, snapshotter, &r.chain_id()).await?;
                let status = if present == blobs.len() {
                    "complete"
                } else {
                    "incomplete"
                };
                (status, present, blobs.len(), unpacked)
            }
            Err(_) => ("incomplete", 0, 0, false),
        };
        out.push(
            name.clone(),
            vec![
                name.clone(),
                status.into(),
                format!("{present}/{total}"),
                unpacked.to_string(),
                labels,
            ],
            json!({ "name": name, "status": status, "blobs_present": present, "blobs": total, "unpacked": unpacked }),
        );
    }
    out.print(list);
    Ok(())
}

/// The snapshot key and lease id for a mount target.
pub fn mount_key(target: &std::path::Path) -> String {
    let abs = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    format!("berth-mount {}", abs.display())
}

/// `images mount`: a view (or an active snapshot with --rw) of the image, held by a lease
/// named after the target until `images unmount`.
pub async fn mount(
    client: &Client,
    rw: bool,
    snapshotter: &str,
    reference: &str,
    target: &std::path::Path,
) -> Result<()> {
    if !target.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a directory",
            target.display()
        )));
    }
    let img = image::find_image(client, reference)
        .await?
        .ok_or_else(|| Error::Rpc {
            what: format!("image {reference}"),
            status: tonic::Status::not_found("not found"),
        })?;
    let resolved = image::resolve(client, img).await?;
    let key = mount_key(target);
    let lease = client
        .leases()
        .create(client.req(CreateRequest {
            id: key.clone(),
            labels: HashMap::new(),
        }))
        .await
        .map_err(Error::rpc(format!("create lease {key}")))?
        .into_inner()
        .lease
        .unwrap_or_default();
    let leased = client.with_lease(&lease.id);
    let result = async {
        let chain = image::unpack(&leased, &resolved, snapshotter).await?;
        let mounts = if rw {
            leased
                .snapshots()
                .prepare(leased.req(PrepareSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.clone(),
                    parent: chain,
                    labels: HashMap::new(),
                }))
                .await
                .map_err(Error::rpc(format!("prepare snapshot {key}")))?
                .into_inner()
                .mounts
        } else {
            leased
                .snapshots()
                .view(leased.req(ViewSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.clone(),
                    parent: chain,
                    labels: HashMap::new(),
                }))
                .await
                .map_err(Error::rpc(format!("view snapshot {key}")))?
                .into_inner()
                .mounts
        };
        crate::mount::mount_all(&mounts, target, !rw)
    }
    .await;
    if let Err(e) = result {
        let _ = client
            .snapshots()
            .remove(client.req(RemoveSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.clone(),
            }))
            .await;
        let _ = client
            .leases()
            .delete(client.req(DeleteRequest {
                id: key,
                sync: false,
            }))
            .await;
        return Err(e);
    }
    println!("{}", target.display());
    Ok(())
}
