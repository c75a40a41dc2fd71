//! Transfer's archive import and export round-trip the same digests, checked with skopeo: an OCI archive and
//! a docker-save archive (both made by skopeo from a harness layout) are imported through the binary stream
//! protocol (named with a prefix reference, unpacked for this host: ctr runs them), exported again, and
//! skopeo reads the same manifest/config/layer digests back. Also tag (ImageStore → ImageStore) and push
//! (ImageStore → OCIRegistry) of an imported image. Root only.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_proto::containerd_client::types::transfer::{
    ImageExportStream, ImageReference, ImageStore, UnpackConfiguration,
};
use berth_tests::oci_layout::{busybox_layout, sha256_digest};
use berth_tests::registry::Registry;
use berth_tests::task_fixture::TaskFixture;
use berth_tests::transfer::{host_platform, Transfer};
use berth_tests::{run_timeout, tool};
use serde_json::Value;

fn skopeo(args: &[&str]) -> Option<Vec<u8>> {
    let bin = tool("skopeo")?;
    let out = run_timeout(Command::new(bin).args(args), Duration::from_secs(120));
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("skopeo prints JSON")
}

fn run_in(fx: &TaskFixture, image: &str) -> String {
    let id = berth_tests::unique_id("dpa-run");
    let mut c = fx.daemon.ctr();
    c.arg("-n")
        .arg(&fx.ns)
        .args(["run", "--rm", image, &id, "sh", "-c", "echo imported"]);
    let out = run_timeout(&mut c, Duration::from_secs(120));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn import_store(prefix: &str) -> ImageStore {
    ImageStore {
        extra_references: vec![ImageReference {
            name: prefix.into(),
            is_prefix: true,
            allow_overwrite: true,
            ..Default::default()
        }],
        unpacks: vec![UnpackConfiguration {
            platform: Some(host_platform()),
            snapshotter: String::new(),
        }],
        ..Default::default()
    }
}

fn write(p: &Path, bytes: &[u8]) {
    std::fs::write(p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_export_round_trips_oci_and_docker_archives() {
    if !berth_tests::require_root() || tool("skopeo").is_none() {
        return;
    }
    let fx = TaskFixture::new("dp-archive", "");
    let layout = busybox_layout(&fx.dir.join("layout"));
    let src = format!("oci:{}:latest", layout.path.display());
    let t = Transfer::new(fx.channel().await, &fx.ns);

    // OCI archive.
    let oci_tar = fx.dir.join("in-oci.tar");
    let _ = std::fs::remove_file(&oci_tar);
    skopeo(&[
        "copy",
        "--quiet",
        &src,
        &format!("oci-archive:{}:busybox:v1", oci_tar.display()),
    ]);
    let raw_in = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}", oci_tar.display()),
    ])
    .expect("skopeo");
    assert_eq!(sha256_digest(&raw_in), layout.manifest.digest);
    let out = t
        .import(
            std::fs::read(&oci_tar).expect("archive"),
            import_store("import-oci"),
        )
        .await
        .expect("import the OCI archive");
    let saved = out.saved();
    assert_eq!(saved.len(), 1, "{:?}", out.progress);
    let name = saved[0].clone();
    assert_eq!(run_in(&fx, &name), "imported\n", "the import was unpacked");
    let exported = t
        .export(&[&name], ImageExportStream::default())
        .await
        .expect("export");
    let oci_out = fx.dir.join("out-oci.tar");
    write(&oci_out, &exported);
    let raw_out = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}", oci_out.display()),
    ])
    .expect("skopeo");
    assert_eq!(
        sha256_digest(&raw_out),
        layout.manifest.digest,
        "the exported manifest is the imported one"
    );
    let info =
        json(&skopeo(&["inspect", &format!("oci-archive:{}", oci_out.display())]).expect("skopeo"));
    let layers: Vec<String> = info["Layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(layers, vec![layout.layers[0].digest.clone()]);

    // docker-save archive.
    let docker_tar = fx.dir.join("in-docker.tar");
    let _ = std::fs::remove_file(&docker_tar);
    skopeo(&[
        "copy",
        "--quiet",
        &src,
        &format!("docker-archive:{}:berth/busybox:v2", docker_tar.display()),
    ]);
    let want = json(
        &skopeo(&[
            "inspect",
            &format!("docker-archive:{}", docker_tar.display()),
        ])
        .expect("skopeo"),
    );
    let want_config = json(
        &skopeo(&[
            "inspect",
            "--config",
            "--raw",
            &format!("docker-archive:{}", docker_tar.display()),
        ])
        .expect("skopeo"),
    );
    let out = t
        .import(
            std::fs::read(&docker_tar).expect("archive"),
            import_store("import-docker"),
        )
        .await
        .expect("import the docker archive");
    let saved = out.saved();
    assert_eq!(
        saved,
        vec!["docker.io/berth/busybox:v2".to_string()],
        "{:?}",
        out.progress
    );
    assert_eq!(run_in(&fx, &saved[0]), "imported\n");
    let exported = t
        .export(&[&saved[0]], ImageExportStream::default())
        .await
        .expect("export");
    let docker_out = fx.dir.join("out-docker.tar");
    write(&docker_out, &exported);
    let got = json(
        &skopeo(&[
            "inspect",
            &format!("docker-archive:{}", docker_out.display()),
        ])
        .expect("skopeo"),
    );
    assert_eq!(got["Layers"], want["Layers"], "same layer digests");
    let got_config = json(
        &skopeo(&[
            "inspect",
            "--config",
            "--raw",
            &format!("docker-archive:{}", docker_out.display()),
        ])
        .expect("skopeo"),
    );
    assert_eq!(got_config, want_config, "same config");

    // Tag, then push what was imported.
    let tagged = t.tag(&name, "berth.test/tagged:1").await.expect("tag");
    assert_eq!(tagged.saved(), vec!["berth.test/tagged:1".to_string()]);
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let dest = registry.reference("pushed:v1");
    t.push("berth.test/tagged:1", &dest, true)
        .await
        .expect("push");
    let served = registry.get("/v2/pushed/manifests/v1");
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(sha256_digest(&served.body), layout.manifest.digest);
    fx.guard.assert_clean();
}
