//! Helpers shared by the berth-shim integration tests (included with `#[path]` by each
//! `shim_*.rs`; compiled alone it has no tests). A [`ShimFixture`] owns one container's
//! dirs, its shim and a cleanup [`Guard`] that kills, deletes and checks everything the
//! test started, even when the test panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_proto::shim::shim_client::ShimClient;
use berth_proto::shim::{event::Kind, CreateRequest, Event, EventsRequest, Stdio};
use berth_tests::bundle::{busybox_bundle, Bundle};
use berth_tests::{Guard, TestDir};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// Debian's runc: the shim tests do not depend on berth-runc. Set `BERTH_SHIM_TEST_RUNTIME`
/// to drive another runtime (e.g. target/debug/berth-runc) through the same tests.
pub const RUNC: &str = "/usr/sbin/runc";

/// The runtime the shim drives in these tests.
pub fn runtime() -> String {
    std::env::var("BERTH_SHIM_TEST_RUNTIME").unwrap_or_else(|_| RUNC.to_string())
}
/// Per-call timeout of the test client.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// One container's test setup. Field order matters: the guard cleans up before the dir goes.
pub struct ShimFixture {
    pub guard: Guard,
    pub bundle: Bundle,
    pub state: PathBuf,
    pub runtime_root: PathBuf,
    pub namespace: String,
    pub id: String,
    pub dir: TestDir,
}

impl ShimFixture {
    /// A busybox bundle running `args`, a state dir and a runc root, all below a TestDir.
    /// Cleanup: `runc delete --force`, the cgroup (checked gone), the rootfs mount.
    pub fn new(name: &str, args: &[&str]) -> ShimFixture {
        let dir = TestDir::new(name);
        let bundle = busybox_bundle(&dir.join("b"), args);
        let state = dir.subdir("st");
        let runtime_root = dir.subdir("runc");
        let id = berth_tests::unique_id(name);
        let guard = Guard::new();
        let (root, cid) = (runtime_root.clone(), id.clone());
        guard.on_cleanup("runc delete --force", move || {
            let _ = Command::new(runtime())
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &cid])
                .output();
        });
        guard.cgroup(bundle.cgroups_path());
        guard.mount(bundle.rootfs.clone());
        // Removed (and checked gone) by the guard, not only by TestDir's drop.
        guard.dir(dir.path().to_path_buf());
        ShimFixture {
            guard,
            bundle,
            state,
            runtime_root,
            namespace: format!("ns-{}", std::process::id()),
            id,
            dir,
        }
    }

    /// The `berth-shim` arguments after the subcommand.
    pub fn shim_args(&self) -> Vec<String> {
        vec![
            "--namespace".into(),
            self.namespace.clone(),
            "--id".into(),
            self.id.clone(),
            "--bundle".into(),
            self.bundle.path.display().to_string(),
            "--state".into(),
            self.state.display().to_string(),
            "--runtime".into(),
            runtime(),
            "--runtime-root".into(),
            self.runtime_root.display().to_string(),
        ]
    }

    /// `berth-shim start`: returns the socket path; the shim's pid is registered with the guard.
    pub fn start_shim(&self) -> PathBuf {
        let out = Command::new(berth_tests::bin("berth-shim"))
            .arg("start")
            .args(self.shim_args())
            .args(["--address", "/nonexistent/berthd.sock"])
            .output()
            .expect("running berth-shim start");
        assert!(
            out.status.success(),
            "berth-shim start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let pid = self.shim_pid().expect("shim.pid written");
        self.guard.pid(pid);
        socket_of(&addr)
    }

    /// The pid in `<bundle>/shim.pid`.
    pub fn shim_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.bundle.path.join("shim.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// A file in the test dir that a process can write its output to.
    pub fn out_file(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, b"").expect("creating output file");
        p
    }

    /// A Create request with stdout/stderr to files.
    pub fn create_req(&self, stdout: &Path) -> CreateRequest {
        CreateRequest {
            id: self.id.clone(),
            bundle: self.bundle.path.display().to_string(),
            rootfs: vec![],
            stdio: Some(Stdio {
                stdin: String::new(),
                stdout: stdout.display().to_string(),
                stderr: stdout.display().to_string(),
                terminal: false,
            }),
            no_pivot: false,
        }
    }

    /// Remove the runc state and check nothing the test registered is left.
    pub fn finish(self) {
        let left = self.guard.cleanup();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

/// The socket path of a `unix://` address.
pub fn socket_of(addr: &str) -> PathBuf {
    PathBuf::from(addr.trim().trim_start_matches("unix://"))
}

/// A shim client over the unix socket.
pub async fn connect(socket: &Path) -> ShimClient<Channel> {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]")
        .expect("endpoint")
        .timeout(RPC_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .expect("connecting to the shim");
    ShimClient::new(channel)
}

/// A shim client with no per-call timeout (for event streams and long waits).
pub async fn connect_stream(socket: &Path) -> ShimClient<Channel> {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .expect("connecting to the shim");
    ShimClient::new(channel)
}

/// Open `Events(after_seq)`.
pub async fn events(socket: &Path, after_seq: u64) -> Streaming<Event> {
    connect_stream(socket)
        .await
        .events(EventsRequest { after_seq })
        .await
        .expect("Events")
        .into_inner()
}

/// The next event within `wait`, or None.
pub async fn next_event(s: &mut Streaming<Event>, wait: Duration) -> Option<Event> {
    match tokio::time::timeout(wait, s.message()).await {
        Ok(Ok(Some(ev))) => Some(ev),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => panic!("event stream error: {e}"),
        Err(_) => None,
    }
}

/// A short name of an event's kind.
pub fn kind_name(ev: &Event) -> &'static str {
    match &ev.kind {
        Some(Kind::Created(_)) => "created",
        Some(Kind::Started(_)) => "started",
        Some(Kind::Exited(_)) => "exited",
        Some(Kind::Oom(_)) => "oom",
        Some(Kind::ExecAdded(_)) => "exec-added",
        Some(Kind::ExecStarted(_)) => "exec-started",
        Some(Kind::Paused(_)) => "paused",
        Some(Kind::Resumed(_)) => "resumed",
        Some(Kind::Deleted(_)) => "deleted",
        None => "none",
    }
}

/// Collect events until `until` names one (inclusive) or `wait` passes with nothing new.
pub async fn collect_until(s: &mut Streaming<Event>, until: &str, wait: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(ev) = next_event(s, wait).await {
        let done = kind_name(&ev) == until;
        out.push(ev);
        if done {
            break;
        }
    }
    out
}

/// The kinds of a list of events.
pub fn kinds(evs: &[Event]) -> Vec<&'static str> {
    evs.iter().map(kind_name).collect()
}

/// An OCI process spec for an exec.
pub fn process_json(args: &[&str], terminal: bool) -> Vec<u8> {
    serde_json::json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
    })
    .to_string()
    .into_bytes()
}

/// Wait until `f` is true or the timeout passes.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
