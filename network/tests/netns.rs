//! Named network namespaces: created fresh with `lo` up, bound at any path, removed
//! idempotently, never leaking into the test process's own threads.

mod common;

use std::path::Path;

use berth_net::{create_netns, is_netns, remove_netns, NetnsError};
use berth_tests::{require_root, Guard, TestDir};
use common::in_netns;

fn ns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").ino()
}

/// The netns of every thread of this process (but the netns creator threads).
fn thread_netns() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .flatten()
        // A parallel test's short-lived creator thread is in its new netns by design.
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .unwrap_or_default()
                .trim()
                != "berth-netns"
        })
        .filter_map(|t| std::fs::read_link(t.path().join("ns/net")).ok())
        .map(|l| l.display().to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn netns_is_fresh_has_lo_up_and_does_not_leak() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("netns-fresh");
    // Deep, arbitrary parent dirs: create_netns makes them.
    let a = dir.join("any/parent/dir/a");
    let b = dir.join("other/b");
    let guard = Guard::new();
    guard.netns(&a).netns(&b);
    let host_ns = std::fs::read_link("/proc/self/ns/net").expect("read_link");

    create_netns(&a).expect("create_netns");
    create_netns(&b).expect("create_netns");

    assert!(is_netns(&a) && is_netns(&b));
    assert!(
        berth_tests::is_mounted(&a),
        "{} is not a mount",
        a.display()
    );
    assert_ne!(
        ns_inode(&a),
        ns_inode(&b),
        "two calls gave the same namespace"
    );
    let host_ino = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self/ns/net")
            .expect("metadata")
            .ino()
    };
    assert_ne!(ns_inode(&a), host_ino, "the netns is the host's");
    // No thread of this process (the test's, the harness's) moved into a new namespace.
    assert_eq!(thread_netns(), [host_ns.display().to_string()]);

    let out = in_netns(&a, &["ip", "-o", "link"]);
    let links = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        links.lines().count(),
        1,
        "a fresh netns has only lo: {links}"
    );
    assert!(
        links.contains("lo: <LOOPBACK,UP,LOWER_UP>"),
        "lo is not up: {links}"
    );
    let ping = in_netns(&a, &["busybox", "ping", "-c1", "-W1", "127.0.0.1"]);
    assert!(ping.status.success(), "ping over lo failed: {ping:?}");

    // Creating again over a live namespace is refused, and leaves it alone.
    match create_netns(&a) {
        Err(NetnsError::Exists { path }) => assert_eq!(path, a),
        other => panic!("expected Exists, got {other:?}"),
    }
    assert!(is_netns(&a));

    remove_netns(&a).expect("remove_netns");
    assert!(!a.exists() && !berth_tests::is_mounted(&a));
    remove_netns(&a).expect("remove_netns"); // idempotent
    remove_netns(&b).expect("remove_netns");
    guard.assert_clean();
}

#[test]
fn leftover_empty_file_is_reused_and_stacked_mounts_are_removed() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("netns-reuse");
    let p = dir.join("ns/x");
    let guard = Guard::new();
    guard.netns(&p);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("create_dir_all");
    std::fs::write(&p, b"").expect("write"); // what a crash between create and mount leaves
    create_netns(&p).expect("create_netns");
    assert!(is_netns(&p));
    // A second bind of the same namespace on top (as `ip netns attach` could do).
    let st = std::process::Command::new("mount")
        .args(["--bind"])
        .arg(&p)
        .arg(&p)
        .status()
        .expect("test setup");
    assert!(st.success());
    remove_netns(&p).expect("remove_netns");
    assert!(!p.exists());
    assert!(!berth_tests::is_mounted(&p));

    // A directory where the file should be is an error, not a silent success.
    let d = dir.subdir("ns/dir");
    match create_netns(&d) {
        Err(NetnsError::InvalidPath { why, .. }) => assert!(why.contains("not a regular file")),
        other => panic!("expected InvalidPath, got {other:?}"),
    }
    guard.assert_clean();
}
