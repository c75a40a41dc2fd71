//! berth-runc-bench: times `run` of /bin/true in a busybox bundle and the
//! create/start/delete split, for berth-runc and Debian's runc in the same run,
//! interleaved; prints medians, per-pair ratios, CPU time and peak RSS (wait4
//! rusage of each runtime invocation, which includes the processes it reaped).
//! Usage: `cargo build --release -p berth-oci && target/release/berth-runc-bench [N] [RUNC]`.
//! It must never touch anything outside its own temp dir and cgroup names.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

struct Runtime {
    bin: PathBuf,
    root: PathBuf,
}

fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let runc = PathBuf::from(
        std::env::args()
            .nth(2)
            .unwrap_or_else(|| "/usr/sbin/runc".into()),
    );
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
    let b = bundle(&tmp.join("bundle"))?;
    let bs = b.to_string_lossy().into_owned();
    let rts = [
        Runtime {
            bin: berth,
            root: tmp.join("root-berth"),
        },
        Runtime {
            bin: runc,
            root: tmp.join("root-runc"),
        },
    ];
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
    println!("berth-runc-bench: {n} interleaved rounds, bundle {bs} (/bin/true)");
    println!(
        "{:<8} {:>13} {:>13} {:>10} {:>12} {:>12} {:>14} {:>14}",
        "phase",
        "berth wall ms",
        "runc wall ms",
        "ratio",
        "berth cpu ms",
        "runc cpu ms",
        "berth rss KiB",
        "runc rss KiB"
    );
    for (pi, ph) in phases.iter().enumerate() {
        let col = |ri: usize, f: fn(&Sample) -> f64| median(res[ri][pi].iter().map(f).collect());
        let ratios: Vec<f64> = res[0][pi]
            .iter()
            .zip(&res[1][pi])
            .map(|(a, b)| a.wall_ms / b.wall_ms)
            .collect();
        let maxrss = |ri: usize| res[ri][pi].iter().map(|s| s.rss_kib).max().unwrap_or(0);
        println!(
            "{:<8} {:>13.2} {:>13.2} {:>10.3} {:>12.2} {:>12.2} {:>14} {:>14}",
            ph,
            col(0, |s| s.wall_ms),
            col(1, |s| s.wall_ms),
            median(ratios),
            col(0, |s| s.cpu_ms),
            col(1, |s| s.cpu_ms),
            maxrss(0),
            maxrss(1)
        );
    }
    println!("(ratio = median of per-pair berth/runc wall time; rss = max ru_maxrss of the invocation and what it reaped)");
    let _ = std::fs::remove_dir_all(&tmp);
    // runc leaves the parent level of the cgroups path behind: remove the empty dirs.
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let _ = std::fs::remove_dir(e.path().join("berth-bench"));
        }
    }
    Ok(())
}
