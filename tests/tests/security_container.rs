//! What a process inside a container made by `berth run` (default spec, through berthd, berth-shim
//! and berth-runc) can reach: the masked /proc and /sys paths are empty, the read-only ones refuse
//! writes; the syscalls containerd's default seccomp profile denies fail with EPERM (probed by the
//! static `sysprobe` helper, tests/helpers/sysprobe.c, against a `--privileged` control run where
//! the same calls succeed); no host fd reaches the container or an exec, and a cwd of
//! `/proc/self/fd/N` cannot land outside the rootfs (runc's CVE-2024-21626 class); writing through
//! every `/proc/N/exe` while execs run leaves berth-runc and berth-shim unchanged (CVE-2019-5736).
//! NoNewPrivs, CapEff/CapBnd and seccomp mode 2 are asserted in cli_run.rs
//! (`the_default_spec_is_locked_down_and_flags_relax_it`); runc-level fd and exe checks with
//! hand-made bundles are in runc_security.rs. Root only.

use std::collections::BTreeMap;
use std::path::Path;

use berth_tests::cli_fixture::{text, CliFixture, BUSYBOX};
use sha2::{Digest, Sha256};

/// containerd's default masked paths (berth run's spec has the same list).
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's default read-only paths.
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The mount options of the mount at exactly `path` in a mountinfo text (last one wins).
fn mount_options(mountinfo: &str, path: &str) -> Option<String> {
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&path))
            .then(|| f.get(5).map(|o| o.to_string()))
            .flatten()
    })
}

#[test]
fn masked_paths_are_empty_and_readonly_paths_refuse_writes() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("sec-paths");
    f.seed_busybox();
    // For each path: what reading it yields (bytes or entries), then a write attempt.
    let mut script = String::from("cat /proc/self/mountinfo; echo ==== ;");
    for p in MASKED {
        script.push_str(&format!(
            "if [ -d {p} ]; then echo \"{p} entries=$(ls -A {p} | wc -l)\"; \
             elif [ -e {p} ]; then echo \"{p} bytes=$(head -c 64 {p} 2>/dev/null | wc -c)\"; fi;"
        ));
    }
    // Harmless values: a sysrq help request, the domain name, nothing below irq/bus/fs.
    script.push_str(
        "echo h > /proc/sysrq-trigger 2>/dev/null && echo wrote-sysrq;\
         echo berth-probe > /proc/sys/kernel/domainname 2>/dev/null && echo wrote-sys;\
         touch /sys/firmware/x 2>/dev/null && echo wrote-firmware; true",
    );
    let out = f.ok(&[
        "run", "--rm", "--net", "none", BUSYBOX, "paths", "sh", "-c", &script,
    ]);
    let (mountinfo, results) = out.split_once("====\n").expect("marker");
    let mut checked = 0;
    for p in MASKED {
        if !Path::new(p).exists() {
            continue; // absent on this host (e.g. /proc/kcore here): nothing to hide
        }
        checked += 1;
        let line = results
            .lines()
            .find(|l| l.split(' ').next() == Some(p))
            .unwrap_or_else(|| panic!("{p} exists on the host but not in the container"));
        assert!(
            line.ends_with("entries=0") || line.ends_with("bytes=0"),
            "{p} is not masked: {line}"
        );
        let opts = mount_options(mountinfo, p).unwrap_or_default();
        assert!(
            opts.split(',').any(|o| o == "ro") || mountinfo.contains(&format!("/null {p} ")),
            "{p}: masked by a read-only tmpfs or /dev/null, got {opts:?}"
        );
    }
    assert!(
        checked >= 4,
        "only {checked} masked paths exist on this host"
    );
    for p in READONLY {
        if !Path::new(p).exists() {
            continue;
        }
        let opts = mount_options(mountinfo, p).unwrap_or_default();
        assert!(
            opts.split(',').any(|o| o == "ro"),
            "{p} is not mounted read-only: {opts:?}"
        );
    }
    for w in ["wrote-sysrq", "wrote-sys", "wrote-firmware"] {
        assert!(
            !results.contains(w),
            "a protected path took a write: {results}"
        );
    }
    f.fx.guard.assert_clean();
}

/// Run the sysprobe helper in a container (`extra` flags before the image); probe → outcome.
fn probe(f: &CliFixture, helper: &Path, id: &str, extra: &[&str]) -> BTreeMap<String, String> {
    let mount = format!(
        "type=bind,src={},dst=/sysprobe,options=ro",
        helper.display()
    );
    let mut args = vec!["run", "--rm", "--net", "none", "--mount", &mount];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[BUSYBOX, id, "/sysprobe"]);
    let out = f.ok(&args);
    berth_tests::sysprobe::parse(&out)
}

#[test]
fn the_default_seccomp_profile_denies_what_containerd_denies() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("sec-seccomp");
    let Some(helper) = berth_tests::sysprobe::build(f.fx.dir.path()) else {
        return;
    };
    f.seed_busybox();
    let confined = probe(&f, &helper, "confined", &[]);
    let open = probe(&f, &helper, "open", &["--privileged"]);
    eprintln!("default: {confined:?}\nprivileged: {open:?}");
    assert_eq!(confined.get("getpid").map(String::as_str), Some("OK"));
    // Every one of these is refused with the profile's EPERM in the default container.
    let denied = [
        "keyctl",
        "add_key",
        "unshare_user",
        "unshare_mount",
        "clone_newuser",
        "mount",
        "kexec_load",
        "init_module",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "get_mempolicy",
        "io_uring_setup",
        "setns",
        "open_by_handle_at",
        "fsopen",
        "pivot_root",
        "acct",
        "swapoff",
    ];
    for name in denied {
        assert_eq!(
            confined.get(name).map(String::as_str),
            Some("E1"),
            "{name} must fail with EPERM in the default container"
        );
    }
    // The filter, not a missing capability, refuses these: without it (privileged) the kernel
    // lets them through or answers with its own errno (ENOSYS, EFAULT, EBADF...).
    for name in [
        "keyctl",
        "add_key",
        "unshare_user",
        "clone_newuser",
        "get_mempolicy",
        "kexec_load",
        "io_uring_setup",
        "setns",
    ] {
        let got = open.get(name).map(String::as_str);
        assert!(
            got.is_some() && got != Some("E1"),
            "{name} without the filter: {got:?} (the probe cannot tell the filter's EPERM apart)"
        );
    }
    f.fx.guard.assert_clean();
}

/// The fd numbers listed by `ls /proc/self/fd` (ls's own directory fd included).
fn fds(listing: &str) -> Vec<u32> {
    let mut v: Vec<u32> = listing
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn no_host_fd_reaches_the_container_and_a_proc_fd_cwd_stays_inside() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("sec-fds");
    f.seed_busybox();
    // `ls` opens /proc/self/fd itself as fd 3 while it lists.
    let out = f.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        BUSYBOX,
        "fds",
        "ls",
        "/proc/self/fd",
    ]);
    assert_eq!(fds(&out), [0, 1, 2, 3], "container init: {out}");
    f.ok(&[
        "run", "-d", "--net", "none", BUSYBOX, "fdexec", "sleep", "1000",
    ]);
    let out = f.ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "ls1",
        "fdexec",
        "ls",
        "/proc/self/fd",
    ]);
    assert_eq!(fds(&out), [0, 1, 2, 3], "exec process: {out}");
    // The init's own fds, seen from the host: stdio only.
    let pid = init_pid(&f, "fdexec");
    let host_view: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("init fds")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    assert_eq!(
        {
            let mut v = host_view.clone();
            v.sort_unstable();
            v
        },
        [0, 1, 2],
        "init {pid}"
    );

    // CVE-2024-21626: a cwd through a (leaked) fd of the runtime must never be a host dir. Each
    // attempt either fails to start with an error naming the cwd, or runs with its cwd inside its
    // own root: climbing up from it never reaches the host's /tmp, which holds the test dirs.
    let host_marker = Path::new(berth_tests::TEST_ROOT)
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let climb = "ls ../../../../../../../../tmp; readlink /proc/self/cwd";
    let mut outcomes = Vec::new();
    for n in 3..=9 {
        let cwd = format!("/proc/self/fd/{n}");
        let id = format!("cwd{n}");
        let out = f.run(&[
            "run", "--rm", "--net", "none", "--cwd", &cwd, BUSYBOX, &id, "sh", "-c", climb,
        ]);
        let (so, se) = (text(&out.stdout), text(&out.stderr));
        assert!(
            !so.contains(&host_marker),
            "run, cwd {cwd}: host /tmp listed: {so}"
        );
        if !out.status.success() {
            assert!(
                se.contains(&cwd) || se.contains("cwd"),
                "names the cwd: {se}"
            );
        }
        outcomes.push(format!("run {cwd}: {:?} {}", out.status.code(), se.trim()));
        let out = f.run(&[
            "tasks",
            "exec",
            "--exec-id",
            &format!("e{n}"),
            "--cwd",
            &cwd,
            "fdexec",
            "sh",
            "-c",
            climb,
        ]);
        let so = text(&out.stdout);
        assert!(
            !so.contains(&host_marker),
            "exec, cwd {cwd}: host /tmp listed: {so}"
        );
        outcomes.push(format!(
            "exec {cwd}: {:?} {}",
            out.status.code(),
            text(&out.stderr).trim()
        ));
    }
    eprintln!("{}", outcomes.join("\n"));
    f.ok(&["rm", "-f", "fdexec"]);
    f.fx.guard.assert_clean();
}

/// The host pid of container `id`'s init (`berth tasks ls --format json`).
fn init_pid(f: &CliFixture, id: &str) -> u32 {
    let out = f.ok(&["tasks", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v.as_array()
        .into_iter()
        .flatten()
        .find(|t| t["id"] == id)
        .and_then(|t| t["pid"].as_u64())
        .unwrap_or_else(|| panic!("no pid for {id}: {out}")) as u32
}

fn sha(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).expect("read binary")))
}

#[test]
fn a_container_cannot_overwrite_the_runtime_or_the_shim() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("sec-exe");
    f.seed_busybox();
    let runc = berth_tests::bin("berth-runc");
    let shim = berth_tests::bin("berth-shim");
    let before = (sha(&runc), sha(&shim));
    // The attacker writes to every /proc/N/exe it sees, also through an fd kept open across
    // the runtime's exec (a reopen of /proc/self/fd/N for writing), over and over.
    let attack = "while :; do for e in /proc/[0-9]*/exe; do \
                  echo pwned 2>/dev/null >> $e; (exec 5<$e && echo pwned >> /proc/self/fd/5) 2>/dev/null; \
                  done; done";
    f.ok(&[
        "run", "-d", "--net", "none", BUSYBOX, "attacker", "sh", "-c", attack,
    ]);
    for i in 0..20 {
        let out = f.run(&[
            "tasks",
            "exec",
            "--exec-id",
            &format!("x{i}"),
            "attacker",
            "true",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "exec {i}: {}",
            text(&out.stderr)
        );
    }
    f.ok(&["rm", "-f", "attacker"]);
    assert_eq!(sha(&runc), before.0, "berth-runc on disk changed");
    assert_eq!(sha(&shim), before.1, "berth-shim on disk changed");
    f.fx.guard.assert_clean();
}
