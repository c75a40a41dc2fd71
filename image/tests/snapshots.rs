//! Snapshot storage: overlay chains mounted for real, native copies keeping everything, removal
//! and usage. Root only.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use berth_image::mount::{mount_all, unmount};
use berth_image::snapshot::{Kind, Native, Overlay, Snapshotter};
use berth_tests::{require_root, Guard, TestDir};

#[test]
fn overlay_chain_of_three_mounts_the_merged_view() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-snap-overlay");
    let ov = Overlay::new(dir.path()).expect("overlay");
    let m1 = ov.create(1, Kind::Active, &[]).expect("create 1");
    assert_eq!(m1.len(), 1);
    assert_eq!(m1[0].kind, "bind");
    assert_eq!(m1[0].options, ["rw", "rbind"]);
    std::fs::write(ov.upper_dir(1).join("base"), b"1").expect("write");
    std::fs::write(ov.upper_dir(1).join("shadowed"), b"1").expect("write");
    ov.commit(1).expect("commit 1");
    ov.create(2, Kind::Active, &[1]).expect("create 2");
    std::fs::write(ov.upper_dir(2).join("shadowed"), b"2").expect("write");
    std::fs::write(ov.upper_dir(2).join("mid"), b"2").expect("write");
    ov.commit(2).expect("commit 2");
    let m3 = ov.create(3, Kind::Active, &[2, 1]).expect("create 3");
    assert_eq!(m3[0].kind, "overlay");
    let lower = m3[0].option("lowerdir").expect("lowerdir");
    assert_eq!(
        lower,
        format!(
            "{}:{}",
            ov.upper_dir(2).display(),
            ov.upper_dir(1).display()
        )
    );
    assert!(m3[0].options.iter().any(|o| o == "index=off"));
    assert_eq!(
        m3[0].option("upperdir"),
        Some(ov.upper_dir(3).to_string_lossy().as_ref())
    );

    let target = dir.subdir("rootfs");
    let guard = Guard::new();
    guard.mount(&target);
    mount_all(&m3, &target).expect("mount");
    assert_eq!(std::fs::read(target.join("base")).expect("base"), b"1");
    assert_eq!(
        std::fs::read(target.join("shadowed")).expect("shadowed"),
        b"2"
    );
    assert_eq!(std::fs::read(target.join("mid")).expect("mid"), b"2");
    std::fs::write(target.join("top"), b"3").expect("write through overlay");
    std::fs::remove_file(target.join("base")).expect("delete through overlay");
    assert_eq!(
        std::fs::read(ov.upper_dir(3).join("top")).expect("upper"),
        b"3"
    );
    unmount(&target).expect("unmount");

    // Views: one parent → ro bind of it; several → lowerdir-only overlay.
    let v1 = ov.create(4, Kind::View, &[2]).expect("view");
    assert_eq!(v1[0].kind, "bind");
    assert_eq!(v1[0].source, ov.upper_dir(2).to_string_lossy());
    assert_eq!(v1[0].options, ["ro", "rbind"]);
    let v2 = ov.create(5, Kind::View, &[2, 1]).expect("view");
    assert_eq!(v2[0].kind, "overlay");
    assert!(v2[0].option("upperdir").is_none());
    mount_all(&v2, &target).expect("mount view");
    assert_eq!(std::fs::read(target.join("shadowed")).expect("view"), b"2");
    assert!(
        std::fs::write(target.join("nope"), b"x").is_err(),
        "view is read-only"
    );
    unmount(&target).expect("unmount");
    let v0 = ov.create(6, Kind::View, &[]).expect("view no parent");
    assert_eq!(v0[0].options, ["ro", "rbind"]);

    let u = ov.usage(1).expect("usage");
    assert!(u.inodes == 3 && u.size >= 8192, "{u:?}");
    for id in 1..=6 {
        ov.remove(id).expect("remove");
        assert!(!ov.snapshot_dir(id).exists());
    }
    assert!(ov.remove(1).expect_err("gone").is_not_found());
    guard.assert_clean();
}

#[test]
fn remove_refuses_while_something_is_mounted_inside() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-snap-busy");
    let ov = Overlay::new(dir.path()).expect("overlay");
    ov.create(1, Kind::Active, &[]).expect("create");
    let user = dir.subdir("user-data");
    std::fs::write(user.join("precious"), b"keep").expect("write");
    let inner = ov.upper_dir(1).join("mnt");
    std::fs::create_dir(&inner).expect("mkdir");
    let guard = Guard::new();
    guard.mount(&inner);
    berth_image::Mount::bind(&user, false)
        .mount_at(&inner)
        .expect("bind");
    let e = ov.remove(1).expect_err("refused").to_string();
    assert!(e.contains("refusing") && e.contains("mnt"), "{e}");
    assert_eq!(std::fs::read(user.join("precious")).expect("kept"), b"keep");
    unmount(&inner).expect("unmount");
    ov.remove(1).expect("remove");
    assert_eq!(std::fs::read(user.join("precious")).expect("kept"), b"keep");
    guard.assert_clean();
}

#[test]
fn native_copy_keeps_links_devices_xattrs_owners() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("image-snap-native");
    let nat = Native::new(dir.path()).expect("native");
    let m = nat.create(1, Kind::Active, &[]).expect("create");
    assert_eq!(m[0].kind, "bind");
    let fs1 = nat.upper_dir(1);
    std::fs::create_dir(fs1.join("d")).expect("mkdir");
    std::fs::write(fs1.join("d/f"), b"data").expect("write");
    std::fs::hard_link(fs1.join("d/f"), fs1.join("hl")).expect("link");
    std::os::unix::fs::symlink("d/f", fs1.join("sl")).expect("symlink");
    nix::sys::stat::mknod(
        &fs1.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod");
    nix::unistd::mkfifo(
        &fs1.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    std::os::unix::fs::chown(fs1.join("d/f"), Some(1234), Some(4321)).expect("chown");
    std::fs::set_permissions(
        fs1.join("d/f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4750),
    )
    .expect("chmod");
    let out = std::process::Command::new("setfattr")
        .args(["-n", "user.k", "-v", "v"])
        .arg(fs1.join("d/f"))
        .status();
    let have_setfattr = out.map(|s| s.success()).unwrap_or(false);
    nat.commit(1).expect("commit");
    nat.create(2, Kind::Active, &[1]).expect("copy");
    let fs2 = nat.upper_dir(2);
    let a = std::fs::symlink_metadata(fs2.join("d/f")).expect("f");
    let b = std::fs::symlink_metadata(fs2.join("hl")).expect("hl");
    assert_eq!(a.ino(), b.ino(), "hard link kept");
    assert_ne!(
        a.ino(),
        std::fs::symlink_metadata(fs1.join("d/f"))
            .expect("f1")
            .ino()
    );
    assert_eq!((a.uid(), a.gid(), a.mode() & 0o7777), (1234, 4321, 0o4750));
    assert!(std::fs::symlink_metadata(fs2.join("null"))
        .expect("null")
        .file_type()
        .is_char_device());
    assert!(std::fs::symlink_metadata(fs2.join("fifo"))
        .expect("fifo")
        .file_type()
        .is_fifo());
    assert_eq!(
        std::fs::read_link(fs2.join("sl"))
            .expect("sl")
            .to_string_lossy(),
        "d/f"
    );
    if have_setfattr {
        assert_eq!(
            common::xattr(&fs2.join("d/f"), "user.k").as_deref(),
            Some(&b"v"[..])
        );
    }
    assert_eq!(common::listing(&fs1, None), common::listing(&fs2, None));
    let u = nat.usage(2).expect("usage");
    assert_eq!(u.inodes, 6, "{u:?}");
    nat.remove(1).expect("remove");
    nat.remove(2).expect("remove");
    assert!(!nat.snapshot_dir(2).exists());
}
