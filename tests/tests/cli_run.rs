//! `berth run` as a user runs it: output on the right streams, the container's exit code, `--rm`
//! leaving nothing, `-d` then `tasks ls|exec|kill|wait` and `rm`, the secure default spec and the
//! flags that change it, signal forwarding. Root only; every test checks it left nothing behind.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_tests::cli_fixture::{text, CliFixture, BUSYBOX};

/// Containers in the fixture's namespace (ids).
fn containers(f: &CliFixture) -> Vec<String> {
    f.ok(&["containers", "ls", "-q"])
        .lines()
        .map(String::from)
        .collect()
}

/// Snapshots other than committed image layers.
fn active_snapshots(f: &CliFixture) -> Vec<String> {
    let out = f.ok(&["snapshots", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .filter(|s| s["kind"] != "Committed")
        .map(|s| s["key"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Entries of the FIFO dir (berth removes its FIFO dirs when a task goes).
fn fifo_dirs(f: &CliFixture) -> Vec<String> {
    std::fs::read_dir(&f.fifo_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn run_rm_splits_streams_returns_the_exit_code_and_leaves_nothing() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-run-rm");
    f.seed_busybox();
    let out = f.run(&[
        "run",
        "--rm",
        "--net",
        "none",
        BUSYBOX,
        "hello",
        "sh",
        "-c",
        "echo out-line; echo err-line >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out-line\n");
    assert_eq!(text(&out.stderr), "err-line\n");
    // A short name works as Docker users expect.
    let out = f.run(&[
        "run", "--rm", "--net", "none", "busybox", "short", "echo", "hi",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(containers(&f).is_empty(), "no container left");
    assert!(
        active_snapshots(&f).is_empty(),
        "no container snapshot left"
    );
    assert!(
        fifo_dirs(&f).is_empty(),
        "no FIFO dir left: {:?}",
        fifo_dirs(&f)
    );
    // The image was unpacked by the first run: `images check` says so.
    let check = f.ok(&["images", "check", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&check).expect("json");
    assert_eq!(v[0]["unpacked"], serde_json::json!(true), "{check}");
    assert_eq!(v[0]["status"], "complete");
    f.fx.guard.assert_clean();
}

#[test]
fn run_copies_stdin_and_closes_it_at_eof() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-run-stdin");
    f.seed_busybox();
    let mut child = f
        .berth()
        .args([
            "run",
            "--rm",
            "--net",
            "none",
            BUSYBOX,
            "cat1",
            "sh",
            "-c",
            "cat; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"line one\nline two\n").expect("write");
    } // closed: berth sends CloseIO, cat sees EOF
    let out = wait_output(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line one\nline two\ndone\n");
    assert!(containers(&f).is_empty());
    f.fx.guard.assert_clean();
}

/// Wait for a child with a deadline (SIGKILL and panic past it).
fn wait_output(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "berth did not exit in {limit:?}: stdout {} stderr {}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn detached_container_then_tasks_ls_exec_kill_wait_and_rm() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-run-detach");
    f.seed_busybox();
    let out = f.run(&[
        "run", "-d", "--net", "none", BUSYBOX, "web", "sleep", "1000",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let tasks = f.ok(&["tasks", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&tasks).expect("json");
    assert_eq!(v[0]["id"], "web", "{tasks}");
    assert_eq!(v[0]["status"], "RUNNING", "{tasks}");
    assert!(f.ok(&["tasks", "ls"]).contains("RUNNING"));

    let out = f.run(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "web",
        "sh",
        "-c",
        "echo in-exec; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in-exec\n");
    let ps = f.ok(&["tasks", "ps", "web"]);
    assert_eq!(ps.lines().count(), 2, "header and the one process: {ps}");

    // A running container is not removed without --force.
    let out = f.run(&["rm", "web"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is running"),
        "{}",
        text(&out.stderr)
    );

    // busybox sleep as PID 1 ignores SIGTERM: kill it for real, wait sees 128+9.
    f.ok(&["tasks", "kill", "-s", "SIGKILL", "web"]);
    let out = f.run(&["tasks", "wait", "web"]);
    assert_eq!(out.status.code(), Some(137), "stdout {}", text(&out.stdout));
    assert_eq!(text(&out.stdout).trim(), "137");
    assert!(f.ok(&["tasks", "ls"]).contains("STOPPED"));
    assert_eq!(f.ok(&["rm", "web"]).trim(), "web");
    assert!(containers(&f).is_empty());
    assert!(active_snapshots(&f).is_empty());
    assert!(f.ok(&["tasks", "ls", "-q"]).trim().is_empty());
    assert!(
        fifo_dirs(&f).is_empty(),
        "FIFOs of the detached task removed: {:?}",
        fifo_dirs(&f)
    );
    f.fx.guard.assert_clean();
}

/// One `/proc/self/status` field.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn the_default_spec_is_locked_down_and_flags_relax_it() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-run-spec");
    f.seed_busybox();
    let status = f.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        BUSYBOX,
        "sec",
        "cat",
        "/proc/self/status",
    ]);
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    assert_eq!(status_field(&status, "Seccomp"), "2", "seccomp filter on");
    // containerd's 14 default capabilities: 0x00000000a80425fb.
    assert_eq!(status_field(&status, "CapEff"), "00000000a80425fb");
    assert_eq!(status_field(&status, "CapBnd"), "00000000a80425fb");
    // Masked and read-only /proc paths.
    let out = f.run(&["run", "--rm", "--net", "none", BUSYBOX, "masked", "sh", "-c",
        "grep -E ' /proc/(keys|timer_list|sys) ' /proc/self/mountinfo; echo 1 > /proc/sys/kernel/domainname && echo wrote"]);
    let mounts = text(&out.stdout);
    assert!(
        !mounts.contains("wrote"),
        "/proc/sys is read-only: {mounts}"
    );
    assert!(
        mounts.contains("/null /proc/keys "),
        "/proc/keys masked with a null device: {mounts}"
    );
    assert!(
        mounts.contains(" /proc/sys ro,"),
        "/proc/sys mounted read-only: {mounts}"
    );

    let status = f.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--privileged",
        BUSYBOX,
        "priv",
        "cat",
        "/proc/self/status",
    ]);
    assert_eq!(status_field(&status, "Seccomp"), "0");
    assert_eq!(status_field(&status, "NoNewPrivs"), "0");
    assert_ne!(status_field(&status, "CapEff"), "00000000a80425fb");

    let status = f.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "NET_ADMIN",
        BUSYBOX,
        "caps",
        "cat",
        "/proc/self/status",
    ]);
    assert_eq!(
        status_field(&status, "CapEff"),
        "0000000000001000",
        "only NET_ADMIN (12)"
    );

    let out = f.run(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--read-only",
        BUSYBOX,
        "ro",
        "sh",
        "-c",
        "touch /x && echo wrote",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!text(&out.stdout).contains("wrote"));

    // User, env, env file, cwd, hostname, a bind mount.
    let shared = f.fx.dir.subdir("shared");
    std::fs::write(shared.join("note"), "from the host\n").expect("write");
    let env_file = f.fx.dir.join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=yes\n").expect("write");
    let mount = format!("type=bind,src={},dst=/shared,options=ro", shared.display());
    let env_file_s = env_file.display().to_string();
    let out = f.ok(&["run", "--rm", "--net", "none", "--user", "nobody", "-e", "A=1", "--env-file", &env_file_s,
        "--cwd", "/tmp", "--hostname", "h1", "--mount", &mount, BUSYBOX, "who", "sh", "-c",
        "id -u; id -g; echo $A $FROM_FILE; pwd; hostname; cat /shared/note; touch /shared/x 2>/dev/null || echo ro"]);
    assert_eq!(out, "65534\n65534\n1 yes\n/tmp\nh1\nfrom the host\nro\n");

    // The pids limit and the cgroup path /<ns>/<id>, seen from the host while it runs.
    f.ok(&[
        "run",
        "-d",
        "--net",
        "none",
        "--pids-limit",
        "77",
        "--memory-limit",
        "64m",
        BUSYBOX,
        "lim",
        "sleep",
        "100",
    ]);
    let pids_max = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/{}/lim/pids.max", f.ns()))
        .unwrap_or_default();
    let mem = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{}/lim/memory.limit_in_bytes",
        f.ns()
    ))
    .unwrap_or_default();
    f.ok(&["rm", "-f", "lim"]);
    assert_eq!(pids_max.trim(), "77");
    assert_eq!(mem.trim(), (64u64 << 20).to_string());
    assert!(containers(&f).is_empty());
    f.fx.guard.assert_clean();
}

#[test]
fn signals_to_berth_reach_the_container_and_its_exit_code_comes_back() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-run-signal");
    f.seed_busybox();
    let mut child = f
        .berth()
        .args([
            "run",
            "--rm",
            "--net",
            "none",
            BUSYBOX,
            "sig",
            "sh",
            "-c",
            "trap 'echo got-term; exit 9' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    lines.read_line(&mut first).expect("read");
    assert_eq!(first, "ready\n");
    berth_tests::proc::kill(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
    let mut rest = String::new();
    lines.read_line(&mut rest).expect("read");
    assert_eq!(rest, "got-term\n");
    let out = wait_output(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(9), "stderr: {}", text(&out.stderr));
    assert!(containers(&f).is_empty());
    f.fx.guard.assert_clean();
}

#[test]
fn containers_create_then_tasks_start_info_and_label() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-create");
    f.seed_busybox();
    assert_eq!(
        f.ok(&[
            "containers",
            "create",
            "--net",
            "none",
            "--label",
            "tier=front",
            BUSYBOX,
            "c1",
            "echo",
            "started"
        ])
        .trim(),
        "c1"
    );
    let info = f.ok(&["containers", "info", "c1"]);
    let v: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(
        v["Spec"]["process"]["args"],
        serde_json::json!(["echo", "started"])
    );
    assert_eq!(v["Labels"]["tier"], "front");
    assert_eq!(v["Labels"]["berth.io/networks"], "none");
    assert_eq!(
        v["Labels"]["io.containerd.image.config.stop-signal"],
        "SIGTERM"
    );
    assert_eq!(v["Spec"]["linux"]["cgroupsPath"], format!("/{}/c1", f.ns()));
    f.ok(&["containers", "label", "c1", "tier=back", "extra=1"]);
    let ls = f.ok(&["containers", "ls", "--format", "json"]);
    assert!(
        ls.contains("tier=back") || ls.contains("\"tier\": \"back\""),
        "{ls}"
    );
    let out = f.run(&["tasks", "start", "c1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "started\n");
    let rm = f.ok(&["tasks", "rm", "c1"]);
    assert!(rm.starts_with("c1"), "{rm}");
    f.ok(&["containers", "rm", "c1"]);
    assert!(containers(&f).is_empty());
    f.fx.guard.assert_clean();
}

#[test]
fn pause_resume_metrics_and_attach_to_a_detached_task() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-attach");
    f.seed_busybox();
    f.ok(&[
        "run",
        "-d",
        "--net",
        "none",
        BUSYBOX,
        "att",
        "sh",
        "-c",
        "read line; echo got $line; exit 6",
    ]);
    f.ok(&["tasks", "pause", "att"]);
    assert!(f.ok(&["tasks", "ls"]).contains("PAUSED"));
    f.ok(&["tasks", "resume", "att"]);
    assert!(f.ok(&["tasks", "ls"]).contains("RUNNING"));
    let m: serde_json::Value =
        serde_json::from_str(&f.ok(&["tasks", "metrics", "--format", "json", "att"]))
            .expect("json");
    assert_eq!(m["pids"]["limit"], 4096, "{m}");
    assert!(m["pids"]["current"].as_u64().unwrap_or(0) >= 1, "{m}");
    // Attach: our stdin goes in, the output comes back, and so does the exit code.
    let mut child = f
        .berth()
        .args(["tasks", "attach", "att"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn attach");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"hello\n").expect("write");
    }
    let out = wait_output(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(6), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "got hello\n");
    f.ok(&["rm", "att"]);
    assert!(containers(&f).is_empty());
    assert!(fifo_dirs(&f).is_empty());
    f.fx.guard.assert_clean();
}

#[test]
fn a_reader_that_goes_away_does_not_block_the_container() {
    if !berth_tests::require_root() {
        return;
    }
    let f = CliFixture::new("cli-run-pipe");
    f.seed_busybox();
    // As `berth run ... | head -c 4`: berth's stdout closes early; the container still ends.
    let mut child = f
        .berth()
        .args([
            "run",
            "--rm",
            "--net",
            "none",
            BUSYBOX,
            "yes1",
            "sh",
            "-c",
            "yes | head -c 2000000; exit 3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    {
        use std::io::Read;
        let mut out = child.stdout.take().expect("stdout");
        let mut first = [0u8; 4];
        out.read_exact(&mut first).expect("read");
        assert_eq!(&first, b"y\ny\n");
    } // the read end is closed here
    let out = wait_output(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(containers(&f).is_empty());
    f.fx.guard.assert_clean();
}
