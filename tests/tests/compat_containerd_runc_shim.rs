//! Black-box compatibility: Debian's containerd 1.6 and its runc shim (containerd-shim-runc-v2)
//! run containers with berth-runc as the runtime binary (`ctr run --runc-binary`), on a busybox
//! rootfs (`--rootfs`, no image). Each test has its own containerd (config, sockets, root and
//! state in its test dir) and namespace, and checks that nothing is left afterwards: no shim,
//! container process, cgroup, runc state dir or bundle. Root only; skips without containerd
//! (a failure under CI=true).
//!
//! What the shim makes berth-runc do, and what is checked of it: `create --bundle --pid-file`
//! and `start` (output, exit codes), `exec --process --detach --pid-file` (output, exit code, a
//! missing binary), `ps --format json` (`ctr t ps`), `pause`/`resume`, `update --resources=-`
//! (Tasks.Update), `kill` and `kill --all` (`ctr t rm -f`), `delete` and `delete --force`,
//! `--console-socket` for `run -t` and `exec -t`, a failing `create` whose JSON `--log`
//! error line ctr must show, containers from an image pulled by containerd (overlay rootfs from
//! its snapshotter), and `checkpoint`, which berth-runc refuses with one readable line.
//!
//! ctr's `--rootfs` spec has no PATH: commands are given as absolute paths.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use berth_tests::bundle::busybox_rootfs;
use berth_tests::containerd::Containerd;
use berth_tests::{bin, proc, require_root, run_timeout, tool, unique_id, Guard, TestDir};
use serde_json::Value;

/// One test's containerd, namespace and rootfs. Fields drop in order: the guard (container
/// processes, cgroups, state dirs), then containerd (shims, namespace state), then the dir.
struct Fx {
    guard: Guard,
    cd: Containerd,
    ns: String,
    runc: PathBuf,
    rootfs: PathBuf,
    fifo: PathBuf,
    dir: TestDir,
}

impl Fx {
    /// None (skipped) when not root or busybox/containerd/ctr are missing.
    fn new(name: &str) -> Option<Fx> {
        if !require_root() {
            return None;
        }
        tool("busybox")?;
        let runc = bin("berth-runc");
        let dir = TestDir::new(name);
        let cd = Containerd::start(dir.path())?;
        let ns = cd.namespace("bns");
        let rootfs = dir.join("rootfs");
        busybox_rootfs(&rootfs);
        let fifo = dir.subdir("fifo");
        Some(Fx {
            guard: Guard::new(),
            cd,
            ns,
            runc,
            rootfs,
            fifo,
            dir,
        })
    }

    /// A fresh container id; its cgroup, runc state dir and bundle are registered with the guard.
    fn container(&self, prefix: &str) -> String {
        let id = unique_id(prefix);
        self.guard
            .cgroup(format!("/{}/{id}", self.ns))
            .dir(self.runc_state(&id))
            .dir(self.cd.bundle_dir(&self.ns, &id));
        id
    }

    /// Where the shim tells berth-runc to keep `id`'s state (`--root` + id).
    fn runc_state(&self, id: &str) -> PathBuf {
        Containerd::runc_root(&self.ns).join(id)
    }

    /// `ctr --address A -n NS <args>` (60 s limit).
    fn ctr(&self, args: &[&str]) -> Output {
        let mut c = self.cd.ctr(&self.ns);
        c.args(args);
        run_timeout(&mut c, Duration::from_secs(60))
    }

    /// `ctr run <flags> --fifo-dir F --runc-binary berth-runc --rootfs R ID CMD...`.
    fn run(&self, flags: &[&str], id: &str, cmd: &[&str]) -> Output {
        let fifo = self.fifo.to_string_lossy().into_owned();
        let runc = self.runc.to_string_lossy().into_owned();
        let rootfs = self.rootfs.to_string_lossy().into_owned();
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[
            "--fifo-dir",
            &fifo,
            "--runc-binary",
            &runc,
            "--rootfs",
            &rootfs,
            id,
        ]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// `ctr run <flags> --fifo-dir F --runc-binary berth-runc IMAGE ID CMD...`.
    fn run_image(&self, flags: &[&str], image: &str, id: &str, cmd: &[&str]) -> Output {
        let fifo = self.fifo.to_string_lossy().into_owned();
        let runc = self.runc.to_string_lossy().into_owned();
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--fifo-dir", &fifo, "--runc-binary", &runc, image, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// `ctr t exec --fifo-dir F --exec-id E ID CMD...` (`-d` first when `detach`).
    fn exec(&self, id: &str, exec_id: &str, detach: bool, cmd: &[&str]) -> Output {
        let fifo = self.fifo.to_string_lossy().into_owned();
        let mut args = vec!["t", "exec"];
        if detach {
            args.push("-d");
        }
        args.extend_from_slice(&["--fifo-dir", &fifo, "--exec-id", exec_id, id]);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// `berth-runc --root <the shim's root> <args>`.
    fn berth_runc(&self, args: &[&str]) -> Output {
        let mut c = std::process::Command::new(&self.runc);
        c.arg("--root")
            .arg(Containerd::runc_root(&self.ns))
            .args(args);
        run_timeout(&mut c, Duration::from_secs(30))
    }

    /// Tasks.Update of task `id` with LinuxResources `resources`, straight over gRPC.
    #[track_caller]
    fn update(&self, id: &str, resources: Value) {
        use berth_proto::containerd_client::services::v1::tasks_client::TasksClient;
        use berth_proto::containerd_client::services::v1::UpdateTaskRequest;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let mut tasks = TasksClient::new(berth_tests::connect_unix(self.cd.address()).await);
            let request = UpdateTaskRequest {
                container_id: id.into(),
                resources: Some(prost_types::Any {
                    type_url: berth_proto::RESOURCES_TYPE_URL.into(),
                    value: serde_json::to_vec(&resources).expect("resources JSON"),
                }),
                ..Default::default()
            };
            tasks
                .update(berth_tests::grpc::req(&self.ns, request))
                .await
                .unwrap_or_else(|e| panic!("Tasks.Update {id} with {resources}: {e}"));
        });
    }

    /// The `(pid, STATUS)` of task `id` in `ctr t ls`, None when it is not listed.
    fn task(&self, id: &str) -> Option<(i32, String)> {
        let o = self.ctr(&["t", "ls"]);
        assert!(o.status.success(), "ctr t ls: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [tid, pid, status] if *tid == id => Some((pid.parse().ok()?, status.to_string())),
                _ => None,
            }
        })
    }

    /// Wait (10 s) until task `id` has `status` in `ctr t ls`.
    #[track_caller]
    fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.task(id);
            if t.as_ref().is_some_and(|(_, s)| s == status) {
                return;
            }
            assert!(Instant::now() < deadline, "task {id} never {status}: {t:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// After `id` was removed: within 10 s no shim of it, none of `pids`, no cgroup, runc
    /// state dir, bundle, shim socket or mount below the test dir is left, containerd lists neither a task nor a container, and the
    /// guard finds nothing.
    #[track_caller]
    fn assert_gone(&self, id: &str, pids: &[i32]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut left = Vec::new();
            for p in self.cd.shims_of(&self.ns, id) {
                left.push(format!("shim {p}"));
            }
            for &p in pids.iter().filter(|&&p| proc::alive(p)) {
                left.push(format!("process {p} ({})", proc::cmdline(p).join(" ")));
            }
            for d in berth_tests::guard::cgroup_dirs(&format!("/{}/{id}", self.ns)) {
                left.push(format!("cgroup {}", d.display()));
            }
            for m in berth_tests::mounts_below(self.dir.path()) {
                left.push(format!("mount {}", m.display()));
            }
            let shim_socket = self.cd.shim_socket(&self.ns, id);
            for p in [
                self.runc_state(id),
                self.cd.bundle_dir(&self.ns, id),
                shim_socket,
            ] {
                if p.symlink_metadata().is_ok() {
                    left.push(format!("{}", p.display()));
                }
            }
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left behind by {id}:\n  {}",
                left.join("\n  ")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(self.task(id), None, "task {id} still listed");
        let c = self.ctr(&["c", "ls", "-q"]);
        assert!(
            !String::from_utf8_lossy(&c.stdout)
                .lines()
                .any(|l| l.trim() == id),
            "container {id} still listed: {}",
            text(&c)
        );
        self.guard.assert_clean();
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn run_rm_prints_output_and_exit_code() {
    let Some(fx) = Fx::new("cd-shim-rm") else {
        return;
    };
    let id = fx.container("rm");
    let o = fx.run(&["--rm"], &id, &["/bin/sh", "-c", "echo hi; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n", "{}", text(&o));
    fx.assert_gone(&id, &[]);

    // stderr comes through the shim's stderr FIFO.
    let id = fx.container("rm-err");
    let o = fx.run(&["--rm"], &id, &["/bin/sh", "-c", "echo oops >&2; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("oops"),
        "{}",
        text(&o)
    );
    fx.assert_gone(&id, &[]);
}

#[test]
fn detached_task_lifecycle_through_the_runc_shim() {
    let Some(fx) = Fx::new("cd-shim-life") else {
        return;
    };
    let id = fx.container("life");
    let o = fx.run(&["-d"], &id, &["/bin/sleep", "1000"]);
    assert!(o.status.success(), "{}", text(&o));
    let (pid, status) = fx
        .task(&id)
        .unwrap_or_else(|| panic!("{id} not in ctr t ls"));
    assert_eq!(status, "RUNNING");
    fx.guard.pid(pid);
    let shims = fx.cd.shims_of(&fx.ns, &id);
    assert_eq!(shims.len(), 1, "one shim for {id}: {shims:?}");
    assert_eq!(proc::ppid(pid), Some(shims[0]), "init is the shim's child");
    assert!(
        fx.cd.shim_socket(&fx.ns, &id).exists(),
        "the shim's socket is where cleanup looks for it"
    );

    // berth-runc, not runc, created it: its state JSON under the root the shim passes, and
    // its own state.json format (runc writes no `init_start_time`).
    let st = fx.berth_runc(&["state", &id]);
    assert!(st.status.success(), "berth-runc state: {}", text(&st));
    let st: Value = serde_json::from_slice(&st.stdout).expect("state JSON");
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["pid"], pid, "{st}");
    assert_eq!(
        st["bundle"],
        fx.cd.bundle_dir(&fx.ns, &id).to_string_lossy().as_ref(),
        "{st}"
    );
    let saved = std::fs::read_to_string(fx.runc_state(&id).join("state.json"))
        .expect("berth-runc state.json");
    assert!(saved.contains("init_start_time"), "{saved}");
    // The shim keeps ctr's --runc-binary in the bundle's options.json.
    let options = std::fs::read_to_string(fx.cd.bundle_dir(&fx.ns, &id).join("options.json"))
        .expect("the shim's options.json");
    let options: Value = serde_json::from_str(&options).expect("options JSON");
    assert_eq!(
        options["binary_name"],
        fx.runc.to_string_lossy().as_ref(),
        "{options}"
    );

    // exec: output, exit code, a missing binary, a detached process listed by ps.
    let e = fx.exec(&id, "e1", false, &["/bin/sh", "-c", "echo ok"]);
    assert!(e.status.success(), "{}", text(&e));
    assert_eq!(String::from_utf8_lossy(&e.stdout), "ok\n", "{}", text(&e));
    let e = fx.exec(&id, "e2", false, &["/bin/sh", "-c", "exit 7"]);
    assert_eq!(e.status.code(), Some(7), "{}", text(&e));
    let e = fx.exec(&id, "e3", false, &["/no/such/exec"]);
    assert!(!e.status.success(), "{}", text(&e));
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.contains("OCI runtime exec failed") && err.contains("/no/such/exec"),
        "{}",
        text(&e)
    );
    let e = fx.exec(&id, "bg", true, &["/bin/sleep", "500"]);
    assert!(e.status.success(), "{}", text(&e));
    let ps = fx.ctr(&["t", "ps", &id]);
    assert!(ps.status.success(), "{}", text(&ps));
    let ps_out = String::from_utf8_lossy(&ps.stdout).into_owned();
    let pids: Vec<i32> = ps_out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "init and the detached exec: {ps_out}");
    assert!(pids.contains(&pid), "{ps_out}");
    assert!(ps_out.contains("ExecID:bg"), "{ps_out}");
    for &p in &pids {
        fx.guard.pid(p);
    }

    // pause / resume, seen by containerd and by berth-runc.
    let p = fx.ctr(&["t", "pause", &id]);
    assert!(p.status.success(), "{}", text(&p));
    fx.wait_status(&id, "PAUSED");
    let st = fx.berth_runc(&["state", &id]);
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("\"paused\""),
        "{}",
        text(&st)
    );
    let r = fx.ctr(&["t", "resume", &id]);
    assert!(r.status.success(), "{}", text(&r));
    fx.wait_status(&id, "RUNNING");

    // metrics: the shim reads the cgroups berth-runc put init in.
    let m = fx.ctr(&["t", "metrics", &id]);
    assert!(m.status.success(), "{}", text(&m));
    assert!(
        String::from_utf8_lossy(&m.stdout).contains("pids.current"),
        "{}",
        text(&m)
    );

    // Tasks.Update (ctr 1.6 has no command for it): the shim pipes the resources JSON to
    // `berth-runc update --resources=- ID`.
    let limit: u64 = 48 << 20;
    fx.update(
        &id,
        serde_json::json!({"memory": {"limit": limit}, "pids": {"limit": 77}}),
    );
    let cg = |ctrl: &str, file: &str| {
        let p = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(&fx.ns)
            .join(&id)
            .join(file);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        // v1 (or hybrid, as on the development machine).
        assert_eq!(cg("memory", "memory.limit_in_bytes"), limit.to_string());
        assert_eq!(cg("pids", "pids.max"), "77");
    } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(cg("", "memory.max"), limit.to_string());
        assert_eq!(cg("", "pids.max"), "77");
    }

    // kill, rm: everything goes.
    let k = fx.ctr(&["t", "kill", "-s", "KILL", &id]);
    assert!(k.status.success(), "{}", text(&k));
    fx.wait_status(&id, "STOPPED");
    for &p in &pids {
        assert!(
            proc::wait_dead(p, Duration::from_secs(10)),
            "{p} survived init's SIGKILL"
        );
    }
    let rm = fx.ctr(&["t", "rm", &id]);
    assert!(rm.status.success(), "{}", text(&rm));
    let crm = fx.ctr(&["c", "rm", &id]);
    assert!(crm.status.success(), "{}", text(&crm));
    fx.assert_gone(&id, &pids);

    // `ctr t rm -f` of a running task: the shim kills with `kill --all ID 9`, then deletes.
    let id = fx.container("force");
    let o = fx.run(&["-d"], &id, &["/bin/sleep", "1000"]);
    assert!(o.status.success(), "{}", text(&o));
    let (pid, _) = fx
        .task(&id)
        .unwrap_or_else(|| panic!("{id} not in ctr t ls"));
    fx.guard.pid(pid);
    let e = fx.exec(&id, "bg", true, &["/bin/sleep", "500"]);
    assert!(e.status.success(), "{}", text(&e));
    let rm = fx.ctr(&["t", "rm", "-f", &id]);
    assert!(rm.status.success(), "{}", text(&rm));
    let crm = fx.ctr(&["c", "rm", &id]);
    assert!(crm.status.success(), "{}", text(&crm));
    fx.assert_gone(&id, &[pid]);
}

#[test]
fn failing_start_reports_berth_runc_error() {
    let Some(fx) = Fx::new("cd-shim-fail") else {
        return;
    };
    let id = fx.container("fail");
    let o = fx.run(&["--rm"], &id, &["/no/such/binary"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // The shim reports the last error line berth-runc wrote to its --log (JSON).
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("OCI runtime create failed")
            && err.contains("exec /no/such/binary")
            && err.contains("No such file or directory"),
        "{}",
        text(&o)
    );
    assert!(o.stdout.is_empty(), "{}", text(&o));
    fx.assert_gone(&id, &[]);

    // A directory is not a program either (runc: permission denied).
    let id = fx.container("fail-dir");
    let o = fx.run(&["--rm"], &id, &["/bin"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("OCI runtime create failed") && err.contains("Permission denied"),
        "{}",
        text(&o)
    );
    fx.assert_gone(&id, &[]);

    // And the namespace still works afterwards.
    let id = fx.container("after");
    let o = fx.run(&["--rm"], &id, &["/bin/echo", "fine"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "fine\n", "{}", text(&o));
    fx.assert_gone(&id, &[]);
}

/// `ctr --address A -n NS <args>` run on a pseudo-terminal (util-linux's `script`: ctr -t
/// wants a real terminal on its stdin); `None` (skipped) without `script`.
fn ctr_on_tty(fx: &Fx, args: &[&str]) -> Option<Output> {
    let script = tool("script")?;
    let ctr = tool("ctr")?;
    let address = fx.cd.address().to_string_lossy().into_owned();
    let ctr = ctr.to_string_lossy().into_owned();
    let mut argv = vec![ctr.as_str(), "--address", &address, "-n", &fx.ns];
    argv.extend_from_slice(args);
    // `script -c` hands the line to a shell: quote every word.
    let line = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    Some(run_timeout(
        std::process::Command::new(script)
            .args(["-q", "-e", "-c"])
            .arg(&line)
            .arg("/dev/null"),
        Duration::from_secs(60),
    ))
}

#[test]
fn tty_run_and_exec_get_a_terminal() {
    let Some(fx) = Fx::new("cd-shim-tty") else {
        return;
    };
    let fifo = fx.fifo.to_string_lossy().into_owned();
    let runc = fx.runc.to_string_lossy().into_owned();
    let rootfs = fx.rootfs.to_string_lossy().into_owned();

    // run -t: init gets the pty berth-runc sends to the shim's --console-socket.
    let id = fx.container("tty");
    let Some(o) = ctr_on_tty(
        &fx,
        &[
            "run",
            "--rm",
            "-t",
            "--fifo-dir",
            &fifo,
            "--runc-binary",
            &runc,
            "--rootfs",
            &rootfs,
            &id,
            "/bin/sh",
            "-c",
            "tty; exit 4",
        ],
    ) else {
        return;
    };
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("/dev/pts/0"),
        "{}",
        text(&o)
    );
    fx.assert_gone(&id, &[]);

    // exec -t into a container without a terminal: `exec --console-socket`.
    let id = fx.container("tty-exec");
    let o = fx.run(&["-d"], &id, &["/bin/sleep", "1000"]);
    assert!(o.status.success(), "{}", text(&o));
    let (pid, _) = fx
        .task(&id)
        .unwrap_or_else(|| panic!("{id} not in ctr t ls"));
    fx.guard.pid(pid);
    let Some(o) = ctr_on_tty(
        &fx,
        &[
            "t",
            "exec",
            "-t",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "t1",
            &id,
            "/bin/sh",
            "-c",
            "tty; exit 6",
        ],
    ) else {
        return;
    };
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("/dev/pts/"),
        "{}",
        text(&o)
    );
    let k = fx.ctr(&["t", "kill", "-s", "KILL", &id]);
    assert!(k.status.success(), "{}", text(&k));
    fx.wait_status(&id, "STOPPED");
    let rm = fx.ctr(&["t", "rm", &id]);
    assert!(rm.status.success(), "{}", text(&rm));
    let crm = fx.ctr(&["c", "rm", &id]);
    assert!(crm.status.success(), "{}", text(&crm));
    fx.assert_gone(&id, &[pid]);
}

#[test]
fn image_run_and_checkpoint_refused() {
    let Some(fx) = Fx::new("cd-shim-img") else {
        return;
    };
    let Some(registry) = berth_tests::registry::Registry::start(fx.dir.path()) else {
        return;
    };
    let layout = berth_tests::oci_layout::busybox_layout(&fx.dir.join("layout"));
    registry.push_oci_layout(&layout.path, "busybox:latest");
    let image = registry.reference("busybox:latest");
    let o = fx.ctr(&["images", "pull", "--plain-http", &image]);
    assert!(o.status.success(), "{}", text(&o));

    // From the image: containerd's overlay snapshot is the rootfs, the image's PATH finds sh.
    let id = fx.container("img");
    let o = fx.run_image(&["--rm"], &image, &id, &["sh", "-c", "echo hi; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n", "{}", text(&o));
    fx.assert_gone(&id, &[]);

    // checkpoint: refused by berth-runc in one line naming the reason; the task keeps running.
    let id = fx.container("ckpt");
    let o = fx.run_image(&["-d"], &image, &id, &["sleep", "1000"]);
    assert!(o.status.success(), "{}", text(&o));
    let (pid, _) = fx
        .task(&id)
        .unwrap_or_else(|| panic!("{id} not in ctr t ls"));
    fx.guard.pid(pid);
    for flags in [&[][..], &["--exit"][..]] {
        let mut args = vec!["t", "checkpoint"];
        args.extend_from_slice(flags);
        args.push(&id);
        let o = fx.ctr(&args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {}", text(&o));
        assert!(
            err.contains("checkpoint/restore is not supported by berth-runc"),
            "{}",
            text(&o)
        );
        assert_eq!(fx.task(&id), Some((pid, "RUNNING".into())), "{flags:?}");
    }
    let k = fx.ctr(&["t", "kill", "-s", "KILL", &id]);
    assert!(k.status.success(), "{}", text(&k));
    fx.wait_status(&id, "STOPPED");
    let rm = fx.ctr(&["t", "rm", &id]);
    assert!(rm.status.success(), "{}", text(&rm));
    let crm = fx.ctr(&["c", "rm", &id]);
    assert!(crm.status.success(), "{}", text(&crm));
    fx.assert_gone(&id, &[pid]);
    let o = fx.ctr(&["images", "rm", "--sync", &image]);
    assert!(o.status.success(), "{}", text(&o));
}
