//! berthd-bench: berthd's figures beside Debian's containerd 1.6 (not a test). Both daemons run from private dirs
//! under the work dir (root on disk; state on a private tmpfs unless said otherwise), with runc as the runtime on
//! both sides, the same busybox rootfs and the same containerd API calls:
//! - events: exit-to-subscriber latency through a `ctr events` subscriber (SIGKILL of a container's init from the
//!   host), state dir on a tmpfs and on disk; fan-out to N gRPC subscribers (time until the last one has it);
//! - the ladder (memory, recovery, scale): daemon RSS idle and at each container count, Tasks.List/Get and exit
//!   latency at each count, and recovery (SIGKILL, restart, time until every task is listed RUNNING);
//! - `--load`: berthd alone with 1,000 containers and 100 subscribers of which some never read (issue 13).
//!
//! Build with `cargo build --release -p berth-daemon -p berth-shim`, run as root:
//! `target/release/berthd-bench [--only events,memory,recovery,scale] [--quick] [--json FILE]` (see `--help`).
//! Writes `scale.md` and `scale.svg` next to the JSON file. Everything it started (containers, shims, daemons,
//! mounts, cgroups, dirs) is removed at the end, also after an error or Ctrl-C.
#![forbid(unsafe_code)]

mod api;
mod daemon;
mod events;
mod load;
mod report;
mod sections;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;

use daemon::{Daemon, Kind};
use report::Report;

/// Measure berthd beside containerd: events, memory, recovery and scale; or berthd under load.
#[derive(Debug, Parser)]
#[command(name = "berthd-bench")]
struct Args {
    /// Sections, comma-separated: events, memory, recovery, scale.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "events,memory,recovery,scale"
    )]
    only: Vec<String>,
    /// A smoke run: few samples, 20 subscribers, counts 10/100 (overrides the counts below).
    #[arg(long)]
    quick: bool,
    /// Exit-latency samples per daemon and state dir kind.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Subscribers for the fan-out figure (0 = skip it).
    #[arg(long, default_value_t = 100)]
    fanout: usize,
    /// Fan-out samples per daemon.
    #[arg(long, default_value_t = 10)]
    fanout_samples: usize,
    /// Container counts of the scale section.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    scale: Vec<usize>,
    /// Container counts of the memory section (the daemons' RSS idle is always taken).
    #[arg(long, value_delimiter = ',', default_value = "50,500")]
    memory: Vec<usize>,
    /// Container counts of the recovery section.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    recovery: Vec<usize>,
    /// Tasks.List/Get samples per count.
    #[arg(long, default_value_t = 10)]
    ladder_samples: usize,
    /// Containers started (and removed) concurrently.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Run only berthd's side of the ladder (e.g. when containerd is not installed).
    #[arg(long)]
    no_peer: bool,
    /// Load mode (issue 13): berthd alone with `--load-containers` containers and `--load-subscribers`
    /// subscribers, `--load-stalled` of which never read.
    #[arg(long)]
    load: bool,
    #[arg(long, default_value_t = 1000)]
    load_containers: usize,
    #[arg(long, default_value_t = 100)]
    load_subscribers: usize,
    #[arg(long, default_value_t = 20)]
    load_stalled: usize,
    /// Load mode: at most this many extra run/kill/delete cycles (6 events each) to push stalled subscribers
    /// past their queue.
    #[arg(long, default_value_t = 300)]
    load_churn: usize,
    /// Load mode: keep berthd's state dir on disk instead of a private tmpfs.
    #[arg(long)]
    state_on_disk: bool,
    /// Write the results as JSON (the bench protocol) to FILE; scale.md and scale.svg go next to it.
    #[arg(long)]
    json: Option<PathBuf>,
    /// OCI runtime of both daemons' shims (containerd's runc shim finds runc on PATH).
    #[arg(long, default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// Work dir (default /tmp/berthd-bench-<pid>); removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// What every section needs.
pub struct Ctx {
    pub work: PathBuf,
    pub bindir: PathBuf,
    pub runtime: PathBuf,
    pub rootfs: PathBuf,
    pub cgroup_parent: String,
    pub parallel: usize,
    pub samples: usize,
    pub fanout: usize,
    pub fanout_samples: usize,
}

async fn run(
    args: &Args,
    ctx: &Ctx,
    fleet: &mut Vec<Daemon>,
    report: &mut Report,
) -> anyhow::Result<()> {
    if args.load {
        report.sections.push("load".into());
        return load::run(args, ctx, fleet, report).await;
    }
    let has = |s: &str| args.only.iter().any(|o| o == s);
    for s in &args.only {
        if !["events", "memory", "recovery", "scale"].contains(&s.as_str()) {
            anyhow::bail!("unknown section {s:?} (events, memory, recovery, scale)");
        }
        report.sections.push(s.clone());
    }
    if has("events") {
        let t = Instant::now();
        sections::events(ctx, fleet, report).await?;
        println!("events section: {:.0} s", t.elapsed().as_secs_f64());
    }
    let (scale, memory, recovery) = if args.quick {
        (vec![10, 100], vec![50], vec![100])
    } else {
        (
            args.scale.clone(),
            args.memory.clone(),
            args.recovery.clone(),
        )
    };
    let mut steps = Vec::new();
    let mut recover_at = Vec::new();
    if has("scale") {
        steps.extend(&scale);
        recover_at.extend(&scale);
    }
    if has("memory") {
        steps.extend(&memory);
    }
    if has("recovery") {
        steps.extend(&recovery);
        recover_at.extend(&recovery);
    }
    steps.sort_unstable();
    steps.dedup();
    if has("scale") || has("memory") || has("recovery") {
        let plan = sections::Ladder {
            steps,
            recover_at,
            samples: if args.quick { 3 } else { args.ladder_samples },
        };
        let kinds: &[Kind] = if args.no_peer {
            &[Kind::Berthd]
        } else {
            &[Kind::Berthd, Kind::Containerd]
        };
        for &kind in kinds {
            let t = Instant::now();
            sections::ladder(ctx, kind, &plan, fleet, report).await?;
            println!("{} ladder: {:.0} s", kind.name(), t.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

/// Wait for Ctrl-C or SIGTERM.
async fn interrupted() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Our own pid and those of our ancestors: a wrapper (`timeout`, `perf record`, `strace`) names the work dir in its
/// command line too, and must outlive the sweep.
fn self_and_ancestors() -> Vec<u32> {
    let mut out = vec![std::process::id()];
    let mut pid = std::process::id();
    while pid > 1 {
        // The ppid is the 2nd field after the parenthesised comm (which may itself contain spaces).
        let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1.to_string();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
        else {
            break;
        };
        out.push(ppid);
        pid = ppid;
    }
    out
}

/// Last resort after the daemons' own cleanup: SIGKILL what is left of this run (container inits in our cgroup
/// parent, shims whose command line names our work dir; never ourselves or our ancestors), remove the cgroup dirs,
/// containerd's runc root for our namespace, and the work dir.
fn sweep(work: &Path, cgroup_parent: &str) {
    let spare = self_and_ancestors();
    let needle = work.display().to_string();
    let mut killed = 0;
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if spare.contains(&pid) {
                continue;
            }
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cgroup = std::fs::read_to_string(p.path().join("cgroup")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle)
                || cgroup
                    .lines()
                    .any(|l| l.contains(&format!(":/{cgroup_parent}/")))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed += 1;
            }
        }
    }
    if killed > 0 {
        eprintln!("berthd-bench: killed {killed} leftover processes of this run");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
        hierarchies.extend(ctrls.flatten().map(|c| c.path()));
    }
    for h in hierarchies {
        let parent = h.join(cgroup_parent);
        if let Ok(children) = std::fs::read_dir(&parent) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        let _ = std::fs::remove_dir(&parent);
    }
    let _ = std::fs::remove_dir(format!("/run/containerd/runc/{}", api::NS));
    let _ = std::fs::remove_dir_all(work);
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let bindir = exe
        .parent()
        .context("bench binary has no directory")?
        .to_path_buf();
    let work = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/berthd-bench-{}", std::process::id())));
    std::fs::create_dir_all(&work)?;
    let ctx = Ctx {
        rootfs: api::make_rootfs(&work)?,
        work: work.clone(),
        bindir,
        runtime: args.runtime.clone(),
        cgroup_parent: format!("berthd-bench-{}", std::process::id()),
        parallel: args.parallel,
        samples: if args.quick { 5 } else { args.samples },
        fanout: if args.quick {
            args.fanout.min(20)
        } else {
            args.fanout
        },
        fanout_samples: if args.quick { 3 } else { args.fanout_samples },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut fleet: Vec<Daemon> = Vec::new();
    let mut report = Report::default();
    let result = rt.block_on(async {
        tokio::select! {
            r = run(&args, &ctx, &mut fleet, &mut report) => r,
            r = interrupted() => r.and(Err(anyhow::anyhow!("interrupted"))),
        }
    });
    if let Err(e) = &result {
        eprintln!("berthd-bench: {e:#}; cleaning up");
    }
    // Whatever section stopped early left its daemons in the fleet: remove their containers through them.
    for mut d in fleet.drain(..) {
        if let Err(e) = rt.block_on(sections::teardown(&ctx, &mut d)) {
            eprintln!("berthd-bench: cleanup of {}: {e:#}", d.kind.name());
        }
    }
    rt.shutdown_background();
    sweep(&work, &ctx.cgroup_parent);
    report.scale_rows();
    report.print_table();
    if let Some(path) = &args.json {
        report.write_json(path)?;
        report.write_scale(path.parent().unwrap_or(Path::new(".")))?;
    } else {
        report.write_scale(Path::new("."))?;
    }
    println!("\nelapsed {:.0} s", started.elapsed().as_secs_f64());
    result
}
