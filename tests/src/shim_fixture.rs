//! Helpers shared by the berth-shim integration tests (`shim_*.rs`). A [`ShimFixture`] owns one container's
//! dirs, its shim and a cleanup [`Guard`] that kills, deletes and checks everything the
//! test started, even when the test panics.
//!
//! Tests never sleep to let something happen: they wait on the condition with [`eventually`] (or on an
//! event with [`expect_event`]); a fixed window is only for checking that nothing happens ([`holds_for`],
//! also used by the berthd task tests).

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bundle::{busybox_bundle, Bundle};
use crate::{Guard, TestDir};
use berth_proto::shim::shim_client::ShimClient;
use berth_proto::shim::{
    event::Kind, CloseIoRequest, CreateRequest, DeleteRequest, DeleteResponse, Event,
    EventsRequest, ExecRequest, KillRequest, ShutdownRequest, StartRequest, StateRequest,
    StateResponse, Stdio, WaitRequest, WaitResponse,
};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// Debian's runc: the shim tests do not depend on berth-runc. Set `BERTH_SHIM_TEST_RUNTIME=berth-runc`
/// to drive this workspace's runtime through the same tests (CI does both).
pub const RUNC: &str = "/usr/sbin/runc";

/// The runtime the shim drives in these tests: Debian's runc, or `BERTH_SHIM_TEST_RUNTIME`
/// (`runc`, `berth-runc` for this workspace's, or a path; see [`crate::runtime_from_env`]).
pub fn runtime() -> String {
    crate::runtime_from_env("BERTH_SHIM_TEST_RUNTIME", RUNC)
}
/// Per-call timeout of the test client.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`expect_event`] waits for the next event.
pub const EVENT_WAIT: Duration = Duration::from_secs(5);

/// A connected shim client.
pub type Client = ShimClient<Channel>;

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
        let id = crate::unique_id(name);
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

    /// `berth-shim SUB <shim_args> EXTRA...` checked to succeed, stdout returned: start, delete.
    #[track_caller]
    pub fn run_shim(&self, sub: &str, extra: &[&str]) -> String {
        // A match, not a closure, so that the panic points at the caller (#[track_caller]).
        let out = match Command::new(crate::bin("berth-shim"))
            .arg(sub)
            .args(self.shim_args())
            .args(extra)
            .output()
        {
            Ok(out) => out,
            Err(e) => panic!("running berth-shim {sub}: {e}"),
        };
        assert!(
            out.status.success(),
            "berth-shim {sub} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `berth-shim start`: returns the socket path; the shim's pid is registered with the guard.
    #[track_caller]
    pub fn start_shim(&self) -> PathBuf {
        let addr = self.run_shim("start", &["--address", "/nonexistent/berthd.sock"]);
        let pid = self.shim_pid().expect("shim.pid written");
        self.guard.pid(pid);
        socket_of(&addr)
    }

    /// [`ShimFixture::start_shim`] and a client on its socket: how nearly every test begins.
    pub async fn start_and_connect(&self) -> (PathBuf, Client) {
        let sock = self.start_shim();
        let c = connect(&sock).await;
        (sock, c)
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

    /// [`ShimFixture::create_req`] with its stdio changed by `edit` (stdin, terminal, ...).
    pub fn create_req_with(&self, stdout: &Path, edit: impl FnOnce(&mut Stdio)) -> CreateRequest {
        let mut req = self.create_req(stdout);
        edit(req.stdio.get_or_insert_with(Stdio::default));
        req
    }

    /// Create init from `req`; its pid goes to the guard so a failing test leaves nothing running.
    pub async fn create(&self, c: &mut Client, req: CreateRequest) -> u32 {
        let pid = c
            .create(req)
            .await
            .unwrap_or_else(|e| panic!("Create: {e}"))
            .into_inner()
            .pid;
        self.guard.pid(pid);
        pid
    }

    /// [`ShimFixture::create`] then Start of init: most tests want a running container.
    pub async fn create_start(&self, c: &mut Client, req: CreateRequest) -> u32 {
        let pid = self.create(c, req).await;
        start(c, "").await;
        pid
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
pub async fn connect(socket: &Path) -> Client {
    connect_with(socket, Some(RPC_TIMEOUT)).await
}

/// A shim client with no per-call timeout (for event streams and long waits).
pub async fn connect_stream(socket: &Path) -> Client {
    connect_with(socket, None).await
}

/// A shim client over the unix socket with an optional per-call timeout.
async fn connect_with(socket: &Path, timeout: Option<Duration>) -> Client {
    let path = socket.to_path_buf();
    let mut endpoint = Endpoint::try_from("http://[::]").expect("endpoint");
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    let channel = endpoint
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

/// The next event within [`EVENT_WAIT`]; panics naming the `what` that did not come.
pub async fn expect_event(s: &mut Streaming<Event>, what: &str) -> Event {
    next_event(s, EVENT_WAIT)
        .await
        .unwrap_or_else(|| panic!("no {what} event within {EVENT_WAIT:?}"))
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

/// "init" or "exec ID": names the process in the panic messages of the helpers below.
fn who(exec_id: &str) -> String {
    if exec_id.is_empty() {
        "init".to_string()
    } else {
        format!("exec {exec_id}")
    }
}

/// An Exec request running `args`, a terminal exactly when `stdio` asks for one.
pub fn exec_req(exec_id: &str, stdio: Stdio, args: &[&str]) -> ExecRequest {
    ExecRequest {
        exec_id: exec_id.into(),
        process_json: process_json(args, stdio.terminal),
        stdio: Some(stdio),
    }
}

/// Exec then Start of `req`'s exec id: the usual way to a running exec. Returns its pid.
pub async fn exec_start(c: &mut Client, req: ExecRequest) -> u32 {
    let exec_id = req.exec_id.clone();
    c.exec(req)
        .await
        .unwrap_or_else(|e| panic!("Exec of {exec_id}: {e}"));
    start(c, &exec_id).await
}

/// Start of init (`exec_id` "") or an exec; returns its pid.
pub async fn start(c: &mut Client, exec_id: &str) -> u32 {
    c.start(StartRequest {
        exec_id: exec_id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("Start of {}: {e}", who(exec_id)))
    .into_inner()
    .pid
}

/// A Kill request for one process (not `all`), for the calls expected to fail.
pub fn kill_req(exec_id: &str, signal: u32) -> KillRequest {
    KillRequest {
        exec_id: exec_id.into(),
        signal,
        all: false,
    }
}

/// Kill of init (`exec_id` "") or an exec with `signal`.
pub async fn kill(c: &mut Client, exec_id: &str, signal: u32) {
    c.kill(kill_req(exec_id, signal))
        .await
        .unwrap_or_else(|e| panic!("Kill of {} with {signal}: {e}", who(exec_id)));
}

/// Wait for init (`exec_id` "") or an exec to exit.
pub async fn wait(c: &mut Client, exec_id: &str) -> WaitResponse {
    c.wait(WaitRequest {
        exec_id: exec_id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("Wait for {}: {e}", who(exec_id)))
    .into_inner()
}

/// [`kill`] then [`wait`]: returns the exit status the signal led to.
pub async fn kill_wait(c: &mut Client, exec_id: &str, signal: u32) -> u32 {
    kill(c, exec_id, signal).await;
    wait(c, exec_id).await.exit_status
}

/// State of init (`exec_id` "") or an exec.
pub async fn state(c: &mut Client, exec_id: &str) -> StateResponse {
    c.state(StateRequest {
        exec_id: exec_id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("State of {}: {e}", who(exec_id)))
    .into_inner()
}

/// CloseIO of the stdin of init (`exec_id` "") or an exec: gives the process its EOF.
pub async fn close_stdin(c: &mut Client, exec_id: &str) {
    c.close_io(CloseIoRequest {
        exec_id: exec_id.into(),
        stdin: true,
    })
    .await
    .unwrap_or_else(|e| panic!("CloseIO of {}: {e}", who(exec_id)));
}

/// Delete of init (`exec_id` "") or an exec.
pub async fn delete(c: &mut Client, exec_id: &str) -> DeleteResponse {
    c.delete(DeleteRequest {
        exec_id: exec_id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("Delete of {}: {e}", who(exec_id)))
    .into_inner()
}

/// Graceful Shutdown (`now: false`): the shim exits once its container is deleted.
pub async fn shutdown(c: &mut Client) {
    c.shutdown(ShutdownRequest { now: false })
        .await
        .unwrap_or_else(|e| panic!("Shutdown: {e}"));
}

/// Delete of init then [`shutdown`]: how a test hands its shim back.
pub async fn delete_shutdown(c: &mut Client) {
    delete(c, "").await;
    shutdown(c).await;
}

/// A FIFO at `path` (mode 0600) for a process's stdio.
#[track_caller]
pub fn mkfifo(path: &Path) {
    if let Err(e) = nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        panic!("mkfifo {}: {e}", path.display());
    }
}

/// The read end of the FIFO at `path`, opened non-blocking (before Create, like ctr does).
#[track_caller]
pub fn open_fifo_reader(path: &Path) -> File {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => panic!("opening the fifo {}: {e}", path.display()),
    }
}

/// Append what can be read from `reader` right now to `text` (for polling a non-blocking FIFO).
pub fn read_available(reader: &mut File, text: &mut String) {
    let mut buf = [0u8; 256];
    if let Ok(n) = std::io::Read::read(reader, &mut buf) {
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// How often [`eventually`] and [`holds_for`] re-check their condition.
pub const POLL: Duration = Duration::from_millis(10);

/// Wait until `f` is true, checking every [`POLL`]; panics naming `what` when `timeout` passes first.
/// The way to wait for something to happen (never a fixed sleep).
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Check that `f` stays true for the whole `window`, every [`POLL`]; panics naming `what` at the first
/// check that fails. The way to assert that something does NOT happen: the window is the behaviour
/// under test, not a wait.
pub async fn holds_for(what: &str, window: Duration, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    let end = start + window;
    loop {
        assert!(f(), "{what} stopped holding after {:?}", start.elapsed());
        if tokio::time::Instant::now() >= end {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}
