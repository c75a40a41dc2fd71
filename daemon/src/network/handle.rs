//! [`Networks`]: the typed handle of the network layer (cheap to clone; the task layer holds one in its
//! shared state). Every operation on an attachment goes through the NetworkSupervisor to that attachment's
//! actor; everything blocking (config loading, netns, files, store reads) runs on blocking threads.
//!
//! An owner's life: [`Networks::setup`] (netns, then ADD of each network in order; undone by itself if any
//! step fails), [`Setup::edit_bundle`] (config.json), [`Networks::publish`] (the files in the task dir and the
//! names on its networks), [`Setup::durable`] (its store records committed), and finally
//! [`Networks::teardown`] (names, DEL, netns, records), which is idempotent and also finds what a crash left.
//! This module never writes the attachment registry (the supervisor does) and never runs a plugin itself.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::{Addr, Handler, Message};
use berth_net::{AttachResult, Attachment, CachedAttachment, Cni, NetConfig, Network};

use super::attachment::{Attach, Check, Detach};
use super::error::NetError;
use super::labels::{Mode, Plan, MAX_NETWORKS};
use super::names::{self, Member, Names};
use super::owner::Owner;
use super::recovery::Leftovers;
use super::spec;
use super::supervisor::NetworkSupervisor;
use crate::context::Context as DaemonContext;
use crate::store::NetAttachmentRecord;

/// How long a call waits for a NetworkSupervisor that is restarting.
const SUPERVISOR_WAIT: Duration = Duration::from_secs(5);

/// What the handle, the supervisor and the actors share.
pub(crate) struct Shared {
    pub ctx: DaemonContext,
    pub cfg: NetConfig,
    /// The one CNI driver: it serialises operations per CNI container id across all callers.
    pub cni: Arc<Cni>,
    pub names: Mutex<Names>,
    /// This kernel boot (records of another boot describe namespaces and rules that are gone).
    pub boot_id: String,
    supervisor: Mutex<Option<Addr<NetworkSupervisor>>>,
    /// Owners whose leftovers recovery is still removing: a setup for one of them waits.
    recovering: Mutex<HashSet<String>>,
    recovered: tokio::sync::Notify,
    /// What the start-up scan found to remove, for the first NetworkSupervisor.
    stale: Mutex<Option<Vec<Leftovers>>>,
    next_gen: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(ctx: DaemonContext) -> Shared {
        let cfg = ctx.config.net_config();
        Shared {
            cni: Arc::new(Cni::new(cfg.clone())),
            cfg,
            ctx,
            names: Mutex::new(Names::default()),
            boot_id: boot_id(),
            supervisor: Mutex::new(None),
            recovering: Mutex::new(HashSet::new()),
            recovered: tokio::sync::Notify::new(),
            stale: Mutex::new(None),
            next_gen: AtomicU64::new(1),
        }
    }

    pub(crate) fn supervisor(&self) -> Option<Addr<NetworkSupervisor>> {
        lock(&self.supervisor).clone().filter(|a| a.connected())
    }

    pub(crate) fn set_supervisor(&self, addr: Addr<NetworkSupervisor>) {
        *lock(&self.supervisor) = Some(addr);
    }

    pub(crate) fn next_gen(&self) -> u64 {
        self.next_gen.fetch_add(1, Ordering::Relaxed)
    }

    /// The start-up scan's leftovers (once).
    pub(crate) fn take_stale(&self) -> Option<Vec<Leftovers>> {
        lock(&self.stale).take()
    }

    /// Recovery is done with `key`: a waiting setup may go on.
    pub(crate) fn recovered(&self, key: &str) {
        lock(&self.recovering).remove(key);
        self.recovered.notify_waiters();
    }

    /// The networks named, from the conf dir (the default network is written first if the dir has none).
    fn load(&self, wanted: &[String]) -> Result<Vec<Network>, NetError> {
        if wanted.contains(&self.cfg.default_network) {
            if let Some(p) = berth_net::ensure_default_network(&self.cfg).map_err(berth_net::Error::from)? {
                tracing::info!(file = %p.display(), "wrote the default network");
            }
        }
        let (found, problems) = berth_net::load_networks_lenient(&self.cfg.conf_dir);
        let mut out = Vec::with_capacity(wanted.len());
        for name in wanted {
            match found.iter().find(|n| &n.name == name) {
                Some(n) => {
                    self.check_plugins(n)?;
                    out.push(n.clone())
                }
                None => {
                    return Err(NetError::UnknownNetwork {
                        network: name.clone(),
                        dir: self.cfg.conf_dir.display().to_string(),
                        problems: problems.iter().map(ToString::to_string).collect(),
                    })
                }
            }
        }
        for p in &problems {
            tracing::warn!(error = %p, "skipping a network config that cannot be loaded");
        }
        Ok(out)
    }

    /// Every plugin of the chain must be installed before the first one runs: a chain that fails on a missing
    /// plugin half way could not be DEL'd either (DEL stops at the first failure, the missing plugin).
    fn check_plugins(&self, net: &Network) -> Result<(), NetError> {
        use std::os::unix::fs::PermissionsExt;
        for p in &net.plugins {
            let found = self.cfg.plugin_dirs.iter().any(|d| {
                std::fs::metadata(d.join(&p.plugin_type))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            });
            if !found {
                return Err(NetError::Cni(berth_net::Error::PluginNotFound {
                    network: net.name.clone(),
                    plugin: p.plugin_type.clone(),
                    dirs: self
                        .cfg
                        .plugin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":"),
                }));
            }
        }
        Ok(())
    }

    /// berth-net's cache entries of `owner` (any network, any interface), without parsing other owners'.
    pub(crate) fn cached_of(&self, owner: &Owner) -> Vec<CachedAttachment> {
        let cid = owner.cni_id();
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.cfg.cache_dir) else {
            return out;
        };
        for d in dirs.flatten() {
            let network = d.file_name().to_string_lossy().into_owned();
            for i in 0..MAX_NETWORKS {
                match self.cni.cached(&network, &cid, &format!("eth{i}")) {
                    Ok(Some(c)) => out.push(c),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "unreadable attachment cache entry"),
                }
            }
        }
        out
    }

    /// Take `owner` off its networks' hosts files.
    fn leave_names(&self, owner: &Owner) {
        let writes = lock(&self.names).leave(&owner.key());
        for (path, content) in writes {
            if let Err(e) = names::rewrite_in_place(&path, &content) {
                tracing::debug!(file = %path.display(), error = %e, "cannot rewrite a peer's hosts file");
            }
        }
    }
}

/// The kernel's boot id ("" if unreadable: then every record looks like this boot's, which only means an
/// extra, harmless DEL).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Run blocking work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::ActorFailed(format!("blocking network work failed: {e}")))?
}

/// The network layer's handle.
#[derive(Clone)]
pub struct Networks {
    shared: Arc<Shared>,
}

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
    pub(crate) fn new(shared: Arc<Shared>) -> Networks {
        Networks { shared }
    }

    /// The effective berth-net settings.
    pub fn config(&self) -> &NetConfig {
        &self.shared.cfg
    }

    /// The NetworkSupervisor, waiting a little while it restarts.
    async fn supervisor(&self) -> Result<Addr<NetworkSupervisor>, NetError> {
        let deadline = tokio::time::Instant::now() + SUPERVISOR_WAIT;
        loop {
            if let Some(s) = self.shared.supervisor() {
                return Ok(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NetError::ActorFailed(
                    "the network supervisor is not running".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send an attachment operation through the supervisor.
    async fn route<M, T>(&self, msg: M) -> Result<T, NetError>
    where
        M: Message<Result = Result<T, NetError>> + Send + 'static,
        T: Send + 'static,
        NetworkSupervisor: Handler<M>,
        <NetworkSupervisor as actix::Actor>::Context: ToEnvelope<NetworkSupervisor, M>,
    {
        let sup = self.supervisor().await?;
        sup.send(msg).await.map_err(|_| {
            NetError::ActorFailed("the network supervisor stopped during the call; retry".into())
        })?
    }

    /// Wait while start-up recovery is still removing what a previous berthd left for `owner`.
    async fn wait_recovered(&self, owner: &Owner) {
        let key = owner.key();
        loop {
            let notified = self.shared.recovered.notified();
            if !lock(&self.shared.recovering).contains(&key) {
                return;
            }
            notified.await;
        }
    }

    /// Find what a previous berthd left (before serving requests): attachments and netns files whose owner is
    /// gone are queued for the first NetworkSupervisor to remove; live owners' names are restored. Returns how
    /// many owners have leftovers.
    pub async fn recover(&self) -> usize {
        let shared = self.shared.clone();
        let found = blocking(move || Ok(super::recovery::scan(&shared))).await;
        let stale = match found {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "network recovery scan failed");
                return 0;
            }
        };
        let n = stale.len();
        lock(&self.shared.recovering).extend(stale.iter().map(|l| l.key.clone()));
        *lock(&self.shared.stale) = Some(stale);
        n
    }

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
            Mode::None | Mode::Networks(_) => {
                Some(owner.netns_path(&self.shared.ctx.config.state))
            }
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
                port_mappings: if i == 0 { plan.ports.clone() } else { Vec::new() },
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
                store.put_net_attachments(records).await.map_err(NetError::from)
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
                    let ip = a.result.first_ip(true).or_else(|| a.result.first_ip(false))?;
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
                    for (file, host) in [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")] {
                        let text = std::fs::read_to_string(host).unwrap_or_default();
                        names::write_new(&dir.join(file), &text).map_err(io(file))?;
                    }
                }
                Mode::None => {
                    names::write_new(&dir.join("hosts"), names::HOSTS_HEADER).map_err(io("hosts"))?;
                    names::write_new(&dir.join("resolv.conf"), &resolv).map_err(io("resolv.conf"))?;
                }
                Mode::Networks(_) => {
                    names::write_new(&dir.join("resolv.conf"), &resolv).map_err(io("resolv.conf"))?;
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

    /// Remove everything of `owner`, after its processes are gone: its names from its peers' hosts files, DEL
    /// of every attachment (found in the store and in berth-net's cache), its netns, its records. Idempotent.
    /// An attachment whose DEL fails keeps its records (the error says so; the next berthd start retries).
    pub async fn teardown(&self, owner: &Owner) -> Result<(), NetError> {
        let shared = self.shared.clone();
        let o = owner.clone();
        let leftovers = blocking(move || {
            shared.leave_names(&o);
            let records = shared.ctx.store.net_attachments_of(&o.key())?;
            let cached = shared.cached_of(&o);
            Ok(Leftovers {
                key: o.key(),
                netns: Some(o.netns_path(&shared.ctx.config.state)),
                owner: Some(o),
                records,
                cached,
            })
        })
        .await?;
        self.remove_leftovers(leftovers).await
    }

    /// DEL, unmount and forget what `l` lists (teardown, and recovery of owners that are gone).
    pub(crate) async fn remove_leftovers(&self, l: Leftovers) -> Result<(), NetError> {
        let mut errors: Vec<NetError> = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut tried: HashSet<String> = HashSet::new();
        let mut cached = l.cached;
        cached.sort_by_key(|c| std::cmp::Reverse((c.attachment.ifname.len(), c.attachment.ifname.clone())));
        for c in cached {
            let network = c.network.name.clone();
            tried.insert(network.clone());
            let msg = Detach {
                key: (l.key.clone(), network.clone()),
                network: c.network,
                attachment: c.attachment,
            };
            match self.route(msg).await {
                Ok(()) => {
                    done.insert(network);
                }
                Err(e) => errors.push(e),
            }
        }
        // A record without a cache entry: its DEL already succeeded and berthd died before forgetting the
        // record, or the cache is gone (a reboot). DEL again from the record, which is harmless either way.
        let mut forget: Vec<String> = Vec::new();
        for r in &l.records {
            if done.contains(&r.network) {
                forget.push(r.network.clone());
                continue;
            }
            if tried.contains(&r.network) {
                continue;
            }
            let this_boot = r.boot_id == self.shared.boot_id;
            let del = match Network::from_conflist_value(r.conflist.clone(), &format!("record of {}", l.key)) {
                Ok(network) => {
                    let attachment = Attachment {
                        container_id: r.cni_id.clone(),
                        netns: r.netns.clone(),
                        ifname: r.ifname.clone(),
                        port_mappings: r
                            .ports
                            .iter()
                            .filter_map(berth_net::PortMapping::from_cni_json)
                            .collect(),
                        ..Attachment::default()
                    };
                    self.route(Detach {
                        key: (l.key.clone(), r.network.clone()),
                        network,
                        attachment,
                    })
                    .await
                }
                Err(e) => Err(NetError::Cni(e.into())),
            };
            match del {
                Ok(()) => forget.push(r.network.clone()),
                // After a reboot nothing of it is left to DEL: forget it whatever the plugins said.
                Err(e) if !this_boot => {
                    tracing::info!(owner = %l.key, network = %r.network, error = %e,
                        "forgetting an attachment of an earlier boot");
                    forget.push(r.network.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(ns) = l.netns.clone() {
            if let Err(e) = blocking(move || Ok(berth_net::remove_netns(&ns)?)).await {
                errors.push(e);
            }
        }
        if !forget.is_empty() {
            let all = forget.len() == l.records.len();
            let which = (!all).then_some(forget);
            if let Err(e) = self
                .shared
                .ctx
                .store
                .forget_net_attachments(&l.key, which)
                .await
            {
                errors.push(e.into());
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        for e in &errors[1..] {
            tracing::error!(owner = %l.key, error = %e, "network teardown failed");
        }
        Err(errors.swap_remove(0))
    }

    /// CHECK every attachment of `owner` (with its cached result); returns how many were checked.
    pub async fn check(&self, owner: &Owner) -> Result<usize, NetError> {
        let shared = self.shared.clone();
        let o = owner.clone();
        let cached = blocking(move || Ok(shared.cached_of(&o))).await?;
        let n = cached.len();
        for c in cached {
            self.route(Check {
                key: (owner.key(), c.network.name.clone()),
                network: c.network,
                attachment: c.attachment,
            })
            .await?;
        }
        Ok(n)
    }

    /// The recorded attachments of `owner` by network (blocking: call from a blocking thread).
    pub fn records_of(&self, owner: &Owner) -> Result<HashMap<String, NetAttachmentRecord>, NetError> {
        Ok(self
            .shared
            .ctx
            .store
            .net_attachments_of(&owner.key())?
            .into_iter()
            .map(|r| (r.network.clone(), r))
            .collect())
    }
}
