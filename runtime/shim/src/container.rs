//! The container a shim supervises: shared state ([`Inner`]) and the init lifecycle
//! (Create, Start, Kill, Delete, Wait, Shutdown). Lifecycle calls are serialised by the
//! `ops` lock; the quick `st` lock is never held across `.await`. Exits are recorded by
//! [`crate::process::watch_exit`], which never takes `ops`, so no call can deadlock on an exit.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use berth_proto::shim::{event::Kind, CreateRequest, TaskCreated, TaskDeleted, TaskStarted};
use tokio::sync::watch;

use crate::args;
use crate::cgroup::Cgroups;
use crate::console::{ConsoleSocket, TermPaths};
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::mount;
use crate::process::{watch_exit, ExitRecord, Phase, Proc};
use crate::reaper::Reaper;
use crate::runtime::{ProcStdio, Runtime};
use crate::stdio;

/// How long Delete waits for a killed init's exit.
const DELETE_WAIT: Duration = Duration::from_secs(10);
/// How long Delete waits for the exits of execs the runtime killed.
const EXEC_DRAIN: Duration = Duration::from_secs(2);
/// How long after runc returned the console master may still be in flight.
const CONSOLE_WAIT: Duration = Duration::from_secs(5);

/// Mutable state; lock with [`Inner::state`], never across `.await`.
#[derive(Default)]
pub struct State {
    /// The container's init, once created.
    pub init: Option<Proc>,
    /// Exec processes by id.
    pub execs: HashMap<String, Proc>,
    /// Frozen by Pause.
    pub paused: bool,
    /// Init deleted: the shim's job is done.
    pub deleted: bool,
    /// Shutdown asked for: exit once deleted.
    pub shutdown: bool,
    /// The container's cgroups, found at create.
    pub cgroups: Option<Cgroups>,
}

/// Everything a shim knows; shared by the handlers and the tasks they spawn.
pub struct Inner {
    /// Container id.
    pub id: String,
    /// Its namespace.
    pub namespace: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// The shim's own socket.
    pub socket: PathBuf,
    /// The OCI runtime.
    pub runtime: Runtime,
    /// The one reaper.
    pub reaper: Reaper,
    /// The event journal.
    pub journal: Journal,
    ops: tokio::sync::Mutex<()>,
    st: Mutex<State>,
    console_seq: AtomicU32,
}

/// Read a pid file written by the runtime.
pub fn read_pid(path: &Path) -> Result<u32> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::path("reading pid file", path, e))?;
    s.trim()
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("bad pid file {}", path.display())))
}

impl Inner {
    /// A shim's state for one container.
    pub fn new(
        namespace: String,
        id: String,
        bundle: PathBuf,
        socket: PathBuf,
        runtime: Runtime,
        reaper: Reaper,
        journal: Journal,
    ) -> Self {
        Inner {
            id,
            namespace,
            bundle,
            socket,
            runtime,
            reaper,
            journal,
            ops: tokio::sync::Mutex::new(()),
            st: Mutex::new(State::default()),
            console_seq: AtomicU32::new(0),
        }
    }

    /// Lock the state (never across `.await`).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serialise a lifecycle operation.
    pub async fn op(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.ops.lock().await
    }

    /// A console socket path: `<bundle>/console.sock` (or beside the exec's files), or a
    /// short one under `<state>/s/` when that would exceed the unix path limit.
    pub fn console_path(&self, exec_id: &str) -> PathBuf {
        let p = if exec_id.is_empty() {
            self.bundle.join("console.sock")
        } else {
            self.bundle.join("execs").join(format!("{exec_id}.sock"))
        };
        if p.as_os_str().len() < 100 {
            return p;
        }
        let n = self.console_seq.fetch_add(1, Ordering::Relaxed);
        let mut name = self.socket.file_stem().unwrap_or_default().to_owned();
        name.push(format!("-c{n}.sock"));
        self.socket.with_file_name(name)
    }

    /// Open a process's stdio: direct fds, or (terminal) a console socket plus the paths
    /// the pty copies will use.
    pub async fn open_stdio(
        &self,
        proc: &mut Proc,
    ) -> Result<(ProcStdio, Option<(TermPaths, ConsoleSocket)>)> {
        // Held until this returns, when the process's own write ends are open.
        let _probes = stdio::wait_for_readers(&proc.stdio).await;
        if proc.stdio.terminal {
            let term = TermPaths::open(&proc.stdio, &mut proc.holders)?;
            let sock = ConsoleSocket::bind(self.console_path(&proc.exec_id))?;
            Ok((stdio::null_stdio()?, Some((term, sock))))
        } else {
            let (fds, holders) = stdio::open_direct(&proc.stdio)?;
            proc.holders = holders;
            Ok((fds, None))
        }
    }

    /// Run a runtime command that may send a pty master to `console`.
    pub async fn run_with_console(
        &self,
        args: Vec<std::ffi::OsString>,
        fds: ProcStdio,
        console: Option<&ConsoleSocket>,
    ) -> Result<Option<OwnedFd>> {
        let run = self.runtime.run(args, Some(fds));
        let Some(sock) = console else {
            run.await?;
            return Ok(None);
        };
        tokio::pin!(run);
        let recv = sock.receive();
        tokio::pin!(recv);
        let mut master = None;
        let res = loop {
            tokio::select! {
                r = &mut run => break r,
                m = &mut recv, if master.is_none() => master = Some(m?),
            }
        };
        res?;
        match master {
            Some(m) => Ok(Some(m)),
            None => tokio::time::timeout(CONSOLE_WAIT, recv)
                .await
                .map_err(|_| Error::FailedPrecondition("the runtime sent no pty master".into()))?
                .map(Some),
        }
    }

    /// Start the pty copies of a terminal process; returns the io-done receiver.
    pub fn start_console(
        proc: &mut Proc,
        term: Option<TermPaths>,
        master: Option<OwnedFd>,
    ) -> Result<Option<watch::Receiver<bool>>> {
        let (Some(term), Some(master)) = (term, master) else {
            // A CRI log is complete when its copies end: the exit waits for that as for a terminal.
            return Ok(proc.holders.crilog.as_ref().and_then(|l| l.done()));
        };
        let (tx, rx) = watch::channel(false);
        proc.console = Some(term.start(master, tx)?);
        Ok(Some(rx))
    }

    /// Create: check the bundle, open stdio, mount the rootfs, `runtime create`.
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<u32> {
        let _op = self.op().await;
        if !req.id.is_empty() && req.id != self.id {
            return Err(Error::InvalidArgument(format!(
                "container id {:?} is not this shim's ({:?})",
                req.id, self.id
            )));
        }
        if !req.bundle.is_empty() && Path::new(&req.bundle) != self.bundle {
            return Err(Error::InvalidArgument(format!(
                "bundle {} is not this shim's bundle {}",
                req.bundle,
                self.bundle.display()
            )));
        }
        let config = self.bundle.join("config.json");
        if !config.is_file() {
            return Err(Error::InvalidArgument(format!(
                "bad bundle: {} does not exist",
                config.display()
            )));
        }
        if self.state().init.is_some() {
            return Err(Error::AlreadyExists(format!(
                "container {} is already created",
                self.id
            )));
        }
        let mut proc = Proc::new("", req.stdio.clone().unwrap_or_default());
        let (fds, term) = self.open_stdio(&mut proc).await?;
        mount::mount_rootfs(&self.bundle, &req.rootfs)?;
        let pid_file = self.bundle.join("init.pid");
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(self.bundle.join("init.exit"));
        let _ = std::fs::remove_file(self.bundle.join(crate::restore::DELETED));
        let mut args = args!["create", "--bundle", &self.bundle, "--pid-file", &pid_file];
        if let Some((_, sock)) = &term {
            args.extend(args!["--console-socket", &sock.path]);
        }
        if req.no_pivot {
            args.push("--no-pivot".into());
        }
        args.push((&self.id).into());
        let (term, sock) = term.unzip();
        let master = match self.run_with_console(args, fds, sock.as_ref()).await {
            Ok(m) => m,
            Err(e) => {
                let _ = mount::unmount_rootfs(&self.bundle);
                return Err(e);
            }
        };
        drop(sock);
        let pid = match read_pid(&pid_file) {
            Ok(p) => p,
            Err(e) => {
                let _ = self
                    .runtime
                    .run(args!["delete", "--force", &self.id], None)
                    .await;
                let _ = mount::unmount_rootfs(&self.bundle);
                return Err(e);
            }
        };
        let exit = self.reaper.subscribe(pid as i32);
        proc.pid = pid;
        let io_done = match Self::start_console(&mut proc, term, master) {
            Ok(d) => d,
            Err(e) => {
                let _ = self
                    .runtime
                    .run(args!["delete", "--force", &self.id], None)
                    .await;
                let _ = mount::unmount_rootfs(&self.bundle);
                return Err(e);
            }
        };
        let gate = proc.gate.subscribe();
        let cgroups = Cgroups::of_pid(pid);
        if let Some(cg) = &cgroups {
            cg.watch_oom(self.journal.clone());
        }
        {
            let mut st = self.state();
            st.init = Some(proc);
            st.cgroups = cgroups;
        }
        // The watcher waits for the start gate, so it cannot journal the exit before this.
        watch_exit(self.clone(), String::new(), exit, gate, io_done);
        self.journal.emit(Kind::Created(TaskCreated {
            pid,
            bundle: self.bundle.to_string_lossy().into_owned(),
            stdio: req.stdio,
            rootfs: req.rootfs,
        }))?;
        crate::log!("created container {} pid {pid}", self.id);
        Ok(pid)
    }

    /// Let a process's exit be journaled (its start event, if any, is out).
    pub fn open_gate(&self, exec_id: &str) {
        let st = self.state();
        let p = if exec_id.is_empty() {
            st.init.as_ref()
        } else {
            st.execs.get(exec_id)
        };
        if let Some(p) = p {
            p.gate.send_replace(true);
        }
    }

    /// Start the init.
    pub async fn start_init(self: &Arc<Self>) -> Result<u32> {
        let _op = self.op().await;
        let pid = {
            let st = self.state();
            let p = st.init.as_ref().ok_or_else(|| not_created(&self.id))?;
            if p.phase != Phase::Created {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is already started",
                    self.id
                )));
            }
            p.pid
        };
        if let Err(e) = self.runtime.run(args!["start", &self.id], None).await {
            self.open_gate("");
            return Err(e);
        }
        if let Some(p) = self.state().init.as_mut() {
            if p.phase == Phase::Created {
                p.phase = Phase::Running;
            }
        }
        let res = self.journal.emit(Kind::Started(TaskStarted { pid }));
        self.open_gate("");
        res?;
        Ok(pid)
    }

    /// Kill the init (or every process with `all`).
    pub async fn kill_init(&self, signal: u32, all: bool) -> Result<()> {
        let phase = self
            .state()
            .init
            .as_ref()
            .map(|p| p.phase)
            .ok_or_else(|| not_created(&self.id))?;
        if phase == Phase::Stopped && !all {
            return Err(Error::NotFound(format!(
                "container {} init has already exited",
                self.id
            )));
        }
        let mut args = args!["kill"];
        if all {
            args.push("--all".into());
        }
        args.extend(args![&self.id, signal.to_string()]);
        let res = self.runtime.run(args, None).await;
        if phase == Phase::Created {
            self.open_gate("");
        }
        match res {
            Err(_) if phase == Phase::Stopped => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Delete the init: runtime delete, unmount, TaskDeleted; the shim's work is then done.
    pub async fn delete_init(self: &Arc<Self>) -> Result<ExitRecord> {
        let _op = self.op().await;
        let (phase, pid, mut exit, execs) = {
            let st = self.state();
            let p = st.init.as_ref().ok_or_else(|| not_created(&self.id))?;
            let execs: Vec<_> = st
                .execs
                .values()
                .filter(|e| e.phase == Phase::Running)
                .map(|e| e.exit.subscribe())
                .collect();
            (p.phase, p.pid, p.exit.subscribe(), execs)
        };
        if phase == Phase::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is running: kill it first",
                self.id
            )));
        }
        self.open_gate("");
        if let Err(e) = self
            .runtime
            .run(args!["delete", "--force", &self.id], None)
            .await
        {
            crate::log!("runtime delete: {e}");
        }
        let rec = match tokio::time::timeout(DELETE_WAIT, exit.wait_for(|e| e.is_some())).await {
            Ok(Ok(r)) => *r,
            _ => None,
        }
        .unwrap_or(ExitRecord {
            pid,
            status: 137,
            at: SystemTime::now(),
        });
        // The runtime killed what was left: journal those exec exits before TaskDeleted.
        let deadline = tokio::time::Instant::now() + EXEC_DRAIN;
        for mut rx in execs {
            let _ = tokio::time::timeout_at(deadline, rx.wait_for(|e| e.is_some())).await;
        }
        mount::unmount_rootfs(&self.bundle)?;
        self.journal.emit(Kind::Deleted(TaskDeleted {
            pid: rec.pid,
            exit_status: rec.status,
            exited_at: Some(crate::log::timestamp(rec.at)),
        }))?;
        // A shim started again on this bundle must not take the container for alive.
        let _ = std::fs::write(self.bundle.join(crate::restore::DELETED), b"");
        let shutdown = {
            let mut st = self.state();
            st.deleted = true;
            st.execs.clear();
            if let Some(p) = st.init.as_mut() {
                p.holders = Default::default();
                p.console = None;
            }
            st.shutdown
        };
        crate::log!("deleted container {}", self.id);
        if shutdown {
            self.exit_soon();
        }
        Ok(rec)
    }

    /// Wait for a process's exit (long poll).
    pub async fn wait(&self, exec_id: &str) -> Result<ExitRecord> {
        let mut rx = {
            let st = self.state();
            let p = if exec_id.is_empty() {
                st.init.as_ref().ok_or_else(|| not_created(&self.id))?
            } else {
                st.execs.get(exec_id).ok_or_else(|| no_exec(exec_id))?
            };
            p.exit.subscribe()
        };
        let r = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Error::NotFound(format!("process {exec_id:?} was deleted")))?;
        (*r).ok_or_else(|| Error::NotFound(format!("process {exec_id:?} was deleted")))
    }

    /// Shutdown: exit at once with `now` or when nothing is left to supervise, else after Delete.
    pub fn shutdown(&self, now: bool) {
        let done = {
            let mut st = self.state();
            st.shutdown = true;
            st.init.is_none() || st.deleted
        };
        if now || done {
            self.exit_soon();
        }
    }

    /// Exit the process shortly (after the current reply is sent), removing the socket.
    pub fn exit_soon(&self) {
        let socket = self.socket.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = std::fs::remove_file(&socket);
            crate::log!("shim exiting");
            std::process::exit(0);
        });
    }
}

/// NotFound for a container with no init yet.
pub fn not_created(id: &str) -> Error {
    Error::NotFound(format!("container {id} is not created"))
}

/// NotFound for an unknown exec id.
pub fn no_exec(exec_id: &str) -> Error {
    Error::NotFound(format!("exec {exec_id:?} not found"))
}
