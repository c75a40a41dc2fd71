//! The Berth records behind CRI's pods and containers: a container record with its rootfs snapshot (created
//! through berthd's own Containers and Snapshots services, in process), its task as the task layer reports
//! it, killing with a grace period, and removal of all three. Missing pieces are fine for every removal (the
//! kubelet retries them).
//!
//! This module must never leave a snapshot without its record after a failed create.

use std::collections::HashMap;

use berth_proto::containerd::containers::containers_server::Containers as _;
use berth_proto::containerd::snapshots::snapshots_server::Snapshots as _;
use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use berth_proto::containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest,
};
use berth_proto::containerd_client::types::v1::Status as TaskStatus;
use berth_proto::containerd_client::types::Mount;
use tonic::{Code, Status};

use super::images::Resolved;
use super::{ns_request, task_status, Cri, NAMESPACE};
use crate::services::containers::ContainersService;
use crate::services::snapshots::SnapshotsService;
use crate::store::SnapshotPin;
use crate::tasks::TaskError;

/// containerd's runtime name; berthd maps it to berth-shim.
const RUNTIME: &str = "io.containerd.runc.v2";
/// The snapshotter CRI records use (the record names it; GC pins must match it).
const SNAPSHOTTER: &str = "overlayfs";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// The Berth container record of a CRI pod or container on snapshot `id`.
fn record(
    id: &str,
    image: &Resolved,
    spec: &serde_json::Value,
    labels: HashMap<String, String>,
    ext: (&str, prost_types::Any),
) -> Result<Container, Status> {
    let spec_bytes = serde_json::to_vec(spec)
        .map_err(|e| Status::internal(format!("encoding the spec: {e}")))?;
    Ok(Container {
        id: id.to_string(),
        labels,
        image: image
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.clone()),
        runtime: Some(Runtime {
            name: RUNTIME.to_string(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: SPEC_TYPE.to_string(),
            value: spec_bytes,
        }),
        snapshotter: SNAPSHOTTER.to_string(),
        snapshot_key: id.to_string(),
        extensions: HashMap::from([(ext.0.to_string(), ext.1)]),
        ..Default::default()
    })
}

/// Create a Berth container record with its rootfs snapshot; answers the snapshot's mounts. The two are
/// written at once (the record does not need the snapshot to exist, and their commits then share one fsync);
/// when either fails the other is undone, so neither outlives a failed create.
pub(super) async fn create_record(
    cri: &Cri,
    id: &str,
    image: &Resolved,
    spec: &serde_json::Value,
    labels: HashMap<String, String>,
    ext: (&str, prost_types::Any),
) -> Result<Vec<Mount>, Status> {
    // Pinned until this returns: then the record names the snapshot, or the snapshot was undone.
    let _pin = cri.ctx().store.pin_snapshot(NAMESPACE, SNAPSHOTTER, id);
    let snapshots = SnapshotsService::new(cri.ctx().clone());
    let prepare = snapshots.prepare(ns_request(PrepareSnapshotRequest {
        snapshotter: SNAPSHOTTER.to_string(),
        key: id.to_string(),
        parent: image.chain_id.clone(),
        labels: HashMap::new(),
    }));
    let container = record(id, image, spec, labels, ext)?;
    let containers = ContainersService::new(cri.ctx().clone(), cri.tasks().clone());
    let create = containers.create(ns_request(CreateContainerRequest {
        container: Some(container),
    }));
    match tokio::join!(prepare, create) {
        (Ok(p), Ok(_)) => Ok(p.into_inner().mounts),
        (Ok(_), Err(e)) => {
            remove_snapshot(cri, id).await;
            Err(e)
        }
        (Err(e), created) => {
            if created.is_ok() {
                let undo = containers
                    .delete(ns_request(DeleteContainerRequest { id: id.to_string() }))
                    .await;
                if let Err(u) = undo {
                    tracing::error!(namespace = NAMESPACE, container_id = id, error = %u,
                        "cannot remove the record of a create whose snapshot failed");
                }
            }
            Err(e)
        }
    }
}

/// Prepare a record's rootfs snapshot on its image; the snapshot's mounts (a spec may need files of the
/// rootfs) and a pin that keeps GC off the snapshot: hold it until [`record_on_snapshot`] returns (a GC
/// run after some other delete would otherwise collect the snapshot no record names yet). Undo it with
/// [`remove_snapshot`] if no record follows.
pub(super) async fn prepare_snapshot(
    cri: &Cri,
    id: &str,
    image: &Resolved,
) -> Result<(Vec<Mount>, SnapshotPin), Status> {
    let pin = cri.ctx().store.pin_snapshot(NAMESPACE, SNAPSHOTTER, id);
    let mounts = SnapshotsService::new(cri.ctx().clone())
        .prepare(ns_request(PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: id.to_string(),
            parent: image.chain_id.clone(),
            labels: HashMap::new(),
        }))
        .await?
        .into_inner()
        .mounts;
    Ok((mounts, pin))
}

/// Create a Berth container record on the snapshot [`prepare_snapshot`] made (removing the snapshot if the
/// record fails).
pub(super) async fn record_on_snapshot(
    cri: &Cri,
    id: &str,
    image: &Resolved,
    spec: &serde_json::Value,
    labels: HashMap<String, String>,
    ext: (&str, prost_types::Any),
) -> Result<(), Status> {
    let container = record(id, image, spec, labels, ext)?;
    let created = ContainersService::new(cri.ctx().clone(), cri.tasks().clone())
        .create(ns_request(CreateContainerRequest {
            container: Some(container),
        }))
        .await;
    if let Err(e) = created {
        remove_snapshot(cri, id).await;
        return Err(e);
    }
    Ok(())
}

pub(super) async fn remove_snapshot(cri: &Cri, id: &str) {
    let r = SnapshotsService::new(cri.ctx().clone())
        .remove(ns_request(RemoveSnapshotRequest {
            snapshotter: String::new(),
            key: id.to_string(),
        }))
        .await;
    if let Err(e) = r {
        if e.code() != Code::NotFound {
            tracing::warn!(namespace = NAMESPACE, container_id = id, error = %e, "cannot remove a snapshot");
        }
    }
}

/// The rootfs mounts of a record's snapshot.
pub(super) async fn rootfs(cri: &Cri, id: &str) -> Result<Vec<Mount>, Status> {
    Ok(SnapshotsService::new(cri.ctx().clone())
        .mounts(ns_request(MountsRequest {
            snapshotter: String::new(),
            key: id.to_string(),
        }))
        .await?
        .into_inner()
        .mounts)
}

/// Delete a record's task (killed first), the record and its snapshot; missing pieces are fine.
pub(super) async fn remove_record(cri: &Cri, id: &str) -> Result<(), Status> {
    kill_and_wait(cri, id, libc::SIGKILL as u32, None).await?;
    match cri.tasks().delete(NAMESPACE, id).await {
        Ok(_) | Err(TaskError::TaskNotFound(_)) => {}
        Err(e) => return Err(task_status(e)),
    }
    tracing::debug!(phase = "task deleted", container_id = id, "remove");
    // Record and snapshot at once (one fsync for both): a snapshot gone before its record is fine, as a
    // retried remove finds the record and takes a missing snapshot for removed.
    let svc = ContainersService::new(cri.ctx().clone(), cri.tasks().clone());
    let delete = svc.delete(ns_request(DeleteContainerRequest { id: id.to_string() }));
    let (deleted, ()) = tokio::join!(delete, remove_snapshot(cri, id));
    match deleted {
        Ok(_) => {}
        Err(e) if e.code() == Code::NotFound => {}
        Err(e) => return Err(e),
    }
    super::stream::remove_stdin(cri, id).await;
    cri.forget_sample(id);
    Ok(())
}

/// The task's process, None when it has no task.
pub(super) async fn task(
    cri: &Cri,
    id: &str,
) -> Result<Option<berth_proto::containerd_client::types::v1::Process>, Status> {
    match cri.tasks().get(NAMESPACE, id, String::new()).await {
        Ok(p) => Ok(Some(p)),
        Err(TaskError::TaskNotFound(_)) => Ok(None),
        Err(e) => Err(task_status(e)),
    }
}

/// Signal a running task and wait for its exit; after `grace` (when given) SIGKILL it. No task or a stopped
/// one is fine.
pub(super) async fn kill_and_wait(
    cri: &Cri,
    id: &str,
    signal: u32,
    grace: Option<std::time::Duration>,
) -> Result<(), Status> {
    let Some(p) = task(cri, id).await? else {
        return Ok(());
    };
    let status = TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown);
    if status == TaskStatus::Stopped {
        return Ok(());
    }
    let kill = |signal: u32| crate::tasks::Kill {
        exec_id: String::new(),
        signal,
        all: false,
    };
    let tasks = cri.tasks();
    // A kill that fails because the process exited meanwhile (the runtime says "stopped", the shim may say
    // NotFound or something vaguer) is a success once the exit is seen.
    let killed = |r: Result<(), TaskError>| async move {
        match r {
            Ok(()) | Err(TaskError::TaskNotFound(_)) => Ok(()),
            // The task layer may take the exit in a moment after the runtime saw it.
            Err(e) => match tokio::time::timeout(
                std::time::Duration::from_secs(2),
                cri.tasks().wait(NAMESPACE, id, ""),
            )
            .await
            {
                Ok(Ok(_)) | Ok(Err(TaskError::TaskNotFound(_))) => Ok(()),
                _ => Err(task_status(e)),
            },
        }
    };
    killed(tasks.kill(NAMESPACE, id, kill(signal)).await).await?;
    if signal != libc::SIGKILL as u32 {
        let waited = match grace {
            Some(g) => tokio::time::timeout(g, tasks.wait(NAMESPACE, id, ""))
                .await
                .ok(),
            None => Some(tasks.wait(NAMESPACE, id, "").await),
        };
        if waited.is_some() {
            return Ok(());
        }
        killed(tasks.kill(NAMESPACE, id, kill(libc::SIGKILL as u32)).await).await?;
    }
    match tasks.wait(NAMESPACE, id, "").await {
        Ok(_) | Err(TaskError::TaskNotFound(_)) => Ok(()),
        Err(e) => Err(task_status(e)),
    }
}
