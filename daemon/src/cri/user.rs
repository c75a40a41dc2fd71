//! The user of a new CRI container: its spec built with the image's /etc/passwd and /etc/group read from the
//! container's own snapshot mounts (a temporary read-only mount on a blocking thread, as containerd's
//! `WithTempMount`), and the resulting uid, gid and groups kept as a record label for ContainerStatus's
//! `user`.
//!
//! This module must never read the host's user files, nor leave a mount behind (berth-oci's reader unmounts).

use berth_oci::user::rootfs::{read_files, MountRef};
use berth_proto::containerd_client::types::Mount;
use berth_proto::cri;
use tonic::Status;

use super::images;
use super::spec::{ImageFiles, PodNamespaces, UserRequest};
use super::{Cri, NAMESPACE};

/// The process's uid, gid and supplementary groups as the spec has them (see [`label`]).
pub(super) const USER: &str = "io.berth.cri.user";

/// The spec of a new container whose snapshot has `mounts`: the image's /etc/passwd and /etc/group are read
/// from them (on a blocking thread: it mounts) when the user or the groups policy needs them.
pub(super) async fn container_spec(
    cri: &Cri,
    id: &str,
    image: &images::Resolved,
    config: &cri::ContainerConfig,
    sandbox_config: &cri::PodSandboxConfig,
    pod: &PodNamespaces<'_>,
    mounts: Vec<Mount>,
) -> Result<serde_json::Value, Status> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let files = if UserRequest::of_container(&sc).needs_files(&image.config) {
        let scratch = cri.ctx().config.state.clone();
        let read = tokio::task::spawn_blocking(move || {
            let refs: Vec<MountRef<'_>> = mounts
                .iter()
                .map(|m| MountRef {
                    kind: &m.r#type,
                    source: &m.source,
                    options: &m.options,
                })
                .collect();
            read_files(&refs, &["/etc/passwd", "/etc/group"], &scratch)
        })
        .await
        .map_err(|e| Status::internal(format!("reading the image's /etc/passwd: {e}")))?
        .map_err(|e| {
            tracing::warn!(namespace = NAMESPACE, container_id = id, error = %e, "cannot read the image's user files");
            Status::internal(format!("reading the image's /etc/passwd and /etc/group: {e}"))
        })?;
        let mut read = read.into_iter();
        Some(ImageFiles {
            passwd: read.next().unwrap_or_default(),
            group: read.next().unwrap_or_default(),
        })
    } else {
        None
    };
    super::spec::container(
        id,
        &image.config,
        config,
        sandbox_config,
        pod,
        files.as_ref(),
    )
}

/// `uid:gid:g1,g2,...` of a spec's `process.user`, kept as the [`USER`] label for ContainerStatus's `user`.
pub(super) fn label(user: &serde_json::Value) -> String {
    let groups: Vec<String> = user["additionalGids"]
        .as_array()
        .map(|a| a.iter().map(|g| g.to_string()).collect())
        .unwrap_or_default();
    format!(
        "{}:{}:{}",
        user["uid"].as_i64().unwrap_or(0),
        user["gid"].as_i64().unwrap_or(0),
        groups.join(",")
    )
}

/// ContainerStatus's `user` from the [`label`] (None for records made before it existed).
pub(super) fn of_label(label: &str) -> Option<cri::ContainerUser> {
    let mut parts = label.splitn(3, ':');
    let uid = parts.next()?.parse().ok()?;
    let gid = parts.next()?.parse().ok()?;
    let supplemental_groups = parts
        .next()?
        .split(',')
        .filter(|g| !g.is_empty())
        .map(|g| g.parse().ok())
        .collect::<Option<Vec<i64>>>()?;
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid,
            gid,
            supplemental_groups,
        }),
    })
}
