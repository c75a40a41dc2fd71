//! [`Networks`]: the typed handle of the network layer (cheap to clone; the task layer holds one in its
//! shared state), and what the handle, the supervisor and the actors share. Every operation on an attachment
//! goes through the NetworkSupervisor to that attachment's actor ([`Networks::route`]); everything blocking
//! (config loading, netns, files, store reads) runs on blocking threads ([`blocking`]).
//!
//! An owner's life: [`Networks::setup`] (netns, then ADD of each network in order; undone by itself if any
//! step fails), `Setup::edit_bundle` (config.json), [`Networks::publish`] (the files in the task dir and the
//! names on its networks), `Setup::durable` (its store records committed), and finally
//! [`Networks::teardown`] (names, DEL, netns, records), which is idempotent and also finds what a crash left:
//! see `setup.rs` and `teardown.rs`. This module never writes the attachment registry (the supervisor does)
//! and never runs a plugin itself.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Addr, Handler, Message};
use berth_net::{CachedAttachment, Cni, NetConfig, Network};

use super::attachment::Check;
use super::error::NetError;
use super::labels::MAX_NETWORKS;
use super::names::{self, Names};
use super::owner::Owner;
use super::recovery::Leftovers;
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
    /// berthd's state dir, absolute: netns paths are handed to plugins and runtimes, which run elsewhere.
    pub state: PathBuf,
    supervisor: Mutex<Option<Addr<NetworkSupervisor>>>,
    /// Owners whose leftovers recovery is still removing: a setup for one of them waits.
    recovering: Mutex<HashSet<String>>,
    recovered: tokio::sync::Notify,
    /// What the start-up scan found to remove, for the first NetworkSupervisor.
    stale: Mutex<Option<Vec<Leftovers>>>,
    next_gen: AtomicU64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(ctx: DaemonContext) -> Shared {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut cfg = ctx.config.net_config();
        for dir in [
            &mut cfg.conf_dir,
            &mut cfg.cache_dir,
            &mut cfg.ipam_data_dir,
        ] {
            *dir = absolute(dir);
        }
        for dir in &mut cfg.plugin_dirs {
            *dir = absolute(dir);
        }
        let state = absolute(&ctx.config.state);
        Shared {
            state,
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
    pub(super) fn load(&self, wanted: &[String]) -> Result<Vec<Network>, NetError> {
        if wanted.contains(&self.cfg.default_network) {
            if let Some(p) =
                berth_net::ensure_default_network(&self.cfg).map_err(berth_net::Error::from)?
            {
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
    pub(super) fn leave_names(&self, owner: &Owner) {
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
    pub(super) shared: Arc<Shared>,
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
    pub(super) async fn route<M, T>(&self, msg: M) -> Result<T, NetError>
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
    pub(super) async fn wait_recovered(&self, owner: &Owner) {
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

    /// CHECK every attachment of `owner` (with its cached result); returns the networks checked, by name.
    pub async fn check(&self, owner: &Owner) -> Result<Vec<String>, NetError> {
        let shared = self.shared.clone();
        let o = owner.clone();
        let cached = blocking(move || Ok(shared.cached_of(&o))).await?;
        let mut names: Vec<String> = cached.iter().map(|c| c.network.name.clone()).collect();
        names.sort();
        for c in cached {
            self.route(Check {
                key: (owner.key(), c.network.name.clone()),
                network: c.network,
                attachment: c.attachment,
            })
            .await?;
        }
        Ok(names)
    }

    /// The recorded attachments of `owner` by network (blocking: call from a blocking thread).
    pub fn records_of(
        &self,
        owner: &Owner,
    ) -> Result<HashMap<String, NetAttachmentRecord>, NetError> {
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
