//! Unpack throughput of berth-image's layer unpacker next to GNU `tar -x` on the same inputs, in
//! the same run: a ~200 MB layer of incompressible data (plain and gzip) and a tree of many small
//! files. Run as root in release mode:
//!
//! `cargo run --release -p berth-image --bin berth-unpack-bench [WORK_DIR]`
//!
//! Knobs: `BERTH_BENCH_MB` (size of the big layer, default 200), `BERTH_BENCH_FILES` (small files,
//! default 20000), `BERTH_BENCH_RUNS` (runs per case, best kept, default 3). Neither side fsyncs;
//! the page cache is flushed (`sync`) before every timed run. This tool only writes below its work
//! dir, which it removes at the end.

use std::error::Error;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_image::tarw::{TarHeader, TarWriter};
use berth_image::unpack::{apply, ApplyOptions, Compression};

type Res<T> = Result<T, Box<dyn Error>>;

/// Incompressible bytes (xorshift64*), generated on the fly.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX))
            & !7;
        let n = if n == 0 {
            buf.len().min(self.left as usize)
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn file_header(path: String, size: u64) -> TarHeader {
    TarHeader {
        path: path.into_bytes(),
        kind: b'0',
        mode: 0o644,
        size,
        mtime: 1_767_225_600,
        ..Default::default()
    }
}

fn dir_header(path: String) -> TarHeader {
    TarHeader {
        path: path.into_bytes(),
        kind: b'5',
        mode: 0o755,
        mtime: 1_767_225_600,
        ..Default::default()
    }
}

fn big_tar(path: &Path, mb: u64) -> Res<u64> {
    let mut tw = TarWriter::new(BufWriter::with_capacity(1 << 20, File::create(path)?));
    tw.append(&dir_header("data/".into()), None)?;
    let per = 8u64 << 20;
    let mut left = mb << 20;
    let mut i = 0u64;
    while left > 0 {
        let size = per.min(left);
        let mut noise = Noise {
            state: 0x9E37_79B9_7F4A_7C15 ^ i,
            left: size,
        };
        tw.append(
            &file_header(format!("data/blob-{i:04}"), size),
            Some(&mut noise),
        )?;
        left -= size;
        i += 1;
    }
    tw.finish()?.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

fn small_tar(path: &Path, files: u64) -> Res<u64> {
    let mut tw = TarWriter::new(BufWriter::with_capacity(1 << 20, File::create(path)?));
    let dirs = (files / 100).max(1);
    for d in 0..dirs {
        tw.append(&dir_header(format!("tree/d{d:03}/")), None)?;
        for f in 0..files / dirs {
            let size = 512 + (f * 37 % 3584);
            let mut noise = Noise {
                state: 0x1234_5678 ^ (d << 20) ^ f,
                left: size,
            };
            tw.append(
                &file_header(format!("tree/d{d:03}/file-{f:05}.txt"), size),
                Some(&mut noise),
            )?;
        }
    }
    tw.finish()?.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

fn gzip_file(src: &Path, dst: &Path) -> Res<()> {
    let mut e = flate2::write::GzEncoder::new(
        BufWriter::with_capacity(1 << 20, File::create(dst)?),
        flate2::Compression::default(),
    );
    io::copy(&mut File::open(src)?, &mut e)?;
    e.finish()?.flush()?;
    Ok(())
}

fn fresh(dir: &Path) -> Res<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    nix::unistd::sync();
    Ok(())
}

fn ours(input: &Path, comp: Compression, out: &Path) -> Res<Duration> {
    fresh(out)?;
    let t = Instant::now();
    apply(out, File::open(input)?, comp, &ApplyOptions::default())?;
    Ok(t.elapsed())
}

fn gnu(input: &Path, comp: Compression, out: &Path) -> Res<Duration> {
    fresh(out)?;
    let flag = if comp == Compression::Gzip {
        "-xzf"
    } else {
        "-xf"
    };
    let t = Instant::now();
    let st = Command::new("tar")
        .arg(flag)
        .arg(input)
        .arg("-C")
        .arg(out)
        .status()?;
    let el = t.elapsed();
    if !st.success() {
        return Err(format!("tar {flag} {} failed: {st}", input.display()).into());
    }
    Ok(el)
}

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() -> Res<()> {
    let work = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("berth-unpack-bench-{}", std::process::id()))
        });
    let mb = env_u64("BERTH_BENCH_MB", 200);
    let files = env_u64("BERTH_BENCH_FILES", 20_000);
    let runs = env_u64("BERTH_BENCH_RUNS", 3).max(1);
    std::fs::create_dir_all(&work)?;
    let result = run(&work, mb, files, runs);
    std::fs::remove_dir_all(&work)?;
    result
}

fn run(work: &Path, mb: u64, files: u64, runs: u64) -> Res<()> {
    let big = work.join("big.tar");
    let big_gz = work.join("big.tar.gz");
    let small = work.join("small.tar");
    let big_size = big_tar(&big, mb)?;
    gzip_file(&big, &big_gz)?;
    let small_size = small_tar(&small, files)?;
    println!(
        "inputs: big.tar {:.1} MB, big.tar.gz {:.1} MB, small.tar {:.1} MB ({files} files); best of {runs} runs; MB/s of uncompressed tar",
        big_size as f64 / 1e6,
        std::fs::metadata(&big_gz)?.len() as f64 / 1e6,
        small_size as f64 / 1e6
    );
    let out = work.join("out");
    for (name, input, comp, size) in [
        ("plain 200MB", &big, Compression::None, big_size),
        ("gzip  200MB", &big_gz, Compression::Gzip, big_size),
        ("small files", &small, Compression::None, small_size),
    ] {
        let mut best_ours = Duration::MAX;
        let mut best_gnu = Duration::MAX;
        for _ in 0..runs {
            best_ours = best_ours.min(ours(input, comp, &out)?);
            best_gnu = best_gnu.min(gnu(input, comp, &out)?);
        }
        let rate = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();
        println!(
            "{name}: berth {:7.1} MB/s ({:.3} s)   GNU tar {:7.1} MB/s ({:.3} s)   berth/tar {:.2}x",
            rate(best_ours),
            best_ours.as_secs_f64(),
            rate(best_gnu),
            best_gnu.as_secs_f64(),
            best_gnu.as_secs_f64() / best_ours.as_secs_f64()
        );
    }
    Ok(())
}
