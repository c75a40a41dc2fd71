//! Start and stop `berthd` for one test: its own root, state dir and socket below the test's
//! dir, its log captured to a file and printed when the test fails.
//!
//! The daemon is stopped by its PID (SIGTERM, then SIGKILL after a grace period); this module
//! never signals anything else. It also never removes the root or state dir: the test's
//! `TestDir` does that, and a restart test reuses them.

use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::proc;

/// How to start berthd. Build with [`DaemonConfig::new`], adjust fields, then [`DaemonConfig::start`].
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The berthd binary (default: `berth_tests::bin("berthd")`).
    pub bin: PathBuf,
    /// `--root` (default `<dir>/root`).
    pub root: PathBuf,
    /// `--state` (default `<dir>/state`).
    pub state: PathBuf,
    /// `--address` (default `<dir>/state/berth.sock`).
    pub address: PathBuf,
    /// Log file for berthd's stdout and stderr (appended to, so restarts add to it).
    pub log: PathBuf,
    /// `--log-level` (default `debug`); `None` passes no flag.
    pub log_level: Option<String>,
    /// Extra arguments after the standard ones (`--config FILE`, network dirs, ...).
    /// Without a `--config` among them, berthd gets an empty config file of its own, so that a
    /// host's /etc/berth/config.toml never leaks into a test.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// How long to wait for the socket to accept connections.
    pub ready_timeout: Duration,
}

impl DaemonConfig {
    /// Defaults below `dir` (usually `TestDir::path()`). Panics if berthd is missing or stale.
    #[track_caller]
    pub fn new(dir: &Path) -> DaemonConfig {
        DaemonConfig {
            bin: crate::bin("berthd"),
            root: dir.join("root"),
            state: dir.join("state"),
            address: dir.join("state/berth.sock"),
            log: dir.join("berthd.log"),
            log_level: Some("debug".into()),
            args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(20),
        }
    }

    /// Add an extra argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Start berthd and wait until its socket accepts connections.
    #[track_caller]
    pub fn start(self) -> Daemon {
        let mut d = Daemon {
            config: self,
            child: None,
        };
        d.spawn();
        d
    }
}

/// A running berthd owned by a test. Dropping it stops it; when the test is panicking, its
/// log is printed to stderr first.
#[derive(Debug)]
pub struct Daemon {
    config: DaemonConfig,
    child: Option<Child>,
}

impl Daemon {
    /// Start berthd with the defaults of [`DaemonConfig::new`]`(dir)`.
    #[track_caller]
    pub fn start(dir: &Path) -> Daemon {
        DaemonConfig::new(dir).start()
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// The gRPC socket (`--address`).
    pub fn address(&self) -> &Path {
        &self.config.address
    }

    /// `--root`.
    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// `--state`.
    pub fn state(&self) -> &Path {
        &self.config.state
    }

    /// Its pid, if it is running (started and not yet stopped).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Everything berthd logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.config.log).unwrap_or_default()
    }

    /// A tonic channel to its socket.
    pub async fn channel(&self) -> tonic::transport::Channel {
        crate::connect_unix(&self.config.address).await
    }

    /// Debian's `ctr` preset with `--address <socket>`; add `-n NS` and the subcommand.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new(crate::find_tool("ctr").unwrap_or_else(|| "ctr".into()));
        c.arg("--address").arg(&self.config.address);
        c
    }

    #[track_caller]
    fn spawn(&mut self) {
        let c = &self.config;
        for d in [&c.root, &c.state] {
            std::fs::create_dir_all(d)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        if let Some(parent) = c.address.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&c.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", c.log.display()));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup log fd: {e}"));
        let mut cmd = Command::new(&c.bin);
        cmd.arg("--root")
            .arg(&c.root)
            .arg("--state")
            .arg(&c.state)
            .arg("--address")
            .arg(&c.address);
        if let Some(level) = &c.log_level {
            cmd.arg("--log-level").arg(level);
        }
        if !c
            .args
            .iter()
            .any(|a| a == "--config" || a.to_string_lossy().starts_with("--config="))
        {
            let empty = c.log.with_file_name("berthd-empty-config.toml");
            // Defaults, except the runtime when the test run names one (CI's second runtime).
            let mut text = String::from("# berth-tests: defaults only, never the host's config\n");
            if std::env::var_os(crate::DAEMON_RUNTIME_ENV).is_some() {
                let rt = crate::task_fixture::runtime();
                text.push_str(&format!("runtime_binary = {rt:?}\n"));
            }
            std::fs::write(&empty, text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", empty.display()));
            cmd.arg("--config").arg(empty);
        }
        cmd.args(&c.args)
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", c.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + c.ready_timeout;
        loop {
            if UnixStream::connect(&self.config.address).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "berthd exited ({status}) before its socket {} answered; log:\n{}",
                        self.config.address.display(),
                        self.log()
                    );
                }
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "berthd's socket {} did not answer within {:?}; log:\n{}",
                    self.config.address.display(),
                    self.config.ready_timeout,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop it: SIGTERM, wait up to 10 s, then SIGKILL. Returns its exit status (`None` if it
    /// was not running).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_with(Signal::SIGTERM, Duration::from_secs(10))
    }

    /// Kill it with SIGKILL at once (a crash), and reap it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.stop_with(Signal::SIGKILL, Duration::from_secs(10))
    }

    fn stop_with(&mut self, sig: Signal, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        proc::stop_child(&mut child, sig, grace, "berthd")
    }

    /// Stop it (SIGTERM) and start it again with the same configuration.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Start it again after [`Daemon::stop`] or [`Daemon::kill`].
    #[track_caller]
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- berthd log ({}) -----\n{}\n----- end of berthd log -----",
                self.config.log.display(),
                self.log()
            );
        }
        self.stop();
    }
}
