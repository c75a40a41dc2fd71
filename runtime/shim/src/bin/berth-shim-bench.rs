//! berth-shim-bench: memory of N berth-shims beside N of Debian's containerd-shim-runc-v2.
//!
//! Runs `--count` (50) busybox `sleep 1000` containers, each with its own berth-shim (runc as
//! the runtime), and reports the mean Private (Private_Clean + Private_Dirty) and Rss of the
//! shims from /proc/PID/smaps_rollup; then the same under Debian's containerd (temp root,
//! state and socket, `ctr run --rootfs -d`), and prints the ratio. Everything it starts is
//! killed and removed at the end, also on errors. Run as root on an otherwise idle host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as PStdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_proto::shim::shim_client::ShimClient;
use berth_proto::shim::{
    CreateRequest, DeleteRequest, KillRequest, ShutdownRequest, StartRequest, Stdio, WaitRequest,
};
use clap::Parser;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(about = "Memory of berth-shim vs containerd-shim-runc-v2")]
struct Args {
    /// Containers per side.
    #[arg(long, default_value_t = 50)]
    count: usize,
    /// OCI runtime for berth-shim.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// berth-shim binary (default: next to this binary).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Skip the containerd side.
    #[arg(long)]
    skip_containerd: bool,
    /// Keep the containers running this long before measuring.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// Write the bench protocol's JSON (section "memory") here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Memory of one process from smaps_rollup, in KiB.
#[derive(Debug, Default, Clone, Copy)]
struct Mem {
    rss: u64,
    private: u64,
}

fn smaps_rollup(pid: u32) -> Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading smaps_rollup of {pid}"))?;
    let mut m = Mem::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(k), Some(v)) = (f.next(), f.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match k {
            "Rss:" => m.rss = v,
            "Private_Clean:" | "Private_Dirty:" => m.private += v,
            _ => {}
        }
    }
    Ok(m)
}

fn mean(ms: &[Mem]) -> (f64, f64) {
    let n = ms.len().max(1) as f64;
    (
        ms.iter().map(|m| m.private as f64).sum::<f64>() / n / 1024.0,
        ms.iter().map(|m| m.rss as f64).sum::<f64>() / n / 1024.0,
    )
}

/// A busybox rootfs with the applets the containers use.
fn make_rootfs(dir: &Path) -> Result<()> {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).context("copying /bin/busybox")?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    Ok(())
}

fn spec(rootfs: &Path, cgroups_path: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0},
            "args": ["sleep", "1000"], "env": ["PATH=/bin"], "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    })
}

async fn connect(socket: &Path) -> Result<ShimClient<Channel>> {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]")?
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await?;
    Ok(ShimClient::new(channel))
}

/// One berth container: its shim's socket and pid.
struct BerthOne {
    socket: PathBuf,
    shim_pid: u32,
}

async fn berth_side(
    args: &Args,
    work: &Path,
    rootfs: &Path,
    started: &mut Vec<BerthOne>,
) -> Result<Vec<Mem>> {
    let shim = match &args.shim {
        Some(s) => s.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("berth-shim"))
            .context("no berth-shim next to the bench")?,
    };
    let state = work.join("st");
    let t0 = Instant::now();
    for i in 0..args.count {
        let id = format!("c{i}");
        let bundle = work.join("bundles").join(&id);
        std::fs::create_dir_all(&bundle)?;
        let cg = format!("/berth-bench-{}/{id}", std::process::id());
        std::fs::write(bundle.join("config.json"), spec(rootfs, &cg).to_string())?;
        let out = Command::new(&shim)
            .arg("start")
            .args(["--namespace", "bench", "--id", &id])
            .arg("--bundle")
            .arg(&bundle)
            .arg("--state")
            .arg(&state)
            .arg("--runtime")
            .arg(&args.runtime)
            .args(["--address", "/nonexistent.sock"])
            .output()
            .context("starting berth-shim")?;
        if !out.status.success() {
            bail!("berth-shim start: {}", String::from_utf8_lossy(&out.stderr));
        }
        let addr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let socket = PathBuf::from(addr.trim_start_matches("unix://"));
        let shim_pid: u32 = std::fs::read_to_string(bundle.join("shim.pid"))?
            .trim()
            .parse()?;
        started.push(BerthOne {
            socket: socket.clone(),
            shim_pid,
        });
        let mut c = connect(&socket).await?;
        c.create(CreateRequest {
            id: id.clone(),
            bundle: bundle.display().to_string(),
            rootfs: vec![],
            stdio: Some(Stdio::default()),
            no_pivot: false,
        })
        .await?;
        c.start(StartRequest::default()).await?;
    }
    eprintln!(
        "berth: {} containers started in {:.2}s",
        args.count,
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    started.iter().map(|b| smaps_rollup(b.shim_pid)).collect()
}

async fn berth_cleanup(started: &[BerthOne]) {
    for b in started {
        let Ok(mut c) = connect(&b.socket).await else {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(b.shim_pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            continue;
        };
        let _ = c
            .kill(KillRequest {
                exec_id: String::new(),
                signal: 9,
                all: true,
            })
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), c.wait(WaitRequest::default())).await;
        let _ = c.delete(DeleteRequest::default()).await;
        let _ = c.shutdown(ShutdownRequest { now: true }).await;
    }
}

/// Debian's containerd on a temp root/state/socket.
struct Containerd {
    child: Child,
    socket: PathBuf,
    ns: String,
}

impl Containerd {
    fn start(work: &Path) -> Result<Containerd> {
        let root = work.join("ctd-root");
        let state = work.join("ctd-state");
        let socket = work.join("ctd.sock");
        let config = work.join("ctd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {socket:?}\n[ttrpc]\n  address = {ttrpc:?}\n",
                ttrpc = work.join("ctd.sock.ttrpc"),
            ),
        )?;
        let log = std::fs::File::create(work.join("ctd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(PStdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let me = Containerd {
            child,
            socket,
            ns: format!("berth-bench-{}", std::process::id()),
        };
        let t0 = Instant::now();
        while !me.socket.exists() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("containerd did not create {}", me.socket.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", &self.ns])
            .args(args)
            .stdin(PStdio::null())
            .output()
            .context("running ctr")?;
        if !out.status.success() {
            bail!(
                "ctr {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ids(&self) -> Vec<String> {
        self.ctr(&["containers", "ls", "-q"])
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn cleanup(&mut self) {
        for id in self.ids() {
            let _ = self.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", &id]);
        }
        std::thread::sleep(Duration::from_millis(500));
        for id in self.ids() {
            let _ = self.ctr(&["tasks", "rm", "-f", &id]);
            let _ = self.ctr(&["containers", "rm", &id]);
        }
        let _ = self.ctr(&["namespaces", "rm", &self.ns.clone()]);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

fn containerd_side(args: &Args, ctd: &Containerd, rootfs: &Path) -> Result<Vec<Mem>> {
    let t0 = Instant::now();
    let root = rootfs.display().to_string();
    for i in 0..args.count {
        ctd.ctr(&[
            "run",
            "-d",
            "--rootfs",
            &root,
            &format!("c{i}"),
            "/bin/sleep",
            "1000",
        ])?;
    }
    eprintln!(
        "containerd: {} containers started in {:.2}s",
        args.count,
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(args.settle_secs));
    let tasks = ctd.ctr(&["tasks", "ls"])?;
    let mut shims: Vec<u32> = tasks
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
        .filter_map(ppid)
        .collect();
    shims.sort_unstable();
    shims.dedup();
    if shims.len() != args.count {
        eprintln!(
            "containerd: found {} shims for {} tasks",
            shims.len(),
            args.count
        );
    }
    shims.iter().map(|p| smaps_rollup(*p)).collect()
}

fn remove_cgroups() {
    let rel = format!("berth-bench-{}", std::process::id());
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let dir = e.path().join(&rel);
            if let Ok(children) = std::fs::read_dir(&dir) {
                for c in children.flatten() {
                    if c.path().is_dir() {
                        let _ = std::fs::remove_dir(c.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let work = PathBuf::from(format!("/tmp/bsb-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let rootfs = work.join("rootfs");
    make_rootfs(&rootfs)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut started = Vec::new();
    let berth = rt.block_on(berth_side(&args, &work, &rootfs, &mut started));
    rt.block_on(berth_cleanup(&started));
    let ctd = if args.skip_containerd {
        None
    } else {
        let mut ctd = Containerd::start(&work)?;
        let r = containerd_side(&args, &ctd, &rootfs);
        ctd.cleanup();
        Some(r)
    };
    remove_cgroups();
    let _ = std::fs::remove_dir_all(&work);
    let berth = berth?;
    let (bp, br) = mean(&berth);
    println!(
        "berth-shim:               {} shims, mean Private {bp:.2} MiB, mean Rss {br:.2} MiB",
        berth.len()
    );
    let mut ctd_mem = None;
    if let Some(ctd) = ctd {
        let ctd = ctd?;
        ctd_mem = Some(ctd.clone());
        let (cp, cr) = mean(&ctd);
        println!(
            "containerd-shim-runc-v2:  {} shims, mean Private {cp:.2} MiB, mean Rss {cr:.2} MiB",
            ctd.len()
        );
        println!(
            "ratio berth/containerd:   Private {:.3}, Rss {:.3}, berth Private / containerd Rss {:.3}",
            bp / cp,
            br / cr,
            bp / cr
        );
    }
    if let Some(path) = &args.json {
        let mib = |ms: &[Mem], f: fn(&Mem) -> u64| -> Vec<f64> {
            ms.iter().map(|m| f(m) as f64 / 1024.0).collect()
        };
        let peer = ctd_mem.unwrap_or_default();
        let mut report = berth_bench_report::Report::new("memory");
        let peer_name = "containerd-shim-runc-v2";
        report.rows.push(berth_bench_report::Row::compare(
            "per shim Private",
            "MiB",
            &mib(&berth, |m| m.private),
            peer_name,
            &mib(&peer, |m| m.private),
        ));
        report.rows.push(berth_bench_report::Row::compare(
            "per shim Rss",
            "MiB",
            &mib(&berth, |m| m.rss),
            peer_name,
            &mib(&peer, |m| m.rss),
        ));
        report
            .write(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
