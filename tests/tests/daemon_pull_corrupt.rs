//! A layer corrupted in the registry's own storage (same size, other bytes): the Transfer pull fails with
//! FailedPrecondition naming the layer's digest, and nothing of it stays: no image, no blob, no snapshot,
//! no ingest, no lease, no mount; berthd keeps serving (a good image pulls fine afterwards). Root only.

use std::path::{Path, PathBuf};

use berth_proto::containerd_client::services::v1::content_client::ContentClient;
use berth_proto::containerd_client::services::v1::images_client::ImagesClient;
use berth_proto::containerd_client::services::v1::leases_client::LeasesClient;
use berth_proto::containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use berth_proto::containerd_client::services::v1::snapshots::ListSnapshotsRequest;
use berth_proto::containerd_client::services::v1::{
    ListContentRequest, ListImagesRequest, ListRequest, ListStatusesRequest,
};
use berth_tests::oci_layout::{busybox_layer_tar, busybox_layout, write_image, TarBuilder};
use berth_tests::registry::Registry;
use berth_tests::task_fixture::TaskFixture;
use berth_tests::transfer::{PullOptions, Transfer};
use serde_json::json;

/// Where docker-registry's filesystem driver keeps a blob's bytes.
fn stored_blob(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_layer_fails_naming_its_digest_and_leaves_nothing() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dp-corrupt", "");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let mut extra = TarBuilder::new();
    extra.file("payload", 0o644, &vec![7u8; 512 << 10]);
    let layout = write_image(
        &fx.dir.join("layout"),
        &[busybox_layer_tar(), extra.finish()],
        json!({}),
        "latest",
    );
    registry.push_oci_layout(&layout.path, "bad:latest");
    let victim = &layout.layers[1];
    let path = stored_blob(&registry.storage, &victim.digest);
    let mut bytes = std::fs::read(&path).expect("stored layer");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).expect("corrupt the stored layer");

    let channel = fx.channel().await;
    let t = Transfer::new(channel.clone(), &fx.ns);
    let reference = registry.reference("bad:latest");
    let err = t
        .pull(&reference, &PullOptions::default())
        .await
        .expect_err("a corrupt layer must fail the pull");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&victim.digest),
        "names the digest: {err:?}"
    );

    let ns = fx.ns.clone();
    let images = ImagesClient::new(channel.clone())
        .list(berth_tests::grpc::req(&ns, ListImagesRequest::default()))
        .await
        .expect("images")
        .into_inner()
        .images;
    assert!(images.is_empty(), "no image: {images:?}");
    let mut blobs = Vec::new();
    let mut s = ContentClient::new(channel.clone())
        .list(berth_tests::grpc::req(&ns, ListContentRequest::default()))
        .await
        .expect("content list")
        .into_inner();
    while let Some(m) = s.message().await.expect("content stream") {
        blobs.extend(m.info);
    }
    assert!(blobs.is_empty(), "no blob recorded: {blobs:?}");
    let ingests = ContentClient::new(channel.clone())
        .list_statuses(berth_tests::grpc::req(
            &ns,
            ListStatusesRequest {
                filters: vec![String::new()],
            },
        ))
        .await
        .expect("statuses")
        .into_inner()
        .statuses;
    assert!(ingests.is_empty(), "no ingest: {ingests:?}");
    let mut snaps = Vec::new();
    let mut s = SnapshotsClient::new(channel.clone())
        .list(berth_tests::grpc::req(
            &ns,
            ListSnapshotsRequest {
                snapshotter: "overlayfs".into(),
                filters: Vec::new(),
            },
        ))
        .await
        .expect("snapshots")
        .into_inner();
    while let Some(m) = s.message().await.expect("snapshot stream") {
        snaps.extend(m.info);
    }
    assert!(snaps.is_empty(), "no snapshot: {snaps:?}");
    let leases = LeasesClient::new(channel.clone())
        .list(berth_tests::grpc::req(&ns, ListRequest::default()))
        .await
        .expect("leases")
        .into_inner()
        .leases;
    assert!(leases.is_empty(), "no lease: {leases:?}");
    // Nothing on disk either (the bytes went with their records).
    let root = fx.daemon.root();
    let left: Vec<_> = walk(&root.join("content"));
    assert!(left.is_empty(), "files left in the content store: {left:?}");
    let dirs: Vec<_> = std::fs::read_dir(root.join("snapshots/overlayfs"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "snapshot dirs left: {dirs:?}");
    assert!(berth_tests::mounts_below(fx.dir.path()).is_empty());

    // berthd keeps serving.
    let good = busybox_layout(&fx.dir.join("good"));
    registry.push_oci_layout(&good.path, "good:latest");
    t.pull(&registry.reference("good:latest"), &PullOptions::default())
        .await
        .expect("a good pull after the bad one");
    fx.guard.assert_clean();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
