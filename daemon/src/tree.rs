//! berthd's supervision tree, in one place. Read [`start`] top to bottom:
//!
//! ```text
//! RootSupervisor (OneForOne; a child past its restart limit stops berthd: systemd restarts it)
//! ├─ store-writer     WriterWatcher: the meta.redb writer thread (restarted if it dies)
//! ├─ journal-writer   WriterWatcher: the event journal's writer thread (restarted if it dies)
//! ├─ tasks            TaskSupervisor ── ContainerActor per task ── ShimActor (its shim's event pump)
//! ├─ pulls            PullSupervisor ── PullActor per (namespace, image reference)
//! ├─ networks         NetworkSupervisor ── AttachmentActor per (owner, network)
//! ├─ gc               GcActor: leases and gc labels, after deletes, on a timer, on demand
//! └─ cri              CriSupervisor ── PodActor per pod sandbox (its verbs, one at a time)
//! ```
//!
//! Every supervisor catches panics in its handlers, restarts its children within a limit and escalates past
//! it. This module must never start an actor outside this tree.

use std::time::Duration;

use actix::prelude::*;

use crate::context::Context as DaemonContext;
use crate::events::writer::LogWriter;
use crate::store::writer::Writer;
use crate::supervision::{
    AddChild, ChildSpec, Escalate, RestartLimit, RestartPolicy, RootSupervisor, StartChild,
    SupervisedBy,
};

/// What the tree hands back to the server.
pub struct Tree {
    /// The root (its escalation stops berthd).
    pub root: Addr<RootSupervisor>,
    /// The task subsystem's handle.
    pub tasks: crate::tasks::Tasks,
    /// The pull subsystem's handle.
    pub pulls: crate::pull::Pulls,
    /// The network layer's handle (the task layer holds a clone).
    pub networks: crate::network::Networks,
    /// The CRI layer (served when `[cri] enabled`).
    pub cri: crate::cri::Cri,
}

/// Build the tree on `ctx.actors` (the actix arbiter). `escalate` is called with a child's name when it
/// fails past its limit.
pub async fn start(ctx: &DaemonContext, escalate: Escalate) -> Tree {
    let root =
        RootSupervisor::start_in_arbiter(&ctx.actors, move |_| RootSupervisor::new(escalate));
    let add = |name: &str, policy, limit, start: StartChild| {
        root.send(AddChild(ChildSpec {
            name: name.to_string(),
            policy,
            limit,
            start,
        }))
    };
    let writers = RestartLimit::new(3, Duration::from_secs(60));

    let store = ctx.store.clone();
    let _ = add(
        "store-writer",
        RestartPolicy::Permanent,
        writers.clone(),
        watcher("store-writer", move || store.writer_handle() as _),
    )
    .await;
    let journal = ctx.events.journal().clone();
    let _ = add(
        "journal-writer",
        RestartPolicy::Permanent,
        writers,
        watcher("journal-writer", move || journal.writer_handle() as _),
    )
    .await;

    // Networks before tasks: the tasks' creates and deletes call it, and its recovery must see every task
    // directory as the previous berthd left it (before task recovery undoes half-made ones), and must queue
    // the removal of gone owners' leftovers before any request can attach the same owner again.
    let (networks, network_supervisor) = crate::network::new(ctx.clone());
    let stale = networks.recover().await;
    if stale > 0 {
        tracing::info!(owners = stale, "network leftovers of gone tasks found");
    }
    let _ = add(
        "networks",
        RestartPolicy::Permanent,
        RestartLimit::new(5, Duration::from_secs(60)),
        network_supervisor,
    )
    .await;

    let (tasks, task_supervisor) = crate::tasks::new(ctx.clone(), networks.clone());
    let _ = add(
        "tasks",
        RestartPolicy::Permanent,
        RestartLimit::new(5, Duration::from_secs(60)),
        task_supervisor,
    )
    .await;
    if let Err(e) = tasks.ready().await {
        tracing::error!(error = %e, "the task supervisor did not come up");
    }

    let (store, images) = (ctx.store.clone(), ctx.images.clone());
    let _ = add(
        "gc",
        RestartPolicy::Permanent,
        RestartLimit::new(5, Duration::from_secs(60)),
        Box::new(move |link| {
            crate::images::GcActor::new(store.clone(), images.clone(), link).start();
        }),
    )
    .await;

    let (pulls, pull_supervisor) = crate::pull::new(ctx.clone());
    let _ = add(
        "pulls",
        RestartPolicy::Permanent,
        RestartLimit::new(5, Duration::from_secs(60)),
        pull_supervisor,
    )
    .await;

    let (pods, cri_supervisor) = crate::cri::new_supervisor();
    let _ = add(
        "cri",
        RestartPolicy::Permanent,
        RestartLimit::new(5, Duration::from_secs(60)),
        cri_supervisor,
    )
    .await;
    let cri = crate::cri::Cri::new(
        ctx.clone(),
        tasks.clone(),
        pulls.clone(),
        networks.clone(),
        pods,
    );
    cri.recover().await;

    Tree {
        root,
        tasks,
        pulls,
        networks,
        cri,
    }
}

/// The factory of a [`WriterWatcher`].
fn watcher(
    name: &'static str,
    writer: impl Fn() -> std::sync::Arc<dyn WriterThread> + Send + 'static,
) -> StartChild {
    Box::new(move |link| {
        WriterWatcher {
            name,
            writer: writer(),
            link,
        }
        .start();
    })
}

/// A writer thread a [`WriterWatcher`] watches: the metadata store's and the event journal's.
pub trait WriterThread: Send + Sync {
    /// Start a new thread if the current one died.
    fn restart(&self) -> std::io::Result<()>;
    /// Resolves when the thread ends: `true` when nobody asked it to.
    fn ended(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

impl WriterThread for Writer {
    fn restart(&self) -> std::io::Result<()> {
        Writer::restart(self)
    }
    fn ended(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        Box::pin(Writer::ended(self))
    }
}

impl WriterThread for LogWriter {
    fn restart(&self) -> std::io::Result<()> {
        LogWriter::restart(self)
    }
    fn ended(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        Box::pin(LogWriter::ended(self))
    }
}

/// Watches a writer thread. Started (and restarted) by the RootSupervisor: on start it restarts the
/// thread if it died, then waits for the thread's end; an end nobody asked for is a failure, reported to the
/// root (which restarts the watcher, hence the thread, within its limit, then stops berthd).
pub struct WriterWatcher {
    name: &'static str,
    writer: std::sync::Arc<dyn WriterThread>,
    link: SupervisedBy,
}

impl Actor for WriterWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Err(e) = self.writer.restart() {
            tracing::error!(writer = self.name, error = %e, "cannot restart the writer thread");
            self.link.failed();
            ctx.stop();
            return;
        }
        let ended = self.writer.ended();
        ctx.spawn(ended.into_actor(self).map(|unexpected, act, ctx| {
            if unexpected {
                tracing::error!(writer = act.name, "a redb writer thread died");
                act.link.failed();
                ctx.stop();
            }
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.link.stopped();
    }
}
