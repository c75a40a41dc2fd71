//! Resource limits on cgroup v1 (and hybrid) hosts: one directory per controller.
//!
//! On hybrid hosts a resource whose v1 controller is absent falls back to the unified hierarchy when that
//! hierarchy has the controller (hugetlb on this kind of host). This file must never write outside the
//! container's own directories, and never treat a missing controller as fatal unless the spec asks for one of
//! its limits.

use std::path::Path;

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxNetwork, LinuxResources,
};

use super::{debug, devices, fs, v2, CgroupError, CgroupManager, Mode};

/// The container's directory for `controller`, or the error naming the spec field that needs it.
fn need<'a>(
    m: &'a CgroupManager,
    controller: &'static str,
    what: &str,
) -> Result<&'a Path, CgroupError> {
    m.v1_dir(controller)
        .ok_or_else(|| CgroupError::MissingController {
            controller,
            what: what.to_string(),
        })
}

/// Copies cpuset.cpus and cpuset.mems from the parent when empty (attaching a task to an empty cpuset fails
/// with ENOSPC). Recurses upwards when the parent is empty too.
pub(crate) fn copy_cpuset_from_parent(dir: &Path) -> Result<(), CgroupError> {
    copy_cpuset_inner(dir, 0)
}

fn copy_cpuset_inner(dir: &Path, depth: u32) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if !fs::read(dir, file)?.is_empty() {
            continue;
        }
        let mut value = fs::read(parent, file)?;
        if value.is_empty() && depth < 32 {
            copy_cpuset_inner(parent, depth + 1)?;
            value = fs::read(parent, file)?;
        }
        fs::write(dir, file, &value)?;
    }
    Ok(())
}

/// Writes every resource the spec sets.
pub(crate) fn apply(m: &CgroupManager, r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(mem) = r.memory() {
        memory(m, mem)?;
    }
    if let Some(c) = r.cpu() {
        cpu(m, c)?;
    }
    if let Some(p) = r.pids() {
        let dir = need(m, "pids", "pids.limit")?;
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        fs::write(dir, "pids.max", &v)?;
    }
    if let Some(b) = r.block_io() {
        blkio(m, b)?;
    }
    if let Some(h) = r.hugepage_limits() {
        hugetlb(m, h)?;
    }
    devices::apply_v1(m.v1_dir("devices"), r.devices().as_deref())?;
    if let Some(n) = r.network() {
        network(m, n)?;
    }
    if let Some(rdma) = r.rdma() {
        if !rdma.is_empty() {
            let dir = need(m, "rdma", "rdma")?;
            for line in super::v2::rdma_lines(rdma) {
                fs::write(dir, "rdma.max", &line)?;
            }
        }
    }
    if let Some(u) = r.unified() {
        unified(m, u)?;
    }
    Ok(())
}

fn memory(m: &CgroupManager, mem: &LinuxMemory) -> Result<(), CgroupError> {
    #[allow(deprecated)]
    if mem.kernel().is_some() {
        debug("cgroups: memory.kernel is obsolete and ignored");
    }
    if mem.kernel_tcp().is_some() {
        debug("cgroups: memory.kernelTCP is obsolete and ignored");
    }
    let limit = mem.limit().filter(|v| *v != 0);
    let mut swap = mem.swap().filter(|v| *v != 0);
    let reservation = mem.reservation().filter(|v| *v != 0);
    let oom_off = mem.disable_oom_killer() == Some(true);
    if limit.is_none()
        && swap.is_none()
        && reservation.is_none()
        && mem.swappiness().is_none()
        && !oom_off
    {
        return Ok(());
    }
    let dir = need(m, "memory", "memory")?;
    let has_memsw = dir.join("memory.memsw.limit_in_bytes").exists();
    if swap.is_some() && !has_memsw {
        debug("cgroups: swap accounting is absent (no memory.memsw.limit_in_bytes): memory.swap ignored");
        swap = None;
    }
    if has_memsw && limit == Some(-1) && swap.is_none() {
        // An unlimited memory limit above a limited memsw would be refused by the kernel.
        swap = Some(-1);
    }
    if let (Some(l), Some(s)) = (limit, swap) {
        if l != -1 && s != -1 && s < l {
            return Err(CgroupError::InvalidValue {
                what: "memory.swap".into(),
                reason: format!("memory+swap limit {s} is below the memory limit {l}"),
            });
        }
    }
    match (limit, swap) {
        (Some(l), Some(s)) => {
            // The kernel requires memsw >= limit at every moment: pick the order that keeps it true.
            let cur = fs::read(dir, "memory.limit_in_bytes")?;
            let cur: i64 = cur.parse().unwrap_or(i64::MAX);
            if s == -1 || cur < s {
                fs::write(dir, "memory.memsw.limit_in_bytes", &s.to_string())?;
                fs::write(dir, "memory.limit_in_bytes", &l.to_string())?;
            } else {
                fs::write(dir, "memory.limit_in_bytes", &l.to_string())?;
                fs::write(dir, "memory.memsw.limit_in_bytes", &s.to_string())?;
            }
        }
        (Some(l), None) => fs::write(dir, "memory.limit_in_bytes", &l.to_string())?,
        (None, Some(s)) => fs::write(dir, "memory.memsw.limit_in_bytes", &s.to_string())?,
        (None, None) => {}
    }
    if let Some(res) = reservation {
        fs::write(dir, "memory.soft_limit_in_bytes", &res.to_string())?;
    }
    if let Some(sw) = mem.swappiness() {
        if sw > 100 {
            return Err(CgroupError::InvalidValue {
                what: "memory.swappiness".into(),
                reason: format!("{sw} is above 100"),
            });
        }
        fs::write(dir, "memory.swappiness", &sw.to_string())?;
    }
    if oom_off {
        fs::write(dir, "memory.oom_control", "1")?;
    }
    Ok(())
}

fn cpu(m: &CgroupManager, c: &LinuxCpu) -> Result<(), CgroupError> {
    let shares = c.shares().filter(|v| *v != 0);
    let quota = c.quota().filter(|v| *v != 0);
    let period = c.period().filter(|v| *v != 0);
    let rt_runtime = c.realtime_runtime().filter(|v| *v != 0);
    let rt_period = c.realtime_period().filter(|v| *v != 0);
    let uses_cpu = shares.is_some()
        || quota.is_some()
        || period.is_some()
        || c.burst().is_some()
        || c.idle().is_some()
        || rt_runtime.is_some()
        || rt_period.is_some();
    if uses_cpu {
        let dir = need(m, "cpu", "cpu")?;
        if let Some(s) = shares {
            fs::write(dir, "cpu.shares", &s.to_string())?;
        }
        match (period, quota) {
            (Some(p), Some(q)) => {
                // A new period can be refused against the old quota (and vice versa): try both orders.
                if fs::write(dir, "cpu.cfs_period_us", &p.to_string()).is_err() {
                    fs::write(dir, "cpu.cfs_quota_us", &q.to_string())?;
                    fs::write(dir, "cpu.cfs_period_us", &p.to_string())?;
                } else {
                    fs::write(dir, "cpu.cfs_quota_us", &q.to_string())?;
                }
            }
            (Some(p), None) => fs::write(dir, "cpu.cfs_period_us", &p.to_string())?,
            (None, Some(q)) => fs::write(dir, "cpu.cfs_quota_us", &q.to_string())?,
            (None, None) => {}
        }
        if let Some(b) = c.burst() {
            write_if_present(dir, "cpu.cfs_burst_us", &b.to_string(), "cpu.burst")?;
        }
        if let Some(i) = c.idle() {
            write_if_present(dir, "cpu.idle", &i.to_string(), "cpu.idle")?;
        }
        if let Some(p) = rt_period {
            write_if_present(
                dir,
                "cpu.rt_period_us",
                &p.to_string(),
                "cpu.realtimePeriod",
            )?;
        }
        if let Some(r) = rt_runtime {
            write_if_present(
                dir,
                "cpu.rt_runtime_us",
                &r.to_string(),
                "cpu.realtimeRuntime",
            )?;
        }
    }
    let cpus = c.cpus().as_deref().filter(|s| !s.is_empty());
    let mems = c.mems().as_deref().filter(|s| !s.is_empty());
    if cpus.is_some() || mems.is_some() {
        let dir = need(m, "cpuset", "cpu.cpus/cpu.mems")?;
        if let Some(v) = cpus {
            fs::write(dir, "cpuset.cpus", v)?;
        }
        if let Some(v) = mems {
            fs::write(dir, "cpuset.mems", v)?;
        }
    }
    Ok(())
}

/// Writes a file the kernel may lack (realtime, burst, idle): absent = ignored with a debug message.
fn write_if_present(dir: &Path, file: &str, value: &str, what: &str) -> Result<(), CgroupError> {
    if dir.join(file).exists() {
        fs::write(dir, file, value)
    } else {
        debug(&format!(
            "cgroups: {what} ignored: {} does not exist",
            dir.join(file).display()
        ));
        Ok(())
    }
}

fn blkio(m: &CgroupManager, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    let throttles = [
        (
            b.throttle_read_bps_device(),
            "blkio.throttle.read_bps_device",
        ),
        (
            b.throttle_write_bps_device(),
            "blkio.throttle.write_bps_device",
        ),
        (
            b.throttle_read_iops_device(),
            "blkio.throttle.read_iops_device",
        ),
        (
            b.throttle_write_iops_device(),
            "blkio.throttle.write_iops_device",
        ),
    ];
    let any = b.weight().is_some()
        || b.leaf_weight().is_some()
        || b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
        || throttles
            .iter()
            .any(|(t, _)| t.as_ref().is_some_and(|v| !v.is_empty()));
    if !any {
        return Ok(());
    }
    let dir = need(m, "blkio", "blockIO")?;
    let weight_file = ["blkio.weight", "blkio.bfq.weight"]
        .into_iter()
        .find(|f| dir.join(f).exists());
    if let Some(w) = b.weight() {
        let f = weight_file.ok_or_else(|| CgroupError::InvalidValue {
            what: "blockIO.weight".into(),
            reason: format!(
                "neither blkio.weight nor blkio.bfq.weight exists in {} (no CFQ/BFQ I/O scheduler)",
                dir.display()
            ),
        })?;
        fs::write(dir, f, &w.to_string())?;
    }
    if let Some(w) = b.leaf_weight() {
        write_if_present(
            dir,
            "blkio.leaf_weight",
            &w.to_string(),
            "blockIO.leafWeight",
        )?;
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            let f = weight_file.ok_or_else(|| CgroupError::InvalidValue {
                what: "blockIO.weightDevice".into(),
                reason: format!("no blkio weight file in {}", dir.display()),
            })?;
            let f = if f == "blkio.weight" {
                "blkio.weight_device"
            } else {
                f
            };
            fs::write(dir, f, &format!("{}:{} {}", d.major(), d.minor(), w))?;
        }
        if let Some(w) = d.leaf_weight() {
            write_if_present(
                dir,
                "blkio.leaf_weight_device",
                &format!("{}:{} {}", d.major(), d.minor(), w),
                "blockIO.weightDevice.leafWeight",
            )?;
        }
    }
    for (list, file) in throttles {
        for t in list.iter().flatten() {
            fs::write(
                dir,
                file,
                &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
            )?;
        }
    }
    Ok(())
}

fn hugetlb(m: &CgroupManager, limits: &[LinuxHugepageLimit]) -> Result<(), CgroupError> {
    if limits.is_empty() {
        return Ok(());
    }
    if let Some(dir) = m.v1_dir("hugetlb") {
        for h in limits {
            let file = format!("hugetlb.{}.limit_in_bytes", h.page_size());
            if !dir.join(&file).exists() {
                return Err(unsupported_page_size(h.page_size(), &dir.join(&file)));
            }
            fs::write(dir, &file, &h.limit().to_string())?;
        }
        return Ok(());
    }
    if m.mode == Mode::Hybrid && v2::root_has_controller(m, "hugetlb") {
        v2::enable_for_leaf(m, "hugetlb")?;
        return v2::hugetlb(m, limits);
    }
    Err(CgroupError::MissingController {
        controller: "hugetlb",
        what: "hugepageLimits".into(),
    })
}

pub(crate) fn unsupported_page_size(size: &str, file: &Path) -> CgroupError {
    CgroupError::InvalidValue {
        what: format!("hugepageLimits pageSize {size:?}"),
        reason: format!("{} does not exist", file.display()),
    }
}

fn network(m: &CgroupManager, n: &LinuxNetwork) -> Result<(), CgroupError> {
    if let Some(id) = n.class_id() {
        let dir = need(m, "net_cls", "network.classID")?;
        fs::write(dir, "net_cls.classid", &id.to_string())?;
    }
    for p in n.priorities().iter().flatten() {
        let dir = need(m, "net_prio", "network.priorities")?;
        fs::write(
            dir,
            "net_prio.ifpriomap",
            &format!("{} {}", p.name(), p.priority()),
        )?;
    }
    Ok(())
}

/// `unified` keys on a hybrid host go to the unified hierarchy when the file exists there.
fn unified(
    m: &CgroupManager,
    u: &std::collections::HashMap<String, String>,
) -> Result<(), CgroupError> {
    if u.is_empty() {
        return Ok(());
    }
    match (&m.unified, m.mode) {
        (Some(_), Mode::Hybrid) => v2::unified(m, u),
        _ => Err(CgroupError::InvalidValue {
            what: "unified".into(),
            reason: "unified resources need a cgroup v2 hierarchy, and this host has none".into(),
        }),
    }
}
