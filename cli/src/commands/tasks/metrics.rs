//! `tasks metrics`: the cgroup statistics berth-shim reports (`io.containerd.cgroups.v1.Metrics`),
//! as a short table or JSON.
//!
//! Read-only; this module must never change the task.

use containerd_client::services::v1::MetricsRequest;
use prost::Message;
use serde_json::json;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::output::human_size;

/// `tasks metrics`: the cgroup v1 metrics berth-shim reports.
pub async fn metrics(client: &Client, id: &str, format: crate::output::Format) -> Result<i32> {
    let metrics = client
        .tasks()
        .metrics(client.req(MetricsRequest {
            filters: vec![format!("id=={id}")],
        }))
        .await
        .map_err(Error::rpc(format!("metrics of {id}")))?
        .into_inner()
        .metrics;
    let data = metrics
        .first()
        .and_then(|m| m.data.as_ref())
        .ok_or_else(|| Error::invalid(format!("metrics of {id}"), "berthd returned none"))?;
    if data.type_url != "io.containerd.cgroups.v1.Metrics" {
        return Err(Error::Unsupported(format!(
            "metrics of {id}: type {} is not supported",
            data.type_url
        )));
    }
    let m = berth_proto::cgroups::Metrics::decode(data.value.as_slice())
        .map_err(|e| Error::invalid(format!("metrics of {id}"), e))?;
    let mem = m.memory.unwrap_or_default();
    let usage = mem.usage.unwrap_or_default();
    let cpu = m.cpu.unwrap_or_default().usage.unwrap_or_default();
    let pids = m.pids.unwrap_or_default();
    let doc = json!({
        "memory": { "usage": usage.usage, "limit": usage.limit, "max": usage.max, "rss": mem.total_rss, "cache": mem.total_cache },
        "cpu": { "total_ns": cpu.total, "user_ns": cpu.user, "kernel_ns": cpu.kernel },
        "pids": { "current": pids.current, "limit": pids.limit },
    });
    match format {
        crate::output::Format::Json => {
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default())
        }
        crate::output::Format::Table => {
            let limit = |n: u64| {
                if n == 0 || n >= (1 << 62) {
                    "unlimited".to_string()
                } else {
                    human_size(n)
                }
            };
            println!("METRIC          VALUE");
            println!("memory.usage    {}", human_size(usage.usage));
            println!("memory.limit    {}", limit(usage.limit));
            println!("memory.max      {}", human_size(usage.max));
            println!("cpu.total       {:.3}s", cpu.total as f64 / 1e9);
            println!("cpu.user        {:.3}s", cpu.user as f64 / 1e9);
            println!("cpu.kernel      {:.3}s", cpu.kernel as f64 / 1e9);
            let plimit = if pids.limit == 0 {
                "unlimited".to_string()
            } else {
                pids.limit.to_string()
            };
            println!("pids.current    {}", pids.current);
            println!("pids.limit      {plimit}");
        }
    }
    Ok(0)
}
