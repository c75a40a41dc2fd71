//! Debian's `ctr` pulls and runs images through berthd's Content, Images, Snapshots, Diff and Leases services
//! (ctr 1.6 pulls client-side): pull from a loopback docker-registry, `images ls`, `run --rm` from the
//! image's overlay snapshot with the real exit code, `images rm --sync` leaving no blob, snapshot, ingest or
//! mount behind. Root only.

use std::process::Command;
use std::time::Duration;

use berth_tests::ctr_fixture::ok;
use berth_tests::oci_layout::busybox_layout;
use berth_tests::registry::Registry;
use berth_tests::task_fixture::TaskFixture;

#[test]
fn ctr_pulls_lists_runs_and_removes_an_image() {
    if !berth_tests::require_root() || berth_tests::tool("ctr").is_none() {
        return;
    }
    let fx = TaskFixture::new("di-ctr", "");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let layout = busybox_layout(&fx.dir.join("layout"));
    let reference = registry.reference("busybox:latest");
    registry.push_oci_layout(&layout.path, "busybox:latest");

    let out = fx.ctr(&["images", "pull", "--plain-http", &reference]);
    let pulled = ok(&out, "ctr images pull");
    assert!(pulled.contains("done"), "{pulled}");
    let listed = ok(&fx.ctr(&["images", "ls", "-q"]), "ctr images ls");
    assert_eq!(listed.trim(), reference);
    let snaps = ok(&fx.ctr(&["snapshots", "ls"]), "ctr snapshots ls");
    assert!(snaps.contains(&layout.diff_ids[0]), "unpacked: {snaps}");

    let id = berth_tests::unique_id("di-run");
    let out = fx.ctr(&[
        "run",
        "--rm",
        &reference,
        &id,
        "sh",
        "-c",
        "echo hi; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    // A second pull finds everything there.
    ok(
        &fx.ctr(&["images", "pull", "--plain-http", &reference]),
        "second pull",
    );

    ok(
        &fx.ctr(&["images", "rm", "--sync", &reference]),
        "ctr images rm",
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

#[test]
fn ctr_exports_and_imports_an_image_with_the_same_digests() {
    if !berth_tests::require_root() || berth_tests::tool("ctr").is_none() {
        return;
    }
    let Some(skopeo) = berth_tests::tool("skopeo") else {
        return;
    };
    let fx = TaskFixture::new("di-ctrio", "");
    let Some(registry) = Registry::start(fx.dir.path()) else {
        return;
    };
    let layout = busybox_layout(&fx.dir.join("layout"));
    let reference = registry.reference("busybox:io");
    registry.push_oci_layout(&layout.path, "busybox:io");
    ok(
        &fx.ctr(&["images", "pull", "--plain-http", &reference]),
        "ctr images pull",
    );
    let archive = fx.dir.join("busybox.tar");
    let archive_s = archive.display().to_string();
    ok(
        &fx.ctr(&["images", "export", &archive_s, &reference]),
        "ctr images export",
    );
    // An independent reader finds the same manifest in the archive.
    let out = berth_tests::run_timeout(
        Command::new(&skopeo)
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{archive_s}")),
        Duration::from_secs(60),
    );
    let raw = ok(&out, "skopeo inspect");
    assert_eq!(
        berth_tests::oci_layout::sha256_digest(raw.as_bytes()),
        layout.manifest.digest,
        "the exported manifest is the pulled one"
    );
    ok(
        &fx.ctr(&["images", "rm", "--sync", &reference]),
        "ctr images rm",
    );
    assert_eq!(
        ok(&fx.ctr(&["content", "ls", "-q"]), "content ls").trim(),
        ""
    );
    ok(
        &fx.ctr(&["images", "import", &archive_s]),
        "ctr images import",
    );
    let listed = ok(&fx.ctr(&["images", "ls"]), "ctr images ls");
    let line = listed
        .lines()
        .find(|l| l.starts_with(&reference))
        .unwrap_or_else(|| panic!("imported image listed: {listed}"));
    assert!(line.contains(&layout.manifest.digest), "{line}");
    // It runs from the imported layers.
    let id = berth_tests::unique_id("di-imp");
    let out = fx.ctr(&["run", "--rm", &reference, &id, "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    ok(
        &fx.ctr(&["images", "rm", "--sync", &reference]),
        "ctr images rm",
    );
    fx.guard.assert_clean();
}
