//! Benchmark (ignored by default): `berth run --rm IMAGE ID /bin/true` through berthd against
//! `ctr run --rm IMAGE ID /bin/true` on Debian's containerd (both with their state dir on a
//! private tmpfs, roots on disk), same busybox image in both,
//! interleaved rounds; medians of wall time and of the client's own CPU time, and the ratio
//! (target: berth/berthd at most 0.5x ctr/containerd). Also the CPU `berth version` and
//! `ctr version` spend per call. Root only. Run it with the binaries of the profile to measure:
//!
//!   cargo build --release --bins -p berth-daemon -p berth-shim -p berth-oci -p berth-cli
//!   BERTH_TEST_PROFILE=release cargo test --release -p berth-tests --test cli_bench -- --ignored --nocapture
//!
//! `BERTH_BENCH_ROUNDS=N` sets the rounds (default 20).

use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::cli_fixture::{text, CliFixture, BUSYBOX};
use berth_tests::containerd::Containerd;

/// CPU seconds (user + system) of the children this process has waited for.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a valid pointer to that struct.
    let r = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(r, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Run `cmd` to completion; returns (wall, client CPU); panics when it fails.
fn timed(cmd: &mut Command) -> (Duration, Duration) {
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let wall = t0.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (wall, children_cpu() - cpu0)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A berthd whose state dir is a private tmpfs, as /run is on a normal host (this VM's /run is
/// on disk), and a tmpfs for containerd's state dir too, so both daemons get the same.
fn bench_fixture() -> CliFixture {
    let dir = berth_tests::TestDir::new("cli-bench");
    let guard = berth_tests::Guard::new();
    for state in [dir.subdir("state"), dir.subdir("containerd/state")] {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0711", "tmpfs"])
            .arg(&state)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mount a tmpfs on {}", state.display());
        guard.mount(&state);
    }
    let config_path = dir.join("config.toml");
    berth_tests::task_fixture::write_config(&config_path, "");
    let daemon = berth_tests::DaemonConfig::new(dir.path())
        .arg("--config")
        .arg(&config_path)
        .start();
    let ns = berth_tests::unique_id("cli-bench-ns");
    guard.cgroup(format!("/{ns}"));
    let fifo_dir = dir.join("state/fifo");
    CliFixture {
        fx: berth_tests::task_fixture::TaskFixture {
            daemon,
            guard,
            ns,
            config_path,
            dir,
        },
        fifo_dir,
    }
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn berth_run_vs_ctr_run() {
    if !berth_tests::require_root() {
        return;
    }
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let f = bench_fixture();
    let layout = f.seed_busybox();
    let Some(cd) = Containerd::start(f.fx.dir.path()) else {
        return;
    };
    let cns = cd.namespace("clibench");
    let archive = f.fx.dir.join("busybox.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&layout.path)
        .arg("-cf")
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"])
        .output()
        .expect("tar");
    assert!(tar.status.success());
    let out = cd
        .ctr(&cns)
        .args([
            "images",
            "import",
            "--base-name",
            "docker.io/library/busybox",
        ])
        .arg(&archive)
        .output()
        .expect("ctr import");
    assert!(out.status.success(), "ctr import: {}", text(&out.stderr));
    let berth = |id: &str| {
        let mut c = f.berth();
        c.args(["run", "--rm", "--net", "none", BUSYBOX, id, "/bin/true"]);
        c
    };
    let ctr = |id: &str| {
        let mut c = cd.ctr(&cns);
        c.args(["run", "--rm", BUSYBOX, id, "/bin/true"]);
        c
    };
    // Warm-up: the first run unpacks (berth) and loads everything into the page cache.
    timed(&mut berth("warm"));
    timed(&mut ctr("warm"));
    let (mut bw, mut bc, mut cw, mut cc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let id = format!("r{i}");
        let (w, c) = timed(&mut berth(&id));
        bw.push(w);
        bc.push(c);
        let (w, c) = timed(&mut ctr(&id));
        cw.push(w);
        cc.push(c);
    }
    let (bw, bc, cw, cc) = (
        median(&mut bw),
        median(&mut bc),
        median(&mut cw),
        median(&mut cc),
    );
    println!("run --rm /bin/true, {rounds} interleaved rounds, medians:");
    println!(
        "  berth + berthd     wall {:7.1} ms   client CPU {:6.2} ms",
        ms(bw),
        ms(bc)
    );
    println!(
        "  ctr + containerd   wall {:7.1} ms   client CPU {:6.2} ms",
        ms(cw),
        ms(cc)
    );
    println!(
        "  ratio (wall)       {:.2}x   (target <= 0.5x)",
        bw.as_secs_f64() / cw.as_secs_f64()
    );

    // Start-up CPU of the client alone: `version` calls, 100 each.
    let n = 100;
    let (mut bv, mut cv) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let mut b = f.berth();
        b.arg("version");
        bv += timed(&mut b).1;
        let mut c = cd.ctr(&cns);
        c.arg("version");
        cv += timed(&mut c).1;
    }
    println!(
        "version, {n} calls: berth {:.2} ms CPU each, ctr {:.2} ms CPU each",
        ms(bv) / n as f64,
        ms(cv) / n as f64
    );
    assert!(f.ok(&["containers", "ls", "-q"]).trim().is_empty());
    drop(cd);
    // Dropping the fixture stops berthd, unmounts the tmpfs and checks nothing is left.
    drop(f);
}
