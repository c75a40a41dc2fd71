//! berth-pull-bench: pull throughput of berthd's server-side pull (the Transfer service, as containerd 2.x's
//! `ctr images pull` drives it) against Debian's containerd 1.6 with `ctr images pull`, and `ctr images pull`
//! (client-side) through berthd, in one run, interleaved, caches dropped before every pull. Not a test.
//!
//! It starts its own docker-registry, berthd (the release binary next to this one) and containerd on private
//! dirs, pushes an image of incompressible layers (default 5 × 40 MiB, gzip), and for every round and variant
//! removes the image with `images rm --sync`, drops the page cache, pulls (fetch + unpack) and records wall
//! time, MB/s (compressed bytes), CPU seconds of the daemon and of its client, and the daemon's peak RSS
//! during the pull (VmHWM after a clear_refs reset). Last, the unpack throughput of berth-image's unpacker on
//! the same layers. Medians are printed as a table.
//!
//! Build: `cargo build --release -p berth-daemon -p berth-shim`; run as root:
//! `target/release/berth-pull-bench [--layers 5] [--layer-mib 40] [--rounds 5] [--dir DIR]`.
//! It stops everything it started, by pid, and removes its dir; it touches nothing else.
#![forbid(unsafe_code)]

mod image;
mod procs;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Parser;

use procs::{children_cpu, drop_caches, peak_rss_kib, proc_cpu, reset_peak, self_cpu};

/// Compare server-side pulls through berthd with Debian's containerd + ctr.
#[derive(Debug, Parser)]
#[command(name = "berth-pull-bench")]
struct Args {
    /// Layers in the image.
    #[arg(long, default_value_t = 5)]
    layers: usize,
    /// MiB of incompressible data per layer.
    #[arg(long, default_value_t = 40)]
    layer_mib: usize,
    /// Rounds (each runs every variant once, in a rotating order).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Work dir (default /tmp/berth-pull-bench-<pid>); removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work dir.
    #[arg(long)]
    keep: bool,
    /// Write the bench protocol's JSON (section "pull") here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One measured pull.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: f64,
    daemon_cpu: f64,
    client_cpu: f64,
    peak_kib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    BerthTransfer,
    ContainerdCtr,
    BerthCtr,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::BerthTransfer => "berthd, Transfer (server-side pull)",
            Variant::ContainerdCtr => "containerd 1.6, ctr images pull",
            Variant::BerthCtr => "berthd, ctr images pull (client-side)",
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root (berthd and containerd mount overlayfs)");
    }
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("berth-pull-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let res = rt.block_on(run(&args, &dir));
    if !args.keep {
        procs::remove_dir(&dir);
    }
    res
}

async fn run(args: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    let registry = procs::Registry::start(dir)?;
    eprintln!(
        "pushing {} × {} MiB layers to {}",
        args.layers, args.layer_mib, registry.addr
    );
    let img = image::push(
        &registry.addr,
        args.layers,
        args.layer_mib,
        &dir.join("layers"),
    )
    .await?;
    let reference = format!("{}/bench/img:latest", registry.addr);
    let mut berthd = procs::Berthd::start(dir)?;
    let mut containerd = procs::Containerd::start(dir)?;
    let channel = procs::connect(&berthd.address()).await?;
    let mut samples: Vec<(Variant, Sample)> = Vec::new();
    let order = [
        Variant::BerthTransfer,
        Variant::ContainerdCtr,
        Variant::BerthCtr,
    ];
    for round in 0..args.rounds {
        for k in 0..order.len() {
            let v = order[(round + k) % order.len()];
            let s = match v {
                Variant::BerthTransfer => {
                    procs::ctr(&berthd.address(), &["images", "rm", "--sync", &reference]);
                    drop_caches();
                    let pid = berthd.pid();
                    reset_peak(pid);
                    let (d0, c0, t0) = (proc_cpu(pid), self_cpu(), Instant::now());
                    image::transfer_pull(&channel, &reference).await?;
                    Sample {
                        wall: t0.elapsed().as_secs_f64(),
                        daemon_cpu: proc_cpu(pid) - d0,
                        client_cpu: self_cpu() - c0,
                        peak_kib: peak_rss_kib(pid),
                    }
                }
                Variant::ContainerdCtr | Variant::BerthCtr => {
                    let (addr, pid) = if v == Variant::ContainerdCtr {
                        (containerd.address(), containerd.pid())
                    } else {
                        (berthd.address(), berthd.pid())
                    };
                    procs::ctr(&addr, &["images", "rm", "--sync", &reference]);
                    drop_caches();
                    reset_peak(pid);
                    let (d0, c0, t0) = (proc_cpu(pid), children_cpu(), Instant::now());
                    let ok = procs::ctr(&addr, &["images", "pull", "--plain-http", &reference]);
                    if !ok {
                        bail!("ctr images pull through {} failed", addr.display());
                    }
                    Sample {
                        wall: t0.elapsed().as_secs_f64(),
                        daemon_cpu: proc_cpu(pid) - d0,
                        client_cpu: children_cpu() - c0,
                        peak_kib: peak_rss_kib(pid),
                    }
                }
            };
            eprintln!(
                "round {round} {:<40} {:6.2} s  {:7.1} MB/s  cpu {:.2}+{:.2} s  peak {} MiB",
                v.label(),
                s.wall,
                img.bytes as f64 / 1e6 / s.wall,
                s.daemon_cpu,
                s.client_cpu,
                s.peak_kib / 1024
            );
            samples.push((v, s));
        }
    }
    let unpack = image::unpack_throughput(&img, &dir.join("unpack"))?;
    berthd.stop();
    containerd.stop();
    drop(registry);

    println!(
        "\nImage: {} layers, {:.1} MB compressed (incompressible data), {} rounds, page cache dropped before each pull",
        args.layers,
        img.bytes as f64 / 1e6,
        args.rounds
    );
    println!("\n| variant | median wall s | median MB/s | median CPU s (daemon + client) | median daemon peak RSS MiB |");
    println!("|---|---|---|---|---|");
    let mut medians = Vec::new();
    for v in order {
        let of: Vec<Sample> = samples
            .iter()
            .filter(|(x, _)| *x == v)
            .map(|(_, s)| *s)
            .collect();
        let wall = median(of.iter().map(|s| s.wall).collect());
        let d = median(of.iter().map(|s| s.daemon_cpu).collect());
        let c = median(of.iter().map(|s| s.client_cpu).collect());
        let peak = median(of.iter().map(|s| s.peak_kib as f64).collect()) / 1024.0;
        let mbs = img.bytes as f64 / 1e6 / wall;
        println!(
            "| {} | {wall:.2} | {mbs:.1} | {:.2} ({d:.2} + {c:.2}) | {peak:.1} |",
            v.label(),
            d + c
        );
        medians.push((v, mbs, d + c));
    }
    let get = |v: Variant| medians.iter().find(|(x, _, _)| *x == v).copied();
    if let (Some((_, bm, bc)), Some((_, cm, cc))) =
        (get(Variant::BerthTransfer), get(Variant::ContainerdCtr))
    {
        println!(
            "\nberthd Transfer vs containerd + ctr: {:.2}x the throughput, {:.2}x the CPU",
            bm / cm,
            bc / cc
        );
    }
    if let Some(path) = &args.json {
        write_json(path, &samples, img.bytes as f64, args.layers)?;
    }
    println!(
        "unpack (berth-image's unpacker, gzip layers from the page cache into a directory): {:.1} MB/s of uncompressed tar ({:.2} s for {:.1} MB)",
        unpack.1 as f64 / 1e6 / unpack.0,
        unpack.0,
        unpack.1 as f64 / 1e6
    );
    Ok(())
}

/// The bench protocol's rows: wall time (target: half of containerd's, i.e. ≥ 2× the
/// throughput), MB/s and CPU, berthd's server-side pull and `ctr` through berthd vs containerd.
fn write_json(
    path: &std::path::Path,
    samples: &[(Variant, Sample)],
    bytes: f64,
    layers: usize,
) -> anyhow::Result<()> {
    use berth_bench_report::{Report, Row};
    let of = |v: Variant, f: fn(&Sample) -> f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|(x, _)| *x == v)
            .map(|(_, s)| f(s))
            .collect()
    };
    let mb = bytes / 1e6;
    let peer = Variant::ContainerdCtr;
    let peer_name = "containerd + ctr";
    let mut report = Report::new("pull");
    for (v, what) in [
        (Variant::BerthTransfer, "berthd Transfer"),
        (Variant::BerthCtr, "ctr via berthd"),
    ] {
        let name = format!("pull {mb:.0} MB {layers} layers, {what}");
        let wall = Row::compare(
            &name,
            "s",
            &of(v, |s| s.wall),
            peer_name,
            &of(peer, |s| s.wall),
        );
        report.rows.push(if v == Variant::BerthTransfer {
            wall.target(0.5)
        } else {
            wall
        });
        let mbs = |v| -> Vec<f64> { of(v, |s| s.wall).iter().map(|w| mb / w).collect() };
        report.rows.push(Row::compare(
            &format!("pull throughput, {what}"),
            "MB/s",
            &mbs(v),
            peer_name,
            &mbs(peer),
        ));
        report.rows.push(Row::compare(
            &format!("pull CPU (daemon + client), {what}"),
            "s",
            &of(v, |s| s.daemon_cpu + s.client_cpu),
            peer_name,
            &of(peer, |s| s.daemon_cpu + s.client_cpu),
        ));
    }
    report
        .write(path)
        .with_context(|| format!("writing {}", path.display()))
}
