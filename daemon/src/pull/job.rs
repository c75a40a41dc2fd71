//! One pull job: resolve the reference, fetch the index (if any), the manifests of the wanted platforms (and,
//! with `all_metadata`, the other manifests and their configs), the configs, then every layer concurrently
//! while each unpack applies its layers in order as they arrive; record everything with containerd's labels
//! under the pull lease; write the image records; report progress the way containerd does.
//!
//! On failure every task of the job is stopped and waited for (an unpack removes its half-applied snapshot),
//! then `lease::finish_failed` decides what stays for a resume. This module must never write an image record
//! before every blob it names was verified and every requested unpack committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use berth_image::oci::{media, Descriptor, ImageConfig, Manifest, Platform};
use berth_registry::{
    Credentials, Reference, RegistryClient, RegistryError, Repository, RequestOptions,
};
use containerd_client::services::v1::{Image, ImageCreate, ImageUpdate};
use tonic::Status;

use super::cell::BlobCell;
use super::progress::{self, Hub};
use super::{CredentialSource, Plan, Saved, Shared};
use crate::store::leases::LeaseResource;
use crate::store::StoreError;

/// What the actor and the job share: progress, credential sources, cancellation.
#[derive(Default)]
pub(super) struct JobShared {
    pub hub: Hub,
    auth: Mutex<Vec<Arc<dyn CredentialSource>>>,
    cancel: Arc<AtomicBool>,
}

impl JobShared {
    /// Another client's credential source (tried after the earlier ones).
    pub fn add_auth(&self, a: Arc<dyn CredentialSource>) {
        self.auth.lock().unwrap_or_else(|e| e.into_inner()).push(a);
    }

    fn auth_sources(&self) -> Vec<Arc<dyn CredentialSource>> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Give up: readers following blobs fail.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

/// What a successful job hands back.
#[derive(Debug, Clone, Default)]
pub(super) struct JobOutput {
    pub saved: Vec<Saved>,
    /// Blobs and top snapshots written, for the clients' own leases.
    pub resources: Vec<LeaseResource>,
}

/// A manifest whose layers are fetched.
#[derive(Debug, Clone)]
pub(super) struct Full {
    pub desc: Descriptor,
    pub manifest: Manifest,
    pub config: ImageConfig,
    /// The platform it is for (the index's, else the config's).
    pub platform: Platform,
    /// Listed in an index (else: the reference named this manifest itself).
    pub from_index: bool,
}

/// The state of one job, shared by its tasks.
pub(super) struct JobCtx {
    pub shared: Arc<Shared>,
    pub ns: String,
    pub plan: Plan,
    pub reference: Reference,
    pub js: Arc<JobShared>,
    pub lease: String,
    client: RegistryClient,
    repo: Mutex<(Repository, u64)>,
    auth_lock: tokio::sync::Mutex<()>,
    had_credentials: AtomicBool,
    /// A blob did not match its digest (the error naming it): the pull is rolled back entirely.
    pub corrupt: Mutex<Option<Status>>,
    pub recorded: Mutex<Vec<LeaseResource>>,
    pub cells: Mutex<HashMap<String, Arc<BlobCell>>>,
    /// Bytes received from the registry (for the log line at the end).
    pub downloaded: std::sync::atomic::AtomicU64,
    /// When the job started.
    pub started: std::time::Instant,
}

/// A registry error as a status naming the reference (containerd's codes).
pub fn reg_status(reference: &str, e: &RegistryError) -> Status {
    let msg = format!("{reference}: {e}");
    match e {
        RegistryError::NotFound { .. } | RegistryError::PlatformNotFound { .. } => {
            Status::not_found(msg)
        }
        RegistryError::Unauthorized { .. } => Status::unauthenticated(msg),
        RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => {
            Status::failed_precondition(msg)
        }
        RegistryError::InvalidReference { .. }
        | RegistryError::InvalidManifest { .. }
        | RegistryError::Config { .. } => Status::invalid_argument(msg),
        RegistryError::Http { status, .. } => match *status {
            401 => Status::unauthenticated(msg),
            403 => Status::permission_denied(msg),
            404 => Status::not_found(msg),
            429 | 500..=599 => Status::unavailable(msg),
            _ => Status::unknown(msg),
        },
        RegistryError::Tls { .. }
        | RegistryError::Connect { .. }
        | RegistryError::Io { .. }
        | RegistryError::Timeout { .. }
        | RegistryError::RangeNotSupported { .. } => Status::unavailable(msg),
    }
}

/// Run a job (on the tokio runtime).
pub(super) async fn run(
    shared: Arc<Shared>,
    ns: String,
    plan: Plan,
    js: Arc<JobShared>,
) -> Result<JobOutput, Status> {
    crate::failpoint::hit("pull.job");
    let reference =
        Reference::parse(&plan.reference).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let client = shared.client(plan.resolver.hosts_dir.as_ref());
    let opts = RequestOptions {
        plain_http: plan.resolver.plain_http,
        ..Default::default()
    };
    let repo = client
        .repository(&reference, &opts)
        .map_err(|e| reg_status(&plan.reference, &e))?;
    let lease = super::lease::begin(&shared, &ns, &plan.reference).await?;
    let cx = Arc::new(JobCtx {
        shared,
        ns,
        plan,
        reference,
        js,
        lease,
        client,
        repo: Mutex::new((repo, 0)),
        auth_lock: tokio::sync::Mutex::new(()),
        had_credentials: AtomicBool::new(false),
        corrupt: Mutex::new(None),
        recorded: Mutex::new(Vec::new()),
        cells: Mutex::new(HashMap::new()),
        downloaded: std::sync::atomic::AtomicU64::new(0),
        started: std::time::Instant::now(),
    });
    match cx.clone().pull().await {
        Ok(out) => {
            super::lease::finish_ok(&cx).await;
            tracing::info!(
                reference = %cx.plan.reference,
                secs = cx.started.elapsed().as_secs_f64(),
                downloaded = cx.downloaded.load(Ordering::Relaxed),
                "pull done"
            );
            Ok(out)
        }
        Err(e) => {
            cx.js.cancel();
            super::lease::finish_failed(&cx).await;
            tracing::info!(reference = %cx.plan.reference, error = %e.message(), "pull failed");
            Err(e)
        }
    }
}

impl JobCtx {
    fn ir(&self) -> String {
        format!("OCI Registry ({})", self.plan.reference)
    }

    fn repo(&self) -> (Repository, u64) {
        self.repo.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A status for a registry error of this pull (Unauthorized becomes PermissionDenied once credentials were
    /// given and refused).
    pub fn status(&self, e: &RegistryError) -> Status {
        let s = reg_status(&self.plan.reference, e);
        if s.code() == tonic::Code::Unauthenticated && self.had_credentials.load(Ordering::SeqCst) {
            return Status::permission_denied(s.message().to_string());
        }
        s
    }

    /// Run a registry operation; on Unauthorized, ask the clients' auth streams for credentials once and retry
    /// with them.
    pub async fn registry<T, F, Fut>(&self, op: F) -> Result<T, Status>
    where
        F: Fn(Repository) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let (repo, version) = self.repo();
        match op(repo).await {
            Err(e @ RegistryError::Unauthorized { .. }) => {
                if self.refresh_credentials(version).await? {
                    op(self.repo().0).await.map_err(|e| self.status(&e))
                } else {
                    Err(self.status(&e))
                }
            }
            other => other.map_err(|e| self.status(&e)),
        }
    }

    /// Credentials from the clients, once per job: true when the repository now has (other) credentials.
    async fn refresh_credentials(&self, failed_version: u64) -> Result<bool, Status> {
        let _one = self.auth_lock.lock().await;
        if self.repo().1 != failed_version {
            return Ok(true); // another task got credentials meanwhile
        }
        if self.had_credentials.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let host = self.reference.registry().to_string();
        let mut creds: Option<Credentials> = None;
        for source in self.js.auth_sources() {
            match source.credentials(&host, &self.plan.reference).await {
                Ok(Some(c)) => {
                    creds = Some(c);
                    break;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "auth stream gave no credentials"),
            }
        }
        let Some(creds) = creds else {
            return Ok(false);
        };
        self.had_credentials.store(true, Ordering::SeqCst);
        let opts = RequestOptions {
            plain_http: self.plan.resolver.plain_http,
            credentials: Some(creds),
            ..Default::default()
        };
        let repo = self
            .client
            .repository(&self.reference, &opts)
            .map_err(|e| self.status(&e))?;
        let mut slot = self.repo.lock().unwrap_or_else(|e| e.into_inner());
        *slot = (repo, failed_version + 1);
        Ok(true)
    }

    /// Remember a resource this pull wrote (for the clients' leases).
    pub fn recorded(&self, r: LeaseResource) {
        let mut v = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if !v.contains(&r) {
            v.push(r);
        }
    }

    /// Note a blob that failed its digest check (the pull is then rolled back).
    pub fn set_corrupt(&self, e: &Status) {
        let mut c = self.corrupt.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none() {
            *c = Some(e.clone());
        }
    }

    /// The digest error, if a blob was corrupt.
    pub fn corrupt_error(&self) -> Option<Status> {
        self.corrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn cancelled(&self) -> bool {
        self.js.cancel.load(Ordering::SeqCst)
    }

    async fn pull(self: Arc<Self>) -> Result<JobOutput, Status> {
        let hub = &self.js.hub;
        hub.send(progress::status(format!("Resolving from {}", self.ir())));
        let r = self.reference.clone();
        let resolved = self
            .registry(|repo| {
                let r = r.clone();
                async move { repo.resolve(&r).await }
            })
            .await?;
        let root = resolved.descriptor;
        if root
            .media_type
            .starts_with("application/vnd.docker.distribution.manifest.v1+")
        {
            return Err(Status::invalid_argument(format!(
                "{}: schema 1 image manifests are no longer supported",
                self.plan.reference
            )));
        }
        hub.send(progress::status(format!("Pulling from {}", self.ir())));
        hub.send(progress::node(
            "fetching image content",
            &self.plan.reference,
            &[],
            0,
            0,
            Some(&root),
        ));
        let name = self.plan.reference.clone();
        let bytes = self.fetch_small(&root, std::slice::from_ref(&name)).await?;
        let mut fulls = Vec::new();
        if media::is_index(&root.media_type) {
            self.walk_index(&root, &bytes, &mut fulls, 0).await?;
        } else {
            if let Some(f) = self.walk_manifest(&root, &bytes, true, &name).await? {
                fulls.push(f);
            }
        }
        self.fetch_and_unpack(&fulls).await?;
        let saved = self.store_images(&root).await?;
        for s in &saved {
            hub.send(progress::node("saved", &s.name, &[], 0, 0, Some(&s.target)));
        }
        hub.send(progress::status(format!(
            "Completed pull from {}",
            self.ir()
        )));
        let resources = self
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(JobOutput { saved, resources })
    }

    /// Create or update the image records (containerd's ImageStore: name, extra references, labels).
    async fn store_images(&self, root: &Descriptor) -> Result<Vec<Saved>, Status> {
        if self.plan.image_names.is_empty() {
            return Err(Status::not_found(format!(
                "{}: no image name found to store the pull under",
                self.plan.reference
            )));
        }
        let target = progress::proto_descriptor(&Descriptor {
            annotations: Default::default(),
            ..root.clone()
        });
        let mut saved = Vec::new();
        for name in &self.plan.image_names {
            let img = Image {
                name: name.clone(),
                labels: self.plan.labels.clone().into_iter().collect(),
                target: Some(target.clone()),
                ..Default::default()
            };
            store_image(&self.shared, &self.ns, img).await?;
            saved.push(Saved {
                name: name.clone(),
                target: root.clone(),
            });
        }
        Ok(saved)
    }
}

/// Create an image record, or replace one that exists (containerd's Create → AlreadyExists → Update), and
/// publish `/images/create` or `/images/update`.
pub(crate) async fn store_image(shared: &Shared, ns: &str, img: Image) -> Result<Image, Status> {
    let store = &shared.ctx.store;
    let events = &shared.ctx.events;
    loop {
        match store.create_image(ns, img.clone()).await {
            Ok(created) => {
                let ev = ImageCreate {
                    name: created.name.clone(),
                    labels: created.labels.clone(),
                };
                if let Err(e) = events
                    .publish(ns, "/images/create", berth_proto::to_any(&ev))
                    .await
                {
                    tracing::error!(error = %e, "cannot publish /images/create");
                }
                return Ok(created);
            }
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match store.update_image(ns, img.clone(), Vec::new()).await {
            Ok(updated) => {
                let ev = ImageUpdate {
                    name: updated.name.clone(),
                    labels: updated.labels.clone(),
                };
                if let Err(e) = events
                    .publish(ns, "/images/update", berth_proto::to_any(&ev))
                    .await
                {
                    tracing::error!(error = %e, "cannot publish /images/update");
                }
                shared.ctx.images.schedule_gc();
                return Ok(updated);
            }
            // Removed meanwhile: create again.
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The bytes of small blobs kept in memory (manifests, indexes, configs) are limited to this.
pub const SMALL_LIMIT: usize = 64 << 20;
