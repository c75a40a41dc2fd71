//! Harness self-test: the busybox OCI layout is pushed to a loopback docker-registry and read
//! back over HTTP with every digest checked; skopeo (an independent client) agrees.

use std::process::Command;
use std::time::Duration;

use berth_tests::oci_layout::{busybox_layout, media, sha256_digest};
use berth_tests::registry::Registry;
use berth_tests::{proc, run_timeout, tool, TestDir};
use serde_json::Value;

#[test]
fn busybox_layout_round_trips_through_loopback_registry() {
    if tool("busybox").is_none() {
        return;
    }
    let dir = TestDir::new("harness-registry");
    let layout = busybox_layout(&dir.join("layout"));

    // The layout itself: every blob's file hashes to its name and has the recorded size.
    for d in layout.blobs().iter().chain([&layout.manifest]) {
        let data = layout.blob(&d.digest);
        assert_eq!(sha256_digest(&data), d.digest);
        assert_eq!(data.len() as u64, d.size);
    }
    let config: Value =
        serde_json::from_slice(&layout.blob(&layout.config.digest)).expect("config");
    assert_eq!(config["rootfs"]["diff_ids"][0], layout.diff_ids[0]);

    let Some(registry) = Registry::start(dir.path()) else {
        return;
    };
    let pid = registry.pid().expect("registry pid");
    let digest = registry.push_oci_layout(&layout.path, "busybox:latest");
    assert_eq!(digest, layout.manifest.digest);

    let r = registry.get("/v2/busybox/manifests/latest");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(sha256_digest(&r.body), layout.manifest.digest);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(layout.manifest.digest.as_str())
    );
    assert_eq!(r.header("content-type"), Some(media::MANIFEST));
    let manifest = r.json();
    assert_eq!(manifest["config"]["digest"], layout.config.digest.as_str());
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1);
    for desc in std::iter::once(&manifest["config"]).chain(layers) {
        let d = desc["digest"].as_str().expect("digest");
        let blob = registry.get(&format!("/v2/busybox/blobs/{d}"));
        assert_eq!(blob.status, 200);
        assert_eq!(sha256_digest(&blob.body), d, "blob {d}");
        assert_eq!(
            Some(blob.body.len() as u64),
            desc["size"].as_u64(),
            "size of {d}"
        );
    }
    // A wrong digest must not be served: the check above can fail.
    let missing = registry.get(&format!("/v2/busybox/blobs/{}", sha256_digest(b"nope")));
    assert_eq!(missing.status, 404);

    if let Some(skopeo) = tool("skopeo") {
        // skopeo reads our layout as a valid OCI layout ...
        let out = run_timeout(
            Command::new(&skopeo).args([
                "inspect",
                "--raw",
                &format!("oci:{}:latest", layout.path.display()),
            ]),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha256_digest(&out.stdout), layout.manifest.digest);
        // ... and the registry's copy as the same image.
        let out = run_timeout(
            Command::new(&skopeo).args([
                "inspect",
                "--tls-verify=false",
                "--raw",
                &format!("docker://{}", registry.reference("busybox:latest")),
            ]),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha256_digest(&out.stdout), layout.manifest.digest);
    }

    drop(registry);
    assert!(
        proc::wait_dead(pid, Duration::from_secs(5)),
        "registry {pid} still alive"
    );
}

#[test]
fn multi_platform_index_is_served_as_an_index() {
    if tool("busybox").is_none() {
        return;
    }
    use berth_tests::oci_layout::busybox_multi_platform_layout;
    let dir = TestDir::new("harness-registry-index");
    let layout = busybox_multi_platform_layout(&dir.join("layout"));
    let Some(registry) = Registry::start(dir.path()) else {
        return;
    };
    let digest = registry.push_oci_layout(&layout.path, "multi:latest");
    assert_eq!(digest, layout.index.digest);

    let r = registry.get("/v2/multi/manifests/latest");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some(media::INDEX));
    assert_eq!(sha256_digest(&r.body), layout.index.digest);
    let index = r.json();
    let entries = index["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), layout.images.len());
    for ((arch, image), entry) in layout.images.iter().zip(entries) {
        assert_eq!(entry["platform"]["architecture"], arch.as_str());
        assert_eq!(entry["digest"], image.manifest.digest.as_str());
        let m = registry.get(&format!("/v2/multi/manifests/{}", image.manifest.digest));
        assert_eq!(m.status, 200);
        assert_eq!(sha256_digest(&m.body), image.manifest.digest);
        for blob in image.blobs() {
            let b = registry.get(&format!("/v2/multi/blobs/{}", blob.digest));
            assert_eq!(b.status, 200, "{arch} blob {}", blob.digest);
            assert_eq!(sha256_digest(&b.body), blob.digest);
        }
    }
}

#[test]
fn busybox_image_layer_unpacks_to_a_runnable_rootfs() {
    // The image content itself, not only its digests: unpack the layer with the host's tar
    // and run the result with Debian's runc.
    if !berth_tests::require_root() {
        return;
    }
    let (Some(tar), Some(runc), Some(_)) = (tool("tar"), tool("runc"), tool("busybox")) else {
        return;
    };
    let dir = TestDir::new("harness-image-run");
    let layout = busybox_layout(&dir.join("layout"));
    let layer = layout.blob_path(&layout.layers[0].digest);
    let rootfs = dir.subdir("bundle/rootfs");
    let out = run_timeout(
        Command::new(tar)
            .arg("-xzf")
            .arg(&layer)
            .arg("-C")
            .arg(&rootfs),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = berth_tests::unique_id("harness-image-run");
    let cgroup = format!("/berth-test/{id}");
    let spec = berth_tests::bundle::default_spec(
        &["sh", "-c", "cat /etc/passwd | head -1; ls /tmp"],
        &cgroup,
    );
    std::fs::write(dir.join("bundle/config.json"), spec.to_string()).expect("config.json");
    let root = dir.join("runc-root");
    let guard = berth_tests::Guard::new();
    guard.cgroup(cgroup.as_str()).dir(root.join(&id));
    let out = run_timeout(
        Command::new(runc)
            .arg("--root")
            .arg(&root)
            .arg("run")
            .arg("--bundle")
            .arg(dir.join("bundle"))
            .arg(&id),
        Duration::from_secs(60),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "root:x:0:0:root:/root:/bin/sh\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    guard.assert_clean();
}
