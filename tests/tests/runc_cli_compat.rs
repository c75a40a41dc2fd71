//! berth-runc accepts runc's command line as scripts and shims write it: runc's global
//! flags, `update`'s flag names, `exec --ignore-paused`, `exec --cgroup`, and the LSM
//! flags (AppArmor refused when the host has none, SELinux labels ignored as runc does).

use berth_tests::runc_fixture as util;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use util::{text, wait_for, Rt};

/// Skips (false) off v1/hybrid hosts: these checks read v1 controller files.
fn v1_host() -> bool {
    let root = PathBuf::from("/sys/fs/cgroup");
    let ok = ["pids", "memory", "cpu"]
        .iter()
        .all(|c| root.join(c).join("tasks").exists());
    if !ok {
        berth_tests::skip("these checks need the v1 pids, memory and cpu controllers");
    }
    ok
}

/// The container's directory in every hierarchy it has one in (v1 controllers and the
/// unified one), keyed by the name /proc/PID/cgroup uses ("" for unified).
fn hierarchies(cgroups_path: &str) -> Vec<(String, PathBuf)> {
    let rel = cgroups_path.trim_start_matches('/');
    let root = PathBuf::from("/sys/fs/cgroup");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root)
        .expect("read /sys/fs/cgroup")
        .flatten()
    {
        let dir = entry.path().join(rel);
        let name = entry.file_name().to_string_lossy().into_owned();
        if dir.is_dir() && entry.path().join("tasks").exists() {
            out.push((name, dir));
        } else if dir.is_dir() && name == "unified" {
            out.push((String::new(), dir));
        }
    }
    assert!(out.len() > 3, "the container's cgroups: {out:?}");
    out
}

/// mkdir a sub-cgroup; a v1 cpuset one gets its parent's cpus and mems, or nothing could join.
fn mk_sub(controller: &str, dir: &std::path::Path, name: &str) {
    let sub = dir.join(name);
    std::fs::create_dir(&sub).unwrap_or_else(|e| panic!("mkdir {}: {e}", sub.display()));
    if controller == "cpuset" {
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let v = std::fs::read_to_string(dir.join(f)).expect("read cpuset");
            std::fs::write(sub.join(f), v.trim()).expect("write cpuset");
        }
    }
}

/// The cgroup path of `pid` in the hierarchy /proc/PID/cgroup names `controller`.
fn cgroup_of(pid: i32, controller: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("proc cgroup");
    s.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, names, path) = (f.next()?, f.next()?, f.next()?);
            names
                .split(',')
                .any(|n| n == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller:?} line in /proc/{pid}/cgroup: {s}"))
}

fn pid_file(rt: &Rt, name: &str) -> (String, impl Fn() -> i32) {
    let path = rt.dir.join(name);
    let s = path.to_string_lossy().into_owned();
    (s, move || {
        std::fs::read_to_string(&path)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    })
}

#[test]
fn runc_global_and_update_flags_are_accepted() {
    if !v1_host() {
        return;
    }
    let Some(rt) = Rt::new("runc-flags", &["sleep", "1000"]) else {
        return;
    };
    rt.create();
    rt.ok(&["start", &rt.id]);
    let dirs = hierarchies(&rt.bundle.cgroups_path());
    // runc's global flags, as containerd's runc shim may pass them.
    let state = rt.ok(&[
        "--rootless",
        "auto",
        "--criu",
        "/usr/sbin/criu",
        "state",
        &rt.id,
    ]);
    assert!(state.contains("\"running\""), "{state}");
    // runc spells it --cpu-share; --cpu-shares stays as an alias.
    let cpu = &dirs.iter().find(|(c, _)| c == "cpu").expect("cpu").1;
    rt.ok(&["update", "--cpu-share", "512", &rt.id]);
    assert_eq!(
        std::fs::read_to_string(cpu.join("cpu.shares"))
            .expect("cpu.shares")
            .trim(),
        "512"
    );
    rt.ok(&["update", "--cpu-shares", "256", &rt.id]);
    assert_eq!(
        std::fs::read_to_string(cpu.join("cpu.shares"))
            .expect("cpu.shares")
            .trim(),
        "256"
    );
    // Intel RDT is refused by name, and nothing else is changed by that call.
    let err = rt.fails(&[
        "update",
        "--cpu-share",
        "128",
        "--l3-cache-schema",
        "L3:0=f",
        &rt.id,
    ]);
    assert!(err.contains("Intel RDT"), "{err}");
    assert_eq!(
        std::fs::read_to_string(cpu.join("cpu.shares"))
            .expect("cpu.shares")
            .trim(),
        "256"
    );
    rt.finish();
}

#[test]
fn run_accepts_no_subreaper() {
    let Some(rt) = Rt::new("runc-nosubreaper", &["sh", "-c", "echo hi; exit 3"]) else {
        return;
    };
    let b = rt.bundle.path.to_string_lossy().into_owned();
    let o = rt.run(&["run", "--no-subreaper", "--bundle", &b, &rt.id]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "hi");
    rt.finish();
}

#[test]
fn exec_into_a_paused_container_needs_ignore_paused_and_waits_for_resume() {
    let Some(rt) = Rt::new("runc-execpaused", &["sleep", "1000"]) else {
        return;
    };
    rt.create();
    rt.ok(&["start", &rt.id]);
    rt.ok(&["pause", &rt.id]);
    let err = rt.fails(&["exec", &rt.id, "true"]);
    assert!(err.contains("paused"), "{err}");
    // Accepted with --ignore-paused; the process is frozen with the container until resume.
    let mut child = rt
        .cmd()
        .args([
            "exec",
            "--ignore-paused",
            &rt.id,
            "sh",
            "-c",
            "echo ran; exit 7",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec");
    rt.guard.pid(child.id() as i32);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "exec finished inside a paused container"
    );
    rt.ok(&["resume", &rt.id]);
    let out = child.wait_with_output().expect("exec output");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ran");
    rt.finish();
}

#[test]
fn exec_cgroup_puts_the_process_in_a_sub_cgroup() {
    if !v1_host() {
        return;
    }
    let Some(rt) = Rt::new("runc-execcg", &["sleep", "1000"]) else {
        return;
    };
    rt.create();
    rt.ok(&["start", &rt.id]);
    let dirs = hierarchies(&rt.bundle.cgroups_path());
    for (c, d) in &dirs {
        mk_sub(c, d, "all");
    }
    let pids_dir = &dirs.iter().find(|(c, _)| c == "pids").expect("pids").1;
    mk_sub("pids", pids_dir, "only");
    let base = rt.bundle.cgroups_path();

    // A detached `sleep` exec'd with `--cgroup spec`; its pid.
    let exec_in = |spec: &str, pid_name: &str| {
        let (pf, read_pid) = pid_file(&rt, pid_name);
        let args = [
            "exec",
            "-d",
            "--pid-file",
            &pf,
            "--cgroup",
            spec,
            &rt.id,
            "sleep",
            "100",
        ];
        rt.ok(&args);
        let pid = read_pid();
        rt.guard.pid(pid);
        pid
    };
    let pid = exec_in("all", "all.pid");
    for (c, _) in &dirs {
        assert_eq!(cgroup_of(pid, c), format!("{base}/all"), "hierarchy {c:?}");
    }
    let pid = exec_in("pids:/only", "only.pid");
    assert_eq!(cgroup_of(pid, "pids"), format!("{base}/only"));
    assert_eq!(cgroup_of(pid, "memory"), base);

    for bad in ["../escape", "missing", "nosuch:all", ""] {
        let err = rt.fails(&["exec", "--cgroup", bad, &rt.id, "true"]);
        assert!(err.contains("--cgroup"), "{bad:?}: {err}");
    }
    // delete --force kills the processes in the sub-cgroups and removes them too.
    rt.ok(&["delete", "--force", &rt.id]);
    wait_for(5, "sub-cgroups removed", || {
        dirs.iter().all(|(_, d)| !d.exists())
    });
    rt.finish();
}

#[test]
fn apparmor_is_refused_without_apparmor_and_selinux_labels_are_ignored() {
    if berth_oci_apparmor_enabled() {
        berth_tests::skip("this host runs AppArmor");
        return;
    }
    let Some(rt) = Rt::new("runc-lsm", &["sleep", "1000"]) else {
        return;
    };
    rt.edit(|s| s["process"]["apparmorProfile"] = json!("berth-test-profile"));
    let b = rt.bundle.path.to_string_lossy().into_owned();
    let err = rt.fails(&["create", "--bundle", &b, &rt.id]);
    assert!(
        err.contains("apparmorProfile") && err.contains("AppArmor is not enabled"),
        "{err}"
    );
    let err = rt.fails(&["state", &rt.id]);
    assert!(
        err.contains("does not exist"),
        "a refused create left state: {err}"
    );

    rt.edit(|s| {
        s["process"]
            .as_object_mut()
            .expect("process")
            .remove("apparmorProfile");
        s["process"]["selinuxLabel"] = json!("system_u:system_r:container_t:s0");
    });
    rt.create();
    rt.ok(&["start", &rt.id]);
    let err = rt.fails(&["exec", "--apparmor", "berth-test-profile", &rt.id, "true"]);
    assert!(err.contains("AppArmor is not enabled"), "{err}");
    rt.ok(&[
        "exec",
        "--process-label",
        "system_u:system_r:container_t:s0",
        &rt.id,
        "true",
    ]);
    rt.finish();
}

fn berth_oci_apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim_start().starts_with('Y'))
}

#[test]
fn foreground_run_and_exec_relay_the_terminal_without_a_console_socket() {
    // `berth-runc spec` writes terminal: true; runc then relays the pty itself.
    let Some(rt) = Rt::new("runc-ttyrelay", &["sh", "-c", "tty; echo hi; exit 4"]) else {
        return;
    };
    rt.edit(|s| s["process"]["terminal"] = json!(true));
    let (code, out, err) = rt.run_container();
    assert_eq!(code, 4, "stdout {out:?} stderr {err:?}");
    assert!(
        out.contains("/dev/pts/0") && out.contains("hi\r\n"),
        "{out:?}"
    );
    rt.finish();

    let Some(rt) = Rt::new("runc-ttyexec", &["sleep", "1000"]) else {
        return;
    };
    rt.create();
    rt.ok(&["start", &rt.id]);
    let o = rt.run(&["exec", "-t", &rt.id, "sh", "-c", "tty; echo there; exit 2"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out:?} {}", text(&o.stderr));
    assert!(
        out.contains("/dev/pts/") && out.contains("there\r\n"),
        "{out:?}"
    );
    // Detached, nobody would hold the terminal: refused as runc refuses it.
    let err = rt.fails(&["exec", "-t", "-d", &rt.id, "true"]);
    assert!(err.contains("console-socket"), "{err}");
    rt.finish();
}
