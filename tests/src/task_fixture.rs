//! Helpers shared by the berthd task tests (`daemon_tasks_*.rs`, `daemon_ctr_*.rs`).
//!
//! A [`TaskFixture`] owns a berthd (berth-runc as the runtime, or `BERTH_TEST_RUNTIME=runc|berth-runc|PATH`,
//! via the config key `runtime_binary`), a cleanup
//! [`Guard`] that kills every shim and container the test started (also on panic) and checks they are gone, and
//! the test dir. Clients are containerd-client's, with the `containerd-namespace` header set per request.
//! This file has the fixture and the Tasks verbs; `events` what a subscriber sees ([`EventLog`]), `journal`
//! berthd's berth.v1 Journal and the shims' on-disk journals, `waits` the polling waits and pending Waits.
//!
//! Tests wait on conditions, never for a fixed time: [`TaskFixture::wait_status`], [`EventLog::wait_for`],
//! [`TaskFixture::journal_until`], [`eventually`] poll every [`POLL`] until a deadline and then fail naming what
//! did not happen. A fixed window is only right where nothing must happen ([`holds_for`], the quiet window of
//! [`TaskFixture::journal`]). This module must never wait longer than a caller's deadline nor hide a failure.

mod events;
mod journal;
mod waits;

pub use events::{describe, EventLog};
pub use journal::{journal_lines, JOURNAL_WAIT};
pub use waits::{assert_wait_pending, eventually, holds_for, wait_answer, PENDING, POLL};

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bundle::{busybox_bundle, Bundle};
use crate::{Daemon, DaemonConfig, Guard, TestDir};
use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::tasks_client::TasksClient;
use berth_proto::containerd_client::services::v1::*;
use berth_proto::containerd_client::types::v1::Status;
use tonic::transport::Channel;

/// The OCI runtime berth-shim drives in the daemon tests: berth-runc, or `BERTH_TEST_RUNTIME` (`runc` for
/// Debian's, `berth-runc`, or a path; see [`crate::runtime_from_env`]).
pub fn runtime() -> String {
    crate::runtime_from_env(crate::DAEMON_RUNTIME_ENV, "berth-runc")
}

/// A request with the namespace header.
pub fn req<T>(ns: &str, msg: T) -> tonic::Request<T> {
    crate::grpc::req_with(ns, msg, Some(Duration::from_secs(60)))
}

/// One test's berthd, its namespace and the cleanup of everything it starts.
/// Field order matters: berthd stops first, then the guard kills shims and containers, then the dir goes.
pub struct TaskFixture {
    pub daemon: Daemon,
    pub guard: Guard,
    pub ns: String,
    pub config_path: PathBuf,
    pub dir: TestDir,
}

/// Write berthd's config file (runtime, shim, failpoints).
pub fn write_config(path: &Path, failpoints: &str) {
    let text = format!(
        "runtime_binary = {:?}\nshim_binary = {:?}\nfailpoints = {:?}\n",
        runtime(),
        crate::bin("berth-shim").display().to_string(),
        failpoints
    );
    std::fs::write(path, text).expect("write config");
}

impl TaskFixture {
    /// Start berthd for test `name` with the given failpoints (`""` for none).
    pub fn new(name: &str, failpoints: &str) -> TaskFixture {
        let dir = TestDir::new(name);
        let config_path = dir.join("config.toml");
        write_config(&config_path, failpoints);
        let guard = Guard::new();
        let state = dir.join("state");
        let ns = crate::unique_id(&format!("{name}-ns"));
        // Containers made by ctr, berth run or CRI get cgroup `/<namespace>/<id>`: runc removes only the
        // container's dir, so the fixture removes its own namespace's.
        guard.cgroup_parent(format!("/{ns}"));
        let (st, ns2, rt) = (state.clone(), ns.clone(), runtime());
        // Kill every shim berthd started and force-delete the containers, whatever state the test left.
        guard.on_cleanup("kill shims and delete containers", move || {
            let tasks = st.join("tasks").join(&ns2);
            let runc_root = st.join("runc").join(&ns2);
            if let Ok(entries) = std::fs::read_dir(&tasks) {
                for e in entries.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    let _ = Command::new(&rt)
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["delete", "--force", &id])
                        .output();
                    if let Ok(pid) = std::fs::read_to_string(e.path().join("shim.pid")) {
                        if let Ok(pid) = pid.trim().parse::<i32>() {
                            crate::proc::kill(pid, nix::sys::signal::Signal::SIGKILL);
                            crate::proc::wait_dead(pid, Duration::from_secs(5));
                        }
                    }
                }
            }
        });
        let daemon = DaemonConfig::new(dir.path())
            .arg("--config")
            .arg(&config_path)
            .start();
        TaskFixture {
            daemon,
            guard,
            ns,
            config_path,
            dir,
        }
    }

    /// A channel to berthd.
    pub async fn channel(&self) -> Channel {
        self.daemon.channel().await
    }

    /// Tasks client.
    pub async fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel().await)
    }

    /// A busybox bundle running `args`, with its cgroup registered for cleanup.
    pub fn bundle(&self, name: &str, args: &[&str]) -> Bundle {
        let b = busybox_bundle(&self.dir.join(name), args);
        self.guard.cgroup(b.cgroups_path());
        b
    }

    /// Containers.Create for `id` with the bundle's spec (root.path absolute, like `ctr run --rootfs`).
    pub async fn create_container(&self, id: &str, bundle: &Bundle) {
        let mut spec = bundle.spec();
        spec["root"]["path"] = serde_json::Value::String(bundle.rootfs.display().to_string());
        self.create_container_raw(id, serde_json::to_vec(&spec).expect("json"))
            .await
            .expect("create container");
    }

    /// Containers.Create with raw spec bytes.
    pub async fn create_container_raw(&self, id: &str, spec: Vec<u8>) -> Result<(), tonic::Status> {
        let mut c = ContainersClient::new(self.channel().await);
        let container = Container {
            id: id.to_string(),
            runtime: Some(Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: berth_proto::SPEC_TYPE_URL.into(),
                value: spec,
            }),
            ..Default::default()
        };
        c.create(req(
            &self.ns,
            CreateContainerRequest {
                container: Some(container),
            },
        ))
        .await
        .map(|_| ())
    }

    /// Tasks.Create with the given stdio (FIFO paths or empty).
    pub async fn create_task(
        &self,
        id: &str,
        stdout: &str,
        stderr: &str,
    ) -> Result<u32, tonic::Status> {
        let mut t = self.tasks().await;
        t.create(req(
            &self.ns,
            CreateTaskRequest {
                container_id: id.into(),
                stdout: stdout.into(),
                stderr: stderr.into(),
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner().pid)
    }

    /// Container + task + Start; returns the init pid.
    pub async fn run(&self, id: &str, bundle: &Bundle) -> u32 {
        self.create_container(id, bundle).await;
        self.create_task(id, "", "").await.expect("create task");
        let mut t = self.tasks().await;
        let pid = t
            .start(req(
                &self.ns,
                StartRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
            ))
            .await
            .expect("start")
            .into_inner()
            .pid;
        self.guard.pid(pid as i32);
        pid
    }

    /// Tasks.Get of init or an exec.
    pub async fn get(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<berth_proto::containerd_client::types::v1::Process, tonic::Status> {
        let mut t = self.tasks().await;
        t.get(req(
            &self.ns,
            GetRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().process.unwrap_or_default())
    }

    /// Tasks.Wait.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<u32, tonic::Status> {
        let mut t = self.tasks().await;
        t.wait(req(
            &self.ns,
            WaitRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().exit_status)
    }

    /// Kill, wait, delete the task and the container (best effort).
    pub async fn kill_and_delete(&self, id: &str) {
        let mut t = self.tasks().await;
        let _ = t
            .kill(req(
                &self.ns,
                KillRequest {
                    container_id: id.into(),
                    signal: 9,
                    all: true,
                    ..Default::default()
                },
            ))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id, "")).await;
        let _ = t
            .delete(req(
                &self.ns,
                DeleteTaskRequest {
                    container_id: id.into(),
                },
            ))
            .await;
        let mut c = ContainersClient::new(self.channel().await);
        let _ = c
            .delete(req(&self.ns, DeleteContainerRequest { id: id.into() }))
            .await;
    }

    /// Delete a stopped task (which must succeed), then the container; then check that
    /// nothing the test registered is left.
    pub async fn delete_stopped_and_finish(&self, id: &str) {
        let mut t = self.tasks().await;
        t.delete(req(
            &self.ns,
            DeleteTaskRequest {
                container_id: id.into(),
            },
        ))
        .await
        .expect("delete the stopped task");
        self.kill_and_delete(id).await;
        self.guard.assert_clean();
    }

    /// Poll Get until the status is reached.
    pub async fn wait_status(&self, id: &str, status: Status, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.get(id, "").await;
            if let Ok(p) = &p {
                if p.status == status as i32 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never reached {status:?}: {p:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `ctr --address SOCK -n NS ARGS` (Debian's ctr against this berthd), run with a 120 s limit (pulls
    /// included).
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        crate::run_timeout(&mut self.ctr_command(args), Duration::from_secs(120))
    }

    /// `ctr --address SOCK -n NS ARGS`, not run.
    pub fn ctr_command(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.daemon.ctr();
        c.arg("-n").arg(&self.ns).args(args);
        c
    }

    /// The task's dir in berthd's state, `<state>/tasks/<ns>/<id>`: the shim's bundle.
    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.daemon.state().join("tasks").join(&self.ns).join(id)
    }

    /// The pid of the task's shim (its `shim.pid`).
    #[track_caller]
    pub fn shim_pid(&self, id: &str) -> i32 {
        let p = self.task_dir(id).join("shim.pid");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", p.display()))
    }

    /// Tasks.Start of init (`exec_id` "") or an exec; returns its pid.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, tonic::Status> {
        let mut t = self.tasks().await;
        t.start(req(
            &self.ns,
            StartRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().pid)
    }

    /// Tasks.Exec of `args` as `exec_id`, its stdout to `stdout` (a FIFO path, or "" for none).
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        args: &[&str],
        stdout: &str,
    ) -> Result<(), tonic::Status> {
        let mut t = self.tasks().await;
        t.exec(req(
            &self.ns,
            ExecProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                stdout: stdout.into(),
                spec: Some(exec_spec(args)),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ())
    }

    /// Tasks.Kill of init (`exec_id` "") or an exec with `signal` (not `all`).
    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), tonic::Status> {
        let mut t = self.tasks().await;
        t.kill(req(
            &self.ns,
            KillRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                signal,
                all: false,
            },
        ))
        .await
        .map(|_| ())
    }

    /// Tasks.Delete of the task.
    pub async fn delete_task(&self, id: &str) -> Result<DeleteResponse, tonic::Status> {
        let mut t = self.tasks().await;
        t.delete(req(
            &self.ns,
            DeleteTaskRequest {
                container_id: id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
    }
}

/// Make a FIFO and open its read end non-blocking (as ctr does before Tasks.Create).
pub fn fifo_reader(path: &Path) -> File {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open fifo read end")
}

/// Read from a non-blocking FIFO until `needle` shows up (or panic after `timeout`).
pub fn read_until(f: &mut File, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading fifo: {e}"),
        }
        let s = String::from_utf8_lossy(&out).into_owned();
        if s.contains(needle) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "never read {needle:?}; got {s:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// The OCI process JSON of an exec running `args`.
pub fn exec_spec(args: &[&str]) -> prost_types::Any {
    let p = serde_json::json!({
        "args": args,
        "cwd": "/",
        "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0},
        "terminal": false,
    });
    prost_types::Any {
        type_url: berth_proto::PROCESS_TYPE_URL.into(),
        value: serde_json::to_vec(&p).expect("json"),
    }
}
