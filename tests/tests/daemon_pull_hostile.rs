//! Every hostile layer of the harness's corpus, pushed as an image and pulled through the Transfer service,
//! is refused or neutralised by the one unpacker: nothing outside the snapshot it is unpacked into changes
//! (the escape paths do not exist, the hard-link victim is untouched and unlinked), a refused layer leaves no
//! snapshot, and berthd keeps serving. Root only.

use std::os::unix::fs::MetadataExt;

use berth_proto::containerd_client::services::v1::version_client::VersionClient;
use berth_tests::hostile::{hardlink_victim, hostile_layers};
use berth_tests::oci_layout::{busybox_layout, write_image};
use berth_tests::registry::Registry;
use berth_tests::task_fixture::TaskFixture;
use berth_tests::transfer::{PullOptions, Transfer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_are_refused_or_neutralised() {
    if !berth_tests::require_root() {
        return;
    }
    let fx = TaskFixture::new("dp-hostile", "");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let marker = berth_tests::unique_id("hl");
    let snapdir = fx.daemon.root().join("snapshots/overlayfs");
    let channel = fx.channel().await;
    let t = Transfer::new(channel.clone(), &fx.ns);
    // Snapshot numbers start at 1 in a fresh root, one per pull (a refused layer's number is used too).
    let count = hostile_layers(&snapdir.join("1/fs"), &marker).len();
    let mut outcomes = Vec::new();
    for i in 0..count {
        let target = snapdir.join(format!("{}/fs", i + 1));
        let mut layer = hostile_layers(&target, &marker).swap_remove(i);
        // The hard-link victim must exist before the pull, and the snapshot's own directory cannot be made
        // in advance: aim that layer at a victim in a test-owned directory (an absolute link target).
        let fake = fx.dir.join("hardlink-target/fs");
        let victim = hardlink_victim(&fake, &marker);
        if layer.name == "hardlink-escape" {
            layer = hostile_layers(&fake, &marker).swap_remove(i);
            std::fs::create_dir_all(victim.parent().expect("parent")).expect("mkdir");
            std::fs::write(&victim, b"victim").expect("victim");
        }
        let layout = write_image(
            &fx.dir.join(format!("layout-{i}")),
            &[layer.tar.clone()],
            json!({}),
            "latest",
        );
        let name = format!("hostile-{}", layer.name);
        registry.push_oci_layout(&layout.path, &format!("{name}:latest"));
        let reference = registry.reference(&format!("{name}:latest"));
        let res = t.pull(&reference, &PullOptions::default()).await;
        for p in &layer.must_not_exist {
            assert!(
                std::fs::symlink_metadata(p).is_err(),
                "{}: {} was created outside the snapshot",
                layer.name,
                p.display()
            );
        }
        if layer.name == "hardlink-escape" {
            let m = std::fs::metadata(&victim).expect("victim still there");
            assert_eq!(std::fs::read(&victim).expect("read victim"), b"victim");
            assert_eq!(m.nlink(), 1, "the victim was linked into the snapshot");
        }
        match &res {
            Ok(_) => {
                assert!(
                    target.is_dir(),
                    "{}: unpacked at {}",
                    layer.name,
                    target.display()
                );
            }
            Err(e) => {
                assert!(
                    matches!(
                        e.code(),
                        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                    ),
                    "{}: {e:?}",
                    layer.name
                );
                assert!(
                    !target.exists(),
                    "{}: a refused layer left its snapshot {}",
                    layer.name,
                    target.display()
                );
            }
        }
        outcomes.push((
            layer.name,
            res.map(|_| ()).map_err(|e| e.message().to_string()),
        ));
    }
    eprintln!("hostile layers: {outcomes:#?}");
    // Still serving: version, and a normal pull.
    VersionClient::new(channel.clone())
        .version(berth_tests::grpc::req(&fx.ns, ()))
        .await
        .expect("version");
    let good = busybox_layout(&fx.dir.join("good"));
    registry.push_oci_layout(&good.path, "good:latest");
    t.pull(&registry.reference("good:latest"), &PullOptions::default())
        .await
        .expect("a normal pull afterwards");
    fx.guard.assert_clean();
}
