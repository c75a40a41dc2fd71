//! Pod sandboxes: RunPodSandbox (the pause container from the sandbox image, pulled when missing, holding the
//! pod's network, IPC and UTS namespaces; one attachment to the pod network through its labels; hostname, DNS
//! and port mappings), StopPodSandbox (every container of the pod killed, the pause task deleted: the network
//! layer runs DEL and drops the netns), RemovePodSandbox, PodSandboxStatus and ListPodSandbox.
//!
//! This module must never leave a record, snapshot or task of a RunPodSandbox that failed.

use std::collections::HashMap;

use berth_proto::containerd_client::services::v1::CreateTaskRequest;
use berth_proto::containerd_client::types::v1::Status as TaskStatus;
use berth_proto::cri;
use tonic::{Code, Status};

use super::images;
use super::meta::{self, Sandbox};
pub(super) use super::records::{create_record, kill_and_wait, remove_record, rootfs, task};
use super::{task_status, Cri, NAMESPACE};
use crate::network::{Owner, NETWORKS_LABEL, PORTS_LABEL};
use crate::tasks::TaskError;

fn port_label(ports: &[cri::PortMapping]) -> Result<String, Status> {
    let mut out = Vec::new();
    for p in ports.iter().filter(|p| p.host_port > 0) {
        if p.container_port <= 0 || p.container_port > 65535 || p.host_port > 65535 {
            return Err(Status::invalid_argument(format!(
                "port mapping {}:{} is out of range",
                p.host_port, p.container_port
            )));
        }
        let proto = match cri::Protocol::try_from(p.protocol).unwrap_or(cri::Protocol::Tcp) {
            cri::Protocol::Tcp => "tcp",
            cri::Protocol::Udp => "udp",
            cri::Protocol::Sctp => "sctp",
        };
        let host = if p.host_ip.is_empty() {
            String::new()
        } else {
            format!("{}:", p.host_ip)
        };
        out.push(format!(
            "{host}{}:{}/{proto}",
            p.host_port, p.container_port
        ));
    }
    Ok(out.join(","))
}

fn resolv_conf(dns: &cri::DnsConfig) -> String {
    let mut s = String::new();
    for d in &dns.servers {
        s.push_str(&format!("nameserver {d}\n"));
    }
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

/// Whether the pod uses the host's network.
pub(super) fn host_network(config: &cri::PodSandboxConfig) -> bool {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|n| n.network == cri::NamespaceMode::Node as i32)
}

/// RunPodSandbox; returns the new pod's id.
pub async fn run(
    cri: &Cri,
    config: cri::PodSandboxConfig,
    handler: &str,
) -> Result<String, Status> {
    if !handler.is_empty() {
        return Err(Status::invalid_argument(format!(
            "unknown runtime handler {handler:?} (berthd has only the default one)"
        )));
    }
    let md = config
        .metadata
        .clone()
        .ok_or_else(|| Status::invalid_argument("config.metadata is required"))?;
    if md.name.is_empty() || md.uid.is_empty() || md.namespace.is_empty() {
        return Err(Status::invalid_argument(
            "config.metadata needs name, uid and namespace",
        ));
    }
    let name = meta::pod_name(&md);
    for c in meta::all(&cri.ctx().store).await? {
        if c.labels.get(meta::POD_NAME) == Some(&name) {
            return Err(Status::already_exists(format!(
                "pod sandbox {name:?} exists already as {}",
                c.id
            )));
        }
    }
    let sandbox_image = cri.ctx().config.cri.sandbox_image.clone();
    let image = match images::find(cri, &sandbox_image).await? {
        Some(i) => i,
        None => images::pull(cri, &sandbox_image, None).await?,
    };
    let id = super::new_id()?;
    let spec = super::spec::sandbox(&id, &image.config, &config)?;
    let host = host_network(&config);
    let network = cri
        .ctx()
        .config
        .cri
        .network
        .clone()
        .unwrap_or_else(|| cri.ctx().config.network.default_network.clone());
    let mut labels = HashMap::from([
        (meta::KIND.to_string(), "sandbox".to_string()),
        (meta::POD_NAME.to_string(), name),
        (
            NETWORKS_LABEL.to_string(),
            if host { "host".to_string() } else { network },
        ),
    ]);
    let ports = port_label(&config.port_mappings)?;
    if !ports.is_empty() && !host {
        labels.insert(PORTS_LABEL.to_string(), ports);
    }
    let ext = meta::encode_ext(&config, "PodSandboxConfig");
    tracing::debug!(phase = "checked", "run");
    let rootfs =
        create_record(cri, &id, &image, &spec, labels, (meta::SANDBOX_CONFIG, ext)).await?;
    tracing::debug!(phase = "record", "run");
    if let Err(e) = start_pause(cri, &id, &config, host, rootfs).await {
        if let Err(undo) = remove_record(cri, &id).await {
            tracing::error!(namespace = NAMESPACE, container_id = %id, error = %undo, "cannot undo a failed pod");
        }
        return Err(e);
    }
    Ok(id)
}

async fn start_pause(
    cri: &Cri,
    id: &str,
    config: &cri::PodSandboxConfig,
    host: bool,
    rootfs: Vec<berth_proto::containerd_client::types::Mount>,
) -> Result<(), Status> {
    cri.tasks()
        .create(
            NAMESPACE,
            CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                ..Default::default()
            },
        )
        .await
        .map_err(task_status)?;
    tracing::debug!(phase = "task created", "run");
    if let Some(dns) = &config.dns_config {
        // In place: the runtime bind-mounted this inode; the containers bind it too.
        let path = cri.ctx().config.task_dir(NAMESPACE, id).join("resolv.conf");
        let text = resolv_conf(dns);
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .create(true)
                .open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("writing the pod's resolv.conf: {e}")))?;
    }
    // The pod's IP is known once the task exists: its label's commit runs beside the start.
    let ip = if host {
        None
    } else {
        let records = cri
            .inner
            .networks
            .records_of(&Owner::task(NAMESPACE, id))
            .map_err(|e| e.status())?;
        Some(
            records
                .values()
                .flat_map(|r| r.ips.iter())
                .find_map(|cidr| cidr.split('/').next().map(String::from))
                .unwrap_or_default(),
        )
    };
    let label = async {
        match ip {
            Some(ip) => meta::set_labels(&cri.ctx().store, id, &[(meta::POD_IP, ip)]).await,
            None => Ok(()),
        }
    };
    let (started, labelled) = tokio::join!(cri.tasks().start(NAMESPACE, id, String::new()), label);
    started.map_err(task_status)?;
    tracing::debug!(phase = "task started", "run");
    labelled
}

/// The containers of a pod (app containers only).
pub(super) async fn containers_of(cri: &Cri, pod: &str) -> Result<Vec<String>, Status> {
    Ok(meta::all(&cri.ctx().store)
        .await?
        .iter()
        .filter_map(meta::container_of)
        .filter(|c| c.sandbox_id == pod)
        .map(|c| c.id)
        .collect())
}

/// StopPodSandbox: kill every container and the pause container, then delete the pause task (its network
/// goes with it). A pod that does not exist is stopped already.
pub async fn stop(cri: &Cri, id: &str) -> Result<(), Status> {
    let sandbox = match meta::sandbox(&cri.ctx().store, id).await {
        Ok(s) => s,
        Err(e) if e.code() == Code::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // Every container and the pause container at once, all with SIGKILL: a container sharing the pause's PID
    // namespace that the kernel kills when the pause dies first ends the same way (signal 9, exit 137).
    let containers = containers_of(cri, &sandbox.id).await?;
    futures::future::try_join_all(
        containers
            .iter()
            .map(String::as_str)
            .chain([id])
            .map(|c| kill_and_wait(cri, c, libc::SIGKILL as u32, None)),
    )
    .await?;
    tracing::debug!(phase = "killed", "stop");
    match cri.tasks().delete(NAMESPACE, id).await {
        Ok(_) | Err(TaskError::TaskNotFound(_)) => Ok(()),
        Err(e) => Err(task_status(e)),
    }
}

/// RemovePodSandbox: stop, then remove every container and the pause container. Not found is success.
pub async fn remove(cri: &Cri, id: &str) -> Result<(), Status> {
    stop(cri, id).await?;
    tracing::debug!(phase = "stopped", "remove");
    let containers = containers_of(cri, id).await?;
    futures::future::try_join_all(containers.iter().map(|c| remove_record(cri, c))).await?;
    tracing::debug!(phase = "containers removed", "remove");
    remove_record(cri, id).await
}

/// Ready while the pause container runs.
pub(super) async fn state(cri: &Cri, id: &str) -> Result<cri::PodSandboxState, Status> {
    Ok(match task(cri, id).await? {
        Some(p) if p.status == TaskStatus::Running as i32 => cri::PodSandboxState::SandboxReady,
        _ => cri::PodSandboxState::SandboxNotready,
    })
}

fn status_of(s: &Sandbox, state: cri::PodSandboxState) -> cri::PodSandboxStatus {
    let host = host_network(&s.config);
    let ns_opts = s
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|sc| sc.namespace_options.clone());
    cri::PodSandboxStatus {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: state as i32,
        created_at: s.created_at,
        network: (!host).then(|| cri::PodSandboxNetworkStatus {
            ip: s.ip().to_string(),
            additional_ips: vec![],
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(ns_opts.unwrap_or_default()),
            }),
        }),
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
        runtime_handler: String::new(),
    }
}

/// PodSandboxStatus.
pub async fn status(
    cri: &Cri,
    id: &str,
    verbose: bool,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    let s = meta::sandbox(&cri.ctx().store, id).await?;
    let state = state(cri, id).await?;
    let mut info = HashMap::new();
    if verbose {
        let pid = task(cri, id).await?.map(|p| p.pid).unwrap_or(0);
        let v = serde_json::json!({
            "pid": pid,
            "netns": (!host_network(&s.config)).then(|| Owner::task(NAMESPACE, id)
                .netns_path(&cri.ctx().config.state).display().to_string()),
            "image": cri.ctx().config.cri.sandbox_image,
        });
        info.insert("info".to_string(), v.to_string());
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(status_of(&s, state)),
        info,
        containers_statuses: vec![],
        timestamp: super::now_nanos(),
    })
}

/// ListPodSandbox with CRI's filter (id or id prefix, state, labels).
pub async fn list(
    cri: &Cri,
    filter: Option<cri::PodSandboxFilter>,
) -> Result<Vec<cri::PodSandbox>, Status> {
    let filter = filter.unwrap_or_default();
    let mut out = Vec::new();
    for c in meta::all(&cri.ctx().store).await? {
        let Some(s) = meta::sandbox_of(&c) else {
            continue;
        };
        if !filter.id.is_empty() && !s.id.starts_with(&filter.id) {
            continue;
        }
        if !meta::selects(&filter.label_selector, &s.config.labels) {
            continue;
        }
        let state = state(cri, &s.id).await?;
        if let Some(want) = &filter.state {
            if want.state != state as i32 {
                continue;
            }
        }
        out.push(cri::PodSandbox {
            id: s.id.clone(),
            metadata: s.config.metadata.clone(),
            state: state as i32,
            created_at: s.created_at,
            labels: s.config.labels.clone(),
            annotations: s.config.annotations.clone(),
            runtime_handler: String::new(),
        });
    }
    Ok(out)
}
