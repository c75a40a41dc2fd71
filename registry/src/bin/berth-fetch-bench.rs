//! berth-fetch-bench: blob fetch throughput of berth-registry against curl, from one loopback registry
//! in the same run.
//!
//! It starts Debian's docker-registry on a free 127.0.0.1 port with its storage in a temp dir, pushes an
//! image of random (incompressible) layers with berth-registry's push API, then fetches every blob N
//! times: with berth-registry (all blobs concurrently, sha256 of every byte like a real pull, and once
//! more without hashing), and with `curl -s -o /dev/null` (one process, keep-alive, sequential; and
//! `--parallel`). It prints wall time, MB/s and CPU seconds of each. Loopback only; it kills the registry
//! it started (by pid) and removes its temp dir.
//!
//! Usage: `berth-fetch-bench [--layers N] [--layer-mib M] [--iterations I]`

#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_image::oci::{media, Descriptor};
use berth_registry::{ClientConfig, Reference, RegistryClient, Repository, RequestOptions};
use bytes::Bytes;
use nix::sys::resource::{getrusage, UsageWho};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    layers: usize,
    layer_mib: usize,
    iterations: usize,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut a = Args {
        layers: 4,
        layer_mib: 64,
        iterations: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<usize, BoxError> {
            Ok(it
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .parse()?)
        };
        match flag.as_str() {
            "--layers" => a.layers = value()?,
            "--layer-mib" => a.layer_mib = value()?,
            "--iterations" => a.iterations = value()?,
            "-h" | "--help" => {
                println!("berth-fetch-bench [--layers N] [--layer-mib M] [--iterations I]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(a)
}

/// CPU seconds (user + system) of this process or of its reaped children.
fn cpu(who: UsageWho) -> f64 {
    getrusage(who)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// CPU seconds a live process has used so far (from /proc/PID/stat, in clock ticks of 1/100 s).
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the ')' field 3 (state) is index 0: utime is field 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

/// The registry we started; killed by pid and its dir removed on drop.
struct Registry {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_registry() -> Result<Registry, BoxError> {
    let dir = std::env::temp_dir().join(format!("berth-fetch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("registry.log"))?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start docker-registry (Debian's docker-registry): {e}"))?;
    let reg = Registry { child, dir, addr };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&reg.addr).is_err() {
        if Instant::now() > deadline {
            return Err("docker-registry did not listen within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(reg)
}

/// `n` pseudo-random bytes (xorshift): incompressible, cheap to make.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

async fn push_image(repo: &Repository, args: &Args) -> Result<Vec<Descriptor>, BoxError> {
    let mut layers = Vec::new();
    for i in 0..args.layers {
        let data = random_bytes(args.layer_mib << 20, 0x9e37_79b9_7f4a_7c15 ^ i as u64);
        layers.push(
            repo.push_blob(media::OCI_LAYER_GZIP, Bytes::from(data))
                .await?,
        );
    }
    let config = repo
        .push_blob(
            media::OCI_CONFIG,
            Bytes::from_static(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#),
        )
        .await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    repo.push_manifest(
        "bench",
        media::OCI_MANIFEST,
        Bytes::from(serde_json::to_vec(&manifest)?),
    )
    .await?;
    let mut all = vec![config];
    all.extend(layers);
    Ok(all)
}

/// Fetch every blob concurrently; with `hash`, verify each (sha256 of every byte).
async fn fetch_all(repo: &Repository, blobs: &[Descriptor], hash: bool) -> Result<u64, BoxError> {
    let mut tasks = Vec::new();
    for d in blobs {
        let repo = repo.clone();
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            if hash {
                let mut s = repo.fetch_blob(&d, 0).await?.verified()?;
                while let Some(c) = s.next_chunk().await {
                    n += c?.len() as u64;
                }
            } else {
                let mut s = repo.fetch_blob(&d, 0).await?;
                while let Some(c) = s.next_chunk().await {
                    n += c?.len() as u64;
                }
            }
            Ok::<u64, berth_registry::RegistryError>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}

fn curl(urls: &[String], parallel: bool) -> Result<(), BoxError> {
    let mut cmd = Command::new("curl");
    cmd.arg("-s").arg("--no-progress-meter").arg("--fail");
    if parallel {
        cmd.arg("--parallel").arg("--parallel-max").arg("8");
    }
    for u in urls {
        cmd.arg("-o").arg("/dev/null").arg(u);
    }
    let status = cmd.status().map_err(|e| format!("cannot run curl: {e}"))?;
    if !status.success() {
        return Err(format!("curl failed: {status}").into());
    }
    Ok(())
}

struct Sample {
    wall: f64,
    cpu: f64,
    server_cpu: f64,
}

fn report(name: &str, bytes: u64, samples: &[Sample]) {
    let mut mbs: Vec<f64> = samples
        .iter()
        .map(|s| bytes as f64 / 1e6 / s.wall)
        .collect();
    mbs.sort_by(f64::total_cmp);
    let median = mbs[mbs.len() / 2];
    let cpu: f64 = samples.iter().map(|s| s.cpu).sum::<f64>() / samples.len() as f64;
    let server: f64 = samples.iter().map(|s| s.server_cpu).sum::<f64>() / samples.len() as f64;
    let runs: Vec<String> = mbs.iter().map(|m| format!("{m:.0}")).collect();
    println!(
        "{name:<28} median {median:>6.0} MB/s (runs: {}), client CPU {cpu:.2} s/run ({:.2} s/GB), registry CPU {server:.2} s/run",
        runs.join(", "),
        cpu / (bytes as f64 / 1e9)
    );
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let reg = start_registry()?;
    let client = RegistryClient::new(ClientConfig::default());
    let reference = Reference::parse(&format!("{}/bench/blobs:bench", reg.addr))?;
    let opts = RequestOptions {
        plain_http: true,
        ..Default::default()
    };
    let repo = client.repository(&reference, &opts)?;
    let blobs = rt.block_on(push_image(&repo, &args))?;
    let bytes: u64 = blobs.iter().map(|d| d.size as u64).sum();
    let urls: Vec<String> = blobs
        .iter()
        .map(|d| format!("http://{}/v2/bench/blobs/blobs/{}", reg.addr, d.digest))
        .collect();
    println!(
        "{} blobs, {:.1} MB in all, from docker-registry at {} (pid {}), {} iterations",
        blobs.len(),
        bytes as f64 / 1e6,
        reg.addr,
        reg.child.id(),
        args.iterations
    );
    // Warm up the page cache and the connection pool.
    rt.block_on(fetch_all(&repo, &blobs, false))?;
    curl(&urls, false)?;

    let pid = reg.child.id();
    let mut results: Vec<(&str, Vec<Sample>)> = vec![
        ("berth-registry (sha256)", Vec::new()),
        ("berth-registry (no hash)", Vec::new()),
        ("curl (sequential)", Vec::new()),
        ("curl --parallel", Vec::new()),
    ];
    for _ in 0..args.iterations {
        for (i, (_, samples)) in results.iter_mut().enumerate() {
            let (c0, k0, s0) = (
                cpu(UsageWho::RUSAGE_SELF),
                cpu(UsageWho::RUSAGE_CHILDREN),
                proc_cpu(pid),
            );
            let t0 = Instant::now();
            match i {
                0 | 1 => {
                    let got = rt.block_on(fetch_all(&repo, &blobs, i == 0))?;
                    if got != bytes {
                        return Err(format!("fetched {got} bytes, expected {bytes}").into());
                    }
                }
                2 => curl(&urls, false)?,
                _ => curl(&urls, true)?,
            }
            let wall = t0.elapsed().as_secs_f64();
            let cpu_used = if i < 2 {
                cpu(UsageWho::RUSAGE_SELF) - c0
            } else {
                cpu(UsageWho::RUSAGE_CHILDREN) - k0
            };
            samples.push(Sample {
                wall,
                cpu: cpu_used,
                server_cpu: proc_cpu(pid) - s0,
            });
        }
    }
    for (name, samples) in &results {
        report(name, bytes, samples);
    }
    drop(reg);
    Ok(())
}
