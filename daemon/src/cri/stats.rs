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

fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

/// The stats of one container; None when it has no running task to ask.
async fn stats_of(cri: &Cri, c: &CriContainer) -> Result<Option<cri::ContainerStats>, Status> {
    let any = match cri.tasks().metrics_of(NAMESPACE, &c.id).await {
        Ok(Some(a)) => a,
        Ok(None) | Err(TaskError::TaskNotFound(_)) => return Ok(None),
        Err(e) => return Err(task_status(e)),
    };
    let m = berth_proto::cgroups::Metrics::decode(any.value.as_slice())
        .map_err(|e| Status::internal(format!("container {}: cgroup metrics: {e}", c.id)))?;
    let now = super::now_nanos();
    let cpu = m
        .cpu
        .as_ref()
        .and_then(|c| c.usage.as_ref())
        .map(|u| cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: u64v(u.total),
            usage_nano_cores: None,
        });
    let memory = m.memory.as_ref().map(|mem| {
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
    });
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
    Ok(Some(cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu,
        memory,
        writable_layer,
    }))
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
