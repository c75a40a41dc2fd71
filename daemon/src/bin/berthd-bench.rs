//! berthd-bench: figures for berthd (not a test). Starts a private berthd (and its shims) from the binaries next to
//! this one, on temp dirs, and prints:
//! - idle RSS of berthd, and RSS with N running containers;
//! - exit-to-subscriber latency (median, p90): SIGKILL a container's init, time until `/tasks/exit` arrives on an
//!   Events.Subscribe stream (also from the event's `exited_at`, i.e. the shim's reaping time);
//! - recovery time with M live containers: SIGKILL berthd, restart it, time until every task is listed RUNNING
//!   (and berthd's own "task recovery complete" figure).
//!
//! Build with `cargo build --release -p berth-daemon -p berth-shim`, run as root:
//! `target/release/berthd-bench [--containers 50] [--recovery 100] [--samples 30] [--runtime /usr/sbin/runc]`.
//! It cleans up everything it started (containers, shims, berthd, dirs) and never touches anything else.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use berth_proto::containerd_client::events::TaskExit;
use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::tasks_client::TasksClient;
use berth_proto::containerd_client::services::v1::*;
use clap::Parser;
use prost::Message;
use tonic::transport::{Channel, Endpoint};

/// Measure berthd's memory, event latency and recovery time.
#[derive(Debug, Parser)]
#[command(name = "berthd-bench")]
struct Args {
    /// Running containers for the RSS figure.
    #[arg(long, default_value_t = 50)]
    containers: usize,
    /// Live containers for the recovery figure.
    #[arg(long, default_value_t = 100)]
    recovery: usize,
    /// Exit-latency samples (each kills one container).
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// OCI runtime the shims drive.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// Work dir (default /tmp/berthd-bench-<pid>); removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the state dir on the work dir's file system instead of a private tmpfs (/run is a tmpfs on a normal
    /// host, but not on every one: this machine's is on disk). The shims' event journals and berthd's,
    /// `<state>/events/`, are never fsynced, so the two should differ little; the root dir, with meta.redb, stays
    /// on the work dir's disk either way.
    #[arg(long)]
    state_on_disk: bool,
}

const NS: &str = "bench";

struct Berthd {
    child: Option<Child>,
    dir: PathBuf,
    bin: PathBuf,
}

impl Berthd {
    fn address(&self) -> PathBuf {
        self.dir.join("b.sock")
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("berthd.log"))?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--state")
            .arg(self.dir.join("state"))
            .arg("--address")
            .arg(self.address())
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.address()).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "berthd did not answer; see {}",
                    self.dir.join("berthd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let _ = c.wait();
        }
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(NS),
    );
    r
}

async fn connect(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_path_buf();
    Ok(Endpoint::try_from("http://[::]")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await?)
}

fn make_rootfs(dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copying /bin/busybox")?;
    for a in ["sh", "sleep", "true"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
    }
    Ok(rootfs)
}

fn spec(rootfs: &Path, id: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0},
            "args": ["sleep", "100000"], "cwd": "/",
            "env": ["PATH=/bin"],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs.display().to_string(), "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "linux": {
            "cgroupsPath": format!("/berthd-bench/{id}"),
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

struct Clients {
    tasks: TasksClient<Channel>,
    containers: ContainersClient<Channel>,
}

async fn run_container(c: &mut Clients, rootfs: &Path, id: &str) -> anyhow::Result<u32> {
    c.containers
        .create(req(CreateContainerRequest {
            container: Some(Container {
                id: id.to_string(),
                runtime: Some(Runtime {
                    name: "io.containerd.runc.v2".into(),
                    options: None,
                }),
                spec: Some(prost_types::Any {
                    type_url: berth_proto::SPEC_TYPE_URL.into(),
                    value: spec(rootfs, id),
                }),
                ..Default::default()
            }),
        }))
        .await?;
    c.tasks
        .create(req(CreateTaskRequest {
            container_id: id.to_string(),
            ..Default::default()
        }))
        .await?;
    Ok(c.tasks
        .start(req(StartRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await?
        .into_inner()
        .pid)
}

async fn remove_all(c: &mut Clients) {
    let Ok(list) = c.tasks.list(req(ListTasksRequest::default())).await else {
        return;
    };
    for t in list.into_inner().tasks {
        let id = t.id.clone();
        let _ = c
            .tasks
            .kill(req(KillRequest {
                container_id: id.clone(),
                signal: 9,
                all: true,
                ..Default::default()
            }))
            .await;
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            c.tasks.wait(req(WaitRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            })),
        )
        .await;
        let _ = c
            .tasks
            .delete(req(DeleteTaskRequest {
                container_id: id.clone(),
            }))
            .await;
    }
    if let Ok(list) = c
        .containers
        .list(req(ListContainersRequest::default()))
        .await
    {
        for ctr in list.into_inner().containers {
            let _ = c
                .containers
                .delete(req(DeleteContainerRequest { id: ctr.id }))
                .await;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn bench(args: &Args, d: &mut Berthd, rootfs: &Path) -> anyhow::Result<()> {
    d.start()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("berthd idle RSS: {} KiB", rss_kib(d.pid()));

    let ch = connect(&d.address()).await?;
    let mut c = Clients {
        tasks: TasksClient::new(ch.clone()),
        containers: ContainersClient::new(ch),
    };
    let mut pids = Vec::new();
    let t0 = Instant::now();
    for i in 0..args.containers {
        pids.push((
            format!("b{i}"),
            run_container(&mut c, rootfs, &format!("b{i}")).await?,
        ));
    }
    println!(
        "started {} containers in {:.1} s",
        args.containers,
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "berthd RSS with {} running containers: {} KiB",
        args.containers,
        rss_kib(d.pid())
    );

    // Exit latency: a subscriber on its own connection; SIGKILL inits one at a time.
    let mut events = EventsClient::new(connect(&d.address()).await?)
        .subscribe(req(SubscribeRequest {
            filters: vec!["topic==\"/tasks/exit\"".into()],
        }))
        .await?
        .into_inner();
    let mut from_kill = Vec::new();
    let mut from_exit = Vec::new();
    for i in 0..args.samples {
        let id = format!("l{i}");
        let pid = run_container(&mut c, rootfs, &id).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        loop {
            let env = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .context("no exit event within 10 s")??
                .context("event stream ended")?;
            let Some(any) = env.event else { continue };
            let Ok(exit) = TaskExit::decode(any.value.as_slice()) else {
                continue;
            };
            if exit.container_id != id {
                continue;
            }
            let received = now_secs();
            from_kill.push(t.elapsed().as_secs_f64() * 1000.0);
            if let Some(at) = exit.exited_at {
                from_exit.push((received - (at.seconds as f64 + at.nanos as f64 / 1e9)) * 1000.0);
            }
            break;
        }
        let _ = c
            .tasks
            .delete(req(DeleteTaskRequest {
                container_id: id.clone(),
            }))
            .await;
        let _ = c
            .containers
            .delete(req(DeleteContainerRequest { id }))
            .await;
    }
    from_kill.sort_by(|a, b| a.total_cmp(b));
    from_exit.sort_by(|a, b| a.total_cmp(b));
    println!(
        "exit-to-subscriber latency over {} samples: median {:.2} ms (p90 {:.2} ms) from SIGKILL; \
         median {:.2} ms (p90 {:.2} ms) from the shim's exited_at",
        from_kill.len(),
        percentile(&from_kill, 0.5),
        percentile(&from_kill, 0.9),
        percentile(&from_exit, 0.5),
        percentile(&from_exit, 0.9)
    );

    // Recovery: top up to N live containers, SIGKILL berthd, restart, time until all are listed RUNNING.
    for i in args.containers..args.recovery {
        run_container(&mut c, rootfs, &format!("b{i}")).await?;
    }
    drop(c);
    d.signal(nix::sys::signal::Signal::SIGKILL);
    let t = Instant::now();
    d.start()?;
    let socket_up = t.elapsed();
    let ch = connect(&d.address()).await?;
    let mut c = Clients {
        tasks: TasksClient::new(ch.clone()),
        containers: ContainersClient::new(ch),
    };
    loop {
        let list = c
            .tasks
            .list(req(ListTasksRequest::default()))
            .await?
            .into_inner();
        let running = list.tasks.iter().filter(|t| t.status == 2).count();
        if running >= args.recovery {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {running} of {} tasks RUNNING after 60 s",
                args.recovery
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let all_listed = t.elapsed();
    let log = std::fs::read_to_string(d.dir.join("berthd.log")).unwrap_or_default();
    let own = log
        .lines()
        .rev()
        .find(|l| l.contains("task recovery complete"))
        .and_then(|l| l.split("took_ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    println!(
        "recovery of {} live containers: socket up after {:.1} ms, all RUNNING in Tasks.List after {:.1} ms \
         (berthd's own figure: {} ms)",
        args.recovery,
        socket_up.as_secs_f64() * 1000.0,
        all_listed.as_secs_f64() * 1000.0,
        own
    );
    remove_all(&mut c).await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let bindir = exe
        .parent()
        .context("bench binary has no directory")?
        .to_path_buf();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/berthd-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "runtime_binary = {:?}\nshim_binary = {:?}\n",
            args.runtime.display().to_string(),
            bindir.join("berth-shim").display().to_string()
        ),
    )?;
    let rootfs = make_rootfs(&dir)?;
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    let tmpfs = !args.state_on_disk;
    if tmpfs {
        nix::mount::mount(
            Some("tmpfs"),
            &state,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=0711"),
        )
        .context("mounting a tmpfs for the state dir")?;
    }
    println!(
        "state dir {} ({})",
        state.display(),
        if tmpfs { "tmpfs, like /run" } else { "on disk" }
    );
    let mut d = Berthd {
        child: None,
        dir: dir.clone(),
        bin: bindir.join("berthd"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(bench(&args, &mut d, &rootfs));
    if result.is_err() {
        // Best-effort cleanup of whatever is still running.
        let _ = rt.block_on(async {
            if d.child.is_none() {
                d.start()?;
            }
            let ch = connect(&d.address()).await?;
            let mut c = Clients {
                tasks: TasksClient::new(ch.clone()),
                containers: ContainersClient::new(ch),
            };
            remove_all(&mut c).await;
            anyhow::Ok(())
        });
    }
    d.signal(nix::sys::signal::Signal::SIGTERM);
    if tmpfs {
        let _ = nix::mount::umount2(&state, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&dir);
    // runc removes each container's cgroup; remove the bench's parent cgroup dirs too.
    if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in ctrls.flatten() {
            let _ = std::fs::remove_dir(c.path().join("berthd-bench"));
        }
    }
    result
}
