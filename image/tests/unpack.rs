//! The unpacker against hostile layers, whiteouts (both modes, and a real overlay mount), metadata,
//! GNU tar output and broken streams. Root only.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use berth_image::unpack::{apply, ApplyOptions, Compression, WhiteoutMode};
use berth_image::Mount;
use berth_tests::archive::{Entry, EntryKind, TarBuilder};
use berth_tests::hostile::{hardlink_victim, hostile_layers};
use berth_tests::{require_root, unique_id, Guard, TestDir};

fn opts(mode: WhiteoutMode, devices: bool) -> ApplyOptions {
    ApplyOptions {
        whiteout: mode,
        allow_devices: devices,
        ..Default::default()
    }
}

#[test]
fn hostile_layers_cannot_escape_in_any_mode_or_compression() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-hostile");
    let mut cases = 0;
    for mode in [WhiteoutMode::Delete, WhiteoutMode::Overlay] {
        for comp in [Compression::None, Compression::Gzip, Compression::Zstd] {
            for devices in [true, false] {
                let case = dir.subdir(format!("{mode:?}-{comp:?}-{devices}"));
                let target = case.join("unpack/rootfs");
                std::fs::create_dir_all(&target).expect("mkdir");
                let marker = unique_id("m");
                let victim = hardlink_victim(&target, &marker);
                std::fs::write(&victim, b"victim").expect("victim");
                for layer in hostile_layers(&target, &marker) {
                    let data = match comp {
                        Compression::None => layer.tar.clone(),
                        Compression::Gzip => common::gzip(&layer.tar),
                        Compression::Zstd => match common::zstd(&layer.tar, dir.path()) {
                            Some(z) => z,
                            None => continue,
                        },
                    };
                    let before = common::listing(&case, Some(&target));
                    let r = apply(&target, &data[..], comp, &opts(mode, devices));
                    if let Ok(a) = &r {
                        assert_eq!(
                            a.diff_id,
                            berth_image::Digest::of(&layer.tar),
                            "{}: diff_id",
                            layer.name
                        );
                        if layer.name == "char-device" && !devices {
                            assert_eq!(a.skipped_devices, 1);
                        }
                    }
                    for p in &layer.must_not_exist {
                        assert!(
                            p.symlink_metadata().is_err(),
                            "{} ({mode:?}, {comp:?}): {} exists (result {r:?})",
                            layer.name,
                            p.display()
                        );
                    }
                    let after = common::listing(&case, Some(&target));
                    assert_eq!(
                        before, after,
                        "{}: outside of the target changed",
                        layer.name
                    );
                    assert_eq!(std::fs::read(&victim).expect("victim"), b"victim");
                    assert_eq!(
                        victim.metadata().expect("victim").nlink(),
                        1,
                        "{}",
                        layer.name
                    );
                    cases += 1;
                }
                // The device layer: created only when allowed.
                let devs: Vec<_> = std::fs::read_dir(&target)
                    .expect("ls")
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with("-mem"))
                    .collect();
                assert_eq!(devs.len(), usize::from(devices), "{mode:?} {comp:?}");
            }
        }
    }
    assert!(cases >= 2 * 2 * 2 * 8, "only {cases} cases ran");
}

#[test]
fn hostile_write_through_planted_links_stays_inside() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-hostile-links");
    let target = dir.subdir("t/rootfs");
    let outside = dir.join("t/outside-file");
    std::fs::write(&outside, b"keep").expect("write");
    let mut t = TarBuilder::new();
    // A symlink to an outside file, then a regular file of the same name: replaced, not written
    // through.
    t.symlink("s", &outside.to_string_lossy())
        .file("s", 0o644, b"new")
        // A hardlink inside, then a write to the link: the original keeps its content.
        .file("orig", 0o644, b"orig")
        .hardlink("h", "orig")
        .file("h", 0o644, b"changed")
        // A symlink to a parent dir used as a directory: resolved inside the root.
        .symlink("up", "../../..")
        .file("up/inside", 0o644, b"x")
        // A whiteout through a symlinked parent.
        .symlink("w", &dir.join("t").to_string_lossy())
        .file("w/.wh.outside-file", 0o644, b"");
    let tar = t.finish();
    apply(
        &target,
        &tar[..],
        Compression::None,
        &ApplyOptions::default(),
    )
    .expect("apply");
    assert_eq!(std::fs::read(&outside).expect("outside"), b"keep");
    assert_eq!(std::fs::read(target.join("s")).expect("s"), b"new");
    assert_eq!(std::fs::read(target.join("orig")).expect("orig"), b"orig");
    assert_eq!(std::fs::read(target.join("h")).expect("h"), b"changed");
    assert_eq!(std::fs::read(target.join("inside")).expect("inside"), b"x");
}

fn rich_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.dir("bin", 0o755).dir("data", 0o750);
    let mut suid = Entry::new(EntryKind::File, "bin/suid", 0o4755);
    suid.uid = 1000;
    suid.gid = 1001;
    suid.data = b"#!/bin/sh\n".to_vec();
    suid.pax
        .push(("SCHILY.xattr.user.note".into(), b"hello".to_vec()));
    suid.pax.push((
        "SCHILY.xattr.trusted.overlay.redirect".into(),
        b"/x".to_vec(),
    ));
    t.append(suid);
    let mut cap = Entry::new(EntryKind::File, "bin/ping", 0o755);
    cap.data = b"ping".to_vec();
    // VFS_CAP_REVISION_2 with CAP_NET_RAW (13) permitted.
    let mut v = vec![0u8; 20];
    v[..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
    v[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
    cap.pax.push(("SCHILY.xattr.security.capability".into(), v));
    t.append(cap);
    let mut sticky = Entry::new(EntryKind::Dir, "tmp", 0o1777);
    sticky.uid = 0;
    t.append(sticky);
    let mut d = Entry::new(EntryKind::Char, "dev-null", 0o666);
    d.dev = (1, 3);
    t.append(d);
    let mut b = Entry::new(EntryKind::Block, "dev-loop", 0o660);
    b.dev = (7, 0);
    t.append(b);
    t.append(Entry::new(EntryKind::Fifo, "data/fifo", 0o620));
    t.file("data/a", 0o600, b"aaa").hardlink("data/b", "data/a");
    t.symlink("data/abs", "/etc/passwd");
    let long = format!("data/{}/{}", "d".repeat(120), "f".repeat(150));
    t.file(&long, 0o644, b"long");
    t.finish()
}

#[test]
fn metadata_devices_links_and_times_are_kept() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-rich");
    let target = dir.subdir("rootfs");
    let tar = rich_layer();
    let tar_path = dir.join("layer.tar");
    std::fs::write(&tar_path, &tar).expect("write");
    let gz = common::gzip(&tar);
    let a = apply(
        &target,
        &gz[..],
        Compression::Gzip,
        &ApplyOptions::default(),
    )
    .expect("apply");
    assert_eq!(a.diff_id.to_string(), common::sha256sum(&tar_path));
    assert_eq!(a.size, tar.len() as u64);
    assert_eq!(a.skipped_xattrs, 1, "{:?}", a.warnings);
    let m = std::fs::symlink_metadata(target.join("bin/suid")).expect("suid");
    assert_eq!((m.uid(), m.gid()), (1000, 1001));
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(m.mtime() as u64, berth_tests::archive::TAR_MTIME);
    assert_eq!(
        common::xattr(&target.join("bin/suid"), "user.note").as_deref(),
        Some(&b"hello"[..])
    );
    assert!(common::xattr(&target.join("bin/suid"), "trusted.overlay.redirect").is_none());
    assert!(common::xattr(&target.join("bin/ping"), "security.capability").is_some());
    let tmp = std::fs::symlink_metadata(target.join("tmp")).expect("tmp");
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(tmp.mtime() as u64, berth_tests::archive::TAR_MTIME);
    let data = std::fs::symlink_metadata(target.join("data")).expect("data");
    assert_eq!(
        data.mtime() as u64,
        berth_tests::archive::TAR_MTIME,
        "dir times after contents"
    );
    let null = std::fs::symlink_metadata(target.join("dev-null")).expect("dev");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o666);
    assert!(std::fs::symlink_metadata(target.join("dev-loop"))
        .expect("blk")
        .file_type()
        .is_block_device());
    assert!(std::fs::symlink_metadata(target.join("data/fifo"))
        .expect("fifo")
        .file_type()
        .is_fifo());
    let a1 = std::fs::symlink_metadata(target.join("data/a")).expect("a");
    let b1 = std::fs::symlink_metadata(target.join("data/b")).expect("b");
    assert_eq!(a1.ino(), b1.ino());
    assert_eq!(a1.nlink(), 2);
    assert_eq!(
        std::fs::read_link(target.join("data/abs")).expect("link"),
        Path::new("/etc/passwd")
    );
    let long = format!("data/{}/{}", "d".repeat(120), "f".repeat(150));
    assert_eq!(std::fs::read(target.join(long)).expect("long"), b"long");
}

#[test]
fn gnu_tar_layers_apply() {
    if !require_root() {
        return;
    }
    let Some(tar) = berth_tests::tool("tar") else {
        return;
    };
    let dir = TestDir::new("image-gnutar");
    let src = dir.subdir("src");
    let deep = src.join(format!("{}/{}", "x".repeat(90), "y".repeat(90)));
    std::fs::create_dir_all(&deep).expect("mkdir");
    std::fs::write(deep.join("z".repeat(200)), b"deep").expect("write");
    std::fs::write(src.join("f"), b"file").expect("write");
    std::fs::hard_link(src.join("f"), src.join("hl")).expect("link");
    std::os::unix::fs::symlink("y".repeat(150), src.join("sl")).expect("symlink");
    std::fs::set_permissions(src.join("f"), std::fs::Permissions::from_mode(0o2711))
        .expect("chmod");
    for (fmt, name) in [("gnu", "gnu.tar"), ("posix", "pax.tar")] {
        let out = Command::new(&tar)
            .arg("-C")
            .arg(&src)
            .arg(format!("--format={fmt}"))
            .args(["--xattrs", "-cf"])
            .arg(dir.join(name))
            .arg(".")
            .output()
            .expect("tar");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let target = dir.subdir(format!("out-{fmt}"));
        let data = std::fs::read(dir.join(name)).expect("read");
        let a = apply(
            &target,
            &data[..],
            Compression::None,
            &ApplyOptions::default(),
        )
        .expect(fmt);
        assert_eq!(a.diff_id.to_string(), common::sha256sum(&dir.join(name)));
        assert_eq!(
            common::listing(&src, None),
            common::listing(&target, None),
            "{fmt}"
        );
    }
}

#[test]
fn broken_streams_give_clear_errors() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-broken");
    let mut t = TarBuilder::new();
    t.dir("d", 0o755)
        .file("d/big", 0o644, &vec![7u8; 300_000])
        .file("d/after", 0o644, b"x");
    let tar = t.finish();
    let gz = common::gzip(&tar);
    let cases: Vec<(&str, Vec<u8>, Compression)> = vec![
        (
            "truncated gzip",
            gz[..gz.len() / 2].to_vec(),
            Compression::Gzip,
        ),
        (
            "gzip missing trailer",
            gz[..gz.len() - 4].to_vec(),
            Compression::Gzip,
        ),
        (
            "corrupt gzip",
            {
                let mut c = gz.clone();
                let mid = c.len() / 2;
                for b in &mut c[mid..mid + 64] {
                    *b ^= 0x5a;
                }
                c
            },
            Compression::Gzip,
        ),
        ("truncated tar", tar[..100_000].to_vec(), Compression::None),
        (
            "tar without end blocks",
            tar[..tar.len() - 1024].to_vec(),
            Compression::None,
        ),
        (
            "bad checksum",
            {
                let mut c = tar.clone();
                c[0] = b'X';
                c
            },
            Compression::None,
        ),
        ("not a gzip", tar.clone(), Compression::Gzip),
        ("empty", Vec::new(), Compression::None),
    ];
    for (i, (what, data, comp)) in cases.into_iter().enumerate() {
        let target = dir.subdir(format!("t{i}"));
        let e = apply(&target, &data[..], comp, &ApplyOptions::default())
            .expect_err(what)
            .to_string();
        assert!(e.starts_with("layer"), "{what}: {e}");
        eprintln!("{what}: {e}");
    }
}

fn whiteout_layers() -> (Vec<u8>, Vec<u8>) {
    let mut lower = TarBuilder::new();
    lower
        .dir("a", 0o755)
        .file("a/x", 0o644, b"x")
        .file("a/y", 0o644, b"y")
        .dir("o", 0o755)
        .file("o/p", 0o644, b"p")
        .dir("o/q", 0o755)
        .file("o/q/r", 0o644, b"r")
        .file("del", 0o644, b"d")
        .dir("deldir", 0o755)
        .file("deldir/f", 0o644, b"f");
    let mut upper = TarBuilder::new();
    upper
        .file(".wh.del", 0o644, b"")
        .file(".wh.deldir", 0o644, b"")
        .dir("a", 0o755)
        .file("a/.wh.x", 0o644, b"")
        .dir("o", 0o755)
        .file("o/.wh..wh..opq", 0o644, b"")
        .file("o/new", 0o644, b"n");
    (lower.finish(), upper.finish())
}

fn check_merged(root: &Path) {
    let names = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(root), ["a", "o"], "{}", root.display());
    assert_eq!(names(&root.join("a")), ["y"]);
    assert_eq!(names(&root.join("o")), ["new"]);
}

#[test]
fn whiteouts_give_the_merged_view_in_both_modes() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-whiteouts");
    let (lower, upper) = whiteout_layers();
    // Delete mode: both layers into one tree.
    let plain = dir.subdir("plain");
    apply(
        &plain,
        &lower[..],
        Compression::None,
        &ApplyOptions::default(),
    )
    .expect("lower");
    apply(
        &plain,
        &upper[..],
        Compression::None,
        &ApplyOptions::default(),
    )
    .expect("upper");
    check_merged(&plain);
    // Overlay mode: lower into one dir, upper into an upperdir, then a real overlay mount.
    let l = dir.subdir("l");
    let u = dir.subdir("u");
    let w = dir.subdir("w");
    let merged = dir.subdir("merged");
    apply(&l, &lower[..], Compression::None, &ApplyOptions::default()).expect("lower");
    let a = apply(
        &u,
        &upper[..],
        Compression::None,
        &opts(WhiteoutMode::Overlay, true),
    )
    .expect("upper");
    assert_eq!(a.entries, 7);
    let wh = std::fs::symlink_metadata(u.join("del")).expect("whiteout");
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        common::xattr(&u.join("o"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    let guard = Guard::new();
    guard.mount(&merged);
    let m = Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec![
            format!("lowerdir={}", l.display()),
            format!("upperdir={}", u.display()),
            format!("workdir={}", w.display()),
        ],
    };
    m.mount_at(&merged).expect("mount overlay");
    check_merged(&merged);
    berth_image::mount::unmount(&merged).expect("unmount");
    guard.assert_clean();
}

#[test]
fn the_size_limit_stops_a_bomb_and_accepts_a_layer_of_exactly_that_size() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-limit");
    let tar = TarBuilder::new()
        .file("zeros", 0o644, &vec![0u8; 4 << 20])
        .finish();
    let gz = common::gzip(&tar);
    let limited = |max_size: u64| ApplyOptions {
        max_size,
        ..Default::default()
    };
    let target = dir.subdir("bomb");
    let err =
        apply(&target, &gz[..], Compression::Gzip, &limited(1 << 20)).expect_err("past the limit");
    assert!(
        matches!(err, berth_image::Error::LayerTooLarge { limit } if limit == 1 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("max_unpacked_layer_size"), "{err}");
    // The whole stream (trailing blocks included) is exactly the limit: accepted.
    let target = dir.subdir("exact");
    let a = apply(
        &target,
        &gz[..],
        Compression::Gzip,
        &limited(tar.len() as u64),
    )
    .expect("at the limit");
    assert_eq!(a.size, tar.len() as u64);
    let err = apply(
        &dir.subdir("one-less"),
        &gz[..],
        Compression::Gzip,
        &limited(tar.len() as u64 - 1),
    )
    .expect_err("one byte past");
    assert!(
        matches!(err, berth_image::Error::LayerTooLarge { .. }),
        "{err}"
    );
}
