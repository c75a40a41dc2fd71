//! The fault suite's berthd: a [`NetFixture`] (its own bridge, subnet, CNI dirs; leak checks for veths,
//! netns, iptables rules, IPAM and cache) whose `--root` is a size-limited tmpfs mounted here, a loopback
//! registry with the busybox image, and restarts that say how long berthd took to answer again.
//! This module must never unmount or remove anything but the tmpfs it mounted (through the guard).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::tasks_client::TasksClient;
use berth_proto::containerd_client::services::v1::version_client::VersionClient;
use berth_proto::containerd_client::services::v1::{ListContainersRequest, ListTasksRequest};
use nix::mount::MsFlags;
use tonic::transport::Channel;

use crate::net_fixture::NetFixture;
use crate::oci_layout::{busybox_layout, OciLayout};
use crate::registry::Registry;
use crate::transfer::{PullOptions, Transfer};

/// Size of the tmpfs given to berthd as `--root`: room for the images and containers of the run, small
/// enough to fill in a moment.
pub const ROOT_MIB: u64 = 160;

/// How long berthd may take, after a restart, to answer Version, Containers.List and Tasks.List.
pub const ANSWER_BOUND: Duration = Duration::from_secs(30);

/// berthd, its registry and the image the load runs.
pub struct Rig {
    /// berthd with networks; dropped first (stops berthd, cleans up, checks the host).
    pub nf: NetFixture,
    /// The loopback registry.
    pub registry: Registry,
    /// berthd's `--root` (a tmpfs of [`ROOT_MIB`]).
    pub root: PathBuf,
    /// The busybox image's reference in the registry.
    pub image: String,
    /// Its top layer's chain id (the parent of every container snapshot).
    pub chain: String,
    /// The busybox layout pushed.
    pub layout: OciLayout,
}

/// Mount a tmpfs of `mib` MiB at `dir` (mode 0700, like berthd's root).
pub fn mount_tmpfs(dir: &Path, mib: u64) {
    std::fs::create_dir_all(dir).expect("tmpfs mount point");
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={mib}m,mode=0700").as_str()),
    )
    .unwrap_or_else(|e| panic!("mount tmpfs at {}: {e}", dir.display()));
}

impl Rig {
    /// A berthd for test `name` on a tmpfs root, with the busybox image pushed to a loopback registry (not
    /// yet pulled). `None` when the registry is not installed (a skip; a failure under CI).
    pub fn start(name: &str) -> Option<Rig> {
        let root_of = |dir: &Path| dir.join("root");
        let nf = NetFixture::with_setup(name, "", "", None, |dir| {
            mount_tmpfs(&root_of(dir.path()), ROOT_MIB)
        });
        let root = root_of(nf.fx.dir.path());
        nf.fx.guard.mount(&root);
        let registry = Registry::start(nf.fx.dir.path())?;
        let layout = busybox_layout(&nf.fx.dir.join("busybox-layout"));
        registry.push_oci_layout(&layout.path, "fault/busybox:latest");
        let image = registry.reference("fault/busybox:latest");
        let chain = berth_image_chain(&layout.diff_ids);
        Some(Rig {
            nf,
            registry,
            root,
            image,
            chain,
            layout,
        })
    }

    /// berthd's socket.
    pub fn address(&self) -> PathBuf {
        self.nf.fx.daemon.address().to_path_buf()
    }

    /// The namespace of the run.
    pub fn ns(&self) -> &str {
        &self.nf.fx.ns
    }

    /// berthd's `--state`.
    pub fn state(&self) -> PathBuf {
        self.nf.fx.daemon.state().to_path_buf()
    }

    /// Pull `reference` through Transfer (as ctr 2.x), unpacked.
    pub async fn pull(&self, reference: &str) -> Result<(), tonic::Status> {
        let ch = connect(&self.address()).await?;
        Transfer::new(ch, self.ns())
            .pull(reference, &PullOptions::default())
            .await
            .map(|_| ())
    }

    /// Start berthd again (it must not be running) with `failpoints` in its config; returns how long it took
    /// to answer, or `None` when it died before answering (a failpoint that fires during startup).
    pub async fn start_berthd(&mut self, failpoints: &str) -> Option<Duration> {
        self.nf.write_config(failpoints);
        let t0 = Instant::now();
        let daemon = &mut self.nf.fx.daemon;
        // The harness panics when berthd exits before its socket answers; with a failpoint armed that is
        // an expected outcome, not a test failure.
        let started = tokio::task::block_in_place(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| daemon.start_again()))
        });
        if started.is_err() {
            return None;
        }
        if !failpoints.is_empty() {
            return Some(t0.elapsed());
        }
        match answers(&self.address(), self.ns(), ANSWER_BOUND).await {
            Ok(()) => Some(t0.elapsed()),
            Err(e) => panic!(
                "berthd did not answer within {ANSWER_BOUND:?} after a restart: {e}\nlog tail:\n{}",
                log_tail(&self.nf.fx.daemon.log(), 60)
            ),
        }
    }

    /// The pid of the running berthd.
    pub fn berthd_pid(&self) -> Option<i32> {
        self.nf.fx.daemon.pid()
    }
}

/// The last `n` lines of `log`.
pub fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The OCI chain id of `diff_ids` (base first).
fn berth_image_chain(diff_ids: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut chain = diff_ids.first().cloned().unwrap_or_default();
    for d in diff_ids.iter().skip(1) {
        chain = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{chain} {d}").as_bytes()))
        );
    }
    chain
}

/// A fresh channel to berthd (an error, not a panic, while it is down).
pub async fn connect(addr: &Path) -> Result<Channel, tonic::Status> {
    containerd_client::connect(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect {}: {e}", addr.display())))
}

/// Wait until berthd answers Version, Containers.List and Tasks.List in `ns`, at most `bound`.
pub async fn answers(addr: &Path, ns: &str, bound: Duration) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    let mut last = String::new();
    while Instant::now() < deadline {
        match try_answer(addr, ns).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

async fn try_answer(addr: &Path, ns: &str) -> Result<(), tonic::Status> {
    let ch = connect(addr).await?;
    let short = Some(Duration::from_secs(5));
    VersionClient::new(ch.clone())
        .version(crate::grpc::req_with(ns, (), short))
        .await?;
    ContainersClient::new(ch.clone())
        .list(crate::grpc::req_with(
            ns,
            ListContainersRequest::default(),
            short,
        ))
        .await?;
    TasksClient::new(ch)
        .list(crate::grpc::req_with(
            ns,
            ListTasksRequest::default(),
            short,
        ))
        .await?;
    Ok(())
}
