//! ContainerStats, ListContainerStats and UpdateContainerResources: the shim's cgroup statistics
//! (`io.containerd.cgroups.v1.Metrics`) as CRI's CPU and memory usage (working set = usage minus inactive file
//! pages, as the kubelet computes it), the writable layer from the container's snapshot, and resource updates
//! through the task layer's Update.
//!
//! This module must never read cgroup files itself: the shim owns the container's cgroup.

use berth_proto::containerd::snapshots::snapshots_server::Snapshots as _;
use berth_proto::containerd_client::services::v1::snapshots::UsageRequest;
use berth_proto::cri;
use prost::Message;
use serde_json::json;
use tonic::Status;

use super::meta::{self, CriContainer};
use super::{ns_request, task_status, Cri, NAMESPACE};
use crate::services::snapshots::SnapshotsService;
use crate::tasks::TaskError;

pub(super) fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

/// The cgroup metrics of one task; None when it has no running task to ask.
pub(super) async fn metrics(
    cri: &Cri,
    id: &str,
) -> Result<Option<berth_proto::cgroups::Metrics>, Status> {
    let any = match cri.tasks().metrics_of(NAMESPACE, id).await {
        Ok(Some(a)) => a,
        Ok(None) | Err(TaskError::TaskNotFound(_)) => return Ok(None),
        Err(e) => return Err(task_status(e)),
    };
    berth_proto::cgroups::Metrics::decode(any.value.as_slice())
        .map(Some)
        .map_err(|e| Status::internal(format!("container {id}: cgroup metrics: {e}")))
}

/// CRI's CPU usage: the cumulative time, and the rate since the previous sample of the same `key` (what
/// containerd's CRI fills and the kubelet's summary reports as usageNanoCores).
pub(super) fn cpu_usage(cri: &Cri, key: &str, total: u64, now: i64) -> cri::CpuUsage {
    let mut last = cri
        .inner
        .cpu_samples
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let rate = last
        .insert(key.to_string(), (now, total))
        .and_then(|(t0, u0)| {
            let dt = u64::try_from(now - t0).ok().filter(|d| *d > 0)?;
            Some(total.saturating_sub(u0).saturating_mul(1_000_000_000) / dt)
        });
    cri::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: u64v(total),
        usage_nano_cores: rate.map(|value| cri::UInt64Value { value }),
    }
}

/// CRI's memory usage of cgroup memory statistics.
pub(super) fn memory_usage(mem: &berth_proto::cgroups::MemoryStat, now: i64) -> cri::MemoryUsage {
    let usage = mem.usage.as_ref().map(|u| u.usage).unwrap_or(0);
    let limit = mem.usage.as_ref().map(|u| u.limit).unwrap_or(0);
    let working_set = usage.saturating_sub(mem.total_inactive_file);
    cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: u64v(working_set),
        // cgroup v1 reports "no limit" as a huge number.
        available_bytes: (limit > 0 && limit < (1 << 62)).then(|| cri::UInt64Value {
            value: limit.saturating_sub(working_set),
        }),
        usage_bytes: u64v(usage),
        rss_bytes: u64v(mem.total_rss.max(mem.rss)),
        page_faults: u64v(mem.total_pg_fault.max(mem.pg_fault)),
        major_page_faults: u64v(mem.total_pg_maj_fault.max(mem.pg_maj_fault)),
    }
}

/// The stats of one container; None when it has no running task to ask.
pub(super) async fn stats_of(
    cri: &Cri,
    c: &CriContainer,
) -> Result<Option<cri::ContainerStats>, Status> {
    Ok(stats_and_pids(cri, c).await?.map(|(s, _)| s))
}

/// The stats of one container and its process count.
pub(super) async fn stats_and_pids(
    cri: &Cri,
    c: &CriContainer,
) -> Result<Option<(cri::ContainerStats, u64)>, Status> {
    let Some(m) = metrics(cri, &c.id).await? else {
        return Ok(None);
    };
    let now = super::now_nanos();
    let cpu = m
        .cpu
        .as_ref()
        .and_then(|c| c.usage.as_ref())
        .map(|u| cpu_usage(cri, &c.id, u.total, now));
    let memory = m.memory.as_ref().map(|mem| memory_usage(mem, now));
    let pids = m.pids.as_ref().map(|p| p.current).unwrap_or(0);
    let layer = SnapshotsService::new(cri.ctx().clone())
        .usage(ns_request(UsageRequest {
            snapshotter: String::new(),
            key: c.id.clone(),
        }))
        .await
        .ok()
        .map(|r| r.into_inner());
    let writable_layer = layer.map(|u| cri::FilesystemUsage {
        timestamp: now,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: cri
                .ctx()
                .config
                .root
                .join("snapshots")
                .display()
                .to_string(),
        }),
        used_bytes: u64v(u.size.max(0) as u64),
        inodes_used: u64v(u.inodes.max(0) as u64),
    });
    let stats = cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu,
        memory,
        writable_layer,
    };
    Ok(Some((stats, pids)))
}

/// ContainerStats: NotFound for an unknown container, FailedPrecondition for one not running.
pub async fn container(cri: &Cri, id: &str) -> Result<cri::ContainerStats, Status> {
    let c = meta::container(&cri.ctx().store, id).await?;
    stats_of(cri, &c)
        .await?
        .ok_or_else(|| Status::failed_precondition(format!("container {id} is not running")))
}

/// ListContainerStats: every container with a task that answers, filtered.
pub async fn list(
    cri: &Cri,
    filter: Option<cri::ContainerStatsFilter>,
) -> Result<Vec<cri::ContainerStats>, Status> {
    let f = filter.unwrap_or_default();
    let mut out = Vec::new();
    for c in meta::all(&cri.ctx().store)
        .await?
        .iter()
        .filter_map(meta::container_of)
    {
        if (!f.id.is_empty() && !c.id.starts_with(&f.id))
            || (!f.pod_sandbox_id.is_empty() && !c.sandbox_id.starts_with(&f.pod_sandbox_id))
            || !meta::selects(&f.label_selector, &c.config.labels)
        {
            continue;
        }
        // A container that stops meanwhile is left out, as its task no longer answers.
        if let Ok(Some(s)) = stats_of(cri, &c).await {
            out.push(s);
        }
    }
    Ok(out)
}

/// UpdateContainerResources: the OCI LinuxResources of CRI's, applied by the shim to the running task.
pub async fn update(
    cri: &Cri,
    id: &str,
    r: Option<cri::LinuxContainerResources>,
) -> Result<(), Status> {
    meta::container(&cri.ctx().store, id).await?;
    let Some(r) = r else {
        return Ok(());
    };
    let mut res = json!({});
    if r.memory_limit_in_bytes > 0 {
        res["memory"] = json!({ "limit": r.memory_limit_in_bytes });
    }
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        res["cpu"] = serde_json::Value::Object(cpu);
    }
    let bytes = serde_json::to_vec(&res).map_err(|e| Status::internal(e.to_string()))?;
    cri.tasks()
        .update(NAMESPACE, id, bytes)
        .await
        .map_err(task_status)
}
