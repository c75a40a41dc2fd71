//! `berth images` as a user runs it: `ls --format json` parsed, `check`, `mount`/`unmount`,
//! `rm --sync` freeing the content; and, through berthd's Transfer service, `pull --plain-http`
//! from a loopback registry, `run --pull missing` of an absent image, `tag`, `export` and
//! `import` round trips. Root only.

use berth_tests::cli_fixture::{text, CliFixture, BUSYBOX};
use berth_tests::oci_layout::{busybox_layout, host_arch};
use berth_tests::registry::Registry;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn ls_check_mount_unmount_and_rm() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-images");
    let layout = f.seed_busybox();
    let v = json(&f.ok(&["images", "ls", "--format", "json"]));
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["name"], BUSYBOX);
    assert_eq!(v[0]["digest"], layout.manifest.digest.as_str());
    assert_eq!(v[0]["platform"], format!("linux/{}", host_arch()));
    let size = v[0]["size"].as_u64().expect("size");
    let expect: u64 = layout.manifest.size
        + layout.config.size
        + layout.layers.iter().map(|l| l.size).sum::<u64>();
    assert_eq!(size, expect);
    assert_eq!(f.ok(&["images", "ls", "-q"]).trim(), BUSYBOX);
    let table = f.ok(&["images", "ls"]);
    assert!(
        table.starts_with("REF ") && table.contains(BUSYBOX),
        "{table}"
    );

    let check = json(&f.ok(&["images", "check", "--format", "json"]));
    assert_eq!(check[0]["status"], "complete");
    assert_eq!(check[0]["unpacked"], false);

    // Mount read-only, look inside, unmount: nothing stays.
    let target = f.fx.dir.subdir("mnt");
    let target_s = target.display().to_string();
    f.fx.guard.mount(&target);
    f.ok(&["images", "mount", "busybox", &target_s]);
    assert!(
        target.join("bin/busybox").is_file(),
        "the image's files are there"
    );
    assert!(std::fs::write(target.join("x"), "x").is_err(), "read-only");
    assert!(berth_tests::is_mounted(&target));
    f.ok(&["images", "unmount", &target_s]);
    assert!(!berth_tests::is_mounted(&target));
    let snaps = f.ok(&["snapshots", "ls", "--format", "json"]);
    assert!(!snaps.contains("berth-mount"), "{snaps}");
    assert!(!f.ok(&["leases", "ls", "-q"]).contains("berth-mount"));
    let check = json(&f.ok(&["images", "check", "--format", "json"]));
    assert_eq!(check[0]["unpacked"], true, "mount unpacked the image");

    f.ok(&["images", "rm", "--sync", "busybox"]);
    assert!(f.ok(&["images", "ls", "-q"]).trim().is_empty());
    assert!(
        f.ok(&["content", "ls", "-q"]).trim().is_empty(),
        "content collected"
    );
    assert!(
        f.ok(&["snapshots", "ls", "-q"]).trim().is_empty(),
        "snapshots collected"
    );
    let out = f.run(&["images", "rm", "busybox"]);
    assert_eq!(out.status.code(), Some(1), "removing a missing image fails");
    f.fx.guard.assert_clean();
}

#[test]
fn pull_run_pull_missing_tag_export_import_through_transfer() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-transfer");
    if !f.transfer_available() {
        // Not a pass: these need berthd's Transfer service (branch `pull`), not merged yet.
        eprintln!("NOTE: berthd does not serve Transfer yet; pull/import/export/tag tests not run");
        return;
    }
    let Some(registry) = Registry::start(f.fx.dir.path()) else {
        return;
    };
    let layout = busybox_layout(&f.fx.dir.join("layout"));
    registry.push_oci_layout(&layout.path, "busybox:latest");
    registry.push_oci_layout(&layout.path, "busybox:absent");
    let reference = registry.reference("busybox:latest");

    let out = f.run(&["images", "pull", "--plain-http", &reference]);
    assert!(out.status.success(), "pull: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&layout.manifest.digest),
        "{}",
        text(&out.stdout)
    );
    let v = json(&f.ok(&["images", "ls", "--format", "json"]));
    assert_eq!(v[0]["name"], reference.as_str());
    assert_eq!(v[0]["digest"], layout.manifest.digest.as_str());
    let check = json(&f.ok(&["images", "check", "--format", "json"]));
    assert_eq!(check[0]["unpacked"], true, "pull unpacks");

    // An absent image is pulled by `run` (default --pull missing).
    let absent = registry.reference("busybox:absent");
    let out = f.run(&[
        "run",
        "--rm",
        "--plain-http",
        "--net",
        "none",
        &absent,
        "pm",
        "echo",
        "pulled-and-ran",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with("pulled-and-ran\n"),
        "{}",
        text(&out.stdout)
    );
    assert!(f.ok(&["images", "ls", "-q"]).contains(&absent));

    f.ok(&["images", "tag", &reference, "docker.io/library/copy:1"]);
    assert!(f
        .ok(&["images", "ls", "-q"])
        .contains("docker.io/library/copy:1"));

    let archive = f.fx.dir.join("export.tar");
    let archive_s = archive.display().to_string();
    f.ok(&["images", "export", &archive_s, "docker.io/library/copy:1"]);
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&archive)
        .output()
        .expect("tar");
    let names = text(&listing.stdout);
    assert!(
        names.contains("index.json")
            && names.contains(&layout.manifest.digest.replace("sha256:", "blobs/sha256/")),
        "{names}"
    );

    f.ok(&[
        "images",
        "rm",
        "--sync",
        "docker.io/library/copy:1",
        &reference,
        &absent,
    ]);
    assert!(f.ok(&["images", "ls", "-q"]).trim().is_empty());
    let out = f.ok(&[
        "images",
        "import",
        "--base-name",
        "docker.io/library/copy",
        &archive_s,
    ]);
    assert!(out.contains("docker.io/library/copy:1"), "{out}");
    let v = json(&f.ok(&["images", "ls", "--format", "json"]));
    assert_eq!(
        v[0]["digest"],
        layout.manifest.digest.as_str(),
        "same digest after the round trip"
    );
    let out = f.run(&[
        "run",
        "--rm",
        "--pull",
        "never",
        "--net",
        "none",
        "docker.io/library/copy:1",
        "imp",
        "echo",
        "ok",
    ]);
    assert_eq!(text(&out.stdout), "ok\n", "{}", text(&out.stderr));
    f.fx.guard.assert_clean();
}
