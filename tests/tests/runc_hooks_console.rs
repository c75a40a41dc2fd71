//! berth-runc hooks (all six kinds, state JSON on stdin, timeout, failure cleans up),
//! the console socket (pty master over SCM_RIGHTS, `tty` inside prints /dev/pts/0, for init
//! and exec), exec (env, cwd, user, exit code, pid file, detach), pause/resume, events.

use berth_tests::runc_fixture as util;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::{text, wait_for, Rt};

fn hook(script: &str) -> Value {
    json!({"path": "/bin/sh", "args": ["sh", "-c", script]})
}

#[test]
fn hooks_run_with_state_and_side_effects() {
    let Some(rt) = Rt::new("runc-hooks", &["sh", "-c", "cat /startc; exit 0"]) else {
        return;
    };
    let out = rt.dir.subdir("hooks");
    let o = out.to_string_lossy().into_owned();
    rt.edit(|s| {
        s["hooks"] = json!({
            "prestart": [hook(&format!("cat > {o}/prestart.json"))],
            "createRuntime": [hook(&format!("cat > {o}/createRuntime.json"))],
            // createContainer runs in the container's namespaces before pivot_root.
            "createContainer": [hook(&format!("readlink /proc/self/ns/uts > {o}/createContainer.ns"))],
            // startContainer runs in the container after pivot_root: busybox sh there.
            "startContainer": [hook("cat > /startc")],
            "poststart": [hook(&format!("cat > {o}/poststart.json"))],
            "poststop": [hook(&format!("cat > {o}/poststop.json"))]
        });
    });
    let printed = rt.output();
    let read = |f: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")),
        )
        .expect(f)
    };
    let pre = read("prestart.json");
    assert_eq!(pre["id"], rt.id.as_str());
    assert_eq!(pre["status"], "creating");
    assert!(pre["pid"].as_i64().is_some_and(|p| p > 1));
    assert_eq!(read("createRuntime.json")["pid"], pre["pid"]);
    let ns = std::fs::read_to_string(out.join("createContainer.ns")).expect("ns");
    let host = std::fs::read_link("/proc/self/ns/uts").expect("uts");
    assert_ne!(
        ns.trim(),
        host.to_string_lossy(),
        "createContainer ran in the host uts ns"
    );
    let sc: Value = serde_json::from_str(&printed).expect("startContainer state");
    assert_eq!(sc["status"], "created");
    assert_eq!(read("poststart.json")["status"], "running");
    assert_eq!(read("poststop.json")["status"], "stopped");
    rt.finish();
}

#[test]
fn failing_and_slow_hooks_fail_create_and_clean_up() {
    let Some(rt) = Rt::new("runc-hookfail", &["true"]) else {
        return;
    };
    let b = rt.bundle.path.to_string_lossy().into_owned();
    rt.edit(|s| s["hooks"] = json!({"createRuntime": [hook("exit 3")]}));
    let err = rt.fails(&["create", "--bundle", &b, &rt.id]);
    assert!(
        err.contains("createRuntime hook") && err.contains("3"),
        "{err}"
    );
    rt.guard.assert_clean();
    rt.edit(|s| {
        s["hooks"] =
            json!({"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]})
    });
    let t = Instant::now();
    let err = rt.fails(&["create", "--bundle", &b, &rt.id]);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "timeout not honoured"
    );
    assert!(err.contains("timed out"), "{err}");
    assert!(!rt.root.join(&rt.id).exists());
    rt.guard.assert_clean();
    // A failing poststart hook fails start and stops the container.
    rt.edit(|s| {
        s["process"]["args"] = json!(["sleep", "1000"]);
        s["hooks"] = json!({"poststart": [hook("exit 4")]});
    });
    let pid = rt.create();
    let err = rt.fails(&["start", &rt.id]);
    assert!(err.contains("poststart hook"), "{err}");
    assert!(berth_tests::proc::wait_dead(pid, Duration::from_secs(10)));
    assert_eq!(rt.status(), "stopped");
    rt.finish();
}

/// Receive one fd over a unix stream (SCM_RIGHTS) with plain libc.
fn recv_fd(sock: &impl AsRawFd) -> OwnedFd {
    let mut buf = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; zero is a valid start.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: msg points to buffers that live for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: walking the control buffer the kernel filled.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        assert!(!c.is_null(), "no control message");
        assert_eq!((*c).cmsg_type, libc::SCM_RIGHTS);
        let fd = *(libc::CMSG_DATA(c) as *const i32);
        OwnedFd::from_raw_fd(fd)
    }
}

fn read_until(master: &OwnedFd, want: &str, secs: u64) -> String {
    let mut f = std::fs::File::from(master.try_clone().expect("dup"));
    let mut got = String::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 512];
    while !got.contains(want) && Instant::now() < end {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    got
}

#[test]
fn console_socket_gives_a_tty_to_init_and_exec() {
    let Some(rt) = Rt::new("runc-console", &["sh", "-c", "tty; sleep 1000"]) else {
        return;
    };
    rt.edit(|s| s["process"]["terminal"] = true.into());
    let sock_path = rt.dir.join("console.sock");
    let listener = UnixListener::bind(&sock_path).expect("bind");
    let sp = sock_path.to_string_lossy().into_owned();
    let b = rt.bundle.path.to_string_lossy().into_owned();
    let accept = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let m = recv_fd(&s);
        (m, listener)
    });
    rt.ok(&["create", "--bundle", &b, "--console-socket", &sp, &rt.id]);
    let (master, listener) = accept.join().expect("accept thread");
    rt.ok(&["start", &rt.id]);
    let got = read_until(&master, "/dev/pts/0", 10);
    assert!(got.contains("/dev/pts/0"), "tty printed {got:?}");
    // exec --tty gets its own pty from the container's devpts.
    let accept = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        recv_fd(&s)
    });
    let o = rt.run(&[
        "exec",
        "--tty",
        "--console-socket",
        &sp,
        "--detach",
        &rt.id,
        "sh",
        "-c",
        "tty; sleep 2",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m2 = accept.join().expect("accept thread");
    let got = read_until(&m2, "/dev/pts/1", 10);
    assert!(got.contains("/dev/pts/1"), "exec tty printed {got:?}");
    rt.finish();
}

#[test]
fn exec_env_cwd_user_exit_code_pidfile() {
    let Some(rt) = Rt::new("runc-exec", &["sleep", "1000"]) else {
        return;
    };
    rt.create();
    rt.ok(&["start", &rt.id]);
    let o = rt.run(&[
        "exec",
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1001",
        &rt.id,
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "bar\n/tmp\n1000\n1001\n");
    // --process JSON and --pid-file, detached
    let p = rt.dir.join("process.json");
    let pf = rt.dir.join("exec.pid");
    std::fs::write(&p, json!({"args": ["sleep", "100"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]}).to_string()).expect("w");
    rt.ok(&[
        "exec",
        "--process",
        &p.to_string_lossy(),
        "--detach",
        "--pid-file",
        &pf.to_string_lossy(),
        &rt.id,
    ]);
    let pid: i32 = std::fs::read_to_string(&pf)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    rt.guard.pid(pid);
    assert_eq!(berth_tests::proc::cmdline(pid), ["sleep", "100"]);
    let ps: Vec<i32> =
        serde_json::from_str(&rt.ok(&["ps", "--format", "json", &rt.id])).expect("ps");
    assert!(
        ps.contains(&pid),
        "exec'd process joined the cgroup: {ps:?}"
    );
    // exec joins the init's namespaces
    let o = rt.run(&[
        "exec",
        &rt.id,
        "sh",
        "-c",
        "readlink /proc/1/ns/pid; readlink /proc/self/ns/pid",
    ]);
    let l: Vec<String> = text(&o.stdout).lines().map(str::to_string).collect();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0], l[1]);
    // a missing binary is an exec error, exit 1
    let err = rt.fails(&["exec", &rt.id, "/nope"]);
    assert!(err.contains("/nope"), "{err}");
    rt.finish();
}

#[test]
fn pause_resume_and_events() {
    let Some(rt) = Rt::new("runc-pause", &["sleep", "1000"]) else {
        return;
    };
    rt.create();
    rt.ok(&["start", &rt.id]);
    rt.ok(&["pause", &rt.id]);
    assert_eq!(rt.status(), "paused");
    assert!(rt.fails(&["pause", &rt.id]).contains("paused"));
    rt.ok(&["resume", &rt.id]);
    assert_eq!(rt.status(), "running");
    let ev: Value =
        serde_json::from_str(rt.ok(&["events", "--stats", &rt.id]).trim()).expect("event");
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], rt.id.as_str());
    assert!(
        ev["data"]["pids"]["current"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{ev}"
    );
    rt.ok(&["update", "--pids-limit", "20", &rt.id]);
    wait_for(5, "update applied", || {
        let ev: Value =
            serde_json::from_str(rt.ok(&["events", "--stats", &rt.id]).trim()).expect("event");
        ev["data"]["pids"]["limit"] == 20
    });
    rt.finish();
}

#[test]
fn features_and_spec() {
    let Some(rt) = Rt::new("runc-features", &["true"]) else {
        return;
    };
    let f: Value = serde_json::from_str(&rt.ok(&["features"])).expect("features");
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert!(f["hooks"].as_array().is_some_and(|h| h.len() == 6));
    assert!(f["linux"]["namespaces"]
        .as_array()
        .is_some_and(|n| n.contains(&json!("user"))));
    assert!(f["linux"]["capabilities"]
        .as_array()
        .is_some_and(|c| c.contains(&json!("CAP_SYS_ADMIN"))));
    let d = rt.dir.subdir("specdir");
    let ds = d.to_string_lossy().into_owned();
    rt.ok(&["spec", "--bundle", &ds]);
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(s["root"]["path"], "rootfs");
    assert!(rt.fails(&["spec", "--bundle", &ds]).contains("exists"));
    assert!(rt
        .fails(&["spec", "--rootless", "--bundle", &ds])
        .contains("rootless"));
    rt.finish();
}
