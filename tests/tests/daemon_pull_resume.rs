//! Resume and sharing of server-side pulls, proven by counting the blob requests a proxy in front of the
//! registry sees: a connection broken mid-layer is resumed with a Range request within the pull; a pull that
//! fails mid-layer keeps its verified blobs and the partial ingest, and the next pull fetches none of the
//! completed blobs again and asks only for the rest of the partial one; concurrent pulls of one reference
//! share one download of every blob (also a pull with another plan, which queues behind). Root only.

use std::collections::HashMap;
use std::time::Duration;

use berth_proto::containerd_client::services::v1::content_client::ContentClient;
use berth_proto::containerd_client::services::v1::ListStatusesRequest;
use berth_tests::oci_layout::{busybox_layer_tar, write_image, OciLayout, TarBuilder};
use berth_tests::registry::Registry;
use berth_tests::regproxy::Proxy;
use berth_tests::task_fixture::TaskFixture;
use berth_tests::transfer::{PullOptions, Transfer};
use serde_json::json;

/// Incompressible bytes from a seed (xorshift64*), so layers have a real size after gzip.
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

/// busybox, a small layer and a big one (6 MiB of noise).
fn image(dir: &std::path::Path, seed: u64) -> OciLayout {
    let mut small = TarBuilder::new();
    small.file("small.bin", 0o644, &noise(seed, 64 << 10));
    let mut big = TarBuilder::new();
    big.file("big.bin", 0o644, &noise(seed + 1, 6 << 20));
    write_image(
        dir,
        &[busybox_layer_tar(), small.finish(), big.finish()],
        json!({}),
        "latest",
    )
}

/// N of a `bytes=N-` Range header (0 without one).
fn range_start(range: Option<&str>) -> u64 {
    range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn setup(name: &str, seed: u64) -> Option<(TaskFixture, Registry, OciLayout)> {
    if !berth_tests::require_root() {
        return None;
    }
    let fx = TaskFixture::new(name, "");
    let registry = Registry::start(fx.dir.path())?;
    let layout = image(&fx.dir.join("layout"), seed);
    registry.push_oci_layout(&layout.path, "img:latest");
    Some((fx, registry, layout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connection_resumes_with_range_in_the_same_pull() {
    let Some((fx, registry, layout)) = setup("dpres-range", 11) else {
        return;
    };
    let proxy = Proxy::start(&registry.addr, None).await;
    let big = layout.layers[2].digest.clone();
    proxy.cut_blob(&big, 1 << 20, 1);
    let reference = format!("{}/img:latest", proxy.addr);
    Transfer::new(fx.channel().await, &fx.ns)
        .pull(&reference, &PullOptions::default())
        .await
        .expect("the pull survives a broken connection");
    let gets = proxy.blob_gets(&big);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    // Resumed from what arrived before the break (the proxy cut at 1 MiB; the tail of its last frame may
    // be lost with the connection).
    let from = range_start(gets[1].range.as_deref());
    assert!(from > 0 && from <= 1 << 20, "{gets:?}");
    fx.guard.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_pull_is_resumed_by_the_next_one() {
    let Some((fx, registry, layout)) = setup("dpres-next", 21) else {
        return;
    };
    let proxy = Proxy::start(&registry.addr, None).await;
    let big = layout.layers[2].digest.clone();
    // The other blobs complete while the big one waits; then it breaks after 2 MiB and is gone (404).
    proxy.delay_blob(&big, Duration::from_millis(800));
    proxy.break_blob(&big, 2 << 20, 404);
    let reference = format!("{}/img:latest", proxy.addr);
    let t = Transfer::new(fx.channel().await, &fx.ns);
    let err = t
        .pull(&reference, &PullOptions::default())
        .await
        .expect_err("the big layer is gone");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains(&big), "names the blob: {err:?}");
    // The partial download is kept as an ingest, ctr's ref for a layer.
    let statuses = ContentClient::new(fx.channel().await)
        .list_statuses(berth_tests::grpc::req(
            &fx.ns,
            ListStatusesRequest {
                filters: vec![String::new()],
            },
        ))
        .await
        .expect("list statuses")
        .into_inner()
        .statuses;
    let partial = statuses
        .iter()
        .find(|s| s.r#ref == format!("layer-{big}"))
        .unwrap_or_else(|| panic!("no ingest for the big layer: {statuses:?}"));
    assert!(
        partial.offset > 0 && partial.offset <= 2 << 20,
        "{partial:?}"
    );
    assert_eq!(partial.total, layout.layers[2].size as i64);

    proxy.heal(&big);
    proxy.clear();
    t.pull(&reference, &PullOptions::default())
        .await
        .expect("the next pull completes");
    for done in [&layout.layers[0], &layout.layers[1], &layout.config] {
        assert!(
            proxy.blob_gets(&done.digest).is_empty(),
            "{} was complete and fetched again: {:?}",
            done.digest,
            proxy.seen()
        );
    }
    let gets = proxy.blob_gets(&big);
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(
        range_start(gets[0].range.as_deref()),
        partial.offset as u64,
        "resumed where the ingest ends: {gets:?}"
    );
    assert!(
        !proxy
            .seen()
            .iter()
            .any(|s| s.method == "GET" && s.path.contains("/manifests/")),
        "the manifest was stored already: {:?}",
        proxy.seen()
    );
    let mut c = fx.daemon.ctr();
    let id = berth_tests::unique_id("dpres-run");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_reference_fetch_each_blob_once() {
    let Some((fx, registry, layout)) = setup("dpres-share", 31) else {
        return;
    };
    let proxy = Proxy::start(&registry.addr, None).await;
    proxy.slow_blobs(Some(8 << 20));
    let reference = format!("{}/img:latest", proxy.addr);
    let channel = fx.channel().await;
    let a = {
        let (t, r) = (Transfer::new(channel.clone(), &fx.ns), reference.clone());
        tokio::spawn(async move { t.pull(&r, &PullOptions::default()).await })
    };
    // Wait until the first pull is downloading the big layer, then start two more.
    let big = layout.layers[2].digest.clone();
    for _ in 0..200 {
        if !proxy.blob_gets(&big).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !proxy.blob_gets(&big).is_empty(),
        "the first pull never started"
    );
    let b = {
        let (t, r) = (Transfer::new(channel.clone(), &fx.ns), reference.clone());
        tokio::spawn(async move { t.pull(&r, &PullOptions::default()).await })
    };
    // Another plan (an image label) for the same reference queues behind the running one.
    let c = {
        let (t, r) = (Transfer::new(channel.clone(), &fx.ns), reference.clone());
        let o = PullOptions {
            labels: HashMap::from([("berth.test/plan".to_string(), "c".to_string())]),
            ..Default::default()
        };
        tokio::spawn(async move { t.pull(&r, &o).await })
    };
    let (ra, rb, rc) = (a.await, b.await, c.await);
    let oa = ra.expect("join").expect("first pull");
    let ob = rb.expect("join").expect("joined pull");
    let oc = rc.expect("join").expect("queued pull");
    for o in [&oa, &ob, &oc] {
        assert_eq!(o.saved(), vec![reference.clone()]);
    }
    // The joined client saw the layers' story too.
    assert!(
        ob.events_of(&format!("layer-{big}"))
            .contains(&"complete".to_string()),
        "{:?}",
        ob.progress
    );
    for d in layout.blobs() {
        assert_eq!(
            proxy.blob_gets(&d.digest).len(),
            1,
            "{} fetched more than once: {:?}",
            d.digest,
            proxy.seen()
        );
    }
    // The queued plan's label is on the image.
    let mut c = fx.daemon.ctr();
    c.arg("-n").arg(&fx.ns).args(["images", "ls"]);
    let out = berth_tests::run_timeout(&mut c, Duration::from_secs(30));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("berth.test/plan=c"),
        "{out:?}"
    );
    fx.guard.assert_clean();
}
