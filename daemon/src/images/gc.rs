//! GcActor: runs garbage collection after deletes (coalesced: requests that arrive during a run are served by
//! one more run), on a timer, once shortly after start (what a crash left behind), and synchronously for
//! `images rm --sync` (a run that starts after the request). A run: metadata first, in one transaction
//! (`store/gc.rs`), then — holding the GC lock exclusively — the blobs, snapshot directories and idle
//! unleased ingests that no record names any more.
//!
//! It must never delete bytes or directories while a writer that has not recorded them yet holds the lock.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::Images;
use crate::store::gc::Swept;
use crate::store::{Store, StoreError};
use crate::supervision::SupervisedBy;

/// How often GC runs without being asked.
pub const GC_INTERVAL: Duration = Duration::from_secs(300);
/// Delay before a background run, so a burst of deletes is collected once.
const COALESCE: Duration = Duration::from_millis(50);

/// What one collection removed.
#[derive(Debug, Clone, Default)]
pub struct GcStats {
    /// Expired leases deleted.
    pub leases: usize,
    /// Content records removed.
    pub content_records: usize,
    /// Snapshot records removed.
    pub snapshot_records: usize,
    /// Blobs deleted from disk.
    pub blobs: usize,
    /// Snapshot directories removed.
    pub snapshot_dirs: usize,
    /// Idle unleased ingests removed.
    pub ingests: usize,
    /// How long it took.
    pub took: Duration,
}

/// Ask for a collection.
#[derive(Message)]
#[rtype(result = "Result<GcStats, StoreError>")]
pub struct Collect {
    /// Wait for a run that starts after this request (else: schedule one and return at once).
    pub wait: bool,
}

type Waiter = oneshot::Sender<Result<GcStats, String>>;

/// The collector.
pub struct GcActor {
    store: Store,
    images: Images,
    link: SupervisedBy,
    running: bool,
    /// A run was asked for while one was running (or is scheduled).
    again: bool,
    scheduled: bool,
    /// Served by the next run to start.
    next: Vec<Waiter>,
}

impl GcActor {
    /// A collector over the store and the image store, supervised through `link`.
    pub fn new(store: Store, images: Images, link: SupervisedBy) -> Self {
        GcActor {
            store,
            images,
            link,
            running: false,
            again: false,
            scheduled: false,
            next: Vec::new(),
        }
    }

    /// Start a run now unless one runs; its result goes to the waiters queued so far.
    fn run(&mut self, ctx: &mut Context<Self>) {
        self.scheduled = false;
        if self.running {
            self.again = true;
            return;
        }
        self.running = true;
        self.again = false;
        let waiters = std::mem::take(&mut self.next);
        let fut = collect(self.store.clone(), self.images.clone());
        let fut = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut));
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.running = false;
            let res = match res {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(p) => {
                    let msg = crate::supervision::panic_message(&*p);
                    tracing::error!(panic = %msg, "garbage collection panicked; restarting the collector");
                    act.link.failed();
                    ctx.stop();
                    Err(format!("garbage collection panicked: {msg}"))
                }
            };
            match &res {
                Ok(s) => tracing::debug!(?s, "garbage collection done"),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
            for w in waiters {
                let _ = w.send(res.clone());
            }
            if act.again || !act.next.is_empty() {
                act.run(ctx);
            }
        }));
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if self.scheduled {
            return;
        }
        self.scheduled = true;
        ctx.run_later(after, |act, ctx| act.run(ctx));
    }
}

impl Actor for GcActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.images.set_gc(ctx.address());
        // What a crash left behind (half pulls, abandoned snapshots) goes soon after start.
        self.schedule(ctx, Duration::from_secs(1));
        ctx.run_interval(GC_INTERVAL, |act, ctx| act.schedule(ctx, COALESCE));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for w in self.next.drain(..) {
            let _ = w.send(Err("the garbage collector stopped".into()));
        }
        self.link.stopped();
    }
}

impl Handler<Collect> for GcActor {
    type Result = ResponseFuture<Result<GcStats, StoreError>>;

    fn handle(&mut self, msg: Collect, ctx: &mut Self::Context) -> Self::Result {
        if !msg.wait {
            self.schedule(ctx, COALESCE);
            return Box::pin(async { Ok(GcStats::default()) });
        }
        let (tx, rx) = oneshot::channel();
        self.next.push(tx);
        if self.running {
            self.again = true;
        } else {
            self.run(ctx);
        }
        Box::pin(async move {
            rx.await
                .map_err(|_| StoreError::Batch("the garbage collector stopped".into()))?
                .map_err(StoreError::Batch)
        })
    }
}

/// One collection (see the module doc).
pub async fn collect(store: Store, images: Images) -> Result<GcStats, StoreError> {
    let t0 = Instant::now();
    let _exclusive = images.inner.gc_lock.write().await;
    crate::failpoint::hit("gc.before_sweep");
    let swept = store.gc_sweep().await?;
    crate::failpoint::hit("gc.after_sweep");
    let imgs = images.clone();
    let mut stats = tokio::task::spawn_blocking(move || remove_unrecorded(&imgs, &swept))
        .await
        .map_err(|e| StoreError::Batch(format!("garbage collection task failed: {e}")))?;
    stats.took = t0.elapsed();
    Ok(stats)
}

/// Delete the blobs, snapshot directories and idle ingests no record or lease names (blocking).
fn remove_unrecorded(images: &Images, swept: &Swept) -> GcStats {
    let mut stats = GcStats {
        leases: swept.leases,
        content_records: swept.content,
        snapshot_records: swept.snapshots,
        ..Default::default()
    };
    let content = images.content();
    match content.list() {
        Ok(blobs) => {
            for b in blobs {
                if !swept.live_blobs.contains(b.digest.as_str()) {
                    match content.delete(&b.digest) {
                        Ok(()) => stats.blobs += 1,
                        Err(e) => tracing::warn!(error = %e, "gc: deleting a blob"),
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "gc: listing blobs"),
    }
    let empty = HashSet::new();
    for name in images.snapshotter_names() {
        let Ok((_, sn)) = images.snapshotter(name) else {
            continue;
        };
        let live = swept.live_snapshots.get(name).unwrap_or(&empty);
        let Some(dir) = sn.snapshot_dir(0).parent().map(|p| p.to_path_buf()) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            if live.contains(&id) {
                continue;
            }
            match sn.remove(id) {
                Ok(()) => stats.snapshot_dirs += 1,
                // Still mounted (e.g. a client's own mount): tried again next time.
                Err(e) => {
                    tracing::warn!(snapshotter = name, id, error = %e, "gc: removing a snapshot")
                }
            }
        }
    }
    match content.list_statuses() {
        Ok(ingests) => {
            let now = SystemTime::now();
            for st in ingests {
                let idle = now.duration_since(st.updated_at).unwrap_or(Duration::ZERO);
                if !swept.leased_ingests.contains(&st.reference) && idle > images.ingest_expiry() {
                    match content.abort(&st.reference) {
                        Ok(()) => stats.ingests += 1,
                        Err(e) => tracing::warn!(error = %e, "gc: removing an ingest"),
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "gc: listing ingests"),
    }
    stats
}
