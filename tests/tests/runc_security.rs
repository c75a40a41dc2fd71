//! berth-runc defences: no fd leaks into the container (only stdio and --preserve-fds),
//! the CVE-2019-5736 pattern (the runtime runs from a read-only overlayfs or a sealed memfd
//! copy; the on-disk binary is unchanged after a container tries to write through
//! /proc/PID/exe while `exec` runs), mount targets never follow symlinks out of the rootfs,
//! hostile configs leave nothing.

use berth_tests::runc_fixture as util;

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use util::{text, wait_for, Rt};

/// Run `berth-runc run` with extra inherited fds: `fds` = list of target fd numbers, each a
/// duplicate of an open file without close-on-exec.
fn run_with_fds(rt: &Rt, fds: &[i32], extra: &[&str]) -> (i32, String, String) {
    let f = std::fs::File::open("/etc/hostname").expect("open");
    let src = std::os::fd::AsRawFd::as_raw_fd(&f);
    let targets = fds.to_vec();
    let b = rt.bundle.path.to_string_lossy().into_owned();
    let mut cmd = rt.cmd();
    cmd.arg("run").args(extra).args(["--bundle", &b, &rt.id]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; the child only rearranges fds before exec.
    unsafe {
        cmd.pre_exec(move || {
            for t in &targets {
                if libc::dup2(src, *t) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run");
    drop(f);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn no_fd_leaks_into_container() {
    // `ls` itself holds fd 3 (the /proc/self/fd dir) while listing.
    let Some(rt) = Rt::new("runc-fdleak", &["ls", "/proc/self/fd"]) else {
        return;
    };
    let (code, out, err) = run_with_fds(&rt, &[3, 7, 42], &[]);
    assert_eq!(code, 0, "{err}");
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "only stdio (and ls's own dir fd) may be open"
    );
    rt.finish();
}

#[test]
fn preserve_fds_passes_exactly_n() {
    let Some(rt) = Rt::new("runc-preserve", &["ls", "/proc/self/fd"]) else {
        return;
    };
    let (code, out, err) = run_with_fds(&rt, &[3, 4, 9], &["--preserve-fds", "2"]);
    assert_eq!(code, 0, "{err}");
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3", "4", "5"],
        "fds 3 and 4 preserved, 9 closed, 5 is ls's"
    );
    rt.finish();
}

fn sha(p: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).expect("read binary")))
}

#[test]
fn cve_2019_5736_runtime_binary_cannot_be_overwritten() {
    cve_2019_5736_attack("runc-cve", None, "/berth-runc");
}

/// The fallback for kernels without overlayfs "lowerdir+" or the new mount API.
#[test]
fn cve_2019_5736_memfd_fallback_is_sealed() {
    cve_2019_5736_attack("runc-cve-memfd", Some("memfd"), "/memfd:berth-runc");
}

fn cve_2019_5736_attack(name: &str, seal: Option<&str>, exe_link: &str) {
    // The container writes to every /proc/N/exe it can see, over and over; the runtime's
    // pre-exec process of `exec` is visible in the container's pid namespace.
    let attack =
        "while :; do for e in /proc/[0-9]*/exe; do echo pwned 2>/dev/null >> $e; done; done";
    let Some(mut rt) = Rt::new(name, &["sh", "-c", attack]) else {
        return;
    };
    if let Some(seal) = seal {
        rt.env.push(("BERTH_RUNC_SEAL".into(), seal.into()));
    }
    let before = sha(&rt.bin);
    rt.create();
    rt.ok(&["start", &rt.id]);
    // An exec that lingers: its /proc/PID/exe (seen from the host) is the sealed copy,
    // the binary on a detached read-only overlayfs (shown as "/berth-runc") or a sealed
    // memfd, never the file on disk.
    let mut child = rt
        .cmd()
        .args(["exec", &rt.id, "sleep", "2"])
        .stdout(Stdio::null())
        .spawn()
        .expect("exec");
    let exe = format!("/proc/{}/exe", child.id());
    wait_for(10, "exec sealed", || {
        std::fs::read_link(&exe).is_ok_and(|l| l.to_string_lossy().starts_with(exe_link))
    });
    // Writing through the runtime's exe link fails: EROFS or a sealed memfd.
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&exe) {
        assert!(
            std::io::Write::write_all(&mut f, b"x").is_err(),
            "the sealed runtime binary accepted a write"
        );
    }
    let st = child.wait().expect("wait exec");
    assert!(st.success());
    for _ in 0..20 {
        let o = rt.run(&["exec", &rt.id, "true"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    assert_eq!(sha(&rt.bin), before, "berth-runc binary on disk changed");
    rt.finish();
}

#[test]
fn mount_target_symlink_does_not_escape_rootfs() {
    let Some(rt) = Rt::new(
        "runc-symlink",
        &["sh", "-c", "ls /etc/berth-escape-probe && echo inside"],
    ) else {
        return;
    };
    std::os::unix::fs::symlink("/etc", rt.bundle.rootfs.join("evil")).expect("symlink");
    std::os::unix::fs::symlink(
        "../../../../../../../../etc",
        rt.bundle.rootfs.join("evil2"),
    )
    .expect("symlink");
    let src = rt.dir.subdir("src");
    std::fs::write(src.join("f"), "x").expect("write");
    rt.edit(|s| {
        let m = s["mounts"].as_array_mut().expect("mounts");
        m.push(json!({"destination": "/evil/berth-escape-probe", "type": "tmpfs", "source": "tmpfs"}));
        m.push(json!({"destination": "/evil2/berth-escape-probe2", "type": "bind", "source": src, "options": ["bind"]}));
    });
    let out = rt.output();
    assert!(
        out.contains("inside"),
        "the mount landed inside the rootfs: {out}"
    );
    assert!(
        !std::path::Path::new("/etc/berth-escape-probe").exists(),
        "host /etc was touched"
    );
    assert!(
        !std::path::Path::new("/etc/berth-escape-probe2").exists(),
        "host /etc was touched"
    );
    assert!(rt.bundle.rootfs.join("etc/berth-escape-probe").is_dir());
    let _ = std::fs::remove_dir(rt.bundle.rootfs.join("etc/berth-escape-probe"));
    let _ = std::fs::remove_dir(rt.bundle.rootfs.join("etc/berth-escape-probe2"));
    rt.finish();
}

#[test]
fn failing_init_leaves_nothing() {
    // Fails late (in init, after the cgroup exists): an executable that is not there.
    let Some(rt) = Rt::new("runc-latefail", &["/no/such/binary"]) else {
        return;
    };
    let b = rt.bundle.path.to_string_lossy().into_owned();
    let o = rt.run(&["run", "--bundle", &b, &rt.id]);
    assert_ne!(o.status.code(), Some(0));
    // And a hostile mount type fails inside init too.
    rt.edit(|s| {
        s["mounts"]
            .as_array_mut()
            .expect("m")
            .push(json!({"destination": "/x", "type": "nosuchfs", "source": "none"}))
    });
    let err = rt.fails(&["create", "--bundle", &b, &rt.id]);
    assert!(err.contains("/x"), "{err}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!rt.root.join(&rt.id).exists());
    rt.guard.assert_clean();
    rt.finish();
}

#[test]
fn seccomp_denied_syscall_returns_spec_errno() {
    for nnp in [true, false] {
        let Some(rt) = Rt::new(
            "runc-seccomp",
            &[
                "sh",
                "-c",
                "mkdir /tmp/x; echo rc=$?; grep Seccomp: /proc/self/status",
            ],
        ) else {
            return;
        };
        rt.edit(|s| {
            s["process"]["noNewPrivileges"] = nnp.into();
            s["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18}]
            });
        });
        let (code, out, err) = rt.run_container();
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("rc=1"), "mkdir must fail: {out}");
        assert!(
            err.to_lowercase().contains("cross-device"),
            "errno 18 (EXDEV) expected: {err}"
        );
        assert!(out.contains("Seccomp:\t2"), "filter mode: {out}");
        assert!(!rt.bundle.rootfs.join("tmp/x").exists());
        rt.finish();
    }
}
