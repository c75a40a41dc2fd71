//! PodSandboxStats and ListPodSandboxStats: a pod's CPU, memory and process count are the sums over its pause
//! container and its containers (each measured by its shim, as ContainerStats are), its network usage is read
//! from the pod's network namespace (`/proc/<pause pid>/net/dev` shows the pause process's namespace), and every
//! running container's ContainerStats is included.
//!
//! This module must never read a container's cgroup files (the shims own them) nor enter a namespace.

use berth_proto::cri;
use tonic::Status;

use super::meta::{self, Sandbox};
use super::stats::{self, u64v};
use super::{pods, Cri};

/// PodSandboxStats: NotFound for an unknown pod, FailedPrecondition for one whose pause container is not running.
pub async fn pod(cri: &Cri, id: &str) -> Result<cri::PodSandboxStats, Status> {
    let s = meta::sandbox(&cri.ctx().store, id).await?;
    stats_of(cri, &s)
        .await?
        .ok_or_else(|| Status::failed_precondition(format!("pod sandbox {id} is not ready")))
}

/// ListPodSandboxStats: every ready pod passing the filter.
pub async fn list(
    cri: &Cri,
    filter: Option<cri::PodSandboxStatsFilter>,
) -> Result<Vec<cri::PodSandboxStats>, Status> {
    let f = filter.unwrap_or_default();
    let mut out = Vec::new();
    for c in meta::all(&cri.ctx().store).await? {
        let Some(s) = meta::sandbox_of(&c) else {
            continue;
        };
        if (!f.id.is_empty() && !s.id.starts_with(&f.id))
            || !meta::selects(&f.label_selector, &s.config.labels)
        {
            continue;
        }
        // A pod stopping meanwhile is left out, as its pause task no longer answers.
        if let Ok(Some(st)) = stats_of(cri, &s).await {
            out.push(st);
        }
    }
    Ok(out)
}

/// The stats of one pod; None when its pause container is not running.
async fn stats_of(cri: &Cri, s: &Sandbox) -> Result<Option<cri::PodSandboxStats>, Status> {
    let Some(pause) = pods::task(cri, &s.id).await?.filter(|p| p.pid > 0) else {
        return Ok(None);
    };
    let Some(pause_metrics) = stats::metrics(cri, &s.id).await? else {
        return Ok(None);
    };
    let now = super::now_nanos();
    let mut cpu_total = pause_metrics
        .cpu
        .as_ref()
        .and_then(|c| c.usage.as_ref())
        .map(|u| u.total)
        .unwrap_or(0);
    let mut memory = PodMemory::default();
    if let Some(m) = pause_metrics.memory.as_ref() {
        add_memory(&mut memory, &stats::memory_usage(m, now));
    }
    let mut processes = pause_metrics.pids.map(|p| p.current).unwrap_or(0);
    let mut containers = Vec::new();
    let mine = meta::all(&cri.ctx().store)
        .await?
        .iter()
        .filter_map(meta::container_of)
        .filter(|c| c.sandbox_id == s.id)
        .collect::<Vec<_>>();
    for c in &mine {
        // A container that is not running adds nothing.
        let Some((cs, pids)) = stats::stats_and_pids(cri, c).await? else {
            continue;
        };
        if let Some(u) = cs
            .cpu
            .as_ref()
            .and_then(|u| u.usage_core_nano_seconds.as_ref())
        {
            cpu_total += u.value;
        }
        if let Some(m) = cs.memory.as_ref() {
            add_memory(&mut memory, m);
        }
        processes += pids;
        containers.push(cs);
    }
    let network = if pods::host_network(&s.config) {
        None
    } else {
        let pid = pause.pid;
        let text = tokio::fs::read_to_string(format!("/proc/{pid}/net/dev"))
            .await
            .map_err(|e| {
                Status::internal(format!("pod {}: reading its network usage: {e}", s.id))
            })?;
        Some(network_usage(&text, now))
    };
    Ok(Some(cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: s.id.clone(),
            metadata: s.config.metadata.clone(),
            labels: s.config.labels.clone(),
            annotations: s.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(stats::cpu_usage(cri, &s.id, cpu_total, now)),
            memory: Some(memory_of(&memory, now)),
            network,
            process: Some(cri::ProcessUsage {
                timestamp: now,
                process_count: u64v(processes),
            }),
            containers,
        }),
    }))
}

/// The pod's memory: the sum of its members' usage, working set, RSS and faults.
#[derive(Default)]
struct PodMemory {
    usage: u64,
    working_set: u64,
    rss: u64,
    page_faults: u64,
    major_page_faults: u64,
}

fn add_memory(total: &mut PodMemory, m: &cri::MemoryUsage) {
    let v = |x: &Option<cri::UInt64Value>| x.as_ref().map(|v| v.value).unwrap_or(0);
    total.usage += v(&m.usage_bytes);
    total.working_set += v(&m.working_set_bytes);
    total.rss += v(&m.rss_bytes);
    total.page_faults += v(&m.page_faults);
    total.major_page_faults += v(&m.major_page_faults);
}

fn memory_of(m: &PodMemory, now: i64) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: u64v(m.working_set),
        available_bytes: None,
        usage_bytes: u64v(m.usage),
        rss_bytes: u64v(m.rss),
        page_faults: u64v(m.page_faults),
        major_page_faults: u64v(m.major_page_faults),
    }
}

/// CRI's network usage of a `/proc/net/dev` table: `eth0` (the interface CNI makes) is the default one, every
/// other interface but `lo` is listed.
fn network_usage(net_dev: &str, now: i64) -> cri::NetworkUsage {
    let mut out = cri::NetworkUsage {
        timestamp: now,
        default_interface: None,
        interfaces: vec![],
    };
    // Two header lines, then `name: rx_bytes packets errs drop fifo frame compressed multicast tx_bytes
    // packets errs ...`.
    for line in net_dev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let n: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if name == "lo" || n.len() < 16 {
            continue;
        }
        let usage = cri::NetworkInterfaceUsage {
            name: name.to_string(),
            rx_bytes: u64v(n[0]),
            rx_errors: u64v(n[2]),
            tx_bytes: u64v(n[8]),
            tx_errors: u64v(n[10]),
        };
        if name == "eth0" {
            out.default_interface = Some(usage);
        } else {
            out.interfaces.push(usage);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_is_read_as_the_kubelet_wants_it() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:    5000      40    3    0    0     0          0         0     7000      50    4    0    0     0       0          0\n  \
net1:       1       2    0    0    0     0          0         0        3       4    0    0    0     0       0          0\n";
        let u = network_usage(text, 7);
        let eth0 = u.default_interface.expect("eth0");
        assert_eq!(
            (
                eth0.name.as_str(),
                eth0.rx_bytes,
                eth0.rx_errors,
                eth0.tx_bytes,
                eth0.tx_errors
            ),
            ("eth0", u64v(5000), u64v(3), u64v(7000), u64v(4))
        );
        assert_eq!(u.interfaces.len(), 1);
        assert_eq!(u.interfaces[0].name, "net1");
    }
}
