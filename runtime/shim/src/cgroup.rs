//! The container's cgroups, as seen from the shim: found from `/proc/<init>/cgroup` and the
//! cgroup mounts in `/proc/self/mountinfo` (hybrid hosts: v1 controllers each on their own
//! mount, cgroup2 beside them), read for Stats (`io.containerd.cgroups.v1.Metrics`) and
//! watched for OOM (v1: `memory.oom_control` eventfd; v2: `memory.events` inotify).
//! This module only reads cgroup files (and registers the v1 OOM eventfd); it never
//! creates, moves or removes cgroups.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use berth_proto::cgroups::{
    BlkIoEntry, BlkIoStat, CpuStat, CpuUsage, HugetlbStat, MemoryEntry, MemoryOomControl,
    MemoryStat, Metrics, PidsStat, Throttle,
};
use berth_proto::shim::{event::Kind, TaskOom};

use crate::error::{Error, Result};
use crate::journal::Journal;

/// Where one container's cgroups are.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    /// v1 controller name → directory.
    pub v1: HashMap<String, PathBuf>,
    /// The unified (v2) directory, if mounted.
    pub v2: Option<PathBuf>,
}

/// Cgroup mounts: v1 controller → mount point, and the cgroup2 mount point.
fn mounts() -> (HashMap<String, PathBuf>, Option<PathBuf>) {
    let mut v1 = HashMap::new();
    let mut v2 = None;
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or_default();
        let super_opts = r.nth(1).unwrap_or_default();
        match fstype {
            "cgroup" => {
                for opt in super_opts.split(',') {
                    if !matches!(opt, "rw" | "ro") && !opt.contains('=') {
                        v1.insert(opt.to_string(), PathBuf::from(mount_point));
                    }
                }
            }
            "cgroup2" => v2 = Some(PathBuf::from(mount_point)),
            _ => {}
        }
    }
    (v1, v2)
}

fn join(mount: &Path, rel: &str) -> PathBuf {
    mount.join(rel.trim_start_matches('/'))
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn read_kv(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

impl Cgroups {
    /// The cgroups of a live process.
    pub fn of_pid(pid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let (mounts_v1, mount_v2) = mounts();
        let mut cg = Cgroups::default();
        for line in text.lines() {
            let mut f = line.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            if ctrls.is_empty() {
                cg.v2 = mount_v2.as_deref().map(|m| join(m, path));
                continue;
            }
            for c in ctrls.split(',') {
                if let Some(m) = mounts_v1.get(c) {
                    cg.v1.insert(c.to_string(), join(m, path));
                }
            }
        }
        Some(cg)
    }

    fn file(&self, ctrl: &str, name: &str) -> Option<PathBuf> {
        self.v1.get(ctrl).map(|d| d.join(name))
    }

    /// Memory statistics (v1).
    fn memory_v1(&self, dir: &Path) -> MemoryStat {
        let kv = read_kv(&dir.join("memory.stat"));
        let g = |k: &str| kv.get(k).copied().unwrap_or(0);
        let entry = |prefix: &str| MemoryEntry {
            limit: read_u64(&dir.join(format!("{prefix}limit_in_bytes"))),
            usage: read_u64(&dir.join(format!("{prefix}usage_in_bytes"))),
            max: read_u64(&dir.join(format!("{prefix}max_usage_in_bytes"))),
            failcnt: read_u64(&dir.join(format!("{prefix}failcnt"))),
        };
        MemoryStat {
            cache: g("cache"),
            rss: g("rss"),
            rss_huge: g("rss_huge"),
            mapped_file: g("mapped_file"),
            dirty: g("dirty"),
            writeback: g("writeback"),
            pg_pg_in: g("pgpgin"),
            pg_pg_out: g("pgpgout"),
            pg_fault: g("pgfault"),
            pg_maj_fault: g("pgmajfault"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            hierarchical_memory_limit: g("hierarchical_memory_limit"),
            hierarchical_swap_limit: g("hierarchical_memsw_limit"),
            total_cache: g("total_cache"),
            total_rss: g("total_rss"),
            total_rss_huge: g("total_rss_huge"),
            total_mapped_file: g("total_mapped_file"),
            total_dirty: g("total_dirty"),
            total_writeback: g("total_writeback"),
            total_pg_pg_in: g("total_pgpgin"),
            total_pg_pg_out: g("total_pgpgout"),
            total_pg_fault: g("total_pgfault"),
            total_pg_maj_fault: g("total_pgmajfault"),
            total_inactive_anon: g("total_inactive_anon"),
            total_active_anon: g("total_active_anon"),
            total_inactive_file: g("total_inactive_file"),
            total_active_file: g("total_active_file"),
            total_unevictable: g("total_unevictable"),
            usage: Some(entry("memory.")),
            swap: dir
                .join("memory.memsw.usage_in_bytes")
                .exists()
                .then(|| entry("memory.memsw.")),
            kernel: Some(entry("memory.kmem.")),
            kernel_tcp: Some(entry("memory.kmem.tcp.")),
        }
    }

    fn blkio(dir: &Path) -> BlkIoStat {
        let read = |name: &str| -> Vec<BlkIoEntry> {
            let mut text =
                std::fs::read_to_string(dir.join(format!("blkio.{name}"))).unwrap_or_default();
            if text.lines().all(|l| l.starts_with("Total")) {
                text = std::fs::read_to_string(dir.join(format!("blkio.throttle.{name}")))
                    .unwrap_or_default();
            }
            text.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let (dev, op, value) = match f.as_slice() {
                        [dev, op, v] => (*dev, *op, *v),
                        [dev, v] if dev.contains(':') => (*dev, "", *v),
                        _ => return None,
                    };
                    let (maj, min) = dev.split_once(':')?;
                    Some(BlkIoEntry {
                        op: op.to_string(),
                        device: String::new(),
                        major: maj.parse().ok()?,
                        minor: min.parse().ok()?,
                        value: value.parse().ok()?,
                    })
                })
                .collect()
        };
        BlkIoStat {
            io_service_bytes_recursive: read("io_service_bytes_recursive"),
            io_serviced_recursive: read("io_serviced_recursive"),
            io_queued_recursive: read("io_queued_recursive"),
            io_service_time_recursive: read("io_service_time_recursive"),
            io_wait_time_recursive: read("io_wait_time_recursive"),
            io_merged_recursive: read("io_merged_recursive"),
            io_time_recursive: read("io_time_recursive"),
            sectors_recursive: read("sectors_recursive"),
        }
    }

    fn hugetlb(dir: &Path) -> Vec<HugetlbStat> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(size) = name
                .strip_prefix("hugetlb.")
                .and_then(|n| n.strip_suffix(".usage_in_bytes"))
            else {
                continue;
            };
            out.push(HugetlbStat {
                usage: read_u64(&e.path()),
                max: read_u64(&dir.join(format!("hugetlb.{size}.max_usage_in_bytes"))),
                failcnt: read_u64(&dir.join(format!("hugetlb.{size}.failcnt"))),
                pagesize: size.to_string(),
            });
        }
        out.sort_by(|a, b| a.pagesize.cmp(&b.pagesize));
        out
    }

    /// Read the metrics ctr expects (`io.containerd.cgroups.v1.Metrics`).
    pub fn stats(&self) -> Metrics {
        let mut m = Metrics::default();
        if let Some(dir) = self.v1.get("pids") {
            let max = std::fs::read_to_string(dir.join("pids.max")).unwrap_or_default();
            m.pids = Some(PidsStat {
                current: read_u64(&dir.join("pids.current")),
                limit: max.trim().parse().unwrap_or(0),
            });
        }
        if let Some(dir) = self.v1.get("cpuacct") {
            let per_cpu = std::fs::read_to_string(dir.join("cpuacct.usage_percpu"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            let st = read_kv(&dir.join("cpuacct.stat"));
            // cpuacct.stat is in USER_HZ (100/s) ticks.
            let ns = |k: &str| st.get(k).copied().unwrap_or(0) * 10_000_000;
            let throttle = self.file("cpu", "cpu.stat").map(|p| read_kv(&p));
            m.cpu = Some(CpuStat {
                usage: Some(CpuUsage {
                    total: read_u64(&dir.join("cpuacct.usage")),
                    kernel: ns("system"),
                    user: ns("user"),
                    per_cpu,
                }),
                throttling: throttle.map(|t| Throttle {
                    periods: t.get("nr_periods").copied().unwrap_or(0),
                    throttled_periods: t.get("nr_throttled").copied().unwrap_or(0),
                    throttled_time: t.get("throttled_time").copied().unwrap_or(0),
                }),
            });
        }
        if let Some(dir) = self.v1.get("memory") {
            m.memory = Some(self.memory_v1(dir));
            let oom = read_kv(&dir.join("memory.oom_control"));
            m.memory_oom_control = Some(MemoryOomControl {
                oom_kill_disable: oom.get("oom_kill_disable").copied().unwrap_or(0),
                under_oom: oom.get("under_oom").copied().unwrap_or(0),
                oom_kill: oom.get("oom_kill").copied().unwrap_or(0),
            });
        } else if let Some(dir) = &self.v2 {
            let kv = read_kv(&dir.join("memory.stat"));
            let usage = read_u64(&dir.join("memory.current"));
            let limit = std::fs::read_to_string(dir.join("memory.max"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(u64::MAX);
            m.memory = Some(MemoryStat {
                rss: kv.get("anon").copied().unwrap_or(0),
                cache: kv.get("file").copied().unwrap_or(0),
                usage: Some(MemoryEntry {
                    limit,
                    usage,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        if let Some(dir) = self.v1.get("blkio") {
            m.blkio = Some(Self::blkio(dir));
        }
        if let Some(dir) = self.v1.get("hugetlb") {
            m.hugetlb = Self::hugetlb(dir);
        }
        m
    }

    /// Watch for OOM kills and journal a TaskOom for each.
    pub fn watch_oom(&self, journal: Journal) {
        if let Some(dir) = self.v1.get("memory") {
            match oom_eventfd(dir) {
                Ok((efd, oom)) => spawn_v1(dir.clone(), efd, oom, journal),
                Err(e) => crate::log!("oom watch (v1) on {}: {e}", dir.display()),
            }
        } else if let Some(dir) = &self.v2 {
            if dir.join("memory.events").exists() {
                if let Err(e) = spawn_v2(dir.clone(), journal) {
                    crate::log!("oom watch (v2) on {}: {e}", dir.display());
                }
            }
        }
    }
}

/// Register an eventfd on `memory.oom_control` through `cgroup.event_control`.
fn oom_eventfd(dir: &Path) -> Result<(OwnedFd, File)> {
    let ctl = dir.join("memory.oom_control");
    let oom = File::open(&ctl).map_err(|e| Error::path("opening", &ctl, e))?;
    // SAFETY: eventfd takes no pointers; a non-negative return is a new fd we own.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(Error::io("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh fd returned by eventfd just now.
    let efd = unsafe { OwnedFd::from_raw_fd(raw) };
    let ev = dir.join("cgroup.event_control");
    std::fs::write(&ev, format!("{} {}", efd.as_raw_fd(), oom.as_raw_fd()))
        .map_err(|e| Error::path("writing", &ev, e))?;
    Ok((efd, oom))
}

fn spawn_v1(dir: PathBuf, efd: OwnedFd, oom: File, journal: Journal) {
    tokio::spawn(async move {
        let _oom = oom;
        let Ok(afd) = crate::stdio::async_fd(efd) else {
            return;
        };
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return;
            };
            let mut buf = [0u8; 8];
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
                Ok(Ok(8)) => {}
                Ok(_) => return,
                Err(_) => continue,
            }
            // The eventfd also fires when the cgroup goes away.
            if !dir.exists() {
                return;
            }
            crate::log!("oom in {}", dir.display());
            if let Err(e) = journal.emit(Kind::Oom(TaskOom {})) {
                crate::log!("journaling oom: {e}");
            }
        }
    });
}

fn spawn_v2(dir: PathBuf, journal: Journal) -> Result<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let events = dir.join("memory.events");
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| Error::sys("inotify_init", e))?;
    ino.add_watch(&events, AddWatchFlags::IN_MODIFY)
        .map_err(|e| Error::sys(format!("watching {}", events.display()), e))?;
    let fd = OwnedFd::from(ino);
    let afd = crate::stdio::async_fd(fd).map_err(|e| Error::io("inotify", e))?;
    tokio::spawn(async move {
        let count = |p: &Path| read_kv(p).get("oom_kill").copied().unwrap_or(0);
        let mut last = count(&events);
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => continue,
            }
            if !events.exists() {
                return;
            }
            let now = count(&events);
            if now > last {
                last = now;
                if let Err(e) = journal.emit(Kind::Oom(TaskOom {})) {
                    crate::log!("journaling oom: {e}");
                }
            }
        }
    });
    Ok(())
}
