//! Server-side pulls through containerd 2.x's Transfer service, as containerd 2.x's `ctr images pull` sends
//! them (progress and auth streams, ImageStore with the host platform, all metadata, an unpack): busybox and a
//! multi-layer image with a whiteout from a loopback docker-registry; Debian's ctr 1.6 then lists and runs
//! them (`hi`, exit 5); the labels are ctr's; `/images/create` is published; `images rm --sync` leaves no
//! blob, snapshot, ingest, lease or mount. Root only.

use std::path::Path;
use std::time::Duration;

use berth_proto::containerd_client::services::v1::content_client::ContentClient;
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::introspection_client::IntrospectionClient;
use berth_proto::containerd_client::services::v1::leases_client::LeasesClient;
use berth_proto::containerd_client::services::v1::{
    InfoRequest, ListRequest, PluginsRequest, SubscribeRequest,
};
use berth_tests::ctr_fixture::ok;
use berth_tests::oci_layout::{busybox_layer_tar, busybox_layout, write_image, TarBuilder};
use berth_tests::registry::Registry;
use berth_tests::task_fixture::TaskFixture;
use berth_tests::transfer::{PullOptions, Transfer};
use serde_json::json;

/// A 3-layer image: busybox, a layer adding /etc/layer2 and /etc/removed, a layer whiting out /etc/removed.
fn multi_layer(dir: &Path) -> berth_tests::oci_layout::OciLayout {
    let mut l2 = TarBuilder::new();
    l2.dir("etc", 0o755)
        .file("etc/layer2", 0o644, b"second layer\n")
        .file("etc/removed", 0o644, b"gone in layer 3\n");
    let mut l3 = TarBuilder::new();
    l3.dir("etc", 0o755)
        .file("etc/.wh.removed", 0o644, b"")
        .file("etc/layer3", 0o644, b"third layer\n");
    write_image(
        dir,
        &[busybox_layer_tar(), l2.finish(), l3.finish()],
        json!({}),
        "latest",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_pull_then_ctr_lists_runs_and_removes() {
    if !berth_tests::require_root() || berth_tests::tool("ctr").is_none() {
        return;
    }
    let fx = TaskFixture::new("dp-basic", "");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let busybox = busybox_layout(&fx.dir.join("busybox"));
    registry.push_oci_layout(&busybox.path, "busybox:latest");
    let multi = multi_layer(&fx.dir.join("multi"));
    registry.push_oci_layout(&multi.path, "multi:v1");
    let bb_ref = registry.reference("busybox:latest");
    let multi_ref = registry.reference("multi:v1");

    let channel = fx.channel().await;
    // containerd's Go client pulls through Transfer only when these plugins work.
    let plugins = IntrospectionClient::new(channel.clone())
        .plugins(berth_tests::grpc::req(
            &fx.ns,
            PluginsRequest {
                filters: vec!["type==io.containerd.grpc.v1".into()],
            },
        ))
        .await
        .expect("introspection")
        .into_inner()
        .plugins;
    for id in ["transfer", "streaming"] {
        let p = plugins
            .iter()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("no {id} plugin: {plugins:?}"));
        assert!(p.init_err.is_none(), "{id} reported broken: {p:?}");
    }
    let mut events = EventsClient::new(channel.clone())
        .subscribe(berth_tests::grpc::req_with(
            &fx.ns,
            SubscribeRequest {
                filters: vec![format!("topic==\"/images/create\",namespace=={}", fx.ns)],
            },
            None,
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let t = Transfer::new(channel.clone(), &fx.ns);
    let out = t
        .pull(&bb_ref, &PullOptions::default())
        .await
        .expect("transfer pull of busybox");
    // containerd's progress story.
    let events_text: Vec<String> = out.progress.iter().map(|p| p.event.clone()).collect();
    assert!(
        events_text
            .iter()
            .any(|e| e == &format!("Resolving from OCI Registry ({bb_ref})")),
        "{events_text:?}"
    );
    assert_eq!(out.saved(), vec![bb_ref.clone()]);
    assert!(
        events_text
            .last()
            .is_some_and(|e| e == &format!("Completed pull from OCI Registry ({bb_ref})")),
        "{events_text:?}"
    );
    let layer_node = format!("layer-{}", busybox.layers[0].digest);
    let layer_events = out.events_of(&layer_node);
    assert_eq!(layer_events.first().map(String::as_str), Some("waiting"));
    assert_eq!(layer_events.last().map(String::as_str), Some("complete"));
    assert!(
        out.auth_requests.is_empty(),
        "no auth asked of an open registry"
    );
    let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an /images/create event")
        .expect("stream")
        .expect("event");
    assert_eq!(ev.topic, "/images/create");

    // ctr's labels, exactly.
    let content = ContentClient::new(channel.clone());
    let info = |d: &str| {
        let mut c = content.clone();
        let (ns, d) = (fx.ns.clone(), d.to_string());
        async move {
            c.info(berth_tests::grpc::req(&ns, InfoRequest { digest: d }))
                .await
                .expect("content info")
                .into_inner()
                .info
                .expect("info")
                .labels
        }
    };
    let m = info(&busybox.manifest.digest).await;
    assert_eq!(
        m.get("containerd.io/gc.ref.content.config"),
        Some(&busybox.config.digest)
    );
    assert_eq!(
        m.get("containerd.io/gc.ref.content.l.0"),
        Some(&busybox.layers[0].digest)
    );
    assert_eq!(
        m.get("containerd.io/distribution.source.127.0.0.1")
            .map(String::as_str),
        Some("busybox")
    );
    let c = info(&busybox.config.digest).await;
    assert_eq!(
        c.get("containerd.io/gc.ref.snapshot.overlayfs"),
        Some(&busybox.diff_ids[0]),
        "one layer: the chain id is the diff id"
    );
    let l = info(&busybox.layers[0].digest).await;
    assert_eq!(
        l.get("containerd.io/uncompressed"),
        Some(&busybox.diff_ids[0])
    );
    drop(content);

    // Debian's ctr 1.6 sees and runs it.
    let listed = ok(&fx.ctr(&["images", "ls", "-q"]), "ctr images ls");
    assert_eq!(listed.trim(), bb_ref);
    let id = berth_tests::unique_id("dp-run");
    let out = fx.ctr(&["run", "--rm", &bb_ref, &id, "sh", "-c", "echo hi; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    // A multi-layer image with a whiteout, unpacked in order.
    t.pull(&multi_ref, &PullOptions::default())
        .await
        .expect("transfer pull of the multi-layer image");
    let id = berth_tests::unique_id("dp-run2");
    let out = fx.ctr(&[
        "run",
        "--rm",
        &multi_ref,
        &id,
        "sh",
        "-c",
        "cat /etc/layer2 /etc/layer3; test ! -e /etc/removed && echo whiteout-ok",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "second layer\nthird layer\nwhiteout-ok\n",
        "{out:?}"
    );
    let snaps = ok(&fx.ctr(&["snapshots", "ls"]), "ctr snapshots ls");
    assert_eq!(
        snaps.lines().count(),
        1 + 3,
        "three committed chains (busybox's is shared): {snaps}"
    );
    // A second pull finds everything there.
    let again = t
        .pull(&multi_ref, &PullOptions::default())
        .await
        .expect("re-pull");
    assert!(
        again
            .events_of(&format!("layer-{}", multi.layers[1].digest))
            .contains(&"already exists".to_string()),
        "{:?}",
        again.progress
    );

    // No pull lease stays behind.
    let leases = LeasesClient::new(channel.clone())
        .list(berth_tests::grpc::req(&fx.ns, ListRequest::default()))
        .await
        .expect("leases")
        .into_inner()
        .leases;
    assert!(leases.is_empty(), "leases left: {leases:?}");

    ok(&fx.ctr(&["images", "rm", &bb_ref]), "ctr images rm busybox");
    ok(
        &fx.ctr(&["images", "rm", "--sync", &multi_ref]),
        "ctr images rm --sync",
    );
    let content = ok(&fx.ctr(&["content", "ls", "-q"]), "ctr content ls");
    assert_eq!(content.trim(), "", "no blob left");
    let snaps = ok(&fx.ctr(&["snapshots", "ls"]), "ctr snapshots ls");
    assert_eq!(snaps.lines().count(), 1, "only the header: {snaps}");
    let root = fx.daemon.root();
    assert_eq!(
        berth_tests::files_below(&root.join("content")),
        Vec::<String>::new(),
        "no blob or ingest on disk"
    );
    let snapdirs: Vec<_> = std::fs::read_dir(root.join("snapshots/overlayfs"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(snapdirs.is_empty(), "no snapshot directory: {snapdirs:?}");
    assert!(
        berth_tests::mounts_below(fx.dir.path()).is_empty(),
        "nothing mounted"
    );
    fx.guard.assert_clean();
}
