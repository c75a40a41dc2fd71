//! Resource limits in the unified (cgroup v2) hierarchy: the whole job on V2 hosts, and the fallback for
//! controllers only the unified hierarchy has on hybrid hosts.
//!
//! Controllers are enabled in `cgroup.subtree_control` of the levels above the container only; this file must
//! never write any other file outside the container's own directory.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxRdma, LinuxResources,
};

use super::{debug, fs, CgroupError, CgroupManager};

/// Enables every controller `dir` offers to its children (best effort: a refusal is logged, and the limit that
/// needs the controller later fails naming its file).
pub(crate) fn enable_controllers(dir: &Path) {
    let Ok(Some(avail)) = fs::read_opt(dir, "cgroup.controllers") else {
        return;
    };
    let enabled = fs::read_opt(dir, "cgroup.subtree_control")
        .ok()
        .flatten()
        .unwrap_or_default();
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    for c in avail.split_whitespace() {
        if enabled.contains(&c) {
            continue;
        }
        if let Err(e) = fs::write(dir, "cgroup.subtree_control", &format!("+{c}")) {
            debug(&format!("cgroups: cannot enable {c}: {e}"));
        }
    }
}

/// Whether the unified hierarchy's root offers `controller`.
pub(crate) fn root_has_controller(m: &CgroupManager, controller: &str) -> bool {
    m.unified_root
        .as_deref()
        .and_then(|r| fs::read_opt(r, "cgroup.controllers").ok().flatten())
        .is_some_and(|c| c.split_whitespace().any(|x| x == controller))
}

/// Enables `controller` in every level from the unified root down to the container's parent.
pub(crate) fn enable_for_leaf(m: &CgroupManager, controller: &str) -> Result<(), CgroupError> {
    let (Some(root), Some(leaf)) = (m.unified_root.as_deref(), m.unified.as_deref()) else {
        return Err(CgroupError::MissingController {
            controller: "unified",
            what: controller.to_string(),
        });
    };
    let mut levels: Vec<&Path> = leaf
        .ancestors()
        .skip(1)
        .take_while(|a| a.starts_with(root))
        .collect();
    levels.reverse();
    for level in levels {
        let enabled = fs::read_opt(level, "cgroup.subtree_control")?.unwrap_or_default();
        if !enabled.split_whitespace().any(|c| c == controller) {
            fs::write(level, "cgroup.subtree_control", &format!("+{controller}"))?;
        }
    }
    Ok(())
}

fn leaf(m: &CgroupManager) -> Result<&Path, CgroupError> {
    m.unified.as_deref().ok_or(CgroupError::NoHierarchy)
}

/// Fails with the controller's name when the container's v2 directory lacks `file`.
fn need_file(
    dir: &Path,
    file: &str,
    controller: &'static str,
    what: &str,
) -> Result<(), CgroupError> {
    if dir.join(file).exists() {
        Ok(())
    } else {
        Err(CgroupError::MissingController {
            controller,
            what: what.to_string(),
        })
    }
}

/// Writes every resource the spec sets (V2 hosts).
pub(crate) fn apply(m: &CgroupManager, r: &LinuxResources) -> Result<(), CgroupError> {
    let dir = leaf(m)?;
    if let Some(mem) = r.memory() {
        memory(dir, mem)?;
    }
    if let Some(c) = r.cpu() {
        cpu(dir, c)?;
    }
    if let Some(p) = r.pids() {
        need_file(dir, "pids.max", "pids", "pids.limit")?;
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".into()
        };
        fs::write(dir, "pids.max", &v)?;
    }
    if let Some(b) = r.block_io() {
        io(dir, b)?;
    }
    if let Some(h) = r.hugepage_limits() {
        hugetlb(m, h)?;
    }
    super::devices::apply_v2(dir, r.devices().as_deref())?;
    if r.network().is_some() {
        return Err(CgroupError::MissingController {
            controller: "net_cls/net_prio",
            what: "network".into(),
        });
    }
    if let Some(rdma) = r.rdma() {
        if !rdma.is_empty() {
            need_file(dir, "rdma.max", "rdma", "rdma")?;
            for line in rdma_lines(rdma) {
                fs::write(dir, "rdma.max", &line)?;
            }
        }
    }
    if let Some(u) = r.unified() {
        unified(m, u)?;
    }
    Ok(())
}

/// `memory.swap` in the spec is memory+swap; v2's memory.swap.max is swap alone.
pub(crate) fn swap_max(
    limit: Option<i64>,
    swap: Option<i64>,
) -> Result<Option<String>, CgroupError> {
    let Some(s) = swap.filter(|v| *v != 0) else {
        return Ok(None);
    };
    if s == -1 {
        return Ok(Some("max".into()));
    }
    match limit.filter(|v| *v != 0) {
        None | Some(-1) => Err(CgroupError::InvalidValue {
            what: "memory.swap".into(),
            reason: "a swap limit needs a memory limit on cgroup v2".into(),
        }),
        Some(l) if s < l => Err(CgroupError::InvalidValue {
            what: "memory.swap".into(),
            reason: format!("memory+swap limit {s} is below the memory limit {l}"),
        }),
        Some(l) => Ok(Some((s - l).to_string())),
    }
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

fn memory(dir: &Path, mem: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = mem.limit().filter(|v| *v != 0);
    let swap = swap_max(limit, mem.swap())?;
    if limit.is_some() || swap.is_some() || mem.reservation().is_some() {
        need_file(dir, "memory.max", "memory", "memory")?;
    }
    if let Some(s) = swap {
        if dir.join("memory.swap.max").exists() {
            fs::write(dir, "memory.swap.max", &s)?;
        } else {
            debug("cgroups: memory.swap.max is absent (no swap accounting): memory.swap ignored");
        }
    }
    if let Some(l) = limit {
        fs::write(dir, "memory.max", &max_or(l))?;
    }
    if let Some(r) = mem.reservation().filter(|v| *v != 0) {
        fs::write(dir, "memory.low", &max_or(r))?;
    }
    if mem.swappiness().is_some() {
        debug("cgroups: memory.swappiness has no cgroup v2 equivalent: ignored");
    }
    if mem.disable_oom_killer() == Some(true) {
        debug("cgroups: memory.disableOOMKiller has no cgroup v2 equivalent: ignored");
    }
    Ok(())
}

/// cgroup v1 shares [2, 262144] to v2 weight [1, 10000], the conversion runc and crun use.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

fn cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(s) = c.shares().filter(|v| *v != 0) {
        need_file(dir, "cpu.weight", "cpu", "cpu.shares")?;
        fs::write(dir, "cpu.weight", &shares_to_weight(s).to_string())?;
    }
    let quota = c.quota().filter(|v| *v != 0);
    let period = c.period().filter(|v| *v != 0);
    if quota.is_some() || period.is_some() {
        need_file(dir, "cpu.max", "cpu", "cpu.quota/cpu.period")?;
        let cur = fs::read(dir, "cpu.max")?;
        let mut it = cur.split_whitespace();
        let cur_quota = it.next().unwrap_or("max").to_string();
        let cur_period = it.next().unwrap_or("100000").to_string();
        let q = quota.map(max_or).unwrap_or(cur_quota);
        let p = period.map(|p| p.to_string()).unwrap_or(cur_period);
        fs::write(dir, "cpu.max", &format!("{q} {p}"))?;
    }
    if let Some(b) = c.burst() {
        need_file(dir, "cpu.max.burst", "cpu", "cpu.burst")?;
        fs::write(dir, "cpu.max.burst", &b.to_string())?;
    }
    if let Some(i) = c.idle() {
        need_file(dir, "cpu.idle", "cpu", "cpu.idle")?;
        fs::write(dir, "cpu.idle", &i.to_string())?;
    }
    if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
        debug("cgroups: cpu realtime limits have no cgroup v2 equivalent: ignored");
    }
    for (v, file) in [(c.cpus(), "cpuset.cpus"), (c.mems(), "cpuset.mems")] {
        if let Some(v) = v.as_deref().filter(|s| !s.is_empty()) {
            need_file(dir, file, "cpuset", "cpu.cpus/cpu.mems")?;
            fs::write(dir, file, v)?;
        }
    }
    Ok(())
}

/// blkio weight [10, 1000] to io.weight [1, 10000].
pub(crate) fn blkio_weight_to_io(w: u16) -> u64 {
    let w = u64::from(w).clamp(10, 1000);
    1 + (w - 10) * 9999 / 990
}

fn io(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    let bfq = dir.join("io.bfq.weight").exists();
    let weight = |w: u16| -> (&'static str, u64) {
        if bfq {
            ("io.bfq.weight", u64::from(w))
        } else {
            ("io.weight", blkio_weight_to_io(w))
        }
    };
    if let Some(w) = b.weight() {
        let (file, v) = weight(w);
        need_file(dir, file, "io", "blockIO.weight")?;
        fs::write(dir, file, &v.to_string())?;
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            let (file, v) = weight(w);
            need_file(dir, file, "io", "blockIO.weightDevice")?;
            fs::write(dir, file, &format!("{}:{} {}", d.major(), d.minor(), v))?;
        }
    }
    let throttles = [
        (b.throttle_read_bps_device(), "rbps"),
        (b.throttle_write_bps_device(), "wbps"),
        (b.throttle_read_iops_device(), "riops"),
        (b.throttle_write_iops_device(), "wiops"),
    ];
    for (list, key) in throttles {
        for t in list.iter().flatten() {
            need_file(dir, "io.max", "io", "blockIO.throttle*")?;
            fs::write(
                dir,
                "io.max",
                &format!("{}:{} {}={}", t.major(), t.minor(), key, t.rate()),
            )?;
        }
    }
    Ok(())
}

/// hugetlb.<size>.max in the container's unified directory.
pub(crate) fn hugetlb(m: &CgroupManager, limits: &[LinuxHugepageLimit]) -> Result<(), CgroupError> {
    let dir = leaf(m)?;
    for h in limits {
        let file = format!("hugetlb.{}.max", h.page_size());
        if !dir.join(&file).exists() {
            if !dir.join("hugetlb.2MB.max").exists() && !dir.join("hugetlb.1GB.max").exists() {
                return Err(CgroupError::MissingController {
                    controller: "hugetlb",
                    what: "hugepageLimits".into(),
                });
            }
            return Err(super::v1::unsupported_page_size(
                h.page_size(),
                &dir.join(&file),
            ));
        }
        fs::write(dir, &file, &max_or(h.limit()))?;
    }
    Ok(())
}

/// rdma.max lines: "<device> hca_handle=<n> hca_object=<n>".
pub(crate) fn rdma_lines(rdma: &HashMap<String, LinuxRdma>) -> Vec<String> {
    let mut out: Vec<String> = rdma
        .iter()
        .map(|(dev, l)| {
            let mut s = dev.clone();
            if let Some(h) = l.hca_handles() {
                s.push_str(&format!(" hca_handle={h}"));
            }
            if let Some(o) = l.hca_objects() {
                s.push_str(&format!(" hca_object={o}"));
            }
            s
        })
        .collect();
    out.sort();
    out
}

/// Writes `unified` key/values directly into the container's v2 directory.
pub(crate) fn unified(m: &CgroupManager, u: &HashMap<String, String>) -> Result<(), CgroupError> {
    let dir = leaf(m)?;
    let mut keys: Vec<&String> = u.keys().collect();
    keys.sort();
    for k in keys {
        if k.contains('/') || k.starts_with('.') || k.is_empty() {
            return Err(CgroupError::InvalidValue {
                what: format!("unified key {k:?}"),
                reason: "not a cgroup interface file name".into(),
            });
        }
        if !dir.join(k).exists() {
            return Err(CgroupError::InvalidValue {
                what: format!("unified key {k:?}"),
                reason: format!("{} does not exist", dir.join(k).display()),
            });
        }
        fs::write(dir, k, &u[k])?;
    }
    Ok(())
}
