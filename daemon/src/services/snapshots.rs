//! containerd `Snapshots` service for the `overlayfs` (default) and `native` snapshotters: Prepare, View,
//! Mounts, Commit, Remove, Stat, Update, List, Usage, Cleanup. Publishes `/snapshot/prepare|commit|remove`.
//!
//! Records (keys, parents, kinds, labels) are in the metadata store (`store/snapshots.rs`), directories in
//! berth-image's snapshotters; a Prepare plans the record, makes the directory, then records it, holding the
//! GC lock in between so GC never takes the fresh directory for garbage. Keys are free-form. This module must
//! never return mounts for a committed snapshot (they are parents, not mountable), as containerd.

use std::pin::Pin;

use berth_proto::containerd::snapshots::snapshots_server::Snapshots;
use berth_proto::to_any;
use containerd_client::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use containerd_client::services::v1::snapshots::{
    CleanupRequest, CommitSnapshotRequest, Info, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
    UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
};
use containerd_client::types::Mount;
use futures::Stream;
use std::collections::HashMap;
use tonic::{Request, Response, Status};

use super::{mask_paths, parse_filters};
use crate::context::Context;
use crate::images::status as image_status;
use crate::namespace::{lease_from, namespace_from, validate_labels};
use crate::store::blocking;
use crate::store::snapshots::{SnapshotKind, SnapshotRecord};

/// Label naming the snapshot a Prepare is meant to be committed as.
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";

/// The Snapshots service.
#[derive(Debug, Clone)]
pub struct SnapshotsService {
    ctx: Context,
}

impl SnapshotsService {
    /// Over the shared context.
    pub fn new(ctx: Context) -> Self {
        SnapshotsService { ctx }
    }

    async fn publish(&self, ns: &str, topic: &str, ev: prost_types::Any) {
        if let Err(e) = self.ctx.events.publish(ns, topic, ev).await {
            tracing::error!(namespace = ns, topic, error = %e, "cannot publish event");
        }
    }

    /// Prepare or View: plan the record, make the directory, record it (see the module doc).
    async fn create(
        &self,
        md: &tonic::metadata::MetadataMap,
        snapshotter: &str,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
        kind: SnapshotKind,
    ) -> Result<Vec<Mount>, Status> {
        let ns = namespace_from(md)?;
        let lease = lease_from(md);
        if key.is_empty() {
            return Err(Status::invalid_argument("snapshot key must not be empty"));
        }
        validate_labels(&labels)?;
        let (name, sn) = self.ctx.images.snapshotter(snapshotter)?;
        // containerd's unpackers prepare with the snapshot they mean to commit to in this label and take
        // AlreadyExists as "that layer is unpacked already".
        if let Some(target) = labels.get(LABEL_SNAPSHOT_REF) {
            let (store, ns2, t) = (self.ctx.store.clone(), ns.clone(), target.clone());
            if blocking(move || store.get_snapshot(name, &ns2, &t))
                .await?
                .is_some()
            {
                return Err(Status::already_exists(format!(
                    "target snapshot {target:?}: already exists"
                )));
            }
        }
        let images = self.ctx.images.clone();
        let _hold = images.hold().await;
        let plan = self
            .ctx
            .store
            .plan_snapshot(name, &ns, &key, &parent)
            .await?;
        let (id, parents) = (plan.id, plan.parents.clone());
        let sn2 = sn.clone();
        let mounts = tokio::task::spawn_blocking(move || sn2.create(id, kind.storage(), &parents))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(image_status)?;
        let recorded = self
            .ctx
            .store
            .insert_snapshot(name, &ns, &key, &parent, id, kind, labels, lease)
            .await;
        if let Err(e) = recorded {
            let _ = tokio::task::spawn_blocking(move || sn.remove(id)).await;
            return Err(e.into());
        }
        drop(_hold);
        let ev = SnapshotPrepare {
            key,
            parent,
            snapshotter: name.to_string(),
        };
        self.publish(&ns, "/snapshot/prepare", to_any(&ev)).await;
        Ok(mounts.into_iter().map(to_mount).collect())
    }
}

fn to_mount(m: berth_image::Mount) -> Mount {
    Mount {
        r#type: m.kind,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

fn info(key: String, rec: SnapshotRecord) -> Info {
    Info {
        name: key,
        parent: rec.parent,
        kind: rec.kind.wire(),
        created_at: Some(rec.created.timestamp()),
        updated_at: Some(rec.updated.timestamp()),
        labels: rec.labels,
    }
}

/// Filter fields of a snapshot (`name`, `parent`, `kind`, `labels.*`).
struct SnapshotFields {
    name: String,
    parent: String,
    kind: String,
    labels: HashMap<String, String>,
}
crate::fields!(SnapshotFields {
    name,
    parent,
    kind,
    labels
});

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let mounts = self
            .create(
                &md,
                &r.snapshotter,
                r.key,
                r.parent,
                r.labels,
                SnapshotKind::Active,
            )
            .await?;
        Ok(Response::new(PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        req: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let mounts = self
            .create(
                &md,
                &r.snapshotter,
                r.key,
                r.parent,
                r.labels,
                SnapshotKind::View,
            )
            .await?;
        Ok(Response::new(ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        req: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let (name, sn) = self.ctx.images.snapshotter(&r.snapshotter)?;
        let store = self.ctx.store.clone();
        let key = r.key.clone();
        let (rec, parents) = blocking(move || store.snapshot_with_parents(name, &ns, &key)).await?;
        if rec.kind == SnapshotKind::Committed {
            return Err(Status::failed_precondition(format!(
                "snapshot {:?} is committed: only active snapshots and views have mounts",
                r.key
            )));
        }
        let mounts = sn
            .mounts(rec.id, rec.kind.storage(), &parents)
            .into_iter()
            .map(to_mount)
            .collect();
        Ok(Response::new(MountsResponse { mounts }))
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        let lease = lease_from(req.metadata());
        let r = req.into_inner();
        validate_labels(&r.labels)?;
        if r.name.is_empty() {
            return Err(Status::invalid_argument("snapshot name must not be empty"));
        }
        let (name, sn) = self.ctx.images.snapshotter(&r.snapshotter)?;
        let rec = self
            .ctx
            .store
            .commit_snapshot(name, &ns, &r.key, &r.name, r.labels, lease)
            .await?;
        let id = rec.id;
        tokio::task::spawn_blocking(move || sn.commit(id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(image_status)?;
        let ev = SnapshotCommit {
            key: r.key,
            name: r.name,
            snapshotter: name.to_string(),
        };
        self.publish(&ns, "/snapshot/commit", to_any(&ev)).await;
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let (name, sn) = self.ctx.images.snapshotter(&r.snapshotter)?;
        let rec = self.ctx.store.remove_snapshot(name, &ns, &r.key).await?;
        let id = rec.id;
        // The directory goes now if nothing is mounted in it; otherwise GC takes it later.
        let removed = tokio::task::spawn_blocking(move || sn.remove(id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Err(e) = removed {
            tracing::info!(error = %e, "snapshot directory left for the garbage collector");
        }
        let ev = SnapshotRemove {
            key: r.key,
            snapshotter: name.to_string(),
        };
        self.publish(&ns, "/snapshot/remove", to_any(&ev)).await;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let (name, _) = self.ctx.images.snapshotter(&r.snapshotter)?;
        let store = self.ctx.store.clone();
        let key = r.key.clone();
        let rec = blocking(move || store.get_snapshot(name, &ns, &key))
            .await?
            .ok_or_else(|| Status::not_found(format!("snapshot {:?}: not found", r.key)))?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(info(r.key, rec)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let (name, _) = self.ctx.images.snapshotter(&r.snapshotter)?;
        let i = r
            .info
            .ok_or_else(|| Status::invalid_argument("info is required"))?;
        validate_labels(&i.labels)?;
        let rec = self
            .ctx
            .store
            .update_snapshot(name, &ns, &i.name, i.labels, mask_paths(r.update_mask))
            .await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(info(i.name, rec)),
        }))
    }

    type ListStream = BoxStream<ListSnapshotsResponse>;

    async fn list(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let (name, _) = self.ctx.images.snapshotter(&r.snapshotter)?;
        let filter = parse_filters(&r.filters)?;
        let store = self.ctx.store.clone();
        let infos: Vec<Info> = blocking(move || store.list_snapshots(name, &ns))
            .await?
            .into_iter()
            .filter(|(key, rec)| {
                filter.matches(&SnapshotFields {
                    name: key.clone(),
                    parent: rec.parent.clone(),
                    kind: rec.kind.name().to_string(),
                    labels: rec.labels.clone(),
                })
            })
            .map(|(k, rec)| info(k, rec))
            .collect();
        let batches: Vec<Result<ListSnapshotsResponse, Status>> = infos
            .chunks(100)
            .map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(&self, req: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let (name, sn) = self.ctx.images.snapshotter(&r.snapshotter)?;
        let store = self.ctx.store.clone();
        let key = r.key.clone();
        let rec = blocking(move || store.get_snapshot(name, &ns, &key))
            .await?
            .ok_or_else(|| Status::not_found(format!("snapshot {:?}: not found", r.key)))?;
        let u = tokio::task::spawn_blocking(move || sn.usage(rec.id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(image_status)?;
        Ok(Response::new(UsageResponse {
            size: u.size as i64,
            inodes: u.inodes as i64,
        }))
    }

    async fn cleanup(&self, req: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        namespace_from(req.metadata())?;
        let r = req.into_inner();
        self.ctx.images.snapshotter(&r.snapshotter)?;
        // Directories without a record are what a collection removes.
        self.ctx.images.gc_now().await?;
        Ok(Response::new(()))
    }
}
