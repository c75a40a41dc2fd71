//! Harness self-test of the `Daemon` helper: berthd is started on a per-test root, state and
//! socket, answers `ctr version`, survives restart and crash/start-again, is stopped by PID,
//! and a berthd that cannot start fails the test with its log.

use std::time::Duration;

use berth_tests::{proc, require_root, run_timeout, tool, Daemon, DaemonConfig, TestDir};

fn ctr_version(daemon: &Daemon) -> String {
    let out = run_timeout(
        daemon.ctr().args(["--connect-timeout", "5s", "version"]),
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ctr version: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Server:"), "{stdout}");
    stdout
}

#[test]
fn daemon_starts_restarts_and_stops_by_pid() {
    if !require_root() {
        return;
    }
    if tool("ctr").is_none() {
        return;
    }
    let dir = TestDir::new("harness-daemon");
    let mut daemon = Daemon::start(dir.path());
    let pid = daemon.pid().expect("running");
    assert!(proc::alive(pid));
    assert!(daemon.address().starts_with(dir.path()));
    assert!(daemon.root().is_dir() && daemon.state().is_dir());
    // Never the host's /etc/berth/config.toml: the helper passes its own (empty) config.
    let argv = proc::cmdline(pid);
    let config = argv
        .iter()
        .position(|a| a == "--config")
        .expect("--config passed");
    assert!(
        argv[config + 1].starts_with(&*dir.path().to_string_lossy()),
        "{argv:?}"
    );
    ctr_version(&daemon);

    daemon.restart();
    let pid2 = daemon.pid().expect("running again");
    assert_ne!(pid, pid2);
    assert!(
        !proc::alive(pid),
        "old berthd {pid} still alive after restart"
    );
    ctr_version(&daemon);

    let status = daemon.kill().expect("was running");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!proc::alive(pid2));
    assert!(daemon.pid().is_none());
    daemon.start_again();
    ctr_version(&daemon);

    let pid3 = daemon.pid().expect("running");
    assert!(daemon.stop().is_some());
    assert!(!proc::alive(pid3));
    assert!(daemon.stop().is_none(), "second stop is a no-op");
    assert!(!daemon.log().is_empty(), "berthd's log was not captured");
}

#[test]
fn daemon_that_cannot_start_fails_with_its_log() {
    if !require_root() {
        return;
    }
    let dir = TestDir::new("harness-daemon-bad");
    let config = DaemonConfig::new(dir.path()).arg("--no-such-flag-for-berthd");
    let caught = std::panic::catch_unwind(move || config.start());
    let err = caught.expect_err("start must fail for a berthd that exits at once");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("exited"), "{msg}");
    assert!(
        msg.contains("no-such-flag-for-berthd"),
        "log not in message: {msg}"
    );
    // Nothing left running that was started on this dir.
    let needle = dir.path().to_string_lossy().into_owned();
    let left: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc::alive(pid) && proc::cmdline(pid).join(" ").contains(&needle))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}
