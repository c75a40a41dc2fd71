//! berth-cri-bench: pod start and teardown through the CRI, berthd against Debian's containerd 1.6 with its CRI
//! plugin, the same way a kubelet drives them (not a test).
//!
//! Pod start is RunPodSandbox → CreateContainer → StartContainer of a busybox `sleep` (the container is
//! running when StartContainer returns, on both); teardown is StopPodSandbox → RemovePodSandbox. Both runtimes
//! run at once on private dirs and sockets, each pod attached by the same CNI plugin chain (bridge, host-local,
//! portmap; each runtime its own bridge and /24), images from one loopback docker-registry (the sandbox image
//! pushed there too, pulled before timing). Rounds alternate which runtime goes first. Figures: 1 pod at a
//! time (each pod one sample), and 30 pods started at once then torn down at once (each batch's wall time one
//! sample). Medians, min–max and Berth/containerd ratios (target ≤ 0.5) are printed, and with `--json FILE`
//! written in the benchmark protocol of `tools/bench/run`.
//!
//! Build: `cargo build --release -p berth-daemon -p berth-shim -p berth-oci`; run as root:
//! `target/release/berth-cri-bench [--rounds 10] [--batches 3] [--pods 30] [--json FILE] [--dir DIR]`.
//! It removes every pod it made, stops both daemons and the registry by pid, deletes its bridges, cgroup
//! parents and work dir, and touches nothing else.
#![forbid(unsafe_code)]

mod daemons;
// The registry and process helpers of berth-pull-bench (this bench uses a part of them).
#[allow(dead_code)]
#[path = "../berth-pull-bench/procs.rs"]
mod procs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use berth_proto::cri;
use berth_proto::cri::image_service_client::ImageServiceClient;
use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use clap::Parser;
use tonic::transport::Channel;

use daemons::Runtime;

/// Pod start and teardown through the CRI: berthd vs containerd 1.6's CRI plugin.
#[derive(Debug, Parser)]
#[command(name = "berth-cri-bench")]
struct Args {
    /// Single-pod rounds (each starts and tears down one pod on each runtime).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Batches of parallel pods per runtime.
    #[arg(long, default_value_t = 3)]
    batches: usize,
    /// Pods per parallel batch.
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Write the figures as JSON (tools/bench/run's protocol) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Work dir (default /tmp/berth-cri-bench-<pid>); removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// berthd's log filter (`warn,berth_daemon::cri=debug` logs every CRI verb's time, `took_us`).
    #[arg(long, default_value = "warn")]
    berthd_log_level: String,
    /// Keep berthd's log: copied to this file before the work dir goes.
    #[arg(long)]
    berthd_log: Option<PathBuf>,
}

/// A runtime under test and its clients.
struct Target {
    rt: Runtime,
    runtime: RuntimeServiceClient<Channel>,
    busybox: String,
    /// Pods made and not removed yet (removed at the end whatever happened).
    live: std::sync::Mutex<Vec<String>>,
}

impl Target {
    async fn new(rt: Runtime, busybox: &str) -> anyhow::Result<Target> {
        let ch = procs::connect(&rt.socket).await?;
        let max = 64 << 20;
        let runtime = RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(max);
        let mut images = ImageServiceClient::new(ch);
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: busybox.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .with_context(|| format!("{}: pulling {busybox}", rt.name))?;
        Ok(Target {
            rt,
            runtime,
            busybox: busybox.to_string(),
            live: Default::default(),
        })
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "bench".to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: self.rt.logs.join(name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.rt.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Start pod `name` with one running container; seconds taken.
    async fn start(&self, name: &str) -> anyhow::Result<f64> {
        let mut c = self.runtime.clone();
        let cfg = self.pod_config(name);
        let t0 = Instant::now();
        let pod = c
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("{}: RunPodSandbox {name}", self.rt.name))?
            .into_inner()
            .pod_sandbox_id;
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pod.clone());
        let id = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: self.busybox.clone(),
                        ..Default::default()
                    }),
                    command: vec!["sleep".into(), "100000".into()],
                    log_path: "app/0.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(cfg),
            })
            .await
            .with_context(|| format!("{}: CreateContainer in {name}", self.rt.name))?
            .into_inner()
            .container_id;
        c.start_container(cri::StartContainerRequest { container_id: id })
            .await
            .with_context(|| format!("{}: StartContainer in {name}", self.rt.name))?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Stop and remove a pod; seconds taken.
    async fn teardown(&self, pod: &str) -> anyhow::Result<f64> {
        let mut c = self.runtime.clone();
        let t0 = Instant::now();
        c.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .with_context(|| format!("{}: StopPodSandbox", self.rt.name))?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        })
        .await
        .with_context(|| format!("{}: RemovePodSandbox", self.rt.name))?;
        let took = t0.elapsed().as_secs_f64();
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p != pod);
        Ok(took)
    }

    fn take_live(&self) -> Vec<String> {
        std::mem::take(&mut *self.live.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Remove every pod still there (after an error too).
    async fn clean(&self) {
        for pod in self.take_live() {
            if let Err(e) = self.teardown(&pod).await {
                eprintln!("warning: {}: cannot remove pod {pod}: {e:#}", self.rt.name);
            }
        }
    }
}

/// Samples (ms) per figure and runtime.
#[derive(Default)]
struct Samples(HashMap<(&'static str, &'static str), Vec<f64>>);

impl Samples {
    fn add(&mut self, figure: &'static str, runtime: &'static str, secs: f64) {
        self.0
            .entry((figure, runtime))
            .or_default()
            .push(secs * 1000.0);
    }

    fn get(&self, figure: &'static str, runtime: &'static str) -> &[f64] {
        self.0
            .get(&(figure, runtime))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// One pod on `t`: start then teardown.
async fn single(t: &Target, round: usize, s: &mut Samples) -> anyhow::Result<()> {
    let name = format!("single-{round}");
    let started = t.start(&name).await?;
    let pod = t.take_live().pop().context("no pod")?;
    t.live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pod.clone());
    let down = t.teardown(&pod).await?;
    s.add(FIG_START1, t.rt.name, started);
    s.add(FIG_DOWN1, t.rt.name, down);
    Ok(())
}

/// `n` pods on `t` at once, then all torn down at once; batch wall times.
async fn batch(t: &Target, b: usize, n: usize, s: &mut Samples) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let starts = futures::future::join_all((0..n).map(|i| t.start_named(b, i))).await;
    let wall_start = t0.elapsed().as_secs_f64();
    for r in starts {
        s.add(FIG_STARTN_EACH, t.rt.name, r?);
    }
    let pods = t.take_live();
    t.live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(pods.iter().cloned());
    let t1 = Instant::now();
    let downs = futures::future::join_all(pods.iter().map(|p| t.teardown(p))).await;
    let wall_down = t1.elapsed().as_secs_f64();
    for r in downs {
        r?;
    }
    s.add(FIG_STARTN, t.rt.name, wall_start);
    s.add(FIG_DOWNN, t.rt.name, wall_down);
    Ok(())
}

impl Target {
    async fn start_named(&self, b: usize, i: usize) -> anyhow::Result<f64> {
        self.start(&format!("batch-{b}-{i}")).await
    }
}

const FIG_START1: &str = "pod start, 1 pod";
const FIG_DOWN1: &str = "pod teardown, 1 pod";
const FIG_STARTN: &str = "pods start, N at once (batch wall)";
const FIG_STARTN_EACH: &str = "pod start, N at once (each pod)";
const FIG_DOWNN: &str = "pods teardown, N at once (batch wall)";

fn stats(v: &[f64]) -> Option<serde_json::Value> {
    let mut v = v.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(serde_json::json!({"median": median, "min": v[0], "max": v[n - 1], "n": n}))
}

fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    serde_json::json!({
        "hostname": read("/proc/sys/kernel/hostname").trim(),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg": read("/proc/loadavg").split_whitespace().next().and_then(|l| l.parse::<f64>().ok()),
    })
}

/// The table on stdout and the rows of the JSON report.
fn report(s: &Samples, pods: usize) -> Vec<serde_json::Value> {
    println!(
        "{:<42} {:>22} {:>22} {:>7}",
        "figure (ms)", "berthd median [min-max]", "containerd median [min-max]", "ratio"
    );
    let mut rows = Vec::new();
    for fig in [
        FIG_START1,
        FIG_DOWN1,
        FIG_STARTN,
        FIG_STARTN_EACH,
        FIG_DOWNN,
    ] {
        let (b, c) = (stats(s.get(fig, "berthd")), stats(s.get(fig, "containerd")));
        let med = |x: &Option<serde_json::Value>| x.as_ref().and_then(|v| v["median"].as_f64());
        let ratio = match (med(&b), med(&c)) {
            (Some(b), Some(c)) if c > 0.0 => Some(b / c),
            _ => None,
        };
        let show = |x: &Option<serde_json::Value>| {
            x.as_ref().map_or("-".to_string(), |v| {
                format!(
                    "{:.1} [{:.1}-{:.1}]",
                    v["median"].as_f64().unwrap_or(0.0),
                    v["min"].as_f64().unwrap_or(0.0),
                    v["max"].as_f64().unwrap_or(0.0)
                )
            })
        };
        let name = fig.replace('N', &pods.to_string());
        println!(
            "{name:<42} {:>22} {:>22} {:>7}",
            show(&b),
            show(&c),
            ratio.map_or("-".into(), |r| format!("{r:.2}x"))
        );
        rows.push(serde_json::json!({
            "name": name, "unit": "ms", "berth": b, "peer": c, "peer_name": "containerd 1.6 CRI",
            "ratio": ratio, "target": 0.5,
        }));
    }
    rows
}

async fn run(args: &Args, dir: &std::path::Path) -> anyhow::Result<Samples> {
    let registry = procs::Registry::start(dir)?;
    let pause = daemons::push_busybox(
        &registry.addr,
        "bench/pause:3.10",
        serde_json::json!({"Entrypoint": ["sleep", "1000000"]}),
    )
    .await?;
    let busybox = daemons::push_busybox(
        &registry.addr,
        "bench/busybox:1",
        serde_json::json!({"Cmd": ["sh"]}),
    )
    .await?;
    let targets = [
        Target::new(
            Runtime::berthd(dir, &registry.addr, &pause, &args.berthd_log_level)?,
            &busybox,
        )
        .await?,
        Target::new(Runtime::containerd(dir, &registry.addr, &pause)?, &busybox).await?,
    ];
    let mut s = Samples::default();
    let res = async {
        // Warm-up (pulls the sandbox image, writes the first IPAM and CNI state): not measured.
        for t in &targets {
            let mut scratch = Samples::default();
            single(t, 0, &mut scratch).await?;
        }
        for round in 1..=args.rounds {
            for k in 0..2 {
                single(&targets[(round + k) % 2], round, &mut s).await?;
            }
        }
        for b in 0..args.batches {
            for k in 0..2 {
                batch(&targets[(b + k) % 2], b, args.pods, &mut s).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    for t in &targets {
        t.clean().await;
    }
    res?;
    drop(targets);
    drop(registry);
    Ok(s)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("berth-cri-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let machine = machine();
    let started = Instant::now();
    let res = run(&args, &dir).await;
    if let Some(keep) = &args.berthd_log {
        if let Err(e) = std::fs::copy(dir.join("berthd").join("berthd.log"), keep) {
            eprintln!(
                "warning: cannot keep berthd's log in {}: {e}",
                keep.display()
            );
        }
    }
    procs::remove_dir(&dir);
    let s = res?;
    let rows = report(&s, args.pods);
    println!("elapsed {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"section": "cri", "machine": machine, "rows": rows});
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
