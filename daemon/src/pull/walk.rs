//! The walk of a pull: from the root (index or manifest) to the manifests of the wanted platforms, their
//! configs and layers, labelling each parent with containerd's gc references and each blob with its
//! distribution source; then every layer fetched concurrently while each unpack applies its layers in order.
//!
//! This module must never start an unpack of a manifest whose config was not verified and parsed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use berth_image::oci::{media, Descriptor, ImageConfig, Index, Manifest, Platform};
use tokio::task::JoinSet;
use tonic::Status;

use super::cell::BlobCell;
use super::job::{Full, JobCtx};
use super::labels;
use super::progress;

/// How often download progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

impl JobCtx {
    pub(super) fn wanted(&self, p: Option<&Platform>) -> Option<usize> {
        if self.plan.platforms.is_empty() {
            return Some(0);
        }
        let p = p?;
        self.plan.platforms.iter().position(|w| w.matches(p))
    }

    /// An index: label it, pick its manifests, fetch them (boxed: indexes may nest).
    pub(super) fn walk_index<'a>(
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
                    .map(|d| {
                        d.platform
                            .as_ref()
                            .map_or("unknown".into(), |p| p.to_string())
                    })
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
                let bytes = self
                    .fetch_small(child, std::slice::from_ref(&parent))
                    .await?;
                if media::is_index(&child.media_type) {
                    if is_full {
                        self.walk_index(child, &bytes, fulls, depth + 1).await?;
                    }
                } else if let Some(mut f) =
                    self.walk_manifest(child, &bytes, is_full, &parent).await?
                {
                    if let Some(p) = &child.platform {
                        f.platform = p.clone();
                    }
                    f.from_index = true;
                    fulls.push(f);
                }
            }
            Ok(())
        })
    }

    /// A manifest: label it, fetch its config; for a wanted one, return what its layers need.
    pub(super) async fn walk_manifest(
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
        let children: Vec<&Descriptor> =
            std::iter::once(&m.config).chain(m.layers.iter()).collect();
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
            from_index: false,
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
    pub(super) async fn fetch_and_unpack(self: &Arc<Self>, fulls: &[Full]) -> Result<(), Status> {
        let downloads = std::env::var("BERTH_PULL_DOWNLOADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.shared.ctx.config.max_concurrent_downloads)
            .max(1);
        let sem = Arc::new(tokio::sync::Semaphore::new(downloads));
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
                    std::slice::from_ref(&parent),
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
    pub(super) fn unpack_targets(
        &self,
        fulls: &[Full],
    ) -> Result<Vec<(super::Unpack, Full)>, Status> {
        let mut out: Vec<(super::Unpack, Full)> = Vec::new();
        for u in &self.plan.unpacks {
            // A reference naming a single manifest is unpacked as it is, whatever its config says.
            let single = match fulls {
                [only] if !only.from_index => Some(only),
                _ => None,
            };
            let found = fulls.iter().find(|f| u.platform.matches(&f.platform));
            if found.is_none() {
                if let Some(f) = single {
                    tracing::warn!(
                        reference = %self.plan.reference,
                        image = %f.platform,
                        unpack = %u.platform,
                        "unpacking an image of another platform"
                    );
                }
            }
            let Some(f) = found.or(single) else {
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

    /// Every layer fetch and unpack must be done; fail all when one fails.
    pub(super) fn fail_cells(&self, why: &str) {
        for c in self
            .cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            c.failed(why.to_string());
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
                let parents = cx.js.hub.last(&name).map(|p| p.parents).unwrap_or_default();
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
