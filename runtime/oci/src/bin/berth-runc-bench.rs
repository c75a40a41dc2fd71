//! berth-runc-bench: times `run` of /bin/true in a busybox bundle and the
//! create/start/delete split, for berth-runc, Debian's runc and (when installed) crun
//! in the same run, interleaved; prints medians, ratios, CPU time and peak RSS (wait4
//! rusage of each runtime invocation, which includes the processes it reaped), and
//! with `--json FILE` writes them as the bench protocol's rows (tools/bench/run).
//! Usage: `cargo build --release -p berth-oci && target/release/berth-runc-bench [--rounds N]`.
//! crun refuses a hybrid cgroup host whose unified hierarchy lists a controller, so the
//! whole bench runs in a private mount namespace with an empty file bound over
//! /sys/fs/cgroup/unified/cgroup.controllers (every runtime sees the same; the host's
//! cgroup mounts are never changed).
//! It must never touch anything outside its own temp dir and cgroup names.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use berth_bench_report::{Report, Row};
use clap::Parser;

/// berth-runc vs runc (and crun): run, create/start/delete, CPU and peak RSS.
#[derive(Parser)]
#[command(name = "berth-runc-bench")]
struct Args {
    /// Measured rounds (two more warm caches first).
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// runc binary.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runc: PathBuf,
    /// crun binary; skipped when missing.
    #[arg(long, default_value = "/usr/bin/crun")]
    crun: PathBuf,
    /// Write the bench protocol's JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Default, Clone, Copy)]
struct Sample {
    wall_ms: f64,
    cpu_ms: f64,
    rss_kib: i64,
}

fn exec(bin: &Path, args: &[&str]) -> Result<Sample> {
    let t = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pid of our child and pointers to our locals.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{} {:?} failed (status {status:#x})", bin.display(), args);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    Ok(Sample {
        wall_ms,
        cpu_ms: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_kib: ru.ru_maxrss,
    })
}

fn bundle(dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .context("copy /bin/busybox (busybox-static)")?;
    for a in ["true", "sh"] {
        let _ = symlink("busybox", rootfs.join("bin").join(a));
    }
    let mut spec = berth_oci::commands::spec::default_spec();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["root"]["readonly"] = false.into();
    spec["linux"]["cgroupsPath"] = format!("/berth-bench/{}", std::process::id()).into();
    spec["linux"]["namespaces"] = serde_json::json!([
        {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
    ]);
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    Ok(dir.to_path_buf())
}

fn median(v: Vec<f64>) -> f64 {
    berth_bench_report::Stats::of(&v).map_or(0.0, |s| s.median)
}

struct Runtime {
    name: &'static str,
    bin: PathBuf,
    root: PathBuf,
}

/// Enters a private mount namespace where the unified hierarchy lists no controller, so
/// crun accepts the hybrid host (it refuses when cgroup.controllers is non-empty).
fn private_cgroup_view(tmp: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare -m")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / rprivate")?;
    let controllers = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    if controllers.exists() {
        let empty = tmp.join("empty-controllers");
        std::fs::write(&empty, b"")?;
        mount(
            Some(&empty),
            controllers,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .context("bind an empty file over cgroup.controllers")?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.rounds;
    let me = std::env::current_exe()?;
    let berth = me.with_file_name("berth-runc");
    if !berth.exists() {
        bail!(
            "{} missing: cargo build --release -p berth-oci",
            berth.display()
        );
    }
    let tmp = PathBuf::from(format!("/tmp/berth-runc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let res = bench(&args, n, berth, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    // runc leaves the parent level of the cgroups path behind: remove the empty dirs.
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let _ = std::fs::remove_dir(e.path().join("berth-bench"));
        }
    }
    res
}

fn bench(args: &Args, n: usize, berth: PathBuf, tmp: &Path) -> Result<()> {
    let b = bundle(&tmp.join("bundle"))?;
    let bs = b.to_string_lossy().into_owned();
    let mut rts = vec![
        Runtime {
            name: "berth-runc",
            bin: berth,
            root: tmp.join("root-berth"),
        },
        Runtime {
            name: "runc",
            bin: args.runc.clone(),
            root: tmp.join("root-runc"),
        },
    ];
    if args.crun.exists() {
        private_cgroup_view(tmp)?;
        rts.push(Runtime {
            name: "crun",
            bin: args.crun.clone(),
            root: tmp.join("root-crun"),
        });
    } else {
        eprintln!("{} missing: crun skipped", args.crun.display());
    }
    let phases = ["run", "create", "start", "delete"];
    // results[rt][phase] = samples
    let mut res: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); phases.len()]; rts.len()];
    for i in 0..n + 2 {
        for (ri, rt) in rts.iter().enumerate() {
            let root = rt.root.to_string_lossy().into_owned();
            let id = format!("bench-{i}");
            let run = exec(&rt.bin, &["--root", &root, "run", "--bundle", &bs, &id])?;
            let id2 = format!("bench-cs-{i}");
            let create = exec(&rt.bin, &["--root", &root, "create", "--bundle", &bs, &id2])?;
            let start = exec(&rt.bin, &["--root", &root, "start", &id2])?;
            let delete = exec(&rt.bin, &["--root", &root, "delete", "--force", &id2])?;
            if i >= 2 {
                // the first two rounds warm caches
                for (pi, s) in [run, create, start, delete].into_iter().enumerate() {
                    res[ri][pi].push(s);
                }
            }
        }
    }
    println!("berth-runc-bench: {n} interleaved rounds, bundle {bs} (/bin/true); medians");
    print!("{:<8}", "phase");
    for rt in &rts {
        print!(
            " {:>12} {:>10} {:>10}",
            format!("{} ms", rt.name),
            "cpu ms",
            "rss KiB"
        );
    }
    println!();
    let mut report = Report::new("runtime");
    for (pi, ph) in phases.iter().enumerate() {
        let col =
            |ri: usize, f: fn(&Sample) -> f64| -> Vec<f64> { res[ri][pi].iter().map(f).collect() };
        print!("{ph:<8}");
        for ri in 0..rts.len() {
            print!(
                " {:>12.2} {:>10.2} {:>10.0}",
                median(col(ri, |s| s.wall_ms)),
                median(col(ri, |s| s.cpu_ms)),
                median(col(ri, |s| s.rss_kib as f64))
            );
        }
        println!();
        for (ri, peer) in rts.iter().enumerate().skip(1) {
            let wall = Row::compare(
                &format!("{ph} wall"),
                "ms",
                &col(0, |s| s.wall_ms),
                peer.name,
                &col(ri, |s| s.wall_ms),
            );
            report.rows.push(if *ph == "run" && peer.name == "runc" {
                wall.target(0.3)
            } else {
                wall
            });
            report.rows.push(Row::compare(
                &format!("{ph} cpu"),
                "ms",
                &col(0, |s| s.cpu_ms),
                peer.name,
                &col(ri, |s| s.cpu_ms),
            ));
            report.rows.push(Row::compare(
                &format!("{ph} peak RSS"),
                "KiB",
                &col(0, |s| s.rss_kib as f64),
                peer.name,
                &col(ri, |s| s.rss_kib as f64),
            ));
        }
    }
    println!("(rss = ru_maxrss of the invocation and what it reaped)");
    if let Some(path) = &args.json {
        report
            .write(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
