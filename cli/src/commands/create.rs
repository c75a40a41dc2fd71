//! Creating a container from an image, as `run` and `containers create` do: the flags that
//! shape it, the image found (and pulled or unpacked when needed), a snapshot prepared on its
//! top layer, the spec built ([`crate::spec`]) and the container record created, all under one
//! lease that is dropped once the record holds the snapshot.
//!
//! On any failure after the snapshot exists, the snapshot is removed again; this module must
//! never leave a half-created container behind.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateRequest, DeleteRequest, GetContainerRequest,
};
use containerd_client::types::Mount;

use super::{check_identifier, Ctx};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::image::{self, Resolved};
use crate::spec::{self, MountFlag, SpecFlags};

/// Label naming the networks berthd attaches a container to.
pub const NETWORKS_LABEL: &str = "berth.io/networks";
/// Label listing the ports berthd publishes.
pub const PORTS_LABEL: &str = "berth.io/ports";
/// Label with the image's stop signal (as ctr sets it).
pub const STOP_SIGNAL_LABEL: &str = "io.containerd.image.config.stop-signal";

/// When `run` pulls the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum PullPolicy {
    /// Pull only when the image is not there.
    #[default]
    Missing,
    /// Always pull first.
    Always,
    /// Never pull; fail when the image is not there.
    Never,
}

/// Flags that shape a container (shared by `run` and `containers create`).
#[derive(Debug, Clone, Args)]
pub struct ContainerFlags {
    /// Allocate a terminal: the process gets a pty, berth's terminal goes raw.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (`KEY=VALUE`, or `KEY` to copy it from berth's environment).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (`KEY=VALUE` lines; `#` comments).
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Add a mount: `type=bind,src=/host/dir,dst=/in/container,options=ro:rbind`.
    #[arg(long = "mount", value_name = "SPEC")]
    pub mounts: Vec<MountFlag>,
    /// Working directory of the process (default: the image's WorkingDir, else /).
    #[arg(long)]
    pub cwd: Option<String>,
    /// User to run as: `name`, `uid`, `name:group` or `uid:gid` (default: the image's User).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Hostname (default: the container id).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Network to attach to (repeatable); `none` for no network, `host` for the host's.
    #[arg(long = "net", value_name = "NAME")]
    pub networks: Vec<String>,
    /// Publish a port: `[hostIP:]hostPort:containerPort[/tcp|udp]` (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    pub ports: Vec<String>,
    /// Memory limit (bytes, or with k/m/g: 512m, 1g).
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// CPU limit in CPUs (e.g. 0.5, 2).
    #[arg(long, allow_negative_numbers = true)]
    pub cpus: Option<f64>,
    /// Most processes the container may have (0 or less: no limit).
    #[arg(long, default_value_t = spec::DEFAULT_PIDS_LIMIT, allow_negative_numbers = true)]
    pub pids_limit: i64,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Add a capability (`NET_ADMIN`, `CAP_SYS_PTRACE`, `ALL`).
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (`NET_RAW`, `ALL`).
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Give the container every capability and device, no seccomp, no masked paths.
    #[arg(long)]
    pub privileged: bool,
    /// Runtime name.
    #[arg(long, default_value = "io.containerd.runc.v2")]
    pub runtime: String,
    /// Snapshotter for the root filesystem.
    #[arg(long, default_value = "overlayfs")]
    pub snapshotter: String,
    /// Container label `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// When to pull the image: missing, always, never.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    /// Pull over plain HTTP (a registry on loopback without TLS).
    #[arg(long)]
    pub plain_http: bool,
}

/// One `-p` value checked: `[hostIP:]hostPort:containerPort[/proto]`.
pub fn check_port(p: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "invalid -p {p:?}: {why} (use [hostIP:]hostPort:containerPort[/tcp|udp])"
        ))
    };
    let (spec, proto) = match p.rsplit_once('/') {
        Some((s, proto)) => (s, proto),
        None => (p, "tcp"),
    };
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(bad("unknown protocol"));
    }
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    if parts.len() < 2 {
        return Err(bad("both ports are needed"));
    }
    for port in &parts[..2] {
        match port.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(bad("ports are numbers from 1 to 65535")),
        }
    }
    if let Some(ip) = parts.get(2) {
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(bad("the host IP is not an address"));
        }
    }
    Ok(())
}

/// The flags checked and turned into what creation needs, before berthd is asked anything.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The spec flags (user resolved later, from the image).
    pub spec: SpecFlags,
    /// `--user`, if given.
    pub user: Option<String>,
    /// Container labels from the flags (networks and ports included).
    pub labels: HashMap<String, String>,
    /// The flags.
    pub flags: ContainerFlags,
}

impl ContainerFlags {
    /// Check every flag value; read env files.
    pub fn prepare(&self, namespace: &str, id: &str, args: &[String]) -> Result<Prepared> {
        check_identifier("container id", id)?;
        let mut env = Vec::new();
        for f in &self.env_file {
            let text = std::fs::read_to_string(f).map_err(Error::io("read env file", f))?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                env.push(expand_env(line));
            }
        }
        env.extend(self.env.iter().map(|e| expand_env(e)));
        let memory_limit =
            match &self.memory_limit {
                None => None,
                Some(s) => Some(crate::output::parse_size(s).filter(|n| *n > 0).ok_or_else(
                    || {
                        Error::Usage(format!(
                            "invalid --memory-limit {s:?} (use bytes or 512m, 1g)"
                        ))
                    },
                )?),
            };
        if let Some(c) = self.cpus {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::Usage(format!(
                    "invalid --cpus {c}: give a positive number"
                )));
            }
        }
        let nets: Vec<String> = self
            .networks
            .iter()
            .flat_map(|n| n.split(','))
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        let special = nets.iter().any(|n| n == "none" || n == "host");
        if special && nets.len() > 1 {
            return Err(Error::Usage(
                "--net none and --net host cannot be combined with other networks".into(),
            ));
        }
        for n in &nets {
            check_identifier("network name", n)?;
        }
        for p in &self.ports {
            check_port(p)?;
        }
        let host_network = nets.len() == 1 && nets[0] == "host";
        if !self.ports.is_empty() && (special || host_network) {
            return Err(Error::Usage(format!(
                "-p needs a container network; it does not work with --net {}",
                nets[0]
            )));
        }
        let mut labels = crate::output::parse_labels(&self.labels);
        labels.insert(
            NETWORKS_LABEL.into(),
            if nets.is_empty() {
                "berth".into()
            } else {
                nets.join(",")
            },
        );
        if !self.ports.is_empty() {
            labels.insert(PORTS_LABEL.into(), self.ports.join(","));
        }
        // Capabilities are checked now, not after the snapshot exists.
        let spec = SpecFlags {
            id: id.to_string(),
            namespace: namespace.to_string(),
            args: args.to_vec(),
            tty: self.tty,
            env,
            cwd: self.cwd.clone(),
            user: Default::default(),
            hostname: self.hostname.clone(),
            mounts: self.mounts.clone(),
            memory_limit,
            cpus: self.cpus,
            pids_limit: self.pids_limit,
            read_only: self.read_only,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            privileged: self.privileged,
            host_network,
            console_size: if self.tty {
                crate::tty::window_size()
            } else {
                None
            },
        };
        spec::capabilities(&spec)?;
        Ok(Prepared {
            spec,
            user: self.user.clone(),
            labels,
            flags: self.clone(),
        })
    }
}

/// `KEY` alone takes its value from berth's environment (as docker does).
fn expand_env(kv: &str) -> String {
    if kv.contains('=') {
        kv.to_string()
    } else {
        format!("{kv}={}", std::env::var(kv).unwrap_or_default())
    }
}

/// Find (or pull) the image and resolve it for this host.
pub async fn image_for_run(
    ctx: &Ctx,
    client: &Client,
    name: &str,
    policy: PullPolicy,
    plain_http: bool,
) -> Result<Resolved> {
    let mut found = if policy == PullPolicy::Always {
        None
    } else {
        image::find_image(client, name).await?
    };
    if found.is_none() {
        if policy == PullPolicy::Never {
            return Err(Error::Rpc {
                what: format!("image {name}"),
                status: tonic::Status::not_found(format!(
                    "not found in namespace {} (pull it with `berth images pull {name}`, or import it)",
                    ctx.namespace
                )),
            });
        }
        let reference = crate::refs::normalize(name);
        let opts = crate::transfer::PullOptions {
            plain_http,
            ..Default::default()
        };
        crate::transfer::pull(client, &reference, &opts).await?;
        found = image::find_image(client, &reference).await?;
    }
    let img = found.ok_or_else(|| Error::Rpc {
        what: format!("image {name}"),
        status: tonic::Status::not_found("not found after the pull"),
    })?;
    image::resolve(client, img).await
}

/// The lease's removal, still in flight: the container record holds the snapshot already, so
/// nothing waits for it but berth's exit.
pub type LeaseDrop = tokio::task::JoinHandle<()>;

/// Create container `id` from `img` with the prepared flags; returns the rootfs mounts and the
/// pending removal of the creation lease (await it before exiting).
pub async fn create_container(
    client: &Client,
    img: &Resolved,
    id: &str,
    mut p: Prepared,
) -> Result<(Vec<Mount>, LeaseDrop)> {
    // The existence check and the lease (a metadata commit) at once.
    let lease_id = format!("berth-run-{}", image::unique_suffix());
    let (mut containers, mut leases) = (client.containers(), client.leases());
    let existing = containers.get(client.req(GetContainerRequest { id: id.to_string() }));
    let lease = leases.create(client.req(CreateRequest {
        id: lease_id.clone(),
        labels: HashMap::from([(
            "containerd.io/gc.expire".to_string(),
            super::leases::expiry(std::time::Duration::from_secs(3600)),
        )]),
    }));
    let (existing, lease) = tokio::join!(existing, lease);
    let lease = lease.map_err(Error::rpc("create lease"));
    let exists = match existing {
        Ok(_) => Some(Error::Usage(format!(
            "container {id} already exists (remove it with `berth containers rm {id}`, or pick another id)"
        ))),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => Some(Error::rpc(format!("get container {id}"))(s)),
    };
    if let Some(e) = exists {
        if lease.is_ok() {
            let _ = client
                .leases()
                .delete(client.req(DeleteRequest {
                    id: lease_id,
                    sync: false,
                }))
                .await;
        }
        return Err(e);
    }
    let lease = lease?.into_inner().lease.unwrap_or_default();
    let snapshotter = p.flags.snapshotter.clone();
    let leased = client.with_lease(&lease.id);
    let result = create_leased(&leased, img, id, &mut p, &snapshotter).await;
    let c = client.clone();
    let drop_lease = tokio::spawn(async move {
        let _ = c
            .leases()
            .delete(c.req(DeleteRequest {
                id: lease.id,
                sync: false,
            }))
            .await;
    });
    match result {
        Ok(mounts) => Ok((mounts, drop_lease)),
        Err(e) => {
            let _ = drop_lease.await;
            Err(e)
        }
    }
}

async fn create_leased(
    client: &Client,
    img: &Resolved,
    id: &str,
    p: &mut Prepared,
    snapshotter: &str,
) -> Result<Vec<Mount>> {
    let chain = image::unpack(client, img, snapshotter).await?;
    let mounts = client
        .snapshots()
        .prepare(client.req(PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: id.to_string(),
            parent: chain,
            labels: HashMap::new(),
        }))
        .await
        .map_err(Error::rpc(format!("prepare the root filesystem of {id}")))?
        .into_inner()
        .mounts;
    let created = finish_create(client, img, id, p, snapshotter, &mounts).await;
    if let Err(e) = created {
        let _ = client
            .snapshots()
            .remove(client.req(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: id.to_string(),
            }))
            .await;
        return Err(e);
    }
    Ok(mounts)
}

async fn finish_create(
    client: &Client,
    img: &Resolved,
    id: &str,
    p: &mut Prepared,
    snapshotter: &str,
    mounts: &[Mount],
) -> Result<()> {
    let cfg = img.runtime_config();
    let user = p
        .user
        .clone()
        .or_else(|| cfg["User"].as_str().map(String::from))
        .unwrap_or_default();
    p.spec.user = if spec::needs_lookup(&user) {
        let files = crate::mount::read_files(mounts, &["/etc/passwd", "/etc/group"])?;
        spec::resolve_user(&user, &files[0], &files[1])?
    } else if let Some((u, g)) = user.split_once(':') {
        spec::User {
            uid: u.parse().unwrap_or(0),
            gid: g.parse().unwrap_or(0),
            ..spec::User::default()
        }
    } else {
        spec::User::default()
    };
    let doc = spec::build(cfg, &p.spec)?;
    let mut labels: HashMap<String, String> = cfg["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    labels.insert(
        STOP_SIGNAL_LABEL.into(),
        cfg["StopSignal"].as_str().unwrap_or("SIGTERM").to_string(),
    );
    if let Some(ports) = cfg["ExposedPorts"].as_object() {
        let mut exposed: Vec<&str> = ports.keys().map(String::as_str).collect();
        exposed.sort();
        if !exposed.is_empty() {
            labels.insert("berth.io/exposed-ports".into(), exposed.join(","));
        }
    }
    labels.extend(p.labels.clone());
    let spec_json = serde_json::to_vec(&doc).map_err(|e| Error::invalid("spec", e))?;
    let container = Container {
        id: id.to_string(),
        labels,
        image: img.image.name.clone(),
        runtime: Some(Runtime {
            name: p.flags.runtime.clone(),
            options: Some(prost_types::Any {
                type_url: "containerd.runc.v1.Options".into(),
                value: Vec::new(),
            }),
        }),
        spec: Some(prost_types::Any {
            type_url: berth_proto::SPEC_TYPE_URL.into(),
            value: spec_json,
        }),
        snapshotter: snapshotter.to_string(),
        snapshot_key: id.to_string(),
        ..Default::default()
    };
    client
        .containers()
        .create(client.req(CreateContainerRequest {
            container: Some(container),
        }))
        .await
        .map_err(Error::rpc(format!("create container {id}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        for ok in [
            "8080:80",
            "127.0.0.1:8080:80",
            "8080:80/udp",
            "[::1]:53:53/udp",
        ] {
            assert!(check_port(ok).is_ok(), "{ok}");
        }
        for bad in [
            "80",
            "x:80",
            "8080:0",
            "8080:80/icmp",
            "nope:8080:80",
            "70000:80",
        ] {
            assert!(check_port(bad).is_err(), "{bad}");
        }
    }
}
