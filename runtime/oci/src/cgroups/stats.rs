//! Usage figures of a container's cgroup, serialised exactly like the "data" object of runc's `events --stats`
//! (field names and omit-when-zero rules follow runc's `types/events.go`).
//!
//! Reading only: this file must never write to a cgroup. A file the kernel lacks reads as zero/absent.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{fs, CgroupError, CgroupManager};

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// All statistics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Stats {
    /// CPU usage and throttling.
    pub cpu: Cpu,
    /// Memory usage.
    pub memory: Memory,
    /// Process counts.
    pub pids: Pids,
    /// Block I/O.
    pub blkio: Blkio,
    /// Per huge page size ("2MB", "1GB").
    pub hugetlb: BTreeMap<String, Hugetlb>,
}

/// CPU statistics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Cpu {
    /// Usage in nanoseconds.
    pub usage: CpuUsage,
    /// CFS throttling.
    pub throttling: Throttling,
}

/// CPU time in nanoseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CpuUsage {
    /// Total.
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    /// Per CPU.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    /// Per CPU, kernel mode.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    /// Per CPU, user mode.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    /// Kernel mode.
    pub kernel: u64,
    /// User mode.
    pub user: u64,
}

/// CFS bandwidth throttling.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Throttling {
    /// Enforcement periods elapsed.
    #[serde(skip_serializing_if = "is_zero")]
    pub periods: u64,
    /// Periods in which the group was throttled.
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    /// Total throttled time in nanoseconds.
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

/// Memory statistics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Memory {
    /// Page cache bytes.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    /// Memory.
    pub usage: MemoryEntry,
    /// Memory+swap (v1) or swap (v2).
    pub swap: MemoryEntry,
    /// Kernel memory (v1).
    pub kernel: MemoryEntry,
    /// Kernel TCP memory (v1).
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// memory.stat keys.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

/// One memory counter.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MemoryEntry {
    /// Limit in bytes (0 = none in v2's "max").
    pub limit: u64,
    /// Current usage.
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Peak usage.
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
}

/// Process counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Pids {
    /// Processes now.
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    /// Limit (0 = none).
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

/// Block I/O counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Blkio {
    /// Bytes per device and operation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    /// Operations per device and operation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

/// One block I/O counter.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BlkioEntry {
    /// Device major.
    #[serde(skip_serializing_if = "is_zero")]
    pub major: u64,
    /// Device minor.
    #[serde(skip_serializing_if = "is_zero")]
    pub minor: u64,
    /// "Read", "Write", "Sync", "Async", "Discard", "Total".
    #[serde(skip_serializing_if = "String::is_empty")]
    pub op: String,
    /// The count.
    #[serde(skip_serializing_if = "is_zero")]
    pub value: u64,
}

/// Huge page usage for one page size.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Hugetlb {
    /// Bytes in use.
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Peak bytes.
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
}

/// The host's huge page sizes as cgroup file names spell them ("2MB", "1GB").
pub(crate) fn hugepage_sizes() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/kernel/mm/hugepages") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(kb) = name
                .strip_prefix("hugepages-")
                .and_then(|s| s.strip_suffix("kB"))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            out.push(if kb / (1024 * 1024) * (1024 * 1024) == kb {
                format!("{}GB", kb / (1024 * 1024))
            } else if kb / 1024 * 1024 == kb {
                format!("{}MB", kb / 1024)
            } else {
                format!("{kb}KB")
            });
        }
    }
    out.sort();
    out
}

fn u64_or_zero(dir: &Path, file: &str) -> Result<u64, CgroupError> {
    Ok(fs::read_u64_opt(dir, file)?.unwrap_or(0))
}

fn keyed(dir: &Path, file: &str) -> Result<BTreeMap<String, u64>, CgroupError> {
    Ok(fs::read_opt(dir, file)?
        .map(|s| fs::parse_flat_keyed(&s).into_iter().collect())
        .unwrap_or_default())
}

fn numbers(s: &str) -> Vec<u64> {
    s.split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// v1 blkio lines "8:0 Read 4096" (the "Total" summary line has no device and is skipped).
fn blkio_v1(s: &str) -> Vec<BlkioEntry> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (maj, min) = it.next()?.split_once(':')?;
            Some(BlkioEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                op: it.next()?.to_string(),
                value: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// Statistics on v1 and hybrid hosts.
pub(crate) fn read_v1(m: &CgroupManager) -> Result<Stats, CgroupError> {
    let mut st = Stats::default();
    if let Some(d) = m.v1_dir("cpuacct") {
        let u = &mut st.cpu.usage;
        u.total = u64_or_zero(d, "cpuacct.usage")?;
        u.percpu = numbers(&fs::read_opt(d, "cpuacct.usage_percpu")?.unwrap_or_default());
        u.percpu_kernel =
            numbers(&fs::read_opt(d, "cpuacct.usage_percpu_sys")?.unwrap_or_default());
        u.percpu_user = numbers(&fs::read_opt(d, "cpuacct.usage_percpu_user")?.unwrap_or_default());
        match (
            fs::read_u64_opt(d, "cpuacct.usage_user")?,
            fs::read_u64_opt(d, "cpuacct.usage_sys")?,
        ) {
            (Some(user), Some(sys)) => {
                u.user = user;
                u.kernel = sys;
            }
            _ => {
                // cpuacct.stat counts USER_HZ ticks (100 per second on Linux).
                let k = keyed(d, "cpuacct.stat")?;
                u.user = k.get("user").copied().unwrap_or(0) * 10_000_000;
                u.kernel = k.get("system").copied().unwrap_or(0) * 10_000_000;
            }
        }
    }
    if let Some(d) = m.v1_dir("cpu") {
        let k = keyed(d, "cpu.stat")?;
        st.cpu.throttling = Throttling {
            periods: k.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: k.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: k.get("throttled_time").copied().unwrap_or(0),
        };
    }
    if let Some(d) = m.v1_dir("memory") {
        let entry = |prefix: &str| -> Result<MemoryEntry, CgroupError> {
            Ok(MemoryEntry {
                limit: u64_or_zero(d, &format!("{prefix}.limit_in_bytes"))?,
                usage: u64_or_zero(d, &format!("{prefix}.usage_in_bytes"))?,
                max: u64_or_zero(d, &format!("{prefix}.max_usage_in_bytes"))?,
                failcnt: u64_or_zero(d, &format!("{prefix}.failcnt"))?,
            })
        };
        st.memory.usage = entry("memory")?;
        st.memory.swap = entry("memory.memsw")?;
        st.memory.kernel = entry("memory.kmem")?;
        st.memory.kernel_tcp = entry("memory.kmem.tcp")?;
        st.memory.raw = keyed(d, "memory.stat")?;
        st.memory.cache = st.memory.raw.get("cache").copied().unwrap_or(0);
    }
    if let Some(d) = m.v1_dir("pids") {
        st.pids.current = u64_or_zero(d, "pids.current")?;
        st.pids.limit = u64_or_zero(d, "pids.max")?;
    }
    if let Some(d) = m.v1_dir("blkio") {
        // CFQ files first, then BFQ, then the throttle layer (always present), like runc.
        for prefix in ["blkio", "blkio.bfq", "blkio.throttle"] {
            let bytes = fs::read_opt(d, &format!("{prefix}.io_service_bytes_recursive"))?;
            let ops = fs::read_opt(d, &format!("{prefix}.io_serviced_recursive"))?;
            if let (Some(b), Some(o)) = (bytes, ops) {
                let (b, o) = (blkio_v1(&b), blkio_v1(&o));
                if !b.is_empty() || !o.is_empty() || prefix == "blkio.throttle" {
                    st.blkio.io_service_bytes_recursive = b;
                    st.blkio.io_serviced_recursive = o;
                    break;
                }
            }
        }
    }
    if let Some(d) = m.v1_dir("hugetlb") {
        for size in hugepage_sizes() {
            st.hugetlb.insert(
                size.clone(),
                Hugetlb {
                    usage: u64_or_zero(d, &format!("hugetlb.{size}.usage_in_bytes"))?,
                    max: u64_or_zero(d, &format!("hugetlb.{size}.max_usage_in_bytes"))?,
                    failcnt: u64_or_zero(d, &format!("hugetlb.{size}.failcnt"))?,
                },
            );
        }
    } else if let Some(d) = m.unified_dir() {
        hugetlb_v2(d, &mut st)?;
    }
    Ok(st)
}

fn hugetlb_v2(d: &Path, st: &mut Stats) -> Result<(), CgroupError> {
    for size in hugepage_sizes() {
        if !d.join(format!("hugetlb.{size}.current")).exists() {
            continue;
        }
        let events = keyed(d, &format!("hugetlb.{size}.events"))?;
        st.hugetlb.insert(
            size.clone(),
            Hugetlb {
                usage: u64_or_zero(d, &format!("hugetlb.{size}.current"))?,
                max: 0,
                failcnt: events.get("max").copied().unwrap_or(0),
            },
        );
    }
    Ok(())
}

/// Statistics on V2 hosts.
pub(crate) fn read_v2(m: &CgroupManager) -> Result<Stats, CgroupError> {
    let mut st = Stats::default();
    let Some(d) = m.unified_dir() else {
        return Ok(st);
    };
    let cpu = keyed(d, "cpu.stat")?;
    let g = |k: &str| cpu.get(k).copied().unwrap_or(0);
    st.cpu.usage.total = g("usage_usec") * 1000;
    st.cpu.usage.user = g("user_usec") * 1000;
    st.cpu.usage.kernel = g("system_usec") * 1000;
    st.cpu.throttling = Throttling {
        periods: g("nr_periods"),
        throttled_periods: g("nr_throttled"),
        throttled_time: g("throttled_usec") * 1000,
    };
    let events = keyed(d, "memory.events")?;
    st.memory.usage = MemoryEntry {
        limit: u64_or_zero(d, "memory.max")?,
        usage: u64_or_zero(d, "memory.current")?,
        max: u64_or_zero(d, "memory.peak")?,
        failcnt: events.get("max").copied().unwrap_or(0),
    };
    st.memory.swap = MemoryEntry {
        limit: u64_or_zero(d, "memory.swap.max")?,
        usage: u64_or_zero(d, "memory.swap.current")?,
        max: u64_or_zero(d, "memory.swap.peak")?,
        failcnt: 0,
    };
    st.memory.raw = keyed(d, "memory.stat")?;
    st.memory.cache = st.memory.raw.get("file").copied().unwrap_or(0);
    st.pids.current = u64_or_zero(d, "pids.current")?;
    st.pids.limit = u64_or_zero(d, "pids.max")?;
    for line in fs::read_opt(d, "io.stat")?.unwrap_or_default().lines() {
        let mut it = line.split_whitespace();
        let Some((maj, min)) = it.next().and_then(|dev| dev.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
            continue;
        };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse::<u64>() else {
                continue;
            };
            let (list, op) = match k {
                "rbytes" => (&mut st.blkio.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut st.blkio.io_service_bytes_recursive, "Write"),
                "rios" => (&mut st.blkio.io_serviced_recursive, "Read"),
                "wios" => (&mut st.blkio.io_serviced_recursive, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.into(),
                value,
            });
        }
    }
    hugetlb_v2(d, &mut st)?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_matches_runc() -> Result<(), serde_json::Error> {
        let mut st = Stats::default();
        st.cpu.usage.total = 5;
        st.pids.current = 2;
        st.memory.usage.limit = 100;
        let v = serde_json::to_value(&st)?;
        assert_eq!(v["cpu"]["usage"]["total"], 5);
        assert_eq!(v["cpu"]["usage"]["kernel"], 0);
        assert!(v["cpu"]["usage"].get("percpu").is_none());
        assert!(v["cpu"]["throttling"].is_object());
        assert_eq!(v["memory"]["usage"]["limit"], 100);
        assert_eq!(v["memory"]["usage"]["failcnt"], 0);
        assert!(v["memory"]["kernelTCP"].is_object());
        assert_eq!(v["pids"]["current"], 2);
        assert!(v["pids"].get("limit").is_none());
        assert!(v["hugetlb"].is_object());
        let back: Stats = serde_json::from_value(v)?;
        assert_eq!(back, st);
        Ok(())
    }

    #[test]
    fn parses_blkio_v1() {
        let e = blkio_v1("8:0 Read 4096\n8:0 Write 0\nTotal 4096\n");
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].major, e[0].minor, e[0].op.as_str(), e[0].value),
            (8, 0, "Read", 4096)
        );
    }
}
