//! A private berthd or containerd: its own root, state and socket under the work dir, started in its own process
//! group (a Ctrl-C at the terminal reaches the bench, which then cleans up through the daemon's API).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;

/// Which daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Berthd,
    Containerd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Berthd => "berthd",
            Kind::Containerd => "containerd",
        }
    }
}

/// One daemon instance with private dirs.
pub struct Daemon {
    pub kind: Kind,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    /// The state dir is a private tmpfs mounted by us (unmounted at drop).
    tmpfs: bool,
}

impl Daemon {
    /// Prepare `<work>/<name><tag>/{root,state}` and the daemon's config. The state dir is a private tmpfs unless
    /// `state_on_disk` (the root dir is on the work dir's disk either way).
    pub fn new(
        kind: Kind,
        work: &Path,
        tag: &str,
        bindir: &Path,
        runtime: &Path,
        state_on_disk: bool,
    ) -> anyhow::Result<Daemon> {
        let dir = work.join(format!("{}{tag}", kind.name()));
        let state = dir.join("state");
        std::fs::create_dir_all(dir.join("root"))?;
        std::fs::create_dir_all(&state)?;
        let config = match kind {
            Kind::Berthd => format!(
                "runtime_binary = {:?}\nshim_binary = {:?}\n",
                runtime.display().to_string(),
                bindir.join("berth-shim").display().to_string()
            ),
            Kind::Containerd => format!(
                "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\naddress = {:?}\n[ttrpc]\naddress = {:?}\n",
                dir.join("root").display().to_string(),
                state.display().to_string(),
                dir.join("d.sock").display().to_string(),
                dir.join("d.sock.ttrpc").display().to_string(),
            ),
        };
        std::fs::write(dir.join("config.toml"), config)?;
        let mut d = Daemon {
            kind,
            bin: match kind {
                Kind::Berthd => bindir.join("berthd"),
                Kind::Containerd => PathBuf::from("containerd"),
            },
            dir,
            child: None,
            tmpfs: false,
        };
        if !state_on_disk {
            nix::mount::mount(
                Some("tmpfs"),
                &state,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("mode=0711"),
            )
            .context("mounting a tmpfs for the state dir")?;
            d.tmpfs = true;
        }
        Ok(d)
    }

    pub fn address(&self) -> PathBuf {
        self.dir.join("d.sock")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Spawn the daemon and wait until its socket accepts connections.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(self.dir.join("config.toml"));
        if self.kind == Kind::Berthd {
            cmd.arg("--root")
                .arg(self.dir.join("root"))
                .arg("--state")
                .arg(self.dir.join("state"))
                .arg("--address")
                .arg(self.address())
                .arg("--log-level")
                .arg("info");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(self.address()).is_err() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    bail!(
                        "{} exited at start ({st}); see {}",
                        self.kind.name(),
                        self.log().display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer; see {}",
                    self.kind.name(),
                    self.log().display()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// Signal the daemon and reap it (SIGTERM gets 20 s before a SIGKILL).
    pub fn signal(&mut self, sig: Signal) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    let _ = c.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.signal(Signal::SIGTERM);
        if self.tmpfs {
            let _ = nix::mount::umount2(&self.dir.join("state"), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Resident set size of a process in KiB (0 if gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
