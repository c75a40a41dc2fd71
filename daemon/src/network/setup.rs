//! Setting an owner's network up, in steps a create can overlap with its shim start:
//! [`Networks::prepare`] (config loaded, netns created), [`Setup::edit_bundle`] (config.json),
//! [`Setup::files`] (the owner's hosts, resolv.conf and hostname files, placed before the runtime binds
//! them), [`Networks::attach`] (ADD of each network in order, records in the background: it may run while the
//! runtime creates the container in the netns), [`Networks::publish`] (the files' final content and the
//! owner's names on its networks, before the container starts); [`Networks::abandon`] when the create fails.
//! [`Networks::setup`] is prepare + attach in one. An attach that fails part way undoes itself before its
//! error returns; this module must never return an error with an attachment of its own still made and
//! unreported.

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
    /// How long the ADD took as the caller saw it: `took` plus the trip through the supervisor, the
    /// attachment's actor and the blocking pool, there and back.
    pub wall: Duration,
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
    /// The networks to attach, loaded by `prepare`.
    networks: Vec<Network>,
    /// Published on the first network.
    ports: Vec<berth_net::PortMapping>,
    netns_took: Duration,
    /// Wall time of `prepare` and of `attach`.
    prepare_took: Duration,
    attach_took: Duration,
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

    /// Microseconds of `d`, for the log.
    fn us(d: Duration) -> u64 {
        d.as_micros() as u64
    }

    /// The owner's files, to place in its task dir before the runtime bind-mounts them.
    pub fn files(&self) -> Files {
        Files {
            dir: self.dir.clone(),
            mode: self.mode.clone(),
            hostname: self.hostname.clone(),
        }
    }
}

/// The files of an owner's task dir that its container sees as /etc/hosts, /etc/resolv.conf and
/// /etc/hostname (see [`Setup::files`]).
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
    mode: Mode,
    hostname: String,
}

impl Files {
    /// Write them as they are before the network is attached: the hostname; loopback only in hosts; no
    /// nameserver (the host's copies for `host`). [`Networks::publish`] rewrites them in place. Blocking.
    pub fn place(&self) -> Result<(), NetError> {
        let io = |what: &str| {
            let what = format!("writing {what} in {}", self.dir.display());
            move |e| NetError::io(what, e)
        };
        names::write_new(&self.dir.join("hostname"), &format!("{}\n", self.hostname))
            .map_err(io("hostname"))?;
        let (hosts, resolv) = match self.mode {
            Mode::Host => (
                std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
                std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
            Mode::None | Mode::Networks(_) => (
                names::HOSTS_HEADER.to_string(),
                names::resolv_conf(&berth_net::Dns::default()),
            ),
        };
        names::write_new(&self.dir.join("hosts"), &hosts).map_err(io("hosts"))?;
        names::write_new(&self.dir.join("resolv.conf"), &resolv).map_err(io("resolv.conf"))
    }
}

/// How long the network part of a create took (logged as "network ready").
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Creating the netns.
    pub netns: Duration,
    /// berth-net's ADDs, summed (plugins included).
    pub attach: Duration,
    /// The network's own work: [`Networks::prepare`], [`Networks::attach`] and [`Networks::publish`] (what
    /// runs between or beside them, the bundle and the shim, is not counted).
    pub network: Duration,
    /// Of which [`Networks::prepare`] (config, netns).
    pub prepare: Duration,
    /// Of which [`Networks::publish`] (files, names).
    pub publish: Duration,
    /// The ADDs' trips through the supervisor, the actors and the blocking pool (their wall time minus
    /// berth-net's).
    pub handoff: Duration,
}

impl Networks {
    /// [`Networks::prepare`] then [`Networks::attach`].
    pub async fn setup(
        &self,
        owner: &Owner,
        plan: &Plan,
        spec: &serde_json::Value,
        dir: &Path,
    ) -> Result<Setup, NetError> {
        let mut setup = self.prepare(owner, plan, spec, dir).await?;
        self.attach(&mut setup).await?;
        Ok(setup)
    }

    /// Prepare `owner`'s network as `plan` says, before its bundle is written: load the networks (every
    /// plugin must be installed), create its netns at `<state>/netns/<ns>/<id>` (not for `host`). `spec` is
    /// the container's spec (for its hostname), `dir` the task dir its files will be in.
    pub async fn prepare(
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
            Mode::None | Mode::Networks(_) => Some(owner.netns_path(&self.shared.state)),
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
        Ok(Setup {
            owner: owner.clone(),
            mode: plan.mode.clone(),
            netns,
            dir: dir.to_path_buf(),
            hostname,
            names,
            attached: Vec::new(),
            durable: None,
            networks,
            ports: plan.ports.clone(),
            netns_took,
            prepare_took: started.elapsed(),
            attach_took: Duration::ZERO,
        })
    }

    /// ADD each network of a prepared setup in order (eth0, eth1, ...; the ports on the first), then write
    /// its store records in the background ([`Setup::durable`]). It may run while the runtime creates the
    /// container in the netns. If an ADD fails, what this setup attached is DEL'd and its netns removed
    /// before the error returns.
    pub async fn attach(&self, setup: &mut Setup) -> Result<(), NetError> {
        let started = Instant::now();
        let netns_path = setup.netns.clone().unwrap_or_default();
        let owner = setup.owner.clone();
        for (i, network) in std::mem::take(&mut setup.networks).into_iter().enumerate() {
            let attachment = Attachment {
                container_id: owner.cni_id(),
                netns: netns_path.clone(),
                ifname: format!("eth{i}"),
                args: Vec::new(),
                port_mappings: if i == 0 {
                    setup.ports.clone()
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
            let sent = Instant::now();
            match self.route(msg).await {
                Ok((result, took)) => setup.attached.push(Attached {
                    network,
                    attachment,
                    result,
                    took,
                    wall: sent.elapsed(),
                }),
                Err(e) => {
                    tracing::info!(%owner, network = %network.name, error = %e, "attach failed; undoing the setup");
                    self.undo_setup(setup, Some((network, attachment))).await;
                    setup.attached.clear();
                    return Err(e);
                }
            }
        }
        crate::failpoint::hit_async("network.after_attach").await;
        let records = self.records(setup);
        if !records.is_empty() {
            let store = self.shared.ctx.store.clone();
            setup.durable = Some(tokio::spawn(async move {
                store
                    .put_net_attachments(records)
                    .await
                    .map_err(NetError::from)
            }));
        }
        setup.attach_took = started.elapsed();
        Ok(())
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

    /// Give the owner's files their final content (in place: the runtime may have bind-mounted them already;
    /// [`Files::place`] must have created them) and put the owner into the hosts files of its networks'
    /// members. Call after [`Networks::attach`], before the container starts. Returns the network's timings.
    pub async fn publish(&self, setup: &Setup) -> Result<Timings, NetError> {
        let started = Instant::now();
        let shared = self.shared.clone();
        let dir = setup.dir.clone();
        let key = setup.owner.key();
        let networked = matches!(setup.mode, Mode::Networks(_));
        let resolv = setup
            .attached
            .first()
            .map(|a| names::resolv_conf(&a.result.dns));
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
        if networked {
            blocking(move || {
                let io = |what: &str| {
                    let what = format!("writing {what} in {}", dir.display());
                    move |e| NetError::io(what, e)
                };
                if let Some(resolv) = resolv {
                    names::rewrite_in_place(&dir.join("resolv.conf"), &resolv)
                        .map_err(io("resolv.conf"))?;
                }
                let mut registry = lock(&shared.names);
                let ((own, text), peers) = registry.join(&key, member);
                names::rewrite_in_place(&own, &text).map_err(io("hosts"))?;
                for (path, content) in peers {
                    if let Err(e) = names::rewrite_in_place(&path, &content) {
                        tracing::debug!(file = %path.display(), error = %e,
                            "cannot rewrite a peer's hosts file");
                    }
                }
                Ok(())
            })
            .await?;
        }
        let timings = Timings {
            netns: setup.netns_took,
            attach: setup.attached.iter().map(|a| a.took).sum(),
            network: setup.prepare_took + setup.attach_took + started.elapsed(),
            prepare: setup.prepare_took,
            publish: started.elapsed(),
            handoff: setup
                .attached
                .iter()
                .map(|a| a.wall.saturating_sub(a.took))
                .sum(),
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
