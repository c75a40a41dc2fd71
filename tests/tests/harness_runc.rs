//! Harness self-test: the busybox bundle runs under Debian's runc, and the Guard sees that
//! runc left nothing behind (no state dir, no mount, no cgroup, no process).

use std::process::Command;
use std::time::Duration;

use berth_tests::bundle::busybox_bundle;
use berth_tests::{proc, require_root, run_timeout, tool, unique_id, Guard, TestDir};

#[test]
fn runc_runs_busybox_bundle_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    let (Some(runc), Some(_)) = (tool("runc"), tool("busybox")) else {
        return;
    };
    let dir = TestDir::new("harness-runc");
    let bundle = busybox_bundle(
        &dir.join("bundle"),
        &["sh", "-c", "echo hello; id -u; exit 3"],
    );
    let root = dir.join("runc-root");
    let id = unique_id("harness-runc");
    let pid_file = dir.join("init.pid");

    let guard = Guard::new();
    {
        let (runc, root, id) = (runc.clone(), root.clone(), id.clone());
        guard.on_cleanup("runc delete --force", move || {
            let _ = Command::new(&runc)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .output();
        });
    }
    guard
        .cgroup(bundle.cgroups_path())
        .dir(root.join(&id))
        .mount(bundle.rootfs.clone());

    let out = run_timeout(
        Command::new(&runc)
            .arg("--root")
            .arg(&root)
            .arg("run")
            .arg("--bundle")
            .arg(&bundle.path)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&id),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "hello\n0\n", "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");

    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("runc wrote the pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(pid > 1);
    guard.pid(pid);
    assert!(
        proc::wait_dead(pid, Duration::from_secs(5)),
        "init {pid} still alive"
    );

    // runc itself must have cleaned up: checked before the guard cleans anything.
    guard.assert_clean();
    assert!(
        berth_tests::mounts_below(dir.path()).is_empty(),
        "mounts left below {}",
        dir.path().display()
    );
    assert!(guard.cleanup().is_empty());
}

#[test]
fn runc_bundle_spec_is_what_runc_accepts_for_a_long_running_process() {
    // A second shape: create/start/kill/delete, checking the process and cgroup exist while
    // running (so the leak checks above are not vacuous) and are gone after delete.
    if !require_root() {
        return;
    }
    let (Some(runc), Some(_)) = (tool("runc"), tool("busybox")) else {
        return;
    };
    let dir = TestDir::new("harness-runc-life");
    let bundle = busybox_bundle(&dir.join("bundle"), &["sleep", "600"]);
    let root = dir.join("runc-root");
    let id = unique_id("harness-runc-life");
    let pid_file = dir.join("init.pid");
    let guard = Guard::new();
    {
        let (runc, root, id) = (runc.clone(), root.clone(), id.clone());
        guard.on_cleanup("runc delete --force", move || {
            let _ = Command::new(&runc)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .output();
        });
    }
    guard.cgroup(bundle.cgroups_path()).dir(root.join(&id));
    let runc_cmd = |args: &[&str]| {
        let mut c = Command::new(&runc);
        c.arg("--root").arg(&root).args(args);
        // The init `create` leaves behind keeps its stdio: `run_timeout` does not wait for EOF.
        let out = run_timeout(&mut c, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "runc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let bundle_path = bundle.path.to_string_lossy().into_owned();
    let pid_path = pid_file.to_string_lossy().into_owned();
    runc_cmd(&[
        "create",
        "--bundle",
        &bundle_path,
        "--pid-file",
        &pid_path,
        &id,
    ]);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    guard.pid(pid);
    runc_cmd(&["start", &id]);
    assert!(proc::alive(pid));
    let left = guard.leftovers();
    assert!(
        left.iter().any(|l| l.contains(&format!("process {pid}"))),
        "{left:?}"
    );
    assert!(left.iter().any(|l| l.contains("cgroup dir")), "{left:?}");
    assert!(left.iter().any(|l| l.contains(&id)), "{left:?}");
    // busybox sleep as PID 1 ignores SIGTERM: SIGKILL.
    runc_cmd(&["kill", &id, "KILL"]);
    assert!(proc::wait_dead(pid, Duration::from_secs(10)));
    runc_cmd(&["delete", &id]);
    guard.assert_clean();
}
