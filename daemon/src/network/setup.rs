//! Setting an owner's network up: [`Networks::setup`] (netns, ADD of each network in order, records in the
//! background), [`Setup::edit_bundle`], [`Networks::publish`] (the owner's files and its names on its
//! networks), and [`Networks::abandon`] when the create fails later. A setup that fails part way undoes
//! itself before its error returns; this module must never return an error with an attachment of its own
//! still made and unreported.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_net::{AttachResult, Attachment, Network};

use super::attachment::{Attach, Detach};
use super::error::NetError;
use super::handle::{blocking, lock, Networks};
use super::labels::{Mode, Plan};
use super::names::{self, Member};
use super::owner::Owner;
use super::spec;
use crate::store::NetAttachmentRecord;

/// One network a [`Setup`] attached.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The network as ADDed.
    pub network: Network,
    /// The attachment's parameters.
    pub attachment: Attachment,
    /// The chain's result.
    pub result: AttachResult,
    /// How long berth-net's ADD took (the plugins and the cache).
    pub took: Duration,
}

/// An owner's network, set up and not yet torn down.
pub struct Setup {
    owner: Owner,
    mode: Mode,
    netns: Option<PathBuf>,
    dir: PathBuf,
    hostname: String,
    names: Vec<String>,
    attached: Vec<Attached>,
    durable: Option<tokio::task::JoinHandle<Result<(), NetError>>>,
    netns_took: Duration,
    /// setup's own wall time (entry to return).
    setup_took: Duration,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("owner", &self.owner)
            .field("mode", &self.mode)
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

impl Setup {
    /// The netns the bundle joins (`None` for `host`).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// What was attached, in interface order.
    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    /// The bundle's config.json with the network part: netns path (none for `host`), bind mounts of the
    /// task dir's hosts/resolv.conf/hostname, the hostname.
    pub fn edit_bundle(&self, spec_json: &[u8]) -> Result<Vec<u8>, NetError> {
        let mut v: serde_json::Value = serde_json::from_slice(spec_json).map_err(|e| {
            NetError::io(
                "reading the bundle spec",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        spec::edit(
            &mut v,
            &self.mode,
            self.netns.as_deref(),
            &self.dir,
            &self.hostname,
        )?;
        serde_json::to_vec(&v).map_err(|e| {
            NetError::io(
                "writing the bundle spec",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Wait until the store records of this setup are committed.
    pub async fn durable(&mut self) -> Result<(), NetError> {
        match self.durable.take() {
            None => Ok(()),
            Some(h) => h
                .await
                .map_err(|e| NetError::ActorFailed(format!("recording the attachments: {e}")))?,
        }
    }

    /// One line for the log: `net=ip,net=ip`.
    pub fn summary(&self) -> String {
        match &self.mode {
            Mode::Host => "host".into(),
            Mode::None => "none".into(),
            Mode::Networks(_) => self
                .attached
                .iter()
                .map(|a| {
                    let ip = a
                        .result
                        .first_ip(true)
                        .or_else(|| a.result.first_ip(false))
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "-".into());
                    format!("{}={ip}", a.network.name)
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// Microseconds since `t`.
    fn us(d: Duration) -> u64 {
        d.as_micros() as u64
    }
}

/// How long the network part of a create took (logged as "network ready").
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Creating the netns.
    pub netns: Duration,
    /// berth-net's ADDs, summed (plugins included).
    pub attach: Duration,
    /// The network's own work: [`Networks::setup`] plus [`Networks::publish`] (the bundle written between
    /// them is not counted).
    pub network: Duration,
}

impl Networks {
    /// Set `owner` up as `plan` says, before its bundle is written: its netns at `<state>/netns/<ns>/<id>`
    /// (not for `host`), then each network ADDed in order (eth0, eth1, ...; the ports on the first), then its
    /// store records written in the background ([`Setup::durable`]). `spec` is the container's spec (for its
    /// hostname), `dir` the task dir its files will be in. If any step fails, what this call made is undone
    /// before the error returns.
    pub async fn setup(
        &self,
        owner: &Owner,
        plan: &Plan,
        spec: &serde_json::Value,
        dir: &Path,
    ) -> Result<Setup, NetError> {
        let started = Instant::now();
        self.wait_recovered(owner).await;
        let hostname = spec::hostname(spec, owner.id());
        let mut names = vec![hostname.clone()];
        if owner.id() != hostname {
            names.push(owner.id().to_string());
        }
        names.retain(|n| !n.is_empty());
        let netns = match plan.mode {
            Mode::Host => None,
            Mode::None | Mode::Networks(_) => Some(owner.netns_path(&self.shared.ctx.config.state)),
        };
        let (shared, mode, ns) = (self.shared.clone(), plan.mode.clone(), netns.clone());
        let (networks, netns_took) = blocking(move || {
            let nets = match &mode {
                Mode::Networks(wanted) => shared.load(wanted)?,
                _ => Vec::new(),
            };
            let t = Instant::now();
            if let Some(ns) = &ns {
                if ns.symlink_metadata().is_ok() {
                    // A leftover of a crash (recovery has DEL'd what was attached in it).
                    berth_net::remove_netns(ns)?;
                }
                berth_net::create_netns(ns)?;
            }
            Ok((nets, t.elapsed()))
        })
        .await?;
        let mut setup = Setup {
            owner: owner.clone(),
            mode: plan.mode.clone(),
            netns,
            dir: dir.to_path_buf(),
            hostname,
            names,
            attached: Vec::new(),
            durable: None,
            netns_took,
            setup_took: Duration::ZERO,
        };
        let netns_path = setup.netns.clone().unwrap_or_default();
        for (i, network) in networks.into_iter().enumerate() {
            let attachment = Attachment {
                container_id: owner.cni_id(),
                netns: netns_path.clone(),
                ifname: format!("eth{i}"),
                args: Vec::new(),
                port_mappings: if i == 0 {
                    plan.ports.clone()
                } else {
                    Vec::new()
                },
                capabilities: Default::default(),
            };
            let msg = Attach {
                key: (owner.key(), network.name.clone()),
                network: network.clone(),
                attachment: attachment.clone(),
            };
            match self.route(msg).await {
                Ok((result, took)) => setup.attached.push(Attached {
                    network,
                    attachment,
                    result,
                    took,
                }),
                Err(e) => {
                    tracing::info!(%owner, network = %network.name, error = %e, "attach failed; undoing the setup");
                    self.undo_setup(&setup, Some((network, attachment))).await;
                    return Err(e);
                }
            }
        }
        crate::failpoint::hit_async("network.after_attach").await;
        let records = self.records(&setup);
        if !records.is_empty() {
            let store = self.shared.ctx.store.clone();
            setup.durable = Some(tokio::spawn(async move {
                store
                    .put_net_attachments(records)
                    .await
                    .map_err(NetError::from)
            }));
        }
        setup.setup_took = started.elapsed();
        Ok(setup)
    }

    fn records(&self, setup: &Setup) -> Vec<NetAttachmentRecord> {
        setup
            .attached
            .iter()
            .map(|a| NetAttachmentRecord {
                owner: setup.owner.key(),
                network: a.network.name.clone(),
                ifname: a.attachment.ifname.clone(),
                cni_id: a.attachment.container_id.clone(),
                netns: a.attachment.netns.clone(),
                names: setup.names.clone(),
                hosts_file: setup.dir.join("hosts"),
                ips: a
                    .result
                    .sandbox_ips()
                    .iter()
                    .map(|ip| ip.address.to_string())
                    .collect(),
                ports: a
                    .attachment
                    .port_mappings
                    .iter()
                    .map(berth_net::PortMapping::to_cni_json)
                    .collect(),
                conflist: a.network.conflist().clone(),
                result: a.result.raw.clone(),
                boot_id: self.shared.boot_id.clone(),
            })
            .collect()
    }

    /// Undo a setup that failed part way: DEL what it attached (and the failed one, if berth-net could not
    /// undo it), remove the netns. Errors are logged; what stays cached is removed by the next recovery.
    async fn undo_setup(&self, setup: &Setup, failed: Option<(Network, Attachment)>) {
        for a in setup.attached.iter().rev() {
            let msg = Detach {
                key: (setup.owner.key(), a.network.name.clone()),
                network: a.network.clone(),
                attachment: a.attachment.clone(),
            };
            if let Err(e) = self.route(msg).await {
                tracing::error!(owner = %setup.owner, network = %a.network.name, error = %e,
                    "cannot DEL an attachment of a failed setup; the next berthd start retries");
            }
        }
        if let Some((network, attachment)) = failed {
            let cni = self.shared.cni.clone();
            let (n, a) = (network.name.clone(), attachment.clone());
            let left = blocking(move || Ok(cni.cached(&n, &a.container_id, &a.ifname)?)).await;
            if let Ok(Some(c)) = left {
                let msg = Detach {
                    key: (setup.owner.key(), network.name.clone()),
                    network: c.network,
                    attachment: c.attachment,
                };
                if let Err(e) = self.route(msg).await {
                    tracing::error!(owner = %setup.owner, network = %network.name, error = %e,
                        "cannot DEL a half-made attachment; the next berthd start retries");
                }
            }
        }
        if let Some(ns) = setup.netns.clone() {
            if let Err(e) = blocking(move || Ok(berth_net::remove_netns(&ns)?)).await {
                tracing::error!(owner = %setup.owner, error = %e, "cannot remove the netns of a failed setup");
            }
        }
    }

    /// Write the owner's /etc/hosts, /etc/resolv.conf and /etc/hostname into its task dir (which must exist:
    /// call after the bundle is written, before the runtime creates the container) and put it into the hosts
    /// files of its networks' members. Returns the create's network timings.
    pub async fn publish(&self, setup: &Setup) -> Result<Timings, NetError> {
        let started = Instant::now();
        let shared = self.shared.clone();
        let dir = setup.dir.clone();
        let key = setup.owner.key();
        let mode = setup.mode.clone();
        let hostname = setup.hostname.clone();
        let resolv = setup
            .attached
            .first()
            .map(|a| names::resolv_conf(&a.result.dns))
            .unwrap_or_else(|| names::resolv_conf(&berth_net::Dns::default()));
        let member = Member {
            names: setup.names.clone(),
            hosts_file: dir.join("hosts"),
            addrs: setup
                .attached
                .iter()
                .filter_map(|a| {
                    let ip = a
                        .result
                        .first_ip(true)
                        .or_else(|| a.result.first_ip(false))?;
                    Some((a.network.name.clone(), ip))
                })
                .collect(),
        };
        blocking(move || {
            let io = |what: &str| {
                let what = format!("writing {what} in {}", dir.display());
                move |e| NetError::io(what, e)
            };
            names::write_new(&dir.join("hostname"), &format!("{hostname}\n"))
                .map_err(io("hostname"))?;
            match mode {
                Mode::Host => {
                    for (file, host) in
                        [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")]
                    {
                        let text = std::fs::read_to_string(host).unwrap_or_default();
                        names::write_new(&dir.join(file), &text).map_err(io(file))?;
                    }
                }
                Mode::None => {
                    names::write_new(&dir.join("hosts"), names::HOSTS_HEADER)
                        .map_err(io("hosts"))?;
                    names::write_new(&dir.join("resolv.conf"), &resolv)
                        .map_err(io("resolv.conf"))?;
                }
                Mode::Networks(_) => {
                    names::write_new(&dir.join("resolv.conf"), &resolv)
                        .map_err(io("resolv.conf"))?;
                    let mut registry = lock(&shared.names);
                    let ((own, text), peers) = registry.join(&key, member);
                    names::write_new(&own, &text).map_err(io("hosts"))?;
                    for (path, content) in peers {
                        if let Err(e) = names::rewrite_in_place(&path, &content) {
                            tracing::debug!(file = %path.display(), error = %e,
                                "cannot rewrite a peer's hosts file");
                        }
                    }
                }
            }
            Ok(())
        })
        .await?;
        let timings = Timings {
            netns: setup.netns_took,
            attach: setup.attached.iter().map(|a| a.took).sum(),
            network: setup.setup_took + started.elapsed(),
        };
        tracing::debug!(
            owner = %setup.owner,
            networks = %setup.summary(),
            netns_us = Setup::us(timings.netns),
            attach_us = Setup::us(timings.attach),
            network_us = Setup::us(timings.network),
            "network published"
        );
        Ok(timings)
    }

    /// Undo a setup whose create failed later: wait for its records, then [`Networks::teardown`].
    pub async fn abandon(&self, mut setup: Setup) -> Result<(), NetError> {
        if let Err(e) = setup.durable().await {
            tracing::warn!(owner = %setup.owner, error = %e, "recording the attachments failed");
        }
        self.teardown(&setup.owner).await
    }
}
