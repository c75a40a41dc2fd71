//! Debian's `ctr` (1.6) against berthd, with no image (`--rootfs`): run --rm with output and exit code, run -d then
//! tasks ls / exec / kill / rm and containers rm, and `ctr events` showing the run's events. Root only.
//! (`sleep 1000` is the detached container's workload, not a wait.)

use berth_tests::ctr_fixture::{text, CtrEvents};
use berth_tests::task_fixture::TaskFixture;

use std::time::{Duration, Instant};

#[test]
fn ctr_run_rm_prints_output_and_exit_code() {
    if !berth_tests::require_root() || berth_tests::tool("ctr").is_none() {
        return;
    }
    let fx = TaskFixture::new("dt-ctr-rm", "");
    let events = CtrEvents::start(&fx);
    let b = fx.bundle("b", &["true"]);
    let id = berth_tests::unique_id("dt-ctr");
    fx.guard.cgroup(format!("/{}/{id}", fx.ns));
    let rootfs = b.rootfs.display().to_string();
    let o = fx.ctr(&[
        "run",
        "--rm",
        "--rootfs",
        &rootfs,
        &id,
        "sh",
        "-c",
        "echo hi; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n", "{}", text(&o));
    let log = events.wait_for(&[
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ]);
    let pos = |t: &str| log.find(t).unwrap_or(usize::MAX);
    assert!(pos("/containers/create") < pos("/tasks/create"), "{log}");
    assert!(pos("/tasks/create") < pos("/tasks/start"), "{log}");
    assert!(pos("/tasks/start") < pos("/tasks/exit"), "{log}");
    assert!(pos("/tasks/exit") < pos("/tasks/delete"), "{log}");
    assert!(log.contains("\"exit_status\":3"), "{log}");
    let ls = fx.ctr(&["c", "ls", "-q"]);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains(&id),
        "{}",
        text(&ls)
    );
    fx.guard.assert_clean();
}

#[test]
fn ctr_detached_run_exec_kill_rm() {
    if !berth_tests::require_root() || berth_tests::tool("ctr").is_none() {
        return;
    }
    let fx = TaskFixture::new("dt-ctr-d", "");
    let events = CtrEvents::start(&fx);
    let b = fx.bundle("b", &["true"]);
    let id = berth_tests::unique_id("dt-ctrd");
    fx.guard.cgroup(format!("/{}/{id}", fx.ns));
    let rootfs = b.rootfs.display().to_string();
    let o = fx.ctr(&["run", "-d", "--rootfs", &rootfs, &id, "sleep", "1000"]);
    assert!(o.status.success(), "{}", text(&o));

    let ls = fx.ctr(&["t", "ls"]);
    let line = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .find(|l| l.starts_with(&id))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{id} not listed: {}", text(&ls)));
    assert!(line.contains("RUNNING"), "{line}");
    let pid: i32 = line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("pid column");
    fx.guard.pid(pid);

    let ex = fx.ctr(&["t", "exec", "--exec-id", "x1", &id, "echo", "ok"]);
    assert!(ex.status.success(), "{}", text(&ex));
    assert_eq!(String::from_utf8_lossy(&ex.stdout), "ok\n", "{}", text(&ex));
    let ps = fx.ctr(&["t", "ps", &id]);
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains(&pid.to_string()),
        "{}",
        text(&ps)
    );

    let k = fx.ctr(&["t", "kill", "-s", "KILL", &id]);
    assert!(k.status.success(), "{}", text(&k));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ls = fx.ctr(&["t", "ls"]);
        if String::from_utf8_lossy(&ls.stdout)
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("STOPPED"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "never STOPPED: {}", text(&ls));
        std::thread::sleep(Duration::from_millis(50));
    }
    let rm = fx.ctr(&["t", "rm", &id]);
    assert!(rm.status.success(), "{}", text(&rm));
    let crm = fx.ctr(&["c", "rm", &id]);
    assert!(crm.status.success(), "{}", text(&crm));
    let ls = fx.ctr(&["t", "ls", "-q"]);
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains(&id),
        "{}",
        text(&ls)
    );

    let log = events.wait_for(&[
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ]);
    assert!(log.contains("\"exit_status\":137"), "{log}");
    assert!(log.contains("\"id\":\"x1\""), "exec exit: {log}");
    fx.guard.assert_clean();
}
