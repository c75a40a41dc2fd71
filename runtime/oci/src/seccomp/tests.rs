//! Seccomp tests: filters are installed in forked children that only make raw syscalls and `_exit`, and the
//! parent checks the exit code (an errno or a step number) or the killing signal.
//!
//! No root needed: the child sets no_new_privs first. Nothing here touches the filesystem.

use oci_spec::runtime::LinuxSeccomp;

use super::*;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exit(i32),
    Signal(i32),
}

fn spec(json: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(json).expect("seccomp json")
}

/// Forks; the child installs `prog`, runs `body` and exits with its result.
fn in_child(prog: &SeccompProgram, body: fn() -> i32) -> Outcome {
    // SAFETY: the child of this (multi-threaded) test process only makes raw syscalls (prctl, seccomp via
    // `install`, which does not allocate, and what `body` calls) and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: raw syscalls in the forked child; `_exit` never returns.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let code = match prog.install() {
                Ok(()) => body(),
                Err(_) => 200,
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid");
    if libc::WIFEXITED(status) {
        Outcome::Exit(libc::WEXITSTATUS(status))
    } else {
        Outcome::Signal(libc::WTERMSIG(status))
    }
}

/// errno of a raw syscall's result (0 on success).
fn errno_of(rc: libc::c_long) -> i32 {
    if rc == -1 {
        // SAFETY: reading this thread's errno.
        unsafe { *libc::__errno_location() }
    } else {
        0
    }
}

fn sys(nr: libc::c_long, a: [u64; 3]) -> i32 {
    // SAFETY: only syscalls without side effects on memory are passed (getppid, getpid, mkdir of a /proc path).
    errno_of(unsafe { libc::syscall(nr, a[0], a[1], a[2]) })
}

#[test]
fn syscall_tables_are_sorted_and_known() {
    let t = syscalls::SYSCALLS;
    assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "table not sorted");
    assert_eq!(syscall_nr(syscalls::X86_64, "mkdir"), Some(83));
    assert_eq!(syscall_nr(syscalls::I386, "getppid"), Some(64));
    assert_eq!(syscall_nr(syscalls::X32, "getpid"), Some(0x4000_0027));
    assert_eq!(syscall_nr(syscalls::X86_64, "socketcall"), None);
}

#[test]
fn errno_rule_with_default_allow() {
    let p = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77}]
    })))
    .expect("compile");
    let out = in_child(&p, || {
        if sys(libc::SYS_getpid, [0; 3]) != 0 {
            return 1;
        }
        sys(libc::SYS_getppid, [0; 3])
    });
    assert_eq!(out, Outcome::Exit(77));
}

#[test]
fn mkdir_fails_with_the_specs_errno_ret() {
    let p = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18}]
    })))
    .expect("compile");
    let out = in_child(&p, || {
        let path = c"/proc/berth-seccomp-test".as_ptr() as u64;
        let a = sys(libc::SYS_mkdir, [path, 0o755, 0]);
        let b = sys(libc::SYS_mkdirat, [libc::AT_FDCWD as u64, path, 0o755]);
        if a == b {
            a
        } else {
            100
        }
    });
    assert_eq!(out, Outcome::Exit(libc::EXDEV));
}

#[test]
fn default_errno_with_an_allow_list() {
    let p = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 13,
        "syscalls": [{"names": ["exit", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"}]
    })))
    .expect("compile");
    let out = in_child(&p, || {
        if sys(libc::SYS_getpid, [0; 3]) != 0 {
            return 1;
        }
        // Newer than every syscall the spec names: ENOSYS, not the default errno.
        if sys(libc::SYS_pidfd_open, [0; 3]) != libc::ENOSYS {
            return 2;
        }
        sys(libc::SYS_getppid, [0; 3])
    });
    assert_eq!(out, Outcome::Exit(13));
}

#[test]
fn argument_conditions_and_or() {
    let p = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 10,
             "args": [{"index": 0, "value": 5, "op": "SCMP_CMP_EQ"},
                      {"index": 1, "value": 4294967296u64, "op": "SCMP_CMP_GT"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11,
             "args": [{"index": 0, "value": 6, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 12,
             "args": [{"index": 2, "value": 240, "valueTwo": 32, "op": "SCMP_CMP_MASKED_EQ"}]}
        ]
    })))
    .expect("compile");
    let out = in_child(&p, || {
        let cases: [([u64; 3], i32); 7] = [
            ([5, 0x1_0000_0001, 0], 10),
            ([5, 0x1_0000_0000, 0], 0),
            ([5, 7, 0], 0),
            ([0x1_0000_0005, 0x2_0000_0000, 0], 0),
            ([6, 0, 0], 11),
            ([0, 0, 0x2f], 12),
            ([0, 0, 0x4f], 0),
        ];
        for (i, (args, want)) in cases.iter().enumerate() {
            if sys(libc::SYS_getppid, *args) != *want {
                return 50 + i as i32;
            }
        }
        0
    });
    assert_eq!(out, Outcome::Exit(0));
}

#[test]
fn kill_and_trap_actions_signal_sigsys() {
    for action in ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_TRAP"] {
        let p = compile(&spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": action}]
        })))
        .expect("compile");
        let out = in_child(&p, || sys(libc::SYS_getppid, [0; 3]));
        assert_eq!(out, Outcome::Signal(libc::SIGSYS), "{action}");
    }
}

#[test]
fn x32_calls_are_killed_unless_x32_is_listed() {
    let p = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5}]
    })))
    .expect("compile");
    let out = in_child(&p, || sys(0x4000_0027, [0; 3]));
    assert_eq!(out, Outcome::Signal(libc::SIGSYS));

    let p = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5}]
    })))
    .expect("compile");
    let out = in_child(&p, || sys(0x4000_0027, [0; 3]));
    assert_eq!(out, Outcome::Exit(5));
}

/// i386 getppid through `int 0x80`; returns the raw eax (negative errno on failure).
fn int80_getppid() -> i32 {
    let ret: i32;
    // SAFETY: `int 0x80` with eax = 64 (i386 getppid) takes no pointer arguments and only writes eax.
    unsafe {
        std::arch::asm!("int 0x80", inlateout("eax") 64i32 => ret, options(nostack));
    }
    ret
}

#[test]
fn i386_calls_follow_the_i386_table() {
    let p = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 9}]
    })))
    .expect("compile");
    match in_child(&p, || -int80_getppid()) {
        Outcome::Signal(libc::SIGSEGV) => {
            eprintln!("skipping: this kernel has no ia32 emulation");
            return;
        }
        out => assert_eq!(out, Outcome::Exit(9)),
    }
    let p = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 9}]
    })))
    .expect("compile");
    assert_eq!(
        in_child(&p, || -int80_getppid()),
        Outcome::Signal(libc::SIGSYS)
    );
}

#[test]
fn unsupported_and_invalid_specs_are_refused_unknown_names_skipped() {
    let err = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]
    })))
    .expect_err("notify accepted");
    assert!(err.to_string().contains("getppid"), "{err}");
    let err = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]
    })))
    .expect_err("arg index 6 accepted");
    assert!(err.to_string().contains("read"), "{err}");
    let err = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]
    })))
    .expect_err("errno 70000 accepted");
    assert!(err.to_string().contains("70000"), "{err}");
    let p = compile(&spec(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [{"names": ["no_such_syscall", "getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 3}]
    })))
    .expect("unknown names must be skipped");
    assert_eq!(
        in_child(&p, || sys(libc::SYS_getppid, [0; 3])),
        Outcome::Exit(3)
    );
}

#[test]
fn default_profile_allows_normal_work_and_denies_namespaces() {
    let profile = default_profile();
    let json = serde_json::to_value(&profile).expect("json");
    assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(json["defaultErrnoRet"], 1);
    let p = compile(&profile).expect("default profile compiles");
    assert!(p.len() < bpf::MAX_INSNS, "{} instructions", p.len());
    let out = in_child(&p, || {
        if sys(libc::SYS_getpid, [0; 3]) != 0 {
            return 1;
        }
        if sys(libc::SYS_personality, [0xffff_ffff, 0, 0]) != 0 {
            return 2;
        }
        if sys(libc::SYS_unshare, [libc::CLONE_NEWUSER as u64, 0, 0]) != libc::EPERM {
            return 3;
        }
        if sys(libc::SYS_clone3, [0, 0, 0]) != libc::ENOSYS {
            return 4;
        }
        if sys(libc::SYS_mount, [0, 0, 0]) != libc::EPERM {
            return 5;
        }
        if sys(libc::SYS_socket, [40, libc::SOCK_STREAM as u64, 0]) != libc::EPERM {
            return 6;
        }
        // SAFETY: a raw socket(2) then close(2) of its fd.
        let fd = unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            return 7;
        }
        // SAFETY: closing the fd just opened.
        unsafe { libc::syscall(libc::SYS_close, fd) };
        if sys(libc::SYS_personality, [0x0040_0000, 0, 0]) != libc::EPERM {
            return 8;
        }
        0
    });
    assert_eq!(out, Outcome::Exit(0));
}
