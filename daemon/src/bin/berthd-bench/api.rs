//! The containerd API calls the bench makes, identical on berthd and on containerd (same client, same spec:
//! only the daemons differ).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::tasks_client::TasksClient;
use berth_proto::containerd_client::services::v1::*;
use futures::StreamExt as _;
use tonic::transport::{Channel, Endpoint};

/// The namespace every bench container lives in (containerd's runc shims keep `/run/containerd/runc/<NS>`).
pub const NS: &str = "berthd-bench";

/// `Tasks.List` status of a running task.
const RUNNING: i32 = 2;

/// A request in the bench's namespace.
pub fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(NS),
    );
    r
}

/// A channel to a daemon's unix socket; `window` limits the HTTP/2 windows (a subscriber that never reads then
/// holds back the daemon after that many bytes, as a stalled client would).
pub async fn connect_with(path: &Path, window: Option<u32>) -> anyhow::Result<Channel> {
    let path = path.to_path_buf();
    let mut ep = Endpoint::try_from("http://[::]")?;
    if let Some(w) = window {
        ep = ep
            .initial_stream_window_size(w)
            .initial_connection_window_size(w);
    }
    ep.connect_with_connector(tower::service_fn(move |_| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        }
    }))
    .await
    .with_context(|| "connecting to the daemon")
}

/// A channel with default windows.
pub async fn connect(path: &Path) -> anyhow::Result<Channel> {
    connect_with(path, None).await
}

/// A minimal busybox rootfs shared read-only by every container of the run.
pub fn make_rootfs(dir: &Path) -> anyhow::Result<PathBuf> {
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

/// Clients of one daemon (cheap to clone: they share the channel).
#[derive(Clone)]
pub struct Clients {
    pub tasks: TasksClient<Channel>,
    pub containers: ContainersClient<Channel>,
    rootfs: PathBuf,
    /// Cgroup parent of the containers (one per bench run, so a leftover is easy to find).
    cgroup_parent: String,
}

impl Clients {
    pub fn new(ch: Channel, rootfs: &Path, cgroup_parent: &str) -> Clients {
        Clients {
            tasks: TasksClient::new(ch.clone()),
            containers: ContainersClient::new(ch),
            rootfs: rootfs.to_path_buf(),
            cgroup_parent: cgroup_parent.to_string(),
        }
    }

    fn spec(&self, id: &str) -> Vec<u8> {
        let v = serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": false, "user": {"uid": 0, "gid": 0},
                "args": ["sleep", "100000"], "cwd": "/",
                "env": ["PATH=/bin"],
                "noNewPrivileges": true
            },
            "root": {"path": self.rootfs.display().to_string(), "readonly": true},
            "hostname": "bench",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
            ],
            "linux": {
                "cgroupsPath": format!("/{}/{id}", self.cgroup_parent),
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"]
            }
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Create and start a `sleep` container; its init's host pid.
    pub async fn run(&mut self, id: &str) -> anyhow::Result<u32> {
        let spec = self.spec(id);
        self.containers
            .create(req(CreateContainerRequest {
                container: Some(Container {
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
                }),
            }))
            .await
            .with_context(|| format!("Containers.Create {id}"))?;
        self.tasks
            .create(req(CreateTaskRequest {
                container_id: id.to_string(),
                ..Default::default()
            }))
            .await
            .with_context(|| format!("Tasks.Create {id}"))?;
        Ok(self
            .tasks
            .start(req(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .with_context(|| format!("Tasks.Start {id}"))?
            .into_inner()
            .pid)
    }

    /// Start containers `prefix{from..to}`, `parallel` at a time.
    pub async fn run_many(
        &self,
        prefix: &str,
        from: usize,
        to: usize,
        parallel: usize,
    ) -> anyhow::Result<()> {
        let results: Vec<anyhow::Result<u32>> = futures::stream::iter(from..to)
            .map(|i| {
                let mut c = self.clone();
                let id = format!("{prefix}{i}");
                async move { c.run(&id).await }
            })
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }

    /// Delete an exited task and its container (errors ignored: cleanup).
    pub async fn delete(&mut self, id: &str) {
        let _ = self
            .tasks
            .delete(req(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await;
        let _ = self
            .containers
            .delete(req(DeleteContainerRequest { id: id.to_string() }))
            .await;
    }

    /// Kill, wait for and delete one task, then its container.
    async fn remove(&mut self, id: &str) {
        let _ = self
            .tasks
            .kill(req(KillRequest {
                container_id: id.to_string(),
                signal: 9,
                all: true,
                ..Default::default()
            }))
            .await;
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.tasks.wait(req(WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            })),
        )
        .await;
        self.delete(id).await;
    }

    /// Remove every task and container of the namespace, `parallel` at a time; how many containers are left.
    pub async fn remove_all(&self, parallel: usize) -> usize {
        let mut ids: Vec<String> = Vec::new();
        if let Ok(l) = self
            .clone()
            .tasks
            .list(req(ListTasksRequest::default()))
            .await
        {
            ids.extend(l.into_inner().tasks.into_iter().map(|t| t.id));
        }
        if let Ok(l) = self
            .clone()
            .containers
            .list(req(ListContainersRequest::default()))
            .await
        {
            for c in l.into_inner().containers {
                if !ids.contains(&c.id) {
                    ids.push(c.id);
                }
            }
        }
        futures::stream::iter(ids)
            .for_each_concurrent(parallel.max(1), |id| {
                let mut c = self.clone();
                async move { c.remove(&id).await }
            })
            .await;
        match self
            .clone()
            .containers
            .list(req(ListContainersRequest::default()))
            .await
        {
            Ok(l) => l.into_inner().containers.len(),
            Err(_) => usize::MAX,
        }
    }

    /// How many tasks `Tasks.List` shows RUNNING.
    pub async fn running(&mut self) -> anyhow::Result<usize> {
        let list = self
            .tasks
            .list(req(ListTasksRequest::default()))
            .await?
            .into_inner();
        Ok(list.tasks.iter().filter(|t| t.status == RUNNING).count())
    }

    /// Time of one `Tasks.List` and one `Tasks.Get` of `id`, in ms.
    pub async fn list_get_ms(&mut self, id: &str) -> anyhow::Result<(f64, f64)> {
        let t = Instant::now();
        self.tasks.list(req(ListTasksRequest::default())).await?;
        let list = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        self.tasks
            .get(req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await?;
        Ok((list, t.elapsed().as_secs_f64() * 1000.0))
    }
}
