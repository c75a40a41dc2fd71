//! berth-runc lifecycle: run, create/start/state transitions, kill and delete edge cases,
//! list/ps, error messages and exit codes, json logs. Real busybox containers, as root.

use berth_tests::runc_fixture as util;

use berth_tests::proc;
use std::time::Duration;
use util::{text, wait_for, Rt};

#[test]
fn run_prints_and_returns_exit_code() {
    let Some(rt) = Rt::new("runc-run", &["sh", "-c", "echo hello; id -u; exit 3"]) else {
        return;
    };
    let (code, out, err) = rt.run_container();
    assert_eq!(out, "hello\n0\n", "stderr {err}");
    assert_eq!(code, 3);
    assert!(!rt.root.join(&rt.id).exists(), "run removes the state dir");
    rt.finish();
}

#[test]
fn create_start_kill_delete_transitions() {
    let Some(rt) = Rt::new("runc-states", &["sleep", "1000"]) else {
        return;
    };
    let pid = rt.create();
    let st = rt.state();
    assert_eq!(st["status"], "created");
    assert_eq!(st["pid"], pid);
    assert_eq!(st["id"], rt.id.as_str());
    assert_eq!(st["bundle"], rt.bundle.path.to_string_lossy().as_ref());
    assert_eq!(st["owner"], "");
    assert!(
        st["created"]
            .as_str()
            .is_some_and(|c| c.ends_with('Z') && c.len() == 30),
        "{st}"
    );
    assert!(st["ociVersion"].is_string());
    assert!(proc::alive(pid));
    // A second create with the same id fails and keeps the first.
    let b = rt.bundle.path.to_string_lossy().into_owned();
    let err = rt.fails(&["create", "--bundle", &b, &rt.id]);
    assert!(
        err.contains(&format!("container {} already exists", rt.id)),
        "{err}"
    );
    // exec is refused before start
    assert!(rt.fails(&["exec", &rt.id, "true"]).contains("created"));
    rt.ok(&["start", &rt.id]);
    assert_eq!(rt.status(), "running");
    assert!(rt.fails(&["start", &rt.id]).contains("running"));
    let err = rt.fails(&["delete", &rt.id]);
    assert!(err.contains("running"), "{err}");
    rt.ok(&["kill", &rt.id, "KILL"]);
    wait_for(10, "stopped", || rt.status() == "stopped");
    assert_eq!(rt.state()["pid"], 0);
    let err = rt.fails(&["kill", &rt.id, "KILL"]);
    assert!(err.contains("stopped"), "{err}");
    rt.ok(&["delete", &rt.id]);
    assert!(!rt.root.join(&rt.id).exists());
    let err = rt.fails(&["state", &rt.id]);
    assert_eq!(
        err.trim(),
        format!("berth-runc: container {} does not exist", rt.id)
    );
    rt.finish();
}

#[test]
fn init_exiting_on_its_own_is_stopped() {
    let Some(rt) = Rt::new("runc-selfexit", &["sh", "-c", "exit 0"]) else {
        return;
    };
    let pid = rt.create();
    assert_eq!(rt.status(), "created");
    rt.ok(&["start", &rt.id]);
    assert!(proc::wait_dead(pid, Duration::from_secs(10)));
    assert_eq!(rt.status(), "stopped");
    rt.ok(&["delete", &rt.id]);
    rt.finish();
}

#[test]
fn delete_created_and_force_running() {
    let Some(rt) = Rt::new("runc-delete", &["sleep", "1000"]) else {
        return;
    };
    let pid = rt.create();
    rt.ok(&["delete", &rt.id]);
    assert!(
        proc::wait_dead(pid, Duration::from_secs(5)),
        "delete kills a created init"
    );
    let pid = rt.create();
    rt.ok(&["start", &rt.id]);
    rt.ok(&["delete", "--force", &rt.id]);
    assert!(!proc::alive(pid));
    assert!(!rt.root.join(&rt.id).exists());
    // --force on a missing container is not an error (runc does the same)
    rt.ok(&["delete", "--force", &rt.id]);
    rt.finish();
}

#[test]
fn kill_signal_names_and_numbers() {
    let Some(rt) = Rt::new(
        "runc-kill",
        &[
            "sh",
            "-c",
            "trap 'echo got-usr1 > /tmp/sig' USR1; touch /tmp/ready; while :; do sleep 0.1; done",
        ],
    ) else {
        return;
    };
    rt.create();
    rt.ok(&["start", &rt.id]);
    let ready = rt.bundle.rootfs.join("tmp/ready");
    wait_for(20, "trap installed", || ready.exists());
    rt.ok(&["kill", &rt.id, "USR1"]);
    let sig = rt.bundle.rootfs.join("tmp/sig");
    wait_for(10, "USR1 handled", || sig.exists());
    std::fs::remove_file(&sig).ok();
    rt.ok(&["kill", &rt.id, "SIGUSR1"]);
    wait_for(10, "SIGUSR1 handled", || sig.exists());
    std::fs::remove_file(&sig).ok();
    rt.ok(&["kill", &rt.id, "10"]);
    wait_for(10, "10 handled", || sig.exists());
    assert!(rt
        .fails(&["kill", &rt.id, "NOPE"])
        .contains("unknown signal"));
    rt.ok(&["kill", "--all", &rt.id, "9"]);
    wait_for(10, "stopped", || rt.status() == "stopped");
    rt.finish();
}

#[test]
fn list_and_ps() {
    let Some(rt) = Rt::new("runc-list", &["sh", "-c", "sleep 1000 & wait"]) else {
        return;
    };
    let pid = rt.create();
    rt.ok(&["start", &rt.id]);
    let list: serde_json::Value =
        serde_json::from_str(&rt.ok(&["list", "--format", "json"])).expect("json");
    assert_eq!(list[0]["id"], rt.id.as_str());
    assert_eq!(list[0]["status"], "running");
    assert!(rt
        .ok(&["list"])
        .lines()
        .nth(1)
        .is_some_and(|l| l.starts_with(&rt.id)));
    assert_eq!(rt.ok(&["list", "-q"]).trim(), rt.id);
    wait_for(10, "two processes", || {
        let ps: Vec<i32> =
            serde_json::from_str(&rt.ok(&["ps", "--format", "json", &rt.id])).expect("ps json");
        ps.len() == 2 && ps.contains(&pid)
    });
    let table = rt.ok(&["ps", &rt.id]);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("PID")),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3, "{table}");
    rt.finish();
}

#[test]
fn errors_are_clear_and_leave_nothing() {
    let Some(rt) = Rt::new("runc-errors", &["true"]) else {
        return;
    };
    let b = rt.bundle.path.to_string_lossy().into_owned();
    // unknown id
    let err = rt.fails(&["state", "nope"]);
    assert_eq!(err.trim(), "berth-runc: container nope does not exist");
    // bad id
    assert!(rt
        .fails(&["create", "--bundle", &b, "a/b"])
        .contains("invalid container id"));
    // invalid JSON, with the serde position
    let good = rt.bundle.spec();
    std::fs::write(rt.bundle.config_path(), "{\"ociVersion\": 1,").expect("write");
    let err = rt.fails(&["create", "--bundle", &b, &rt.id]);
    assert!(
        err.contains("config.json") && err.contains("line 1"),
        "{err}"
    );
    // unknown namespace type
    let mut bad = good.clone();
    bad["linux"]["namespaces"]
        .as_array_mut()
        .expect("ns")
        .push(serde_json::json!({"type": "bogus"}));
    rt.bundle.set_spec(&bad);
    let err = rt.fails(&["create", "--bundle", &b, &rt.id]);
    assert!(err.contains("bogus"), "{err}");
    // missing root
    let mut bad = good.clone();
    bad["root"]["path"] = "no-such-rootfs".into();
    rt.bundle.set_spec(&bad);
    assert!(rt
        .fails(&["create", "--bundle", &b, &rt.id])
        .contains("no-such-rootfs"));
    // a mount whose source is missing fails inside init: nothing may be left behind
    let mut bad = good.clone();
    bad["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(serde_json::json!(
        {"destination": "/mnt", "type": "bind", "source": "/no/such/dir", "options": ["bind"]}));
    rt.bundle.set_spec(&bad);
    assert!(rt
        .fails(&["create", "--bundle", &b, &rt.id])
        .contains("/no/such/dir"));
    // missing config.json
    std::fs::remove_file(rt.bundle.config_path()).expect("rm");
    assert!(rt
        .fails(&["create", "--bundle", &b, &rt.id])
        .contains("config.json not found"));
    assert!(
        !rt.root.join(&rt.id).exists(),
        "no state dir after failed creates"
    );
    rt.guard.assert_clean();
    rt.bundle.set_spec(&good);
    // --systemd-cgroup is refused clearly
    assert!(rt
        .fails(&["--systemd-cgroup", "state", "x"])
        .contains("systemd"));
    rt.finish();
}

#[test]
fn json_log_lines() {
    let Some(rt) = Rt::new("runc-jsonlog", &["true"]) else {
        return;
    };
    let log = rt.dir.join("log.json");
    let l = log.to_string_lossy().into_owned();
    let o = rt.run(&["--log", &l, "--log-format", "json", "state", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    let line = std::fs::read_to_string(&log).expect("log");
    let v: serde_json::Value =
        serde_json::from_str(line.lines().last().expect("line")).expect("json line");
    assert_eq!(v["level"], "error");
    assert_eq!(v["msg"], "container nope does not exist");
    assert!(v["time"].is_string());
    assert!(text(&o.stderr).contains("does not exist"));
    rt.finish();
}

#[test]
fn run_forwards_signals_to_the_container() {
    let Some(rt) = Rt::new(
        "runc-sigfwd",
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; touch /tmp/ready; while :; do sleep 0.1; done",
        ],
    ) else {
        return;
    };
    let b = rt.bundle.path.to_string_lossy().into_owned();
    // stdout to a file: a pipe would hang the test if the container outlived berth-runc.
    let out_path = rt.dir.join("stdout");
    let out_file = std::fs::File::create(&out_path).expect("stdout file");
    let mut child = rt
        .cmd()
        .args(["run", "--bundle", &b, &rt.id])
        .stdout(out_file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn run");
    rt.guard.pid(child.id() as i32);
    let ready = rt.bundle.rootfs.join("tmp/ready");
    wait_for(20, "container ready", || ready.exists());
    assert!(proc::kill(
        child.id() as i32,
        nix::sys::signal::Signal::SIGTERM
    ));
    let mut status = None;
    wait_for(20, "berth-runc run exits", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(7),
        "SIGTERM reached the container's trap"
    );
    assert_eq!(
        std::fs::read_to_string(&out_path).expect("stdout"),
        "got-term\n"
    );
    rt.finish();
}
