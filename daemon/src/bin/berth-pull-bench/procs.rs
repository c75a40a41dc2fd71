//! The processes the bench starts (docker-registry, berthd, Debian's containerd), each on private dirs and
//! stopped by its pid, and the figures read from /proc: CPU seconds, peak RSS (VmHWM, reset with
//! `clear_refs`), the page cache dropped before each pull.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::resource::{getrusage, UsageWho};
use tonic::transport::{Channel, Endpoint};

pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} did not come up within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let f = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

/// `berthd` run on private dirs below `dir` (its config.toml, root, state) and listening on `dir/b.sock`.
pub fn berthd_command(bin: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--address")
        .arg(dir.join("b.sock"));
    cmd
}

pub fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Debian's docker-registry on a free loopback port.
pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Registry {
    pub fn start(dir: &Path) -> anyhow::Result<Registry> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )?;
        let child = spawn(
            Command::new("docker-registry").arg("serve").arg(&config),
            &dir.join("registry.log"),
        )?;
        let a = addr.clone();
        wait_for("docker-registry", || {
            std::net::TcpStream::connect(&a).is_ok()
        })?;
        Ok(Registry {
            child: Some(child),
            addr,
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// berthd from the directory of this binary.
pub struct Berthd {
    child: Option<Child>,
    dir: PathBuf,
}

impl Berthd {
    pub fn start(base: &Path) -> anyhow::Result<Berthd> {
        let dir = base.join("berthd");
        std::fs::create_dir_all(&dir)?;
        let exe = std::env::current_exe()?;
        let bin = exe.parent().context("no exe dir")?.join("berthd");
        std::fs::write(dir.join("config.toml"), "log_level = \"info\"\n")?;
        let child = spawn(
            berthd_command(&bin, &dir)
                .arg("--registry-hosts-dir")
                .arg(dir.join("certs.d")),
            &dir.join("berthd.log"),
        )?;
        let sock = dir.join("b.sock");
        wait_for("berthd", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        })?;
        Ok(Berthd {
            child: Some(child),
            dir,
        })
    }

    pub fn address(&self) -> PathBuf {
        self.dir.join("b.sock")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn stop(&mut self) {
        stop(&mut self.child);
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Debian's containerd on private dirs, without CRI.
pub struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
}

impl Containerd {
    pub fn start(base: &Path) -> anyhow::Result<Containerd> {
        let dir = base.join("containerd");
        for d in ["root", "state", "opt"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let q = |p: PathBuf| format!("{:?}", p.display().to_string());
        let config = format!(
            "version = 2\nroot = {}\nstate = {}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\", \
             \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
             \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n\
             [grpc]\n  address = {}\n[ttrpc]\n  address = {}\n[debug]\n  address = \"\"\n  level = \"info\"\n\
             [metrics]\n  address = \"\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
            q(dir.join("root")),
            q(dir.join("state")),
            q(dir.join("c.sock")),
            q(dir.join("c.sock.ttrpc")),
            q(dir.join("opt")),
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let child = spawn(
            Command::new("containerd")
                .arg("--config")
                .arg(dir.join("config.toml")),
            &dir.join("containerd.log"),
        )?;
        let sock = dir.join("c.sock");
        wait_for("containerd", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok() && ctr(&sock, &["version"])
        })?;
        Ok(Containerd {
            child: Some(child),
            dir,
        })
    }

    pub fn address(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn stop(&mut self) {
        stop(&mut self.child);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ctr --address ADDR -n bench ARGS...`; true on success.
pub fn ctr(addr: &Path, args: &[&str]) -> bool {
    Command::new("ctr")
        .arg("--address")
        .arg(addr)
        .args(["-n", "bench"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A channel to berthd's socket.
pub async fn connect(path: &Path) -> anyhow::Result<Channel> {
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

/// Write dirty pages and drop the page cache (warns once if not allowed).
pub fn drop_caches() {
    nix::unistd::sync();
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("warning: cannot drop the page cache: {e}");
    }
}

/// CPU seconds of a live process (utime + stime, clock ticks of 1/100 s).
pub fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rusage(who: UsageWho) -> f64 {
    getrusage(who)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// CPU seconds of this process.
pub fn self_cpu() -> f64 {
    rusage(UsageWho::RUSAGE_SELF)
}

/// CPU seconds of this process's reaped children.
pub fn children_cpu() -> f64 {
    rusage(UsageWho::RUSAGE_CHILDREN)
}

/// Reset a process's peak RSS (VmHWM) to its current RSS.
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// A process's peak RSS since the last reset, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Remove the work dir (nothing is mounted there once the daemons stopped).
pub fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("warning: cannot remove {}: {e}", dir.display());
    }
}
