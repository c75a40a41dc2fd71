//! Debian's `ctr` (1.6) `run` options against berthd, each checked by what the user sees: `-t` through a pty
//! (the container's stdout is a terminal, the exit code comes back; `tasks exec -t` likewise), `--null-io` (nothing printed, exit code
//! kept), `--log-uri file:///PATH` (the container's stdout and stderr land in that file), `--mount
//! type=bind,...` read-only and read-write, `--net-host` (the host's network namespace), `--with-ns
//! network:PATH` (the named one). `--rootfs` (ctr's spec without an image) carries all of them. Root only.

use std::path::Path;
use std::time::Duration;

use berth_tests::ctr_fixture::{ok, text, CtrFixture};
use berth_tests::run_timeout;

#[test]
fn run_t_gives_the_container_a_terminal() {
    let Some(c) = CtrFixture::new("cc-run-tty") else {
        return;
    };
    let rootfs = c.rootfs();
    let fifo = c.fifo_dir.display().to_string();
    let id = c.container("tty");
    let Some(o) = c.ctr_on_tty(&[
        "run",
        "--rm",
        "-t",
        "--fifo-dir",
        &fifo,
        "--rootfs",
        &rootfs,
        &id,
        "sh",
        "-c",
        "tty; test -t 0 && echo stdin-is-a-tty; exit 4",
    ]) else {
        return;
    };
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("/dev/pts/"), "{}", text(&o));
    assert!(out.contains("stdin-is-a-tty"), "{}", text(&o));
    assert_eq!(c.task(&id), None, "--rm removed the task");

    // tasks exec -t into a container without a terminal.
    let id = c.container("tty-exec");
    ok(
        &c.run(&["-d", "--rootfs"], &rootfs, &id, &["sleep", "1000"]),
        "ctr run -d",
    );
    let pid = c.wait_status(&id, "RUNNING");
    c.fx.guard.pid(pid);
    let Some(o) = c.ctr_on_tty(&[
        "tasks",
        "exec",
        "-t",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "t1",
        &id,
        "sh",
        "-c",
        "tty; exit 6",
    ]) else {
        return;
    };
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("/dev/pts/"),
        "{}",
        text(&o)
    );
    c.kill_and_remove(&id);
    c.fx.guard.assert_clean();
}

#[test]
fn run_null_io_and_log_uri() {
    let Some(c) = CtrFixture::new("cc-run-io") else {
        return;
    };
    let rootfs = c.rootfs();

    // --null-io: the output goes nowhere, the exit code still comes back.
    let id = c.container("null");
    let o = c.run(
        &["--rm", "--null-io", "--rootfs"],
        &rootfs,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 2"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("err"),
        "{}",
        text(&o)
    );

    // --log-uri file://: stdout and stderr go to the file (created by the runtime side), nothing to ctr.
    let log = c.fx.dir.join("logs/container.log");
    let uri = format!("file://{}", log.display());
    let id = c.container("log");
    let o = c.run(
        &["--rm", "--log-uri", &uri, "--rootfs"],
        &rootfs,
        &id,
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    let written = std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("{}: {e}; ctr said {}", log.display(), text(&o)));
    assert!(written.contains("to-stdout\n"), "{written:?}");
    assert!(written.contains("to-stderr\n"), "{written:?}");

    // A binary:// logger is refused by name (Berth's shim writes files only).
    let id = c.container("logbin");
    let o = c.run(
        &["--rm", "--log-uri", "binary:///usr/bin/logger", "--rootfs"],
        &rootfs,
        &id,
        &["true"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("binary:// is not supported"),
        "{}",
        text(&o)
    );

    // A second run appends, as containerd's shim does.
    let id = c.container("log2");
    let o = c.run(
        &["--rm", "--log-uri", &uri, "--rootfs"],
        &rootfs,
        &id,
        &["echo", "again"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let written = std::fs::read_to_string(&log).expect("log file");
    assert!(
        written.contains("to-stdout\n") && written.ends_with("again\n"),
        "{written:?}"
    );
    c.fx.guard.assert_clean();
}

#[test]
fn run_systemd_cgroup_is_refused_not_ignored() {
    let Some(c) = CtrFixture::new("cc-run-sysd") else {
        return;
    };
    let rootfs = c.rootfs();
    let id = c.container("sysd");
    let slice = format!("machine.slice:cc:{id}");
    let o = c.run(
        &[
            "--rm",
            "--runc-systemd-cgroup",
            "--cgroup",
            &slice,
            "--rootfs",
        ],
        &rootfs,
        &id,
        &["true"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("systemd_cgroup"),
        "{}",
        text(&o)
    );
    assert_eq!(c.task(&id), None);
    let ls = ok(&c.ctr(&["containers", "ls", "-q"]), "ctr containers ls");
    assert!(!ls.contains(&id), "--rm removed the container: {ls}");
    c.fx.guard.assert_clean();
}

#[test]
fn run_mount_bind_read_only_and_read_write() {
    let Some(c) = CtrFixture::new("cc-run-mnt") else {
        return;
    };
    let rootfs = c.rootfs();
    let shared = c.fx.dir.subdir("shared");
    std::fs::write(shared.join("hello"), "from the host\n").expect("write");
    let src = shared.display().to_string();

    let id = c.container("ro");
    let o = c.run(
        &[
            "--rm",
            "--mount",
            &format!("type=bind,src={src},dst=/host,options=rbind:ro"),
            "--rootfs",
        ],
        &rootfs,
        &id,
        &[
            "sh",
            "-c",
            "cat /host/hello; touch /host/new 2>/dev/null && echo writable || echo read-only",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from the host\nread-only\n",
        "{}",
        text(&o)
    );
    assert!(!shared.join("new").exists(), "nothing written through ro");

    let id = c.container("rw");
    let o = c.run(
        &[
            "--rm",
            "--mount",
            &format!("type=bind,src={src},dst=/host,options=rbind:rw"),
            "--rootfs",
        ],
        &rootfs,
        &id,
        &["sh", "-c", "echo from-container > /host/new"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(shared.join("new")).expect("written through rw"),
        "from-container\n"
    );
    assert!(
        berth_tests::mounts_below(c.fx.dir.path()).is_empty(),
        "no mount left"
    );
    c.fx.guard.assert_clean();
}

/// `readlink /proc/self/ns/net` inside a `--rm` container run with `flags`.
#[track_caller]
fn netns_inside(c: &CtrFixture, flags: &[&str]) -> String {
    let rootfs = c.rootfs();
    let id = c.container("ns");
    let mut all = vec!["--rm"];
    all.extend_from_slice(flags);
    all.push("--rootfs");
    let o = c.run(&all, &rootfs, &id, &["readlink", "/proc/self/ns/net"]);
    ok(&o, "ctr run readlink").trim().to_string()
}

#[test]
fn run_net_host_and_with_ns() {
    let Some(c) = CtrFixture::new("cc-run-ns") else {
        return;
    };
    let Some(ip) = berth_tests::tool("ip") else {
        return;
    };
    let host = std::fs::read_link("/proc/self/ns/net")
        .expect("host netns")
        .display()
        .to_string();

    // Default: a namespace of its own.
    let own = netns_inside(&c, &[]);
    assert!(own.starts_with("net:["), "{own}");
    assert_ne!(
        own, host,
        "a container without --net-host has its own netns"
    );

    // --net-host: the host's.
    assert_eq!(netns_inside(&c, &["--net-host"]), host);

    // --with-ns network:PATH: the one named.
    let name = berth_tests::unique_id("cc-withns");
    c.fx.guard.netns(&name);
    let o = run_timeout(
        std::process::Command::new(&ip).args(["netns", "add", &name]),
        Duration::from_secs(10),
    );
    ok(&o, "ip netns add");
    let path = Path::new("/run/netns").join(&name);
    let inode = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("netns file");
    let with = netns_inside(&c, &["--with-ns", &format!("network:{}", path.display())]);
    assert_eq!(with, format!("net:[{inode}]"));
    // The netns is the test's own: remove it, then nothing of the containers may be left.
    ok(
        &run_timeout(
            std::process::Command::new(&ip).args(["netns", "del", &name]),
            Duration::from_secs(10),
        ),
        "ip netns del",
    );
    c.fx.guard.assert_clean();
}
