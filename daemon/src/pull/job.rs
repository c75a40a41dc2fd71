//! One pull job: resolve the reference, fetch the index (if any), the manifests of the wanted platforms (and,
//! with `all_metadata`, the other manifests and their configs), the configs, then every layer concurrently
//! while each unpack applies its layers in order as they arrive; record everything with containerd's labels
//! under the pull lease; write the image records; report progress the way containerd does.
//!
//! On failure every task of the job is stopped and waited for (an unpack removes its half-applied snapshot),
//! then `lease::finish_failed` decides what stays for a resume. This module must never write an image record
//! before every blob it names was verified and every requested unpack committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_image::oci::{media, Descriptor, ImageConfig, Index, Manifest, Platform};
use berth_registry::{Credentials, Reference, RegistryClient, RegistryError, Repository, RequestOptions};
use containerd_client::services::v1::{Image, ImageCreate, ImageUpdate};
use tokio::task::JoinSet;
use tonic::Status;

use super::cell::BlobCell;
use super::labels;
use super::progress::{self, Hub};
use super::{CredentialSource, Plan, Saved, Shared};
use crate::store::leases::LeaseResource;
use crate::store::StoreError;

/// Layer downloads of one job running at once.
pub const MAX_CONCURRENT_DOWNLOADS: usize = 4;
/// How often download progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

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
    let reference = Reference::parse(&plan.reference)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
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
    });
    match cx.clone().pull().await {
        Ok(out) => {
            super::lease::finish_ok(&cx).await;
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

    fn cancelled(&self) -> bool {
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
        let bytes = self.fetch_small(&root, &[name.clone()]).await?;
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
        hub.send(progress::status(format!("Completed pull from {}", self.ir())));
        let resources = self
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(JobOutput { saved, resources })
    }

    fn wanted(&self, p: Option<&Platform>) -> Option<usize> {
        if self.plan.platforms.is_empty() {
            return Some(0);
        }
        let p = p?;
        self.plan.platforms.iter().position(|w| w.matches(p))
    }

    /// An index: label it, pick its manifests, fetch them (boxed: indexes may nest).
    fn walk_index<'a>(
        self: &'a Arc<Self>,
        desc: &'a Descriptor,
        bytes: &'a [u8],
        fulls: &'a mut Vec<Full>,
        depth: usize,
    ) -> futures::future::BoxFuture<'a, Result<(), Status>> {
        Box::pin(async move {
            if depth > 4 {
                return Err(Status::invalid_argument(format!(
                    "{}: indexes nested more than 4 deep",
                    self.plan.reference
                )));
            }
            let idx: Index = serde_json::from_slice(bytes).map_err(|e| {
                Status::invalid_argument(format!(
                    "{}: index {} is not valid JSON: {e}",
                    self.plan.reference, desc.digest
                ))
            })?;
            let children: Vec<&Descriptor> = idx.manifests.iter().collect();
            self.set_labels(&desc.digest, labels::child_gc_labels(&children))
                .await?;
            // Wanted children in preference order (by the first requested platform they match); children
            // without a platform are kept, as containerd does.
            let mut wanted: Vec<(usize, usize)> = idx
                .manifests
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match &d.platform {
                    None => Some((i, 0)),
                    Some(p) => self.wanted(Some(p)).map(|rank| (i, rank)),
                })
                .collect();
            wanted.sort_by_key(|(i, rank)| (*rank, *i));
            if self.plan.manifest_limit > 0 {
                wanted.truncate(self.plan.manifest_limit as usize);
            }
            let full: Vec<usize> = wanted.iter().map(|(i, _)| *i).collect();
            if full.is_empty() {
                let want: Vec<String> = self.plan.platforms.iter().map(|p| p.to_string()).collect();
                let have: Vec<String> = idx
                    .manifests
                    .iter()
                    .map(|d| d.platform.as_ref().map_or("unknown".into(), |p| p.to_string()))
                    .collect();
                return Err(Status::not_found(format!(
                    "{}: no manifest for platform {} in index {} (it has {})",
                    self.plan.reference,
                    want.join(", "),
                    desc.digest,
                    have.join(", ")
                )));
            }
            let parent = progress::ref_key(desc);
            for (i, child) in idx.manifests.iter().enumerate() {
                let is_full = full.contains(&i);
                if !is_full && !self.plan.all_metadata {
                    continue;
                }
                let bytes = self.fetch_small(child, &[parent.clone()]).await?;
                if media::is_index(&child.media_type) {
                    if is_full {
                        self.walk_index(child, &bytes, fulls, depth + 1).await?;
                    }
                } else if let Some(mut f) = self.walk_manifest(child, &bytes, is_full, &parent).await? {
                    if let Some(p) = &child.platform {
                        f.platform = p.clone();
                    }
                    fulls.push(f);
                }
            }
            Ok(())
        })
    }

    /// A manifest: label it, fetch its config; for a wanted one, return what its layers need.
    async fn walk_manifest(
        &self,
        desc: &Descriptor,
        bytes: &[u8],
        full: bool,
        _parent: &str,
    ) -> Result<Option<Full>, Status> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            Status::invalid_argument(format!(
                "{}: manifest {} is not valid JSON: {e}",
                self.plan.reference, desc.digest
            ))
        })?;
        let children: Vec<&Descriptor> = std::iter::once(&m.config).chain(m.layers.iter()).collect();
        self.set_labels(&desc.digest, labels::child_gc_labels(&children))
            .await?;
        let me = progress::ref_key(desc);
        let config_bytes = self.fetch_small(&m.config, &[me]).await?;
        if !full {
            return Ok(None);
        }
        let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| {
            Status::invalid_argument(format!(
                "{}: config {} of manifest {} is not an image config: {e}",
                self.plan.reference, m.config.digest, desc.digest
            ))
        })?;
        Ok(Some(Full {
            desc: desc.clone(),
            platform: config.platform(),
            manifest: m,
            config,
        }))
    }

    /// Merge `labels` into a blob's record.
    pub async fn set_labels(
        &self,
        digest: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), Status> {
        if labels.is_empty() {
            return Ok(());
        }
        let mask = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.shared
            .ctx
            .store
            .update_content(&self.ns, digest, labels.into_iter().collect(), mask)
            .await?;
        Ok(())
    }

    /// Add this repository to a blob's distribution source label.
    pub async fn label_source(&self, digest: &str) -> Result<(), Status> {
        let store = self.shared.ctx.store.clone();
        let (ns, d) = (self.ns.clone(), digest.to_string());
        let rec = crate::store::blocking(move || store.get_content(&ns, &d)).await?;
        let key = format!(
            "{}{}",
            labels::DISTRIBUTION_SOURCE,
            labels::source_host(self.reference.registry())
        );
        let existing = rec.as_ref().and_then(|r| r.labels.get(&key)).cloned();
        let (k, v) = labels::distribution_source(
            self.reference.registry(),
            self.reference.repository(),
            existing.as_deref(),
        );
        if existing.as_deref() == Some(v.as_str()) {
            return Ok(());
        }
        self.set_labels(digest, BTreeMap::from([(k, v)])).await
    }

    /// Fetch every layer of the wanted manifests (concurrently) and run the unpacks (each in layer order).
    async fn fetch_and_unpack(self: &Arc<Self>, fulls: &[Full]) -> Result<(), Status> {
        let sem = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_DOWNLOADS));
        let mut fetches: JoinSet<Result<(), Status>> = JoinSet::new();
        for f in fulls {
            let parent = progress::ref_key(&f.desc);
            for l in &f.manifest.layers {
                let cell = {
                    let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
                    if cells.contains_key(&l.digest) {
                        continue;
                    }
                    let cell = BlobCell::new(l.clone());
                    cells.insert(l.digest.clone(), cell.clone());
                    cell
                };
                self.js.hub.send(progress::node(
                    "waiting",
                    &progress::ref_key(l),
                    &[parent.clone()],
                    0,
                    l.size,
                    Some(l),
                ));
                let (cx, sem, parents) = (self.clone(), sem.clone(), vec![parent.clone()]);
                fetches.spawn(async move { cx.fetch_layer(cell, parents, sem).await });
            }
        }
        let mut unpacks: JoinSet<Result<(), Status>> = JoinSet::new();
        for (u, full) in self.unpack_targets(fulls)? {
            let cx = self.clone();
            unpacks.spawn(async move { super::unpack::unpack_pulled(cx, u, full).await });
        }
        let ticker = self.shared.rt.spawn(progress_ticker(self.clone()));
        let res = drive(&mut fetches, &mut unpacks, self).await;
        ticker.abort();
        res
    }

    /// Which manifest each unpack applies (duplicates dropped); an unpack without a matching manifest is an
    /// error naming the platform.
    fn unpack_targets(&self, fulls: &[Full]) -> Result<Vec<(super::Unpack, Full)>, Status> {
        let mut out: Vec<(super::Unpack, Full)> = Vec::new();
        for u in &self.plan.unpacks {
            let Some(f) = fulls.iter().find(|f| u.platform.matches(&f.platform)) else {
                return Err(Status::not_found(format!(
                    "{}: nothing to unpack for platform {} (fetched: {})",
                    self.plan.reference,
                    u.platform,
                    fulls
                        .iter()
                        .map(|f| f.platform.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            if !out
                .iter()
                .any(|(o, of)| o.snapshotter == u.snapshotter && of.desc.digest == f.desc.digest)
            {
                out.push((u.clone(), f.clone()));
            }
        }
        Ok(out)
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

    /// Every layer fetch and unpack must be done; fail all when one fails.
    fn fail_cells(&self, why: &str) {
        for c in self.cells.lock().unwrap_or_else(|e| e.into_inner()).values() {
            c.failed(why.to_string());
        }
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

/// Wait for every fetch and unpack; on the first failure stop the rest and wait for them to clean up.
async fn drive(
    fetches: &mut JoinSet<Result<(), Status>>,
    unpacks: &mut JoinSet<Result<(), Status>>,
    cx: &Arc<JobCtx>,
) -> Result<(), Status> {
    let mut first: Option<Status> = None;
    while !fetches.is_empty() || !unpacks.is_empty() {
        let res = tokio::select! {
            Some(r) = fetches.join_next(), if !fetches.is_empty() => r,
            Some(r) = unpacks.join_next(), if !unpacks.is_empty() => r,
        };
        let err = match res {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) if e.is_panic() => {
                let msg = crate::supervision::panic_message(&*e.into_panic());
                // The actor treats a panic as its own failure (and restarts the pull).
                cx.js.cancel();
                cx.fail_cells("pull task panicked");
                fetches.abort_all();
                while unpacks.join_next().await.is_some() {}
                std::panic::resume_unwind(Box::new(msg));
            }
            Err(e) => Status::aborted(format!("{}: task ended: {e}", cx.plan.reference)),
        };
        if first.is_none() {
            first = Some(err);
            cx.js.cancel();
            cx.fail_cells(&format!("pull of {} failed", cx.plan.reference));
            fetches.abort_all();
        }
    }
    // A corrupt blob is the root cause of whatever else failed.
    if let Some(c) = cx.corrupt_error() {
        return Err(c);
    }
    match first {
        Some(e) => Err(e),
        None if cx.cancelled() => Err(Status::cancelled(format!(
            "pull of {} cancelled",
            cx.plan.reference
        ))),
        None => Ok(()),
    }
}

/// Report download progress of the blobs being written.
async fn progress_ticker(cx: Arc<JobCtx>) {
    let mut last: HashMap<String, u64> = HashMap::new();
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let cells: Vec<Arc<BlobCell>> = cx
            .cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for c in cells {
            if c.is_done() {
                continue;
            }
            let n = c.written();
            let d = c.desc();
            if n > 0 && last.get(&d.digest) != Some(&n) {
                last.insert(d.digest.clone(), n);
                let name = progress::ref_key(d);
                let parents = cx
                    .js
                    .hub
                    .last(&name)
                    .map(|p| p.parents)
                    .unwrap_or_default();
                cx.js.hub.send(progress::node(
                    "downloading",
                    &name,
                    &parents,
                    n as i64,
                    d.size,
                    Some(d),
                ));
            }
        }
    }
}

/// The bytes of small blobs kept in memory (manifests, indexes, configs) are limited to this.
pub const SMALL_LIMIT: usize = 64 << 20;

