//! What the shim tells a ContainerActor: its events (already journaled by the ShimActor) move the state
//! forward; its death reaps the task (journal what the dead shim still held, `berth-shim delete`, then the
//! init's exit and the delete, each at most once per task).
//!
//! Also the two ways berthd itself journals task events: replaying a shim's on-disk journal (the shim's own
//! seqs, so each event at most once) and synthesising an event the shim could not send (berthd's own source
//! of seqs, and `events::Once` so it never doubles one the shim did send).

use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;
use berth_proto::containerd_client::types::v1::Status as ProcStatus;
use berth_proto::shim;
use berth_proto::shim::event::Kind;

use super::messages::{PumpFailed, ShimEventMsg, ShimGone};
use super::{ContainerActor, Phase};
use crate::events::{berthd_source, Once, ShimEvent};
use crate::tasks::bundle::{self, DeadShim, TaskRecord};
use crate::tasks::error::TaskError;
use crate::tasks::events::{delete_event, exit_event, to_containerd};
use crate::tasks::shim as shimio;
use crate::tasks::state::ExitInfo;
use crate::tasks::{task_key, Guarded, Shared};

fn upstream(e: crate::events::EventError) -> TaskError {
    TaskError::Upstream(e.into())
}

/// Journal what the shim wrote to its on-disk journal and berthd may not have seen (each event at most once:
/// the shim's seqs are deduplicated). Returns those events, for the actor's state.
pub(super) async fn replay_shim_journal(
    shared: &Shared,
    ns: &str,
    id: &str,
    dir: &Path,
) -> Result<Vec<shim::Event>, TaskError> {
    let events = match tokio::fs::read(dir.join(shim::journal::LOG_FILE)).await {
        Ok(buf) => shim::journal::decode_frames(&buf),
        Err(_) => Vec::new(),
    };
    let key = task_key(ns, id);
    for ev in &events {
        let Some(mapped) = ev.kind.as_ref().map(|k| to_containerd(id, k)) else {
            continue;
        };
        shared
            .ctx
            .events
            .publish_from_shim(ShimEvent {
                source: key.clone(),
                task: key.clone(),
                seq: ev.seq,
                namespace: ns.to_string(),
                topic: mapped.topic,
                event: mapped.event,
                once: mapped.once,
            })
            .await
            .map_err(upstream)?;
    }
    Ok(events)
}

/// Journal an event the shim could not send, under berthd's own source for the task; a `once` event the task
/// already has is dropped by the journal.
pub(super) async fn synthesize(
    shared: &Shared,
    ns: &str,
    id: &str,
    topic: &'static str,
    event: prost_types::Any,
    once: Once,
) -> Result<(), TaskError> {
    let task = task_key(ns, id);
    let source = berthd_source(&task);
    let bus = &shared.ctx.events;
    let seq = bus.last_shim_seq(&source).await.map_err(upstream)? + 1;
    bus.publish_from_shim(ShimEvent {
        source,
        task,
        seq,
        namespace: ns.to_string(),
        topic,
        event,
        once: Some(once),
    })
    .await
    .map_err(upstream)?;
    Ok(())
}

/// A task whose shim is gone: journal what the shim recorded but never delivered, run `berth-shim delete`
/// (once: its exit is kept in the record), then journal the init's exit and the delete, each at most once.
/// Returns the record (with `dead` set) and the shim's journaled events.
pub(super) async fn reap_dead_shim(
    shared: Arc<Shared>,
    ns: String,
    id: String,
    dir: std::path::PathBuf,
    mut record: TaskRecord,
    known_exit: Option<ExitInfo>,
) -> Result<(TaskRecord, Vec<shim::Event>), TaskError> {
    let journaled = replay_shim_journal(&shared, &ns, &id, &dir).await?;
    let replayed_exit = journaled.iter().find_map(|ev| match &ev.kind {
        Some(Kind::Exited(e)) if e.exec_id.is_empty() => {
            Some(ExitInfo::new(e.pid, e.exit_status, e.exited_at.as_ref()))
        }
        _ => None,
    });
    let known_exit = known_exit.or(replayed_exit);
    if record.dead.is_none() {
        let args = shared.start_args(&ns, &id, &record);
        let reported = tokio::task::spawn_blocking(move || shimio::delete_shim(&args))
            .await
            .map_err(|e| TaskError::ActorFailed(e.to_string()))?;
        let exit = match (known_exit, reported) {
            (Some(k), _) => k,
            (None, Ok(e)) => e,
            (None, Err(e)) => {
                tracing::warn!(error = %e, "berth-shim delete failed");
                ExitInfo::new(0, 137, None)
            }
        };
        record.dead = Some(DeadShim { exit });
        let (d, r) = (dir.clone(), record.clone());
        tokio::task::spawn_blocking(move || bundle::save_record(&d, &r))
            .await
            .map_err(|e| TaskError::ActorFailed(e.to_string()))??;
    }
    if let Some(d) = record.dead {
        let exit = exit_event(&id, &id, &d.exit);
        synthesize(&shared, &ns, &id, "/tasks/exit", exit, Once::InitExit).await?;
        let delete = delete_event(&id, &d.exit);
        synthesize(&shared, &ns, &id, "/tasks/delete", delete, Once::Delete).await?;
    }
    Ok((record, journaled))
}

impl ContainerActor {
    /// Apply one shim event to the state (events only move processes forward).
    pub(super) fn on_event(&mut self, ev: shim::Event) {
        let Some(kind) = ev.kind else { return };
        match kind {
            Kind::Created(c) => {
                if self.task.init.pid == 0 {
                    self.task.init.pid = c.pid;
                }
            }
            Kind::Started(s) => {
                self.task.init.pid = s.pid;
                self.task.init.set_status(ProcStatus::Running);
            }
            Kind::Exited(e) => {
                let exit = ExitInfo::new(e.pid, e.exit_status, e.exited_at.as_ref());
                if let Some(p) = self.task.process_mut(&e.exec_id) {
                    p.set_exited(exit);
                }
                self.shared
                    .waiters
                    .exited(&self.ns, &self.id, &e.exec_id, exit);
            }
            Kind::ExecStarted(e) => {
                if let Some(p) = self.task.execs.get_mut(&e.exec_id) {
                    p.pid = e.pid;
                    p.set_status(ProcStatus::Running);
                }
            }
            Kind::Paused(_) => self.task.init.set_status(ProcStatus::Paused),
            Kind::Resumed(_) => {
                if self.task.init.status == ProcStatus::Paused {
                    self.task.init.set_status(ProcStatus::Running);
                }
            }
            Kind::Deleted(_) => {
                let _ = self.deleted_seen.send(true);
            }
            Kind::Oom(_) | Kind::ExecAdded(_) => {}
        }
    }

    /// The state of a task whose shim is gone, from the record (with its exit) and what the shim journaled.
    pub(super) fn become_dead(&mut self, record: TaskRecord, journaled: Vec<shim::Event>) {
        self.client = None;
        self.pump = None;
        self.phase = Phase::Dead;
        for ev in journaled {
            self.on_event(ev);
        }
        if let Some(d) = record.dead {
            self.task.init.set_exited(d.exit);
            for p in self.task.execs.values_mut() {
                p.set_exited(ExitInfo::new(p.pid, 137, Some(&d.exit.timestamp())));
            }
        }
        self.record = record;
        self.sync_waiters();
    }
}

impl Handler<ShimEventMsg> for ContainerActor {
    type Result = ();

    fn handle(&mut self, msg: ShimEventMsg, ctx: &mut Self::Context) {
        let _ = self.guard(ctx, "shim_event", |act, _| {
            act.on_event(msg.0);
            Ok(())
        });
    }
}

impl Handler<ShimGone> for ContainerActor {
    type Result = ();

    fn handle(&mut self, _: ShimGone, ctx: &mut Self::Context) {
        let _ = self.shim_gone.send(true);
        if self.terminated || self.phase != Phase::Live {
            return;
        }
        // Reaping changes the state like a verb does: it waits for the gate (a Delete in progress has its own
        // way of finishing with a dead shim, and then the phase is no longer Live).
        let reap = self.verb(
            "reap",
            true,
            |act| {
                // A Delete that held the gate meanwhile may have finished the task already.
                let reap = (act.phase == Phase::Live && !act.terminated).then(|| {
                    let _e = act.span.enter();
                    tracing::warn!("shim is gone; marking the task stopped");
                    reap_dead_shim(
                        act.shared.clone(),
                        act.ns.clone(),
                        act.id.clone(),
                        act.dir.clone(),
                        act.record.clone(),
                        act.task.init.exit,
                    )
                });
                Ok(async move {
                    match reap {
                        Some(f) => f.await.map(Some),
                        None => Ok(None),
                    }
                })
            },
            |act, _, reaped| {
                if let Some((record, journaled)) = reaped {
                    act.become_dead(record, journaled);
                }
                Ok(())
            },
        );
        ctx.spawn(reap.map(|res, act, _| {
            if let Err(e) = res {
                let _e = act.span.enter();
                tracing::error!(error = %e, "cleaning up after a dead shim");
            }
        }));
    }
}

impl Handler<PumpFailed> for ContainerActor {
    type Result = ();

    fn handle(&mut self, msg: PumpFailed, ctx: &mut Self::Context) {
        self.fail(ctx, "shim event pump", msg.0);
    }
}
