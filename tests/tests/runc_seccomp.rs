//! berth-runc seccomp through the binary: a rule making `mkdir` fail with the spec's errnoRet, a default ERRNO
//! action with an allow-list, argument conditions, and KILL_PROCESS. Real busybox containers, as root; the Guard
//! checks that nothing is left behind.

use berth_tests::runc_fixture as util;

use serde_json::{json, Value};
use util::Rt;

const EXDEV_TEXT: &str = "cross-device";

/// Every x86_64 syscall name from the kernel's UAPI header (None when the header is missing).
fn all_syscall_names() -> Option<Vec<String>> {
    let text = std::fs::read_to_string("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("#define __NR_"))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect(),
    )
}

fn set_seccomp(rt: &Rt, seccomp: Value) {
    rt.edit(|s| s["linux"]["seccomp"] = seccomp);
}

#[test]
fn a_rule_makes_mkdir_fail_with_the_specs_errno() {
    let Some(rt) = Rt::new(
        "sc-mkdir",
        &[
            "sh",
            "-c",
            "mkdir /made; echo rc=$?; ls -d /made 2>/dev/null; echo end",
        ],
    ) else {
        return;
    };
    set_seccomp(
        &rt,
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18}]
        }),
    );
    let (code, out, err) = rt.run_container();
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert_eq!(out, "rc=1\nend\n", "stderr {err:?}");
    assert!(err.to_lowercase().contains(EXDEV_TEXT), "stderr {err:?}");
    rt.finish();
}

#[test]
fn default_action_errno_applies_to_unlisted_syscalls() {
    let Some(names) = all_syscall_names() else {
        berth_tests::skip("no asm/unistd_64.h to build the allow-list from");
        return;
    };
    let Some(rt) = Rt::new(
        "sc-default",
        &["sh", "-c", "mkdir /made; echo rc=$?; echo end"],
    ) else {
        return;
    };
    let allowed: Vec<String> = names
        .into_iter()
        .filter(|n| n != "mkdir" && n != "mkdirat")
        .collect();
    set_seccomp(
        &rt,
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 18,
            "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]
        }),
    );
    let (code, out, err) = rt.run_container();
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert_eq!(out, "rc=1\nend\n", "stderr {err:?}");
    assert!(err.to_lowercase().contains(EXDEV_TEXT), "stderr {err:?}");
    rt.finish();
}

#[test]
fn argument_conditions_select_the_call() {
    // kill(pid, 0) is refused; kill(pid, SIGCONT) is not.
    let Some(rt) = Rt::new(
        "sc-args",
        &[
            "sh",
            "-c",
            "kill -0 $$; echo a=$?; kill -CONT $$; echo b=$?",
        ],
    ) else {
        return;
    };
    set_seccomp(
        &rt,
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                          "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]}]
        }),
    );
    let (code, out, err) = rt.run_container();
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert_eq!(out, "a=1\nb=0\n", "stderr {err:?}");
    rt.finish();
}

#[test]
fn kill_process_action_kills_with_sigsys() {
    let Some(rt) = Rt::new("sc-kill", &["mkdir", "/made"]) else {
        return;
    };
    set_seccomp(
        &rt,
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL_PROCESS"}]
        }),
    );
    let (code, out, err) = rt.run_container();
    assert_eq!(code, 128 + libc::SIGSYS, "stdout {out:?} stderr {err:?}");
    assert!(!rt.bundle.rootfs.join("made").exists(), "mkdir ran");
    rt.finish();
}

#[test]
fn notify_is_refused_clearly_and_unknown_names_are_skipped() {
    let Some(rt) = Rt::new("sc-notify", &["true"]) else {
        return;
    };
    set_seccomp(
        &rt,
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]
        }),
    );
    let (code, out, err) = rt.run_container();
    assert_ne!(code, 0, "stdout {out:?}");
    assert!(
        err.contains("SCMP_ACT_NOTIFY") && err.contains("getppid"),
        "stderr {err:?}"
    );
    assert!(
        !rt.root.join(&rt.id).exists(),
        "a refused spec left state behind"
    );
    rt.finish();

    let Some(rt) = Rt::new("sc-unknown", &["sh", "-c", "echo ok"]) else {
        return;
    };
    set_seccomp(
        &rt,
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["no_such_syscall_at_all", "getppid"], "action": "SCMP_ACT_ERRNO"}]
        }),
    );
    let (code, out, err) = rt.run_container();
    assert_eq!((code, out.as_str()), (0, "ok\n"), "stderr {err:?}");
    rt.finish();
}
