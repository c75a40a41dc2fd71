//! Server-side pulls (containerd's Transfer from an OCI registry into the image store), read in this order:
//!
//! - this file: [`Pulls`], the handle the Transfer service calls, and what a pull is asked to do ([`Plan`]).
//! - `supervisor.rs`: PullSupervisor (the "pulls" slot of the supervision tree): one PullActor per
//!   (namespace, reference); a second pull of the same reference joins the running actor; a failed actor is
//!   restarted within a limit, then its clients get an error naming the reference.
//! - `actor.rs`: PullActor: runs one job at a time for its reference (joined requests share it, requests with
//!   another plan queue behind it), fans progress out, answers every client.
//! - `job.rs`: one pull: resolve, then `walk.rs` (index → manifests → config and layers, content recorded
//!   with containerd's labels), then the image records; `fetch.rs` streams blobs into resumable ingests,
//!   `cell.rs` lets the unpacker follow a layer while it downloads, `unpack.rs` applies layers into snapshots
//!   named by chain ids, `lease.rs` keeps what a pull wrote (and what an interrupted one left) under a lease.
//!
//! This module must never run registry I/O or unpacking on the actix thread: jobs run on the tokio runtime,
//! hashing, writing and unpacking on blocking threads.

mod actor;
mod cell;
mod fetch;
mod job;
pub mod labels;
pub mod lease;
pub mod progress;
mod supervisor;
pub mod unpack;
mod walk;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix::Addr;
use berth_image::oci::{Descriptor, Platform};
use berth_registry::{ClientConfig, Credentials, RegistryClient};
use tokio::sync::oneshot;
use tonic::Status;

pub use job::reg_status as job_status;
pub use supervisor::PullSupervisor;

use crate::context::Context as DaemonContext;
use crate::supervision::StartChild;
use progress::ProgressSink;

/// Asks a client for registry credentials (containerd's auth stream).
#[tonic::async_trait]
pub trait CredentialSource: Send + Sync {
    /// Credentials for `host` (the registry host) to pull `reference`; `None` when the client has none.
    async fn credentials(&self, host: &str, reference: &str)
        -> Result<Option<Credentials>, Status>;
}

/// How to reach the registry (RegistryResolver's fields that Berth honours).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resolver {
    /// hosts.toml directory (None: berthd's `registry_hosts_dir`).
    pub hosts_dir: Option<PathBuf>,
    /// `default_scheme = "http"`: plain HTTP.
    pub plain_http: bool,
}

/// One unpack: a platform and a snapshotter name (resolved to a loaded one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpack {
    /// Which manifest's layers.
    pub platform: Platform,
    /// Into which snapshotter.
    pub snapshotter: &'static str,
}

/// What a pull does. Two requests with equal plans share one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The reference, normalised (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// How to reach the registry.
    pub resolver: Resolver,
    /// Platforms whose manifests are fetched with their layers; empty: all (containerd's rule).
    pub platforms: Vec<Platform>,
    /// Also fetch the manifests and configs (not the layers) of the other platforms.
    pub all_metadata: bool,
    /// Fetch at most this many matching manifests (0: no limit).
    pub manifest_limit: u32,
    /// Unpacks to do.
    pub unpacks: Vec<Unpack>,
    /// Image records to write (names), all with `labels`.
    pub image_names: Vec<String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
}

/// One client's pull.
pub struct PullRequest {
    /// Namespace.
    pub ns: String,
    /// What to do.
    pub plan: Plan,
    /// Where its progress goes.
    pub progress: Option<ProgressSink>,
    /// Where to ask for credentials.
    pub auth: Option<Arc<dyn CredentialSource>>,
    /// The client's lease (`containerd-lease`): what the pull wrote is added to it.
    pub client_lease: Option<String>,
}

impl std::fmt::Debug for PullRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullRequest")
            .field("ns", &self.ns)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// An image record a pull wrote.
#[derive(Debug, Clone)]
pub struct Saved {
    /// Image name.
    pub name: String,
    /// Its target.
    pub target: Descriptor,
}

/// What a client hears back.
pub type PullResult = Result<Vec<Saved>, Status>;

/// A client's pending answer.
pub(crate) type Reply = oneshot::Sender<PullResult>;

/// What the supervisor, actors and jobs share.
pub(crate) struct Shared {
    pub ctx: DaemonContext,
    /// The runtime jobs run on (tonic's).
    pub rt: tokio::runtime::Handle,
    /// This berthd run (pull leases of other runs are leftovers of a crash).
    pub boot: String,
    supervisor: Mutex<Option<Addr<PullSupervisor>>>,
    clients: Mutex<HashMap<PathBuf, RegistryClient>>,
    /// Unpacks of one chain id are serialised (two pulls sharing a base layer apply it once).
    pub chain_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Shared {
    /// The registry client for a hosts directory (clients share pools and tokens per directory).
    pub fn client(&self, hosts_dir: Option<&PathBuf>) -> RegistryClient {
        let dir = hosts_dir
            .cloned()
            .unwrap_or_else(|| self.ctx.config.registry_hosts_dir.clone());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(dir.clone())
            .or_insert_with(|| {
                RegistryClient::new(ClientConfig {
                    hosts_dir: Some(dir),
                    user_agent: format!("berthd/{}", crate::services::version::VERSION),
                    ..Default::default()
                })
            })
            .clone()
    }

    fn set_supervisor(&self, addr: Addr<PullSupervisor>) {
        *self.supervisor.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    fn supervisor(&self) -> Option<Addr<PullSupervisor>> {
        self.supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|a| a.connected())
    }

    /// The lock of one chain id's unpack.
    pub fn chain_lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.chain_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key).or_default().clone()
    }
}

/// The handle the Transfer service pulls through. Cheap to clone.
#[derive(Clone)]
pub struct Pulls {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pulls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pulls").finish_non_exhaustive()
    }
}

/// The handle and the factory the supervision tree starts the PullSupervisor with. Call on the tokio runtime
/// jobs should run on.
pub fn new(ctx: DaemonContext) -> (Pulls, StartChild) {
    let boot = crate::store::tables::new_uuid();
    let shared = Arc::new(Shared {
        ctx,
        rt: tokio::runtime::Handle::current(),
        boot,
        supervisor: Mutex::new(None),
        clients: Mutex::new(HashMap::new()),
        chain_locks: Mutex::new(HashMap::new()),
    });
    let factory = supervisor::factory(shared.clone());
    (Pulls { shared }, factory)
}

impl Pulls {
    /// Run a pull (joining one of the same reference that runs already) and wait for its end.
    pub async fn pull(&self, req: PullRequest) -> PullResult {
        // Right after start (and while it restarts) the supervisor may not be up yet: wait a little for it.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let sup = loop {
            if let Some(s) = self.shared.supervisor() {
                break s;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(
                    "the pull supervisor is not running; retry",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let reference = req.plan.reference.clone();
        let (tx, rx) = oneshot::channel();
        sup.send(supervisor::Submit { req, reply: tx })
            .await
            .map_err(|_| Status::unavailable("the pull supervisor stopped; retry"))?;
        rx.await.unwrap_or_else(|_| {
            Err(Status::aborted(format!(
                "pull of {reference} was abandoned by its actor; retry"
            )))
        })
    }

    /// The registry client for a hosts directory (None: berthd's).
    pub fn client(&self, hosts_dir: Option<&PathBuf>) -> RegistryClient {
        self.shared.client(hosts_dir)
    }

    /// The daemon context.
    pub fn ctx(&self) -> &DaemonContext {
        &self.shared.ctx
    }

    /// Create or replace an image record (publishing `/images/create` or `/images/update`).
    pub async fn store_image(
        &self,
        ns: &str,
        img: containerd_client::services::v1::Image,
    ) -> Result<containerd_client::services::v1::Image, Status> {
        job::store_image(&self.shared, ns, img).await
    }

    /// Unpack an image's layers that are all in the content store already (import): same code as a pull.
    pub async fn unpack_stored(
        &self,
        ns: &str,
        lease: Option<String>,
        manifest: &Descriptor,
        unpacks: &[Unpack],
    ) -> Result<(), Status> {
        unpack::unpack_stored(&self.shared, ns, lease, manifest, unpacks).await
    }
}
