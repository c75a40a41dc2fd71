//! App containers: CreateContainer (record and rootfs snapshot; the spec joins the pod's namespaces),
//! StartContainer (the task, its stdio in the CRI log at the kubelet's path, written by the shim so it
//! outlives a berthd restart), StopContainer (the image's stop signal, then SIGKILL after the timeout),
//! RemoveContainer, ListContainers and ContainerStatus (state, exit code, reason, times, image, log path from
//! the task layer and the record).
//!
//! This module must never start a container whose pod is not ready, nor keep a record of a failed create.

use std::collections::HashMap;

use berth_proto::containerd_client::services::v1::CreateTaskRequest;
use berth_proto::containerd_client::types::v1::Status as TaskStatus;
use berth_proto::cri;
use tonic::{Code, Status};

use super::images;
use super::meta::{self, CriContainer};
use super::pods::{self, kill_and_wait, remove_record, task};
use super::records;
use super::spec::PodNamespaces;
use super::user;
use super::{task_status, ts_nanos, Cri, NAMESPACE};
use crate::network::Owner;

/// The stdio path prefix that makes berth-shim write a CRI-format log (see berth-shim's `crilog.rs`).
pub const CRI_LOG_SCHEME: &str = "crilog://";

/// The image's StopSignal, when it has one.
const STOP_SIGNAL: &str = "io.berth.cri.stop-signal";

/// CreateContainer; returns the new container's id.
pub async fn create(
    cri: &Cri,
    pod_id: &str,
    config: cri::ContainerConfig,
    sandbox_config: Option<cri::PodSandboxConfig>,
) -> Result<String, Status> {
    let sandbox = meta::sandbox(&cri.ctx().store, pod_id).await?;
    let md = config
        .metadata
        .clone()
        .ok_or_else(|| Status::invalid_argument("config.metadata is required"))?;
    if md.name.is_empty() {
        return Err(Status::invalid_argument("config.metadata.name is required"));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("config.image.image is required"))?;
    let name = format!("{}/{}", md.name, md.attempt);
    for c in meta::all(&cri.ctx().store)
        .await?
        .iter()
        .filter_map(meta::container_of)
    {
        if c.sandbox_id == pod_id && c.label(meta::CONTAINER_NAME) == name {
            return Err(Status::already_exists(format!(
                "container {name:?} exists already in pod {pod_id} as {}",
                c.id
            )));
        }
    }
    let pause = task(cri, pod_id)
        .await?
        .filter(|p| p.status == TaskStatus::Running as i32)
        .ok_or_else(|| Status::failed_precondition(format!("pod sandbox {pod_id} is not ready")))?;
    let image = images::find(cri, &image_name).await?.ok_or_else(|| {
        Status::not_found(format!("image {image_name:?} not found; pull it first"))
    })?;
    let sandbox_config = sandbox_config.unwrap_or_else(|| sandbox.config.clone());
    let id = super::new_id()?;
    let netns = (!pods::host_network(&sandbox.config))
        .then(|| Owner::task(NAMESPACE, pod_id).netns_path(&cri.ctx().config.state));
    let pause_dir = cri.ctx().config.task_dir(NAMESPACE, pod_id);
    let target_pid = target_pid(cri, pod_id, &config).await?;
    let pod = PodNamespaces {
        pause_pid: pause.pid,
        netns: netns.as_deref(),
        pause_dir: &pause_dir,
        target_pid,
    };
    // The snapshot first: the user and groups come from the image's files in it, as containerd reads them.
    // `_pin` keeps GC off the snapshot until the record below names it.
    let (mounts, _pin) = records::prepare_snapshot(cri, &id, &image).await?;
    let built =
        user::container_spec(cri, &id, &image, &config, &sandbox_config, &pod, mounts).await;
    let spec = match built {
        Ok(spec) => spec,
        Err(e) => {
            records::remove_snapshot(cri, &id).await;
            return Err(e);
        }
    };
    let mut labels = HashMap::from([
        (meta::KIND.to_string(), "container".to_string()),
        (meta::SANDBOX_ID.to_string(), pod_id.to_string()),
        (meta::CONTAINER_NAME.to_string(), name),
        (meta::IMAGE_REF.to_string(), image.id.clone()),
    ]);
    if !image.config.config.stop_signal.is_empty() {
        labels.insert(
            STOP_SIGNAL.to_string(),
            image.config.config.stop_signal.clone(),
        );
    }
    if !config.log_path.is_empty() && !sandbox.config.log_directory.is_empty() {
        let path = std::path::Path::new(&sandbox.config.log_directory).join(&config.log_path);
        labels.insert(meta::LOG_PATH.to_string(), path.display().to_string());
    }
    labels.insert(
        user::USER.to_string(),
        user::label(&spec["process"]["user"]),
    );
    let ext = meta::encode_ext(&config, "ContainerConfig");
    records::record_on_snapshot(
        cri,
        &id,
        &image,
        &spec,
        labels,
        (meta::CONTAINER_CONFIG, ext),
    )
    .await?;
    Ok(id)
}

/// For PID namespace mode TARGET, the pid of the target container: it must be a running container of the same
/// pod (NotFound otherwise; FailedPrecondition when it is not running).
async fn target_pid(
    cri: &Cri,
    pod_id: &str,
    config: &cri::ContainerConfig,
) -> Result<Option<u32>, Status> {
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(ns) = ns.filter(|n| n.pid == cri::NamespaceMode::Target as i32) else {
        return Ok(None);
    };
    let target = meta::container(&cri.ctx().store, &ns.target_id).await?;
    if target.sandbox_id != pod_id {
        return Err(Status::not_found(format!(
            "target container {} is not in pod {pod_id}",
            ns.target_id
        )));
    }
    let p = task(cri, &target.id)
        .await?
        .filter(|p| p.status == TaskStatus::Running as i32 && p.pid > 0)
        .ok_or_else(|| {
            Status::failed_precondition(format!("target container {} is not running", target.id))
        })?;
    Ok(Some(p.pid))
}

/// StartContainer: the task, with the CRI log as its stdio.
pub async fn start(cri: &Cri, id: &str) -> Result<(), Status> {
    let c = meta::container(&cri.ctx().store, id).await?;
    if task(cri, id).await?.is_some() {
        return Err(Status::failed_precondition(format!(
            "container {id} was started already"
        )));
    }
    let log = c.label(meta::LOG_PATH).to_string();
    // A terminal's output is one stream: the shim writes it to the log as stdout.
    let stdio = if log.is_empty() {
        String::new()
    } else {
        let dir = std::path::Path::new(&log).parent().map(|p| p.to_path_buf());
        if let Some(dir) = dir {
            tokio::fs::create_dir_all(&dir).await.map_err(|e| {
                Status::internal(format!("creating log dir {}: {e}", dir.display()))
            })?;
        }
        format!("{CRI_LOG_SCHEME}{log}")
    };
    let rootfs = pods::rootfs(cri, id).await?;
    // `stdin: true` keeps a FIFO the shim holds open, for Attach to write to (`stream/attach.rs`).
    let stdin = if c.config.stdin {
        super::stream::make_stdin(cri, id).await?
    } else {
        String::new()
    };
    cri.tasks()
        .create(
            NAMESPACE,
            CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                stdin,
                stdout: stdio.clone(),
                stderr: if c.config.tty { String::new() } else { stdio },
                terminal: c.config.tty,
                ..Default::default()
            },
        )
        .await
        .map_err(task_status)?;
    tracing::debug!(phase = "task created", "start");
    // The start time's commit runs beside the start (taken as the start is asked for); a failed start takes
    // it back, so the container reads as created again, as before the start.
    let store = &cri.ctx().store;
    let started_at = [(meta::STARTED_AT, super::now_nanos().to_string())];
    let label = meta::set_labels(store, id, &started_at);
    let (started, labelled) = tokio::join!(cri.tasks().start(NAMESPACE, id, String::new()), label);
    if let Err(e) = started {
        let _ = cri.tasks().delete(NAMESPACE, id).await;
        if labelled.is_ok() {
            if let Err(undo) =
                meta::set_labels(store, id, &[(meta::STARTED_AT, String::new())]).await
            {
                tracing::warn!(namespace = NAMESPACE, container_id = id, error = %undo,
                    "cannot take back the start time of a failed start");
            }
        }
        return Err(task_status(e));
    }
    tracing::debug!(phase = "task started", "start");
    labelled
}

/// ReopenContainerLog: the shim reopens the log at its path (the kubelet renamed it to rotate it). NotFound for
/// an unknown container; FailedPrecondition for one not running (no new file is made then), as containerd answers.
pub async fn reopen_log(cri: &Cri, id: &str) -> Result<(), Status> {
    let c = meta::container(&cri.ctx().store, id).await?;
    if c.label(meta::LOG_PATH).is_empty() {
        return Err(Status::failed_precondition(format!(
            "container {id} has no log path"
        )));
    }
    let running = task(cri, id)
        .await?
        .is_some_and(|p| p.status == TaskStatus::Running as i32);
    if !running {
        return Err(Status::failed_precondition(format!(
            "container {id} is not running"
        )));
    }
    cri.tasks()
        .reopen_log(NAMESPACE, id)
        .await
        .map_err(task_status)
}

fn stop_signal(c: &CriContainer) -> u32 {
    let sig = c
        .labels
        .get(STOP_SIGNAL)
        .map(String::as_str)
        .unwrap_or("SIGTERM");
    match sig.trim_start_matches("SIG") {
        "INT" => libc::SIGINT as u32,
        "QUIT" => libc::SIGQUIT as u32,
        "KILL" => libc::SIGKILL as u32,
        "HUP" => libc::SIGHUP as u32,
        "USR1" => libc::SIGUSR1 as u32,
        "USR2" => libc::SIGUSR2 as u32,
        _ => libc::SIGTERM as u32,
    }
}

/// StopContainer: the stop signal, SIGKILL after `timeout` seconds. A stopped or missing one is fine.
pub async fn stop(cri: &Cri, id: &str, timeout: i64) -> Result<(), Status> {
    let c = match meta::container(&cri.ctx().store, id).await {
        Ok(c) => c,
        Err(e) if e.code() == Code::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let grace = std::time::Duration::from_secs(timeout.max(0) as u64);
    let signal = if timeout <= 0 {
        libc::SIGKILL as u32
    } else {
        stop_signal(&c)
    };
    kill_and_wait(cri, id, signal, Some(grace)).await
}

/// RemoveContainer: killed if running, then gone. Not found is success.
pub async fn remove(cri: &Cri, id: &str) -> Result<(), Status> {
    match meta::container(&cri.ctx().store, id).await {
        Ok(_) => remove_record(cri, id).await,
        Err(e) if e.code() == Code::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What the task layer says of a container.
struct Observed {
    state: cri::ContainerState,
    exit_code: i32,
    finished_at: i64,
    pid: u32,
}

async fn observe(cri: &Cri, c: &CriContainer) -> Result<Observed, Status> {
    let p = task(cri, &c.id).await?;
    let started = !c.label(meta::STARTED_AT).is_empty();
    Ok(match p {
        None if started => Observed {
            state: cri::ContainerState::ContainerExited,
            exit_code: 255,
            finished_at: 0,
            pid: 0,
        },
        None => Observed {
            state: cri::ContainerState::ContainerCreated,
            exit_code: 0,
            finished_at: 0,
            pid: 0,
        },
        Some(p) => {
            let state = match TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown) {
                TaskStatus::Created => cri::ContainerState::ContainerCreated,
                TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => {
                    cri::ContainerState::ContainerRunning
                }
                TaskStatus::Stopped => cri::ContainerState::ContainerExited,
                TaskStatus::Unknown => cri::ContainerState::ContainerUnknown,
            };
            Observed {
                state,
                exit_code: p.exit_status as i32,
                finished_at: ts_nanos(p.exited_at.as_ref()),
                pid: p.pid,
            }
        }
    })
}

fn image_spec(c: &CriContainer) -> Option<cri::ImageSpec> {
    c.config.image.clone()
}

/// ContainerStatus.
pub async fn status(
    cri: &Cri,
    id: &str,
    verbose: bool,
) -> Result<cri::ContainerStatusResponse, Status> {
    let c = meta::container(&cri.ctx().store, id).await?;
    let o = observe(cri, &c).await?;
    let exited = o.state == cri::ContainerState::ContainerExited;
    let reason = if !exited {
        String::new()
    } else if o.exit_code == 0 {
        "Completed".to_string()
    } else {
        "Error".to_string()
    };
    let image_ref = c.label(meta::IMAGE_REF).to_string();
    let mut info = HashMap::new();
    if verbose {
        let v = serde_json::json!({ "pid": o.pid, "sandboxID": c.sandbox_id });
        info.insert("info".to_string(), v.to_string());
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: o.state as i32,
            created_at: c.created_at,
            started_at: c.label(meta::STARTED_AT).parse().unwrap_or(0),
            finished_at: if exited { o.finished_at } else { 0 },
            exit_code: if exited { o.exit_code } else { 0 },
            image: image_spec(&c),
            image_ref: image_ref.clone(),
            reason,
            message: String::new(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c.label(meta::LOG_PATH).to_string(),
            image_id: image_ref,
            user: user::of_label(c.label(user::USER)),
        }),
        info,
    })
}

/// ListContainers with CRI's filter (id or prefix, state, pod, labels).
pub async fn list(
    cri: &Cri,
    filter: Option<cri::ContainerFilter>,
) -> Result<Vec<cri::Container>, Status> {
    let f = filter.unwrap_or_default();
    let mut out = Vec::new();
    for c in meta::all(&cri.ctx().store)
        .await?
        .iter()
        .filter_map(meta::container_of)
    {
        if !f.id.is_empty() && !c.id.starts_with(&f.id) {
            continue;
        }
        if !f.pod_sandbox_id.is_empty() && !c.sandbox_id.starts_with(&f.pod_sandbox_id) {
            continue;
        }
        if !meta::selects(&f.label_selector, &c.config.labels) {
            continue;
        }
        let o = observe(cri, &c).await?;
        if let Some(want) = &f.state {
            if want.state != o.state as i32 {
                continue;
            }
        }
        let image_ref = c.label(meta::IMAGE_REF).to_string();
        out.push(cri::Container {
            id: c.id.clone(),
            pod_sandbox_id: c.sandbox_id.clone(),
            metadata: c.config.metadata.clone(),
            image: image_spec(&c),
            image_ref: image_ref.clone(),
            state: o.state as i32,
            created_at: c.created_at,
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            image_id: image_ref,
        });
    }
    Ok(out)
}
