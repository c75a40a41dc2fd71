//! The pull lease: everything a pull writes (blobs, ingests, snapshots) is held by one lease labelled with the
//! reference (`berth.io/pull`) and the berthd run (`berth.io/pull.run`), so garbage collection leaves it alone
//! until the image record (whose gc references keep what it needs) exists. After a success the lease is
//! deleted. After a failure it is kept (24 hours, containerd's pull lease expiry) with the verified blobs and
//! the partial ingests, so that the next pull of the reference adopts them and resumes; only half-applied
//! snapshots are removed. A blob that failed its digest check rolls the whole pull back instead: its lease,
//! its ingests and (after a synchronous collection) every blob nothing else references are gone.
//!
//! A lease of an earlier berthd run was interrupted by a crash: at start its half-applied snapshots are
//! removed ([`sweep_stale`]) and the next pull of its reference adopts the rest. This module must never
//! remove a committed snapshot or a blob another lease or image holds.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tonic::Status;

use super::job::JobCtx;
use super::Shared;
use crate::images::Images;
use crate::store::gc::LABEL_EXPIRE;
use crate::store::leases::{generate_lease_id, LeaseRecord, RES_CONTENT, RES_INGESTS};
use crate::store::snapshots::SnapshotKind;
use crate::store::{blocking, StoreError};

/// Label of a pull lease: the reference being pulled.
pub const LABEL_PULL: &str = "berth.io/pull";
/// Label of a pull lease: the berthd run that made it.
pub const LABEL_RUN: &str = "berth.io/pull.run";
/// How long a pull lease (and what an interrupted pull left) lives.
pub const EXPIRY: Duration = Duration::from_secs(24 * 3600);

fn expiry_label() -> String {
    let t = prost_types::Timestamp::from(SystemTime::now() + EXPIRY);
    crate::util::rfc3339::format(&t)
}

/// Create the lease of a pull of `reference` and adopt what earlier pulls of it left.
pub(super) async fn begin(shared: &Shared, ns: &str, reference: &str) -> Result<String, Status> {
    let id = generate_lease_id();
    let labels = HashMap::from([
        (LABEL_EXPIRE.to_string(), expiry_label()),
        (LABEL_PULL.to_string(), reference.to_string()),
        (LABEL_RUN.to_string(), shared.boot.clone()),
    ]);
    shared.ctx.store.create_lease(ns, &id, labels).await?;
    adopt(shared, ns, reference, &id).await?;
    Ok(id)
}

/// Move the resources of earlier leases of `reference` to `into` (dropping half-applied snapshots), then
/// delete those leases. Only one pull of a reference runs at a time, so every other such lease is a leftover.
async fn adopt(shared: &Shared, ns: &str, reference: &str, into: &str) -> Result<(), Status> {
    let store = shared.ctx.store.clone();
    let n = ns.to_string();
    let leases = blocking(move || store.list_leases(&n)).await?;
    for l in leases {
        if l.id == into || l.labels.get(LABEL_PULL).map(String::as_str) != Some(reference) {
            continue;
        }
        drop_unfinished_snapshots(shared, ns, &l).await;
        for r in &l.resources {
            if r.r#type.starts_with("snapshots/")
                && !snapshot_committed(shared, ns, &r.r#type, &r.id).await
            {
                continue;
            }
            shared
                .ctx
                .store
                .add_lease_resource(ns, into, r.clone())
                .await?;
        }
        match shared.ctx.store.delete_lease(ns, &l.id).await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(reference, lease = %l.id, "resuming what an interrupted pull left");
    }
    Ok(())
}

async fn snapshot_committed(shared: &Shared, ns: &str, rtype: &str, key: &str) -> bool {
    let Some(sn) = rtype.strip_prefix("snapshots/") else {
        return false;
    };
    let (store, sn, ns, key) = (
        shared.ctx.store.clone(),
        sn.to_string(),
        ns.to_string(),
        key.to_string(),
    );
    matches!(
        blocking(move || store.get_snapshot(&sn, &ns, &key)).await,
        Ok(Some(rec)) if rec.kind == SnapshotKind::Committed
    )
}

/// Remove the active (half-applied) snapshots a lease holds.
async fn drop_unfinished_snapshots(shared: &Shared, ns: &str, lease: &LeaseRecord) {
    for r in &lease.resources {
        let Some(sn) = r.r#type.strip_prefix("snapshots/") else {
            continue;
        };
        let (store, sn2, ns2, key) = (
            shared.ctx.store.clone(),
            sn.to_string(),
            ns.to_string(),
            r.id.clone(),
        );
        let rec = blocking(move || store.get_snapshot(&sn2, &ns2, &key)).await;
        if let Ok(Some(rec)) = rec {
            if rec.kind != SnapshotKind::Committed {
                match super::unpack::remove_snapshot(shared, ns, sn, &r.id).await {
                    Ok(()) => {
                        tracing::info!(snapshot = %r.id, namespace = ns, "removed a half-applied snapshot of an interrupted pull")
                    }
                    Err(e) => {
                        tracing::warn!(snapshot = %r.id, error = %e.message(), "removing a half-applied snapshot")
                    }
                }
            }
        }
    }
}

/// A pull succeeded: its lease goes (the image record now references what it needs).
pub(super) async fn finish_ok(cx: &JobCtx) {
    match cx.shared.ctx.store.delete_lease(&cx.ns, &cx.lease).await {
        Ok(()) | Err(StoreError::NotFound(_)) => {}
        Err(e) => tracing::warn!(lease = %cx.lease, error = %e, "deleting a pull lease"),
    }
}

/// A pull failed: keep what a retry can resume, or roll everything back after a corrupt blob.
pub(super) async fn finish_failed(cx: &JobCtx) {
    let (shared, ns) = (&cx.shared, cx.ns.as_str());
    let store = shared.ctx.store.clone();
    let (n, id) = (ns.to_string(), cx.lease.clone());
    let lease = match blocking(move || store.get_lease(&n, &id)).await {
        Ok(Some(l)) => l,
        _ => return,
    };
    drop_unfinished_snapshots(shared, ns, &lease).await;
    let corrupt = cx.corrupt_error().is_some();
    let keeps_data = lease
        .resources
        .iter()
        .any(|r| r.r#type == RES_CONTENT || r.r#type == RES_INGESTS);
    if !corrupt && keeps_data {
        tracing::info!(reference = %cx.plan.reference, lease = %cx.lease, "pull failed; keeping its data for a retry");
        return;
    }
    if corrupt {
        let content = shared.ctx.images.content().clone();
        let refs: Vec<String> = lease
            .resources
            .iter()
            .filter(|r| r.r#type == RES_INGESTS)
            .map(|r| Images::ingest_ref(ns, &r.id))
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for r in refs {
                // A writer thread of the failed pull may still be letting go of it.
                for _ in 0..50 {
                    match content.abort(&r) {
                        Err(berth_image::Error::Locked(_)) => {
                            std::thread::sleep(Duration::from_millis(100))
                        }
                        _ => break,
                    }
                }
            }
        })
        .await;
    }
    match shared.ctx.store.delete_lease(ns, &cx.lease).await {
        Ok(()) | Err(StoreError::NotFound(_)) => {}
        Err(e) => tracing::warn!(lease = %cx.lease, error = %e, "deleting a pull lease"),
    }
    if corrupt {
        // Nothing of a corrupt pull stays: collect now, not in 5 minutes.
        if let Err(e) = shared.ctx.images.gc_now().await {
            tracing::warn!(error = %e.message(), "collecting after a corrupt pull");
        }
    }
}

/// Remove the half-applied snapshots of pulls interrupted by an earlier berthd's death.
pub(super) async fn sweep_stale(shared: &Shared) -> Result<(), Status> {
    let store = shared.ctx.store.clone();
    let namespaces = blocking(move || store.namespaces()).await?;
    for ns in namespaces {
        let store = shared.ctx.store.clone();
        let n = ns.clone();
        for l in blocking(move || store.list_leases(&n)).await? {
            let stale = l.labels.contains_key(LABEL_PULL)
                && l.labels.get(LABEL_RUN).map(String::as_str) != Some(shared.boot.as_str());
            if stale {
                drop_unfinished_snapshots(shared, &ns, &l).await;
            }
        }
    }
    Ok(())
}
