//! berth-runc against Debian's runc on the OCI configs where they used to differ (issue 12):
//! each test runs the same config.json under both runtimes and asserts what a user sees
//! (exit codes, output, `state`, files). Where berth-runc deliberately differs (runc 1.1 is
//! wrong and berth-runc follows the runtime spec), the test asserts both sides, so that a
//! runc upgrade that changes its side shows up here and in runtime/oci/README.md's
//! "Differences" list.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_tests::runc_fixture::{text, wait_for, Rt};
use berth_tests::{proc, tool};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Which runtime an [`Rt`] drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Berth,
    Runc,
}

/// The same config under berth-runc and Debian's runc (each its own bundle, root, id and
/// cgroup); None (skip) when not root or runc/busybox is missing.
fn both(name: &str, args: &[&str], edit: impl Fn(&mut Value)) -> Option<Vec<(Which, Rt)>> {
    let runc = tool("runc")?;
    let b = Rt::new(name, args)?;
    let r = Rt::with_runtime(name, args, runc)?;
    b.edit(&edit);
    r.edit(&edit);
    Some(vec![(Which::Berth, b), (Which::Runc, r)])
}

/// The pid in a pid file, once it is there.
fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` has exited: a zombie, or PF_EXITING in /proc/PID/stat (field 9).
fn has_exited(pid: i32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return true;
    };
    let f: Vec<&str> = rest.split(' ').collect();
    let flags: u64 = f.get(6).and_then(|v| v.parse().ok()).unwrap_or(0);
    f.first() == Some(&"Z") || flags & 0x4 != 0
}

/// `delete` after `kill ID SIGNAL` of a created container: runc's init dies of TERM and the
/// container is stopped; berth-runc's init, pid 1 of its namespace, used to ignore it (and
/// ran the process at `start`).
#[test]
fn kill_term_before_start_stops_the_container() {
    let Some(rts) = both("rd-kill-created", &["sleep", "1000"], |_| {}) else {
        return;
    };
    for (which, rt) in rts {
        rt.create();
        rt.ok(&["kill", &rt.id, "TERM"]);
        wait_for(
            10,
            &format!("{which:?}: created init to die of TERM"),
            || rt.status() == "stopped",
        );
        let err = rt.fails(&["start", &rt.id]);
        assert!(err.contains("stopped"), "{which:?}: {err}");
        rt.ok(&["delete", &rt.id]);
        rt.fails(&["state", &rt.id]);
        rt.finish();
    }
}

/// A running container whose init exits on a signal: `delete` (no --force) then succeeds.
#[test]
fn kill_then_exit_then_delete() {
    let script = "trap 'exit 0' TERM; touch /tmp/trapped; while :; do sleep 1 & wait; done";
    let Some(rts) = both("rd-kill-running", &["sh", "-c", script], |_| {}) else {
        return;
    };
    for (which, rt) in rts {
        let pid = rt.create();
        rt.ok(&["start", &rt.id]);
        // a TERM before the trap is set would be ignored (pid 1 without a handler)
        let trapped = rt.bundle.rootfs.join("tmp/trapped");
        wait_for(10, "the trap", || trapped.exists());
        rt.ok(&["kill", &rt.id, "TERM"]);
        wait_for(10, &format!("{which:?}: init to exit"), || {
            !proc::alive(pid)
        });
        rt.ok(&["delete", &rt.id]);
        rt.fails(&["state", &rt.id]);
        rt.finish();
    }
}

/// Without a pid namespace of its own, a container's exec'd processes outlive its init:
/// `delete` of the stopped container kills them and removes the cgroup (runc 1.1 does; berth-runc
/// left them and failed on the busy cgroup).
#[test]
fn delete_kills_what_outlives_init_without_a_pid_namespace() {
    let no_pidns = |s: &mut Value| {
        let ns = s["linux"]["namespaces"].as_array_mut().expect("namespaces");
        ns.retain(|n| n["type"] != "pid");
    };
    let Some(rts) = both("rd-leftovers", &["sleep", "1000"], no_pidns) else {
        return;
    };
    for (which, rt) in rts {
        let pid = rt.create();
        rt.ok(&["start", &rt.id]);
        let pf = rt.dir.join("exec.pid").to_string_lossy().into_owned();
        rt.ok(&["exec", "-d", "--pid-file", &pf, &rt.id, "sleep", "1000"]);
        let left = read_pid(Path::new(&pf)).expect("exec pid file");
        rt.guard.pid(left);
        rt.ok(&["kill", &rt.id, "KILL"]);
        wait_for(10, &format!("{which:?}: init to die"), || !proc::alive(pid));
        assert_eq!(rt.status(), "stopped", "{which:?}");
        assert!(
            proc::alive(left),
            "{which:?}: the exec'd process outlives init"
        );
        rt.ok(&["delete", &rt.id]);
        assert!(proc::wait_dead(left, Duration::from_secs(10)), "{which:?}");
        rt.finish();
    }
}

/// An init that has exited but still waits for its pid namespace to drain (an exec'd
/// process's zombie whose parent does not reap it yet: here the runtime's `exec`, stopped)
/// is stopped for berth-runc, which deletes it; runc 1.1 calls it running and refuses.
#[test]
fn exited_init_waiting_for_its_namespace_is_stopped() {
    let Some(rts) = both("rd-init-draining", &["sleep", "1000"], |_| {}) else {
        return;
    };
    for (which, rt) in rts {
        let pid = rt.create();
        rt.ok(&["start", &rt.id]);
        let pid_file = rt.dir.join("exec.pid");
        let mut exec = rt
            .cmd()
            .arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .args([&rt.id, "sleep", "999"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn exec");
        let exec_pid = exec.id() as i32;
        rt.guard.pid(exec_pid);
        wait_for(20, "exec pid file", || read_pid(&pid_file).is_some());
        let child = read_pid(&pid_file).expect("exec pid file");
        rt.guard.pid(child);
        assert!(proc::kill(exec_pid, Signal::SIGSTOP));
        rt.ok(&["kill", &rt.id, "KILL"]);
        // exited, and asleep until its namespace is empty
        wait_for(10, "init to exit", || {
            has_exited(pid) && proc::state(pid) == Some('S')
        });
        let status = rt.status();
        match which {
            Which::Berth => {
                assert_eq!(status, "stopped");
                rt.ok(&["delete", &rt.id]);
            }
            Which::Runc => {
                assert_eq!(status, "running", "runc changed: update the README");
                let err = rt.fails(&["delete", &rt.id]);
                assert!(err.contains("not stopped"), "{err}");
            }
        }
        assert!(proc::kill(exec_pid, Signal::SIGCONT));
        wait_for(20, "exec to end", || {
            exec.try_wait().expect("wait exec").is_some()
        });
        rt.finish();
    }
}

/// No mount namespace in linux.namespaces: both run the container in the caller's mount
/// namespace (here a private one made by `unshare`, since runc then changes the propagation
/// of the caller's "/"); berth-runc detaches what it mounted there when the container is
/// deleted, runc leaves it mounted.
#[test]
fn no_mount_namespace_runs_in_the_callers() {
    let Some(unshare) = tool("unshare") else {
        return;
    };
    let no_mnt = |s: &mut Value| {
        let ns = s["linux"]["namespaces"].as_array_mut().expect("namespaces");
        ns.retain(|n| n["type"] != "mount");
    };
    let script = "cat /etc/hostname; readlink /proc/self/ns/mnt";
    let Some(rts) = both("rd-no-mntns", &["sh", "-c", script], no_mnt) else {
        return;
    };
    for (which, rt) in rts {
        // `sh` in a private mount namespace prints that namespace, runs the runtime, then
        // counts the mounts left below the rootfs.
        let wrapper = "readlink /proc/self/ns/mnt; \"$@\"; echo \"rc=$?\"; \
                       grep -c \" $ROOTFS\" /proc/self/mountinfo";
        let b = rt.bundle.path.to_string_lossy().into_owned();
        let run_in_private_ns = || {
            let mut c = Command::new(&unshare);
            c.args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                wrapper,
                "sh",
            ])
            .arg(&rt.bin)
            .arg("--root")
            .arg(&rt.root)
            .args(["run", "--bundle", &b, &rt.id])
            .env("ROOTFS", &rt.bundle.rootfs);
            berth_tests::run_timeout(&mut c, Duration::from_secs(60))
        };
        // runc refuses masked and read-only paths without a mount namespace; so do we.
        let o = run_in_private_ns();
        let out = text(&o.stdout);
        assert!(out.contains("rc=1"), "{which:?}: {out} {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("MNT namespace"),
            "{which:?}: {}",
            text(&o.stderr)
        );
        rt.edit(|s| {
            s["linux"]["maskedPaths"] = json!([]);
            s["linux"]["readonlyPaths"] = json!([]);
        });
        let o = run_in_private_ns();
        let out = text(&o.stdout);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{which:?}: {out} {}", text(&o.stderr));
        assert_eq!(
            lines[1], "berth",
            "{which:?}: the container sees its rootfs"
        );
        assert_eq!(
            lines[0], lines[2],
            "{which:?}: the caller's mount namespace"
        );
        assert_eq!(lines[3], "rc=0");
        let left: u32 = lines[4].parse().expect("count");
        match which {
            Which::Berth => assert_eq!(left, 0, "berth-runc left mounts behind"),
            Which::Runc => assert!(left > 0, "runc changed: update the README"),
        }
        if which == Which::Berth {
            exec_without_mount_namespace(&rt);
        }
        rt.finish();
    }
}

/// berth-runc only (runc's exec'd process would see the host's "/"): `exec` into such a
/// container runs in init's root. In the test's own mount namespace: berth-runc never
/// changes the caller's propagation.
fn exec_without_mount_namespace(rt: &Rt) {
    rt.edit(|s| s["process"]["args"] = json!(["sleep", "1000"]));
    rt.create();
    rt.ok(&["start", &rt.id]);
    assert!(!berth_tests::mounts_below(&rt.bundle.rootfs).is_empty());
    assert_eq!(rt.ok(&["exec", &rt.id, "cat", "/etc/hostname"]), "berth\n");
    rt.ok(&["delete", "--force", &rt.id]);
    assert_eq!(
        berth_tests::mounts_below(&rt.bundle.rootfs),
        Vec::<std::path::PathBuf>::new()
    );
}

/// A device node in linux.readonlyPaths is bind-remounted read-only (berth-runc opened it
/// to read its mount flags: EPERM from the devices cgroup).
#[test]
fn readonly_path_that_is_a_device_node() {
    let add = |s: &mut Value| {
        let ro = s["linux"]["readonlyPaths"].as_array_mut().expect("ro");
        ro.push(json!("/readonly-device"));
    };
    let script = "grep ' /readonly-device ' /proc/self/mountinfo";
    let Some(rts) = both("rd-ro-device", &["sh", "-c", script], add) else {
        return;
    };
    for (which, rt) in rts {
        let node = rt.bundle.rootfs.join("readonly-device");
        let made = Command::new("mknod")
            .arg(&node)
            .args(["c", "1", "4"])
            .status()
            .expect("mknod");
        assert!(made.success());
        let (code, out, err) = rt.run_container();
        assert_eq!(code, 0, "{which:?}: {out} {err}");
        let opts = out.split_whitespace().nth(5).unwrap_or_default();
        assert!(opts.split(',').any(|o| o == "ro"), "{which:?}: {out}");
        rt.finish();
    }
}

/// A user namespace that maps container root to host uid 1000 (rootless-style, Kubernetes
/// user-namespace pods): runs, and `id` says root.
#[test]
fn user_namespace_with_unprivileged_host_root() {
    let userns = |s: &mut Value| {
        let ns = s["linux"]["namespaces"].as_array_mut().expect("namespaces");
        ns.push(json!({ "type": "user" }));
        let map = json!([{ "containerID": 0, "hostID": 1000, "size": 1000 }]);
        s["linux"]["uidMappings"] = map.clone();
        s["linux"]["gidMappings"] = map;
    };
    let Some(rts) = both("rd-userns", &["id"], userns) else {
        return;
    };
    for (which, rt) in rts {
        let (code, out, err) = rt.run_container();
        assert_eq!(code, 0, "{which:?}: {err}");
        assert_eq!(out, "uid=0(root) gid=0(root)\n", "{which:?}");
        rt.finish();
    }
}

/// linux.rootfsPropagation with a rootfs that is not a mount point: both run with shared,
/// slave and private; "unbindable" fails in runc 1.1 (it makes "/" unbindable before binding
/// the rootfs: EINVAL) and gives berth-runc an unbindable "/".
#[test]
fn rootfs_propagation_of_a_plain_directory() {
    let script = "awk '$5 == \"/\" { print $7 }' /proc/self/mountinfo";
    let Some(rts) = both("rd-rootfs-prop", &["sh", "-c", script], |_| {}) else {
        return;
    };
    for (which, rt) in rts {
        for p in [
            "shared", "slave", "private", "rshared", "rslave", "rprivate",
        ] {
            rt.edit(|s| s["linux"]["rootfsPropagation"] = json!(p));
            let (code, out, err) = rt.run_container();
            assert_eq!(code, 0, "{which:?} {p}: {out} {err}");
            if p.contains("slave") || p.contains("private") {
                assert!(!out.contains("shared:"), "{which:?} {p}: {out}");
            }
        }
        for p in ["unbindable", "runbindable"] {
            rt.edit(|s| s["linux"]["rootfsPropagation"] = json!(p));
            let (code, out, err) = rt.run_container();
            match which {
                Which::Berth => {
                    assert_eq!(code, 0, "{p}: {err}");
                    assert!(out.contains("unbindable"), "{p}: {out}");
                }
                Which::Runc => {
                    assert_eq!(code, 1, "runc changed ({p}): update the README");
                    assert!(err.contains("invalid argument"), "{p}: {err}");
                }
            }
        }
        rt.finish();
    }
}

/// The state each hook reads on stdin. The spec: prestart, createRuntime and
/// createContainer run while the status is "creating", startContainer once it is "created"
/// (before the program runs), poststart once it is "running", poststop once "stopped".
/// runc 1.1 gives poststart "created" and the in-container pid 1 to createContainer and
/// startContainer (the spec says the host's pid); both omit the pid of a stopped container.
#[test]
fn hook_state_per_hook_kind() {
    let Some(rts) = both("rd-hooks", &["true"], |_| {}) else {
        return;
    };
    for (which, rt) in rts {
        let host = rt.dir.join("hooks");
        std::fs::create_dir_all(&host).expect("hooks dir");
        let hook = |file: String| json!([{ "path": "/bin/sh", "args": ["sh", "-c", format!("cat > {file}")] }]);
        let at = |name: &str| host.join(name).to_string_lossy().into_owned();
        rt.edit(|s| {
            s["hooks"] = json!({
                "prestart": hook(at("prestart")),
                "createRuntime": hook(at("createRuntime")),
                // before pivot_root: the host's paths are still visible
                "createContainer": hook(at("createContainer")),
                // after pivot_root: inside the rootfs
                "startContainer": hook("/tmp/startContainer".into()),
                "poststart": hook(at("poststart")),
                "poststop": hook(at("poststop")),
            })
        });
        let pid = rt.create();
        rt.ok(&["start", &rt.id]);
        wait_for(10, "init to exit", || !proc::alive(pid));
        rt.ok(&["delete", &rt.id]);
        let read = |p: &Path| -> Value {
            let s = std::fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("{which:?}: {}: {e}", p.display()));
            serde_json::from_str(&s).unwrap_or_else(|e| panic!("{which:?}: {s}: {e}"))
        };
        let start_file = rt.bundle.rootfs.join("tmp/startContainer");
        let poststart_status = match which {
            Which::Berth => "running",
            Which::Runc => "created",
        };
        let in_container_pid = match which {
            Which::Berth => pid,
            Which::Runc => 1,
        };
        for (kind, file, status, want_pid) in [
            ("prestart", host.join("prestart"), "creating", Some(pid)),
            (
                "createRuntime",
                host.join("createRuntime"),
                "creating",
                Some(pid),
            ),
            (
                "createContainer",
                host.join("createContainer"),
                "creating",
                Some(in_container_pid),
            ),
            (
                "startContainer",
                start_file,
                "created",
                Some(in_container_pid),
            ),
            (
                "poststart",
                host.join("poststart"),
                poststart_status,
                Some(pid),
            ),
            ("poststop", host.join("poststop"), "stopped", None),
        ] {
            let st = read(&file);
            assert_eq!(st["status"], status, "{which:?} {kind}: {st}");
            assert_eq!(st["id"], rt.id.as_str(), "{which:?} {kind}");
            assert_eq!(
                st["pid"].as_i64(),
                want_pid.map(i64::from),
                "{which:?} {kind}: {st}"
            );
        }
        rt.finish();
    }
}

/// Errors after `create --pid-file` name the real cause: a pid file that cannot be written
/// (berth-runc names the file given, not its temp file), a container whose process died
/// before start (berth-runc says it exited, and its pid), an init killed during create
/// (berth-runc says by which signal). Exit codes and what is left are the same for both.
#[test]
fn errors_after_an_early_exit_name_the_cause() {
    // The createRuntime hook kills init (its pid is in the state on stdin).
    let killer = "kill -9 $(sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p')";
    let Some(rts) = both("rd-early-exit", &["sleep", "1000"], |_| {}) else {
        return;
    };
    for (which, rt) in rts {
        let b = rt.bundle.path.to_string_lossy().into_owned();
        let missing = rt.dir.join("no-such-dir/init.pid");
        let pf = missing.to_string_lossy().into_owned();
        let err = rt.fails(&["create", "--bundle", &b, "--pid-file", &pf, &rt.id]);
        if which == Which::Berth {
            assert!(err.contains(&format!("pid file {pf}")), "{err}");
        }
        rt.fails(&["state", &rt.id]);

        let pid = rt.create();
        assert!(proc::kill(pid, Signal::SIGKILL));
        wait_for(10, "init to die", || !proc::alive(pid));
        let start = rt.fails(&["start", &rt.id]);
        let kill = rt.fails(&["kill", &rt.id, "KILL"]);
        if which == Which::Berth {
            for err in [&start, &kill] {
                assert!(err.contains(&format!("(pid {pid}) has exited")), "{err}");
            }
        }
        rt.ok(&["delete", &rt.id]);

        rt.edit(|s| {
            s["hooks"] = json!({ "createRuntime": [
                { "path": "/bin/sh", "args": ["sh", "-c", killer] }
            ] })
        });
        let pf = rt.dir.join("second.pid").to_string_lossy().into_owned();
        let err = rt.fails(&["create", "--bundle", &b, "--pid-file", &pf, &rt.id]);
        if which == Which::Berth {
            assert!(err.contains("was killed by SIGKILL during create"), "{err}");
        }
        assert!(
            !Path::new(&pf).exists(),
            "{which:?}: pid file of a failed create"
        );
        rt.fails(&["state", &rt.id]);
        rt.finish();
    }
}
