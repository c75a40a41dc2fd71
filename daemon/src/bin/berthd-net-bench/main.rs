//! berthd-net-bench: what a network costs a container (not a test). Starts a private berthd (state on a private
//! tmpfs, like /run) with the default network on its own bridge and /24, then, interleaving the three so that
//! they see the same machine:
//! - runs containers on the default network (`berth.io/networks=berth`): Tasks.Create and Start times, and
//!   berthd's own "network ready" figures for each (time from the create's start to network ready; the
//!   setup: netns, berth-net's ADD of the chain, files and names);
//! - runs the same containers without a network (the baseline create and start);
//! - execs the same plugin chain (bridge, portmap, firewall) directly with the same JSON and environment in a
//!   fresh netns, timing only the plugins (the cost any CNI runtime pays);
//! - runs the same chain through berth-net's `Cni::attach` in this process, alone (in berthd the ADDs run
//!   beside the shim start and share the CPU with it, so their wall time there is not the library's cost).
//!
//! It prints medians and p90s, the network's share of `run` (create + start: what a network adds to it), and
//! Berth's overhead over the plugins: berthd's own work around berth-net (config, actor hops, files, names;
//! netns creation apart), and berth-net's ADD minus the direct chain (exec plumbing, the cache), per sample.
//!
//! Build with `cargo build --release -p berth-daemon -p berth-shim -p berth-oci`; run as root:
//! `target/release/berthd-net-bench [--samples 30] [--runtime PATH]`. It removes everything it made (containers,
//! shims, berthd, its netns, bridge and dirs), restores `ip_forward`, and touches nothing else.
#![forbid(unsafe_code)]

mod direct;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use berth_proto::containerd_client::services::v1::container::Runtime;
use berth_proto::containerd_client::services::v1::containers_client::ContainersClient;
use berth_proto::containerd_client::services::v1::tasks_client::TasksClient;
use berth_proto::containerd_client::services::v1::*;
use clap::Parser;
use tonic::transport::{Channel, Endpoint};

/// Measure what a container network costs in berthd, next to the plugins' own cost.
#[derive(Debug, Parser)]
#[command(name = "berthd-net-bench")]
struct Args {
    /// Samples of each kind.
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// OCI runtime the shims drive (default: berth-runc next to this binary, else /usr/sbin/runc).
    #[arg(long)]
    runtime: Option<PathBuf>,
    /// Write the bench protocol's JSON (section "network") here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Work dir (default /tmp/berthd-net-bench-<pid>); removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const NS: &str = "netbench";

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

fn spec(rootfs: &Path, id: &str) -> Vec<u8> {
    let v = serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0},
            "args": ["sleep", "100000"], "cwd": "/", "env": ["PATH=/bin"], "noNewPrivileges": true
        },
        "root": {"path": rootfs.display().to_string(), "readonly": true},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "linux": {
            "cgroupsPath": format!("/berthd-net-bench/{id}"),
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                           {"type": "network"}],
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

/// Create + start a container; (create, start) wall times.
async fn run(
    c: &mut Clients,
    rootfs: &Path,
    id: &str,
    network: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let mut labels = std::collections::HashMap::new();
    if network {
        labels.insert("berth.io/networks".to_string(), "berth".to_string());
    }
    c.containers
        .create(req(CreateContainerRequest {
            container: Some(Container {
                id: id.to_string(),
                labels,
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
    let t = Instant::now();
    c.tasks
        .create(req(CreateTaskRequest {
            container_id: id.to_string(),
            ..Default::default()
        }))
        .await?;
    let create = t.elapsed();
    let t = Instant::now();
    c.tasks
        .start(req(StartRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await?;
    Ok((create, t.elapsed()))
}

async fn remove(c: &mut Clients, id: &str) {
    let _ = c
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
        c.tasks.wait(req(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })),
    )
    .await;
    let _ = c
        .tasks
        .delete(req(DeleteTaskRequest {
            container_id: id.to_string(),
        }))
        .await;
    let _ = c
        .containers
        .delete(req(DeleteContainerRequest { id: id.to_string() }))
        .await;
}

/// berthd's "network ready" figures for container `id` (microseconds): since_create, network, attach, netns,
/// prepare, publish, handoff.
fn ready_figures(log: &str, id: &str) -> Option<[u64; 7]> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("network ready") && l.contains(&format!("container_id={id}}}")))?;
    let field = |k: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))?
            .parse()
            .ok()
    };
    Some([
        field("since_create_us")?,
        field("network_us")?,
        field("attach_us")?,
        field("netns_us")?,
        field("prepare_us")?,
        field("publish_us")?,
        field("handoff_us")?,
    ])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!("median {:.2} ms (p90 {:.2})", at(0.5), at(0.9))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Env {
    dir: PathBuf,
    state: PathBuf,
    bridge: String,
    child: Option<std::process::Child>,
    ip_forward: String,
}

impl Env {
    fn address(&self) -> PathBuf {
        self.state.join("b.sock")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        if !self.ip_forward.is_empty() {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.ip_forward);
        }
        let _ = nix::mount::umount2(&self.state, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in ctrls.flatten() {
                let _ = std::fs::remove_dir(c.path().join("berthd-net-bench"));
            }
        }
    }
}

async fn bench(args: &Args, env: &mut Env, bindir: &Path, rootfs: &Path) -> anyhow::Result<()> {
    let subnet = direct::free_subnet()?;
    let conf_dir = env.dir.join("net.d");
    let runtime = args.runtime.clone().unwrap_or_else(|| {
        let b = bindir.join("berth-runc");
        if b.is_file() {
            b
        } else {
            PathBuf::from("/usr/sbin/runc")
        }
    });
    std::fs::write(
        env.dir.join("config.toml"),
        format!(
            "runtime_binary = {:?}\nshim_binary = {:?}\n",
            runtime.display().to_string(),
            bindir.join("berth-shim").display().to_string()
        ),
    )?;
    let log_path = env.dir.join("berthd.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(bindir.join("berthd"))
        .arg("--config")
        .arg(env.dir.join("config.toml"))
        .arg("--root")
        .arg(env.dir.join("root"))
        .arg("--state")
        .arg(&env.state)
        .arg("--address")
        .arg(env.address())
        .args(["--log-level", "info", "--net-conf-dir"])
        .arg(&conf_dir)
        .args(["--net-bridge", &env.bridge, "--net-subnet", &subnet])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting berthd")?;
    env.child = Some(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(env.address()).is_err() {
        if Instant::now() > deadline {
            bail!("berthd did not answer; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ch = connect(&env.address()).await?;
    let mut c = Clients {
        tasks: TasksClient::new(ch.clone()),
        containers: ContainersClient::new(ch),
    };
    println!(
        "runtime {}, bridge {} on {subnet}, state on tmpfs, {} samples each",
        runtime.display(),
        env.bridge,
        args.samples
    );

    // Warm-up (the first ADD creates the bridge; caches fill).
    for i in 0..3 {
        run(&mut c, rootfs, &format!("w{i}"), true).await?;
        remove(&mut c, &format!("w{i}")).await;
        run(&mut c, rootfs, &format!("v{i}"), false).await?;
        remove(&mut c, &format!("v{i}")).await;
    }
    let network = berth_net::find_network(&conf_dir, "berth")?.context("the default network")?;
    let dirs = vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")];

    let (mut with, mut without, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    let mut library = Vec::new();
    let mut figures = Vec::new();
    let cni = berth_net::Cni::new(berth_net::NetConfig {
        // On the tmpfs, like berthd's (<state>/net/cache): the cache's fsyncs cost nothing there.
        cache_dir: env.state.join("bench-cache"),
        plugin_dirs: dirs.clone(),
        ..berth_net::NetConfig::default()
    });
    for i in 0..args.samples {
        let id = format!("n{i}");
        with.push(run(&mut c, rootfs, &id, true).await?);
        remove(&mut c, &id).await;
        let id = format!("p{i}");
        without.push(run(&mut c, rootfs, &id, false).await?);
        remove(&mut c, &id).await;
        let ns = env.state.join(format!("bench-netns-{i}"));
        berth_net::create_netns(&ns)?;
        let cid = format!("direct-{i}");
        let add = direct::direct_chain(&network, &dirs, &ns, &cid, "ADD", None);
        let result = add.as_ref().ok().and_then(|(_, r)| r.clone());
        let del = direct::direct_chain(&network, &dirs, &ns, &cid, "DEL", result);
        berth_net::remove_netns(&ns)?;
        direct.push(add?.0);
        del?;
        let ns = env.state.join(format!("bench-netns-lib-{i}"));
        berth_net::create_netns(&ns)?;
        let att = berth_net::Attachment::new(format!("lib-{i}"), &ns, "eth0");
        let t = Instant::now();
        let added = cni.attach(&network, &att);
        library.push(t.elapsed());
        let removed = cni.detach(&network, &att);
        berth_net::remove_netns(&ns)?;
        added?;
        removed?;
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    for i in 0..args.samples {
        match ready_figures(&log, &format!("n{i}")) {
            Some(f) => figures.push(f),
            None => bail!(
                "no \"network ready\" line for n{i} in {}",
                log_path.display()
            ),
        }
    }

    let f = |k: usize| -> Vec<f64> { figures.iter().map(|x| x[k] as f64 / 1000.0).collect() };
    let (since_create, network_ms, attach, netns, prepare, publish, handoff) =
        (f(0), f(1), f(2), f(3), f(4), f(5), f(6));
    let direct_ms: Vec<f64> = direct.iter().map(|d| ms(*d)).collect();
    let library_ms: Vec<f64> = library.iter().map(|d| ms(*d)).collect();
    let run_with: Vec<f64> = with.iter().map(|(a, b)| ms(*a + *b)).collect();
    let run_without: Vec<f64> = without.iter().map(|(a, b)| ms(*a + *b)).collect();
    let around: Vec<f64> = network_ms
        .iter()
        .zip(&attach)
        .zip(&netns)
        .map(|((s, a), n)| s - a - n)
        .collect();
    let in_lib: Vec<f64> = library_ms
        .iter()
        .zip(&direct_ms)
        .map(|(l, d)| l - d)
        .collect();
    if let Some(path) = &args.json {
        use berth_bench_report::{Report, Row};
        let plugins = "CNI chain exec'd directly";
        let mut report = Report::new("network");
        report.rows.push(Row::compare(
            "attach: berth-net ADD in-process",
            "ms",
            &library_ms,
            plugins,
            &direct_ms,
        ));
        report.rows.push(Row::compare(
            "attach: berthd's network work",
            "ms",
            &network_ms,
            plugins,
            &direct_ms,
        ));
        report.rows.push(Row::compare(
            "run (Tasks.Create + Start) with network",
            "ms",
            &run_with,
            "berthd, no network",
            &run_without,
        ));
        report
            .write(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("one attachment to the default network (bridge + portmap + firewall):");
    println!(
        "  task create to network ready (berthd)   {}",
        stats(since_create)
    );
    println!(
        "  berthd's network work (wall)            {}",
        stats(network_ms)
    );
    println!(
        "    prepare: config, plugins, netns       {}",
        stats(prepare)
    );
    println!("      of which netns creation             {}", stats(netns));
    println!(
        "    berth-net ADD, beside the shim start  {}",
        stats(attach)
    );
    println!(
        "    hand-offs: supervisor, actor, pool    {}",
        stats(handoff)
    );
    println!(
        "    publish: files and names              {}",
        stats(publish)
    );
    println!(
        "  berth-net ADD alone (in-process)        {}",
        stats(library_ms)
    );
    println!(
        "  same chain exec'd directly               {}",
        stats(direct_ms)
    );
    println!("run (Tasks.Create + Start):");
    println!(
        "  with the network                        {}",
        stats(run_with.clone())
    );
    println!(
        "  without a network                       {}",
        stats(run_without.clone())
    );
    println!(
        "  Tasks.Create with / without network     {} / {}",
        stats(with.iter().map(|(a, _)| ms(*a)).collect()),
        stats(without.iter().map(|(a, _)| ms(*a)).collect())
    );
    let (rw, ro) = (median(run_with), median(run_without));
    println!(
        "  the network's share of run             {:.1} ms of {:.1} ms ({:.0}%: run with minus run without)",
        rw - ro,
        rw,
        100.0 * (rw - ro) / rw
    );
    println!("Berth's overhead over the plugins, per attachment:");
    println!(
        "  berthd around berth-net (no netns)      {}",
        stats(around.clone())
    );
    println!(
        "  berth-net ADD alone minus direct chain  {}",
        stats(in_lib.clone())
    );
    println!(
        "  together (medians)                      {:.2} ms",
        median(around) + median(in_lib)
    );
    remove_all(&mut c).await;
    Ok(())
}

async fn remove_all(c: &mut Clients) {
    if let Ok(list) = c.tasks.list(req(ListTasksRequest::default())).await {
        for t in list.into_inner().tasks {
            remove(c, &t.id).await;
        }
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let bindir = exe.parent().context("no bin dir")?.to_path_buf();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/berthd-net-bench-{}", std::process::id())));
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copying /bin/busybox")?;
    for a in ["sh", "sleep"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
    }
    for f in ["hosts", "resolv.conf", "hostname"] {
        std::fs::write(rootfs.join("etc").join(f), "")?;
    }
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    nix::mount::mount(
        Some("tmpfs"),
        &state,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0711"),
    )
    .context("mounting a tmpfs for the state dir")?;
    let mut env = Env {
        dir: dir.clone(),
        state,
        bridge: format!("bnb{:x}", std::process::id() & 0xffffff),
        child: None,
        ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(bench(&args, &mut env, &bindir, &rootfs));
    if result.is_err() && env.child.is_some() {
        let _ = rt.block_on(async {
            let ch = connect(&env.address()).await?;
            let mut c = Clients {
                tasks: TasksClient::new(ch.clone()),
                containers: ContainersClient::new(ch),
            };
            remove_all(&mut c).await;
            anyhow::Ok(())
        });
    }
    drop(env);
    result
}
