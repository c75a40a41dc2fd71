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
    guard.cgroup(format!("/{parent_rel}/inner"));
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
