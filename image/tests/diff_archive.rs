//! Diff/apply round trips (plain trees and overlay snapshots) and archive import/export (OCI
//! layouts, docker-save tarballs, skopeo cross-check). Root only.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_image::archive::{export, import, ArchiveImage, ExportOptions};
use berth_image::diff::{diff, DiffSource};
use berth_image::mount::{mount_all, unmount};
use berth_image::oci::{media, Manifest};
use berth_image::snapshot::{Kind, Overlay, Snapshotter};
use berth_image::unpack::{apply, apply_to_mounts, ApplyOptions, Compression};
use berth_image::{ContentStore, Digest};
use berth_tests::archive::{Entry, EntryKind, TarBuilder};
use berth_tests::{require_root, Guard, TestDir};

fn base_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.dir("etc", 0o755)
        .file("etc/config", 0o644, b"v1")
        .file("etc/same", 0o644, b"same")
        .dir("var", 0o755)
        .dir("var/cache", 0o755)
        .file("var/cache/a", 0o644, b"a")
        .file("var/cache/b", 0o644, b"b")
        .dir("keep", 0o700)
        .file("keep/x", 0o600, b"x")
        .file("gone", 0o644, b"bye");
    let mut owned = Entry::new(EntryKind::File, "etc/owned", 0o640);
    owned.uid = 5;
    owned.gid = 6;
    owned.data = b"owned".to_vec();
    t.append(owned);
    t.finish()
}

fn without_root(mut l: BTreeMap<PathBuf, String>) -> BTreeMap<PathBuf, String> {
    l.remove(Path::new(""));
    l
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

#[test]
fn diff_of_two_trees_applies_back_to_the_upper_tree() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-diff-trees");
    let base = base_layer();
    let (lower, upper, copy) = (dir.subdir("lower"), dir.subdir("upper"), dir.subdir("copy"));
    for d in [&lower, &upper, &copy] {
        apply(d, &base[..], Compression::None, &ApplyOptions::default()).expect("base");
    }
    std::fs::write(upper.join("etc/config"), b"v2").expect("modify same size");
    std::fs::remove_file(upper.join("gone")).expect("delete file");
    std::fs::remove_dir_all(upper.join("var/cache")).expect("delete dir");
    let long = upper.join("n".repeat(120)).join("m".repeat(130));
    std::fs::create_dir_all(long.parent().expect("parent")).expect("mkdir");
    std::fs::write(&long, b"long").expect("write");
    std::fs::write(upper.join("keep/new"), b"new").expect("write");
    std::fs::hard_link(upper.join("keep/new"), upper.join("keep/new-link")).expect("link");
    std::os::unix::fs::symlink("/etc/config", upper.join("abs-link")).expect("symlink");
    std::fs::set_permissions(
        upper.join("etc/same"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4711),
    )
    .expect("chmod");
    let mut out = Vec::new();
    let d = diff(
        DiffSource::Dir(&lower),
        DiffSource::Dir(&upper),
        &mut out,
        Compression::Gzip,
    )
    .expect("diff");
    assert_eq!(d.digest, Digest::of(&out));
    assert_eq!(d.size, out.len() as u64);
    let tar = gunzip(&out);
    assert_eq!(d.diff_id, Digest::of(&tar));
    // Deterministic.
    let mut again = Vec::new();
    let d2 = diff(
        DiffSource::Dir(&lower),
        DiffSource::Dir(&upper),
        &mut again,
        Compression::None,
    )
    .expect("diff");
    assert_eq!(d2.diff_id, d.diff_id);
    let names = entry_names(&tar);
    assert!(names.contains(&".wh.gone".to_string()), "{names:?}");
    assert!(names.contains(&"var/".to_string()) && names.contains(&"var/.wh.cache".to_string()));
    assert!(
        !names.iter().any(|n| n.starts_with("keep/x")),
        "unchanged file emitted: {names:?}"
    );
    let a = apply(&copy, &out[..], Compression::Gzip, &ApplyOptions::default()).expect("apply");
    assert_eq!(a.diff_id, d.diff_id);
    assert_eq!(
        without_root(common::listing(&copy, None)),
        without_root(common::listing(&upper, None))
    );
}

fn entry_names(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .expect("entries")
        .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
        .collect()
}

#[test]
fn diff_of_an_overlay_snapshot_round_trips() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-diff-overlay");
    let ov = Overlay::new(dir.path()).expect("overlay");
    let m1 = ov.create(1, Kind::Active, &[]).expect("s1");
    apply_to_mounts(
        &m1,
        &base_layer()[..],
        Compression::None,
        &ApplyOptions::default(),
    )
    .expect("apply base");
    ov.commit(1).expect("commit");
    let m2 = ov.create(2, Kind::Active, &[1]).expect("s2");
    let target = dir.subdir("rootfs");
    let guard = Guard::new();
    guard.mount(&target);
    mount_all(&m2, &target).expect("mount");
    std::fs::remove_file(target.join("gone")).expect("rm");
    std::fs::remove_dir_all(target.join("var/cache")).expect("rm -r");
    std::fs::remove_dir_all(target.join("keep")).expect("rm -r");
    std::fs::create_dir(target.join("keep")).expect("mkdir (opaque)");
    std::fs::write(target.join("keep/only"), b"only").expect("write");
    std::fs::write(target.join("etc/config"), b"v3").expect("write");
    let merged = without_root(common::listing(&target, None));
    unmount(&target).expect("unmount");
    let view = ov.mounts(1, Kind::View, &[]);
    let mut out = Vec::new();
    let d = diff(
        DiffSource::Mounts(&view),
        DiffSource::Mounts(&m2),
        &mut out,
        Compression::None,
    )
    .expect("diff");
    let names = entry_names(&out);
    for want in [
        ".wh.gone",
        "var/.wh.cache",
        "keep/.wh..wh..opq",
        "keep/only",
        "etc/config",
    ] {
        assert!(
            names.contains(&want.to_string()),
            "{want} missing from {names:?}"
        );
    }
    // Apply onto a fresh snapshot of the base (Delete mode) gives the merged view.
    let m3 = ov.create(3, Kind::Active, &[]).expect("s3");
    apply_to_mounts(
        &m3,
        &base_layer()[..],
        Compression::None,
        &ApplyOptions::default(),
    )
    .expect("base");
    let a =
        apply_to_mounts(&m3, &out[..], Compression::None, &ApplyOptions::default()).expect("apply");
    assert_eq!(a.diff_id, d.diff_id);
    assert_eq!(
        without_root(common::listing(&ov.upper_dir(3), None)),
        merged
    );
    // And through a real overlay (temp mount path of apply_to_mounts): active child of 1.
    let m4 = ov.create(4, Kind::Active, &[1]).expect("s4");
    apply_to_mounts(&m4, &out[..], Compression::None, &ApplyOptions::default()).expect("apply");
    mount_all(&m4, &target).expect("mount");
    let merged4 = without_root(common::listing(&target, None));
    unmount(&target).expect("unmount");
    assert_eq!(
        merged4.keys().collect::<Vec<_>>(),
        merged.keys().collect::<Vec<_>>()
    );
    for id in 1..=4 {
        ov.remove(id).expect("remove");
    }
    guard.assert_clean();
}

fn tar_dir(src: &Path, out: &Path) {
    let status = Command::new("tar")
        .arg("-C")
        .arg(src)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
}

#[test]
fn oci_layout_import_export_round_trip_and_skopeo_reads_it() {
    let dir = TestDir::new("image-archive-oci");
    let mut l1 = TarBuilder::new();
    l1.dir("etc", 0o755).file("etc/hello", 0o644, b"hello");
    let mut l2 = TarBuilder::new();
    l2.file("etc/.wh.hello", 0o644, b"")
        .file("world", 0o644, b"world");
    let layout = berth_tests::oci_layout::write_image(
        &dir.join("layout"),
        &[l1.finish(), l2.finish()],
        serde_json::json!({}),
        "v1",
    );
    tar_dir(&layout.path, &dir.join("layout.tar"));
    let cs = ContentStore::open(dir.join("store1")).expect("open");
    let images = import(
        &cs,
        std::fs::File::open(dir.join("layout.tar")).expect("open"),
    )
    .expect("import");
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].name.as_deref(), Some("v1"));
    assert_eq!(images[0].descriptor.digest, layout.manifest.digest);
    for b in layout.blobs() {
        assert!(
            cs.exists(&Digest::parse(&b.digest).expect("digest")),
            "{}",
            b.digest
        );
    }
    let named = vec![ArchiveImage {
        name: Some("example.com/test/img:v1".into()),
        descriptor: images[0].descriptor.clone(),
    }];
    let out = dir.join("export.tar");
    export(
        &cs,
        &named,
        std::fs::File::create(&out).expect("create"),
        &ExportOptions {
            docker_manifest: true,
        },
    )
    .expect("export");
    let cs2 = ContentStore::open(dir.join("store2")).expect("open");
    let again = import(&cs2, std::fs::File::open(&out).expect("open")).expect("re-import");
    assert_eq!(again[0].descriptor.digest, layout.manifest.digest);
    assert_eq!(again[0].name.as_deref(), Some("example.com/test/img:v1"));
    let digests = |c: &ContentStore| {
        c.list()
            .expect("list")
            .into_iter()
            .map(|b| b.digest)
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&cs), digests(&cs2));
    // Exporting twice gives the same bytes.
    let mut a = Vec::new();
    export(
        &cs,
        &named,
        &mut a,
        &ExportOptions {
            docker_manifest: true,
        },
    )
    .expect("export");
    assert_eq!(a, std::fs::read(&out).expect("read"));
    let Some(skopeo) = berth_tests::tool("skopeo") else {
        return;
    };
    let o = Command::new(skopeo)
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", out.display()))
        .output()
        .expect("skopeo");
    assert!(
        o.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        Digest::of(&o.stdout).to_string(),
        layout.manifest.digest,
        "skopeo saw another manifest"
    );
    let o = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", out.display()))
        .output()
        .expect("skopeo");
    assert!(
        o.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(2), "{v}");
}

#[test]
fn docker_save_archive_imports_with_a_synthesized_manifest() {
    let dir = TestDir::new("image-archive-docker");
    let mut l = TarBuilder::new();
    l.dir("bin", 0o755).file("bin/tool", 0o755, b"tool");
    let layer = l.finish();
    let config = br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cfg_name = format!("{}.json", Digest::of(config).hex());
    let manifest = format!(
        r#"[{{"Config":"{cfg_name}","RepoTags":["busybox:saved","example.com/x:y"],"Layers":["abc/layer.tar","def/layer.tar"]}}]"#
    );
    let mut t = TarBuilder::new();
    t.dir("abc", 0o755)
        .file("abc/VERSION", 0o644, b"1.0")
        .file("abc/json", 0o644, b"{}")
        .file("abc/layer.tar", 0o644, &layer)
        .dir("def", 0o755)
        .symlink("def/layer.tar", "../abc/layer.tar")
        .file(&cfg_name, 0o644, config)
        .file("manifest.json", 0o644, manifest.as_bytes())
        .file("repositories", 0o644, b"{}");
    let archive = t.finish();
    let cs = ContentStore::open(dir.path()).expect("open");
    let images = import(&cs, &archive[..]).expect("import");
    let names: Vec<_> = images.iter().filter_map(|i| i.name.clone()).collect();
    assert_eq!(names, ["busybox:saved", "example.com/x:y"]);
    let d = &images[0].descriptor;
    assert_eq!(d.media_type, media::DOCKER_MANIFEST);
    let mut bytes = Vec::new();
    cs.open_blob(&Digest::parse(&d.digest).expect("digest"))
        .expect("manifest blob")
        .read_to_end(&mut bytes)
        .expect("read");
    let m: Manifest = serde_json::from_slice(&bytes).expect("manifest");
    assert_eq!(m.config.digest, Digest::of(config).to_string());
    assert_eq!(m.config.media_type, media::DOCKER_CONFIG);
    assert_eq!(m.layers.len(), 2);
    assert_eq!(m.layers[0].digest, Digest::of(&layer).to_string());
    assert_eq!(
        m.layers[1].digest, m.layers[0].digest,
        "symlinked layer resolved"
    );
    assert_eq!(m.layers[0].media_type, media::DOCKER_LAYER);
    assert_eq!(
        cs.list().expect("list").len(),
        3,
        "VERSION/json files are not stored"
    );
    // A corrupt OCI blob (name does not match the data) is refused and not stored.
    let mut bad = TarBuilder::new();
    bad.file(
        &format!("blobs/sha256/{}", Digest::of(b"a").hex()),
        0o644,
        b"b",
    );
    let e = import(&cs, &bad.finish()[..])
        .expect_err("corrupt")
        .to_string();
    assert!(e.contains("digest mismatch"), "{e}");
    assert!(!cs.exists(&Digest::of(b"a")) && !cs.exists(&Digest::of(b"b")));
}
