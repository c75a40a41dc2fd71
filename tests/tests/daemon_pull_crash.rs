//! berthd SIGKILLed in the middle of a server-side pull (a failpoint right after a layer blob's commit, while
//! its snapshot is being applied and the other layer is still downloading) and started again: no half-applied snapshot is visible, every recorded
//! blob is complete and verified, and the next pull completes without fetching the committed blobs again,
//! resuming the partial one with a Range request. Root only.

use std::path::Path;
use std::time::Duration;

use berth_proto::containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use berth_proto::containerd_client::services::v1::snapshots::ListSnapshotsRequest;
use berth_tests::oci_layout::{busybox_layer_tar, sha256_digest, write_image, TarBuilder};
use berth_tests::registry::Registry;
use berth_tests::regproxy::Proxy;
use berth_tests::task_fixture::{write_config, TaskFixture};
use berth_tests::transfer::{PullOptions, Transfer};
use serde_json::json;

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Active snapshots (kind 2) of the namespace.
async fn active_snapshots(fx: &TaskFixture) -> Vec<String> {
    let mut s = SnapshotsClient::new(fx.channel().await)
        .list(berth_tests::grpc::req(
            &fx.ns,
            ListSnapshotsRequest {
                snapshotter: "overlayfs".into(),
                filters: Vec::new(),
            },
        ))
        .await
        .expect("snapshots")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.expect("snapshot stream") {
        out.extend(m.info.into_iter().filter(|i| i.kind == 2).map(|i| i.name));
    }
    out
}

/// Every file in the blob store hashes to its name.
fn blobs_verified(root: &Path) {
    let mut stack = vec![root.join("content")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "ingest") {
                    stack.push(p);
                }
                continue;
            }
            if p.parent()
                .and_then(|x| x.file_name())
                .is_some_and(|n| n == "sha256")
            {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let data = std::fs::read(&p).expect("read blob");
                assert_eq!(
                    sha256_digest(&data),
                    format!("sha256:{name}"),
                    "blob {} is not what its name says",
                    p.display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_pull_then_the_next_pull_resumes() {
    if !berth_tests::require_root() {
        return;
    }
    // berthd dies right after the first layer blob's commit, while that layer's snapshot is still being
    // applied (held before its commit) and the other layer downloads.
    let mut fx = TaskFixture::new(
        "dp-crash",
        "pull.blob_committed=exit;pull.unpack.before_commit=sleep(5000)",
    );
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let mut big = TarBuilder::new();
    big.file("big.bin", 0o644, &noise(5, 6 << 20));
    let layout = write_image(
        &fx.dir.join("layout"),
        &[busybox_layer_tar(), big.finish()],
        json!({}),
        "latest",
    );
    registry.push_oci_layout(&layout.path, "crash:latest");
    let proxy = Proxy::start(&registry.addr, None).await;
    let (small, large) = (&layout.layers[0], &layout.layers[1]);
    // The big layer trickles from the start; the small one starts late, so berthd dies (right after the
    // small layer's commit) in the middle of the big one.
    proxy.delay_blob(&small.digest, Duration::from_millis(300));
    proxy.slow_blobs(Some(3 << 20));
    let reference = format!("{}/crash:latest", proxy.addr);
    let res = Transfer::new(fx.channel().await, &fx.ns)
        .pull(&reference, &PullOptions::default())
        .await;
    assert!(res.is_err(), "berthd died in the middle: {res:?}");
    fx.daemon.kill();
    assert!(
        fx.daemon.log().contains("pull.blob_committed"),
        "the failpoint fired"
    );

    write_config(&fx.config_path, "");
    fx.daemon.start_again();
    // Half-applied snapshots of the dead pull are removed shortly after the start.
    let removed = "removed a half-applied snapshot of an interrupted pull";
    let mut active = active_snapshots(&fx).await;
    for _ in 0..50 {
        if active.is_empty() && fx.daemon.log().contains(removed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        active = active_snapshots(&fx).await;
    }
    assert!(
        active.is_empty(),
        "half-applied snapshots visible: {active:?}"
    );
    assert!(
        fx.daemon.log().contains(removed),
        "the dead pull had a snapshot being applied, removed at the restart"
    );
    blobs_verified(fx.daemon.root());

    proxy.slow_blobs(None);
    proxy.clear();
    Transfer::new(fx.channel().await, &fx.ns)
        .pull(&reference, &PullOptions::default())
        .await
        .expect("the next pull completes");
    assert!(
        proxy.blob_gets(&small.digest).is_empty(),
        "the committed layer was fetched again: {:?}",
        proxy.seen()
    );
    let gets = proxy.blob_gets(&large.digest);
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert!(
        gets[0].range.as_deref().is_some_and(|r| r != "bytes=0-"),
        "the partial layer was resumed: {gets:?}"
    );
    blobs_verified(fx.daemon.root());
    let id = berth_tests::unique_id("dp-crash-run");
    let mut c = fx.daemon.ctr();
    c.arg("-n").arg(&fx.ns).args([
        "run",
        "--rm",
        &reference,
        &id,
        "sh",
        "-c",
        "wc -c < /big.bin",
    ]);
    let out = berth_tests::run_timeout(&mut c, Duration::from_secs(120));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (6 << 20).to_string(),
        "{out:?}"
    );
    fx.guard.assert_clean();
}
