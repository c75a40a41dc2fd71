//! Harness self-test: the Guard fails a test when something it was given is still there.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::guard::cgroup_roots;
use berth_tests::{proc, require_root, unique_id, Guard, TestDir};

/// The v1 freezer hierarchy, if this host has one.
fn freezer_root() -> Option<PathBuf> {
    cgroup_roots().into_iter().find(|r| {
        r.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.split(',').any(|c| c == "freezer"))
    })
}

#[test]
fn guard_reports_leftovers_before_cleanup() {
    if !require_root() {
        return;
    }
    let Some(root) = cgroup_roots().into_iter().next() else {
        berth_tests::skip("no cgroup hierarchy mounted");
        return;
    };
    let rel = format!("/berth-test/{}", unique_id("guard-leak"));
    let dir = root.join(rel.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).expect("create cgroup");
    let guard = Guard::new();
    guard.cgroup(rel.as_str());
    let left = guard.leftovers();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains(&dir.display().to_string()), "{left:?}");
    let caught = std::panic::catch_unwind(|| guard.assert_clean());
    assert!(caught.is_err(), "assert_clean must fail on a leaked cgroup");
    // The guard can clean this one up itself.
    assert!(guard.cleanup().is_empty());
    assert!(!dir.exists());
}

#[test]
fn guard_panics_on_drop_when_a_cgroup_cannot_be_removed() {
    if !require_root() {
        return;
    }
    let Some(freezer) = freezer_root() else {
        berth_tests::skip("no v1 freezer hierarchy on this host");
        return;
    };
    // A cgroup the guard cannot remove: its task sits in a child of a frozen parent that the
    // guard does not own, so SIGKILL cannot take effect and rmdir fails with EBUSY.
    let parent_rel = format!("berth-test/{}", unique_id("guard-frozen"));
    let parent = freezer.join(&parent_rel);
    let inner = parent.join("inner");
    std::fs::create_dir_all(&inner).expect("create cgroups");
    let _dir = TestDir::new("harness-guard");
    let mut sleeper = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn sleep");
    let pid = sleeper.id();
    std::fs::write(inner.join("cgroup.procs"), pid.to_string()).expect("move into cgroup");
    std::fs::write(parent.join("freezer.state"), "FROZEN").expect("freeze");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(parent.join("freezer.state"))
        .unwrap_or_default()
        .trim()
        != "FROZEN"
    {
        assert!(Instant::now() < deadline, "freezer did not freeze");
        std::thread::sleep(Duration::from_millis(10));
    }

    let guard = Guard::new();
    guard
        .cgroup(format!("/{parent_rel}/inner"))
        .cgroup_timeout(Duration::from_millis(500));
    let result = std::panic::catch_unwind(move || drop(guard));

    // Clean up by hand before asserting, so a failure here leaves nothing behind either.
    let _ = std::fs::write(parent.join("freezer.state"), "THAWED");
    proc::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = sleeper.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in [&inner, &parent] {
        while d.exists() && std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(!inner.exists() && !parent.exists(), "manual cleanup failed");

    let err = result.expect_err("the guard must panic when a cgroup is left");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains("still present") && msg.contains("inner"),
        "{msg}"
    );
}

#[test]
fn guard_cleans_every_kind_it_is_given() {
    if !require_root() {
        return;
    }
    let Some(ip) = berth_tests::tool("ip") else {
        return;
    };
    let Some(root) = cgroup_roots().into_iter().next() else {
        berth_tests::skip("no cgroup hierarchy mounted");
        return;
    };
    use nix::mount::{mount, MsFlags};
    let dir = TestDir::new("harness-guard-all");
    let guard = Guard::new();

    // Two tmpfs stacked on one mount point.
    let m = dir.subdir("m");
    for _ in 0..2 {
        mount(
            Some("tmpfs"),
            &m,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount tmpfs");
    }
    guard.mount(m.clone());
    // A dir with a mount below it.
    let x = dir.subdir("x");
    let y = dir.subdir("x/y");
    mount(
        Some("tmpfs"),
        &y,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount tmpfs");
    guard.dir(x.clone());
    // A named netns.
    let ns = unique_id("guard-ns");
    let out = Command::new(&ip)
        .args(["netns", "add", &ns])
        .output()
        .expect("ip netns add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    guard.netns(&ns);
    // A process, and a cgroup with a child cgroup holding another process.
    let mut a = Command::new("sleep").arg("600").spawn().expect("spawn");
    let mut b = Command::new("sleep").arg("600").spawn().expect("spawn");
    guard.pid(a.id());
    let rel = format!("/berth-test/{}", unique_id("guard-all"));
    let child = root.join(rel.trim_start_matches('/')).join("child");
    std::fs::create_dir_all(&child).expect("create cgroup");
    std::fs::write(child.join("cgroup.procs"), b.id().to_string()).expect("move into cgroup");
    guard.cgroup(rel.as_str());

    let left = guard.leftovers();
    for needle in ["process", "mount", "netns", "cgroup dir", "/x still exists"] {
        assert!(
            left.iter().any(|l| l.contains(needle)),
            "{needle} missing in {left:?}"
        );
    }

    let left = guard.cleanup();
    assert!(left.is_empty(), "{left:?}");
    let _ = a.wait();
    let _ = b.wait();
    assert!(!proc::alive(a.id()) && !proc::alive(b.id()));
    assert!(!berth_tests::is_mounted(&m));
    assert!(!x.exists());
    assert!(!std::path::Path::new("/run/netns").join(&ns).exists());
    assert!(berth_tests::guard::cgroup_dirs(&rel).is_empty());
    assert!(berth_tests::mounts_below(dir.path()).is_empty());
}
