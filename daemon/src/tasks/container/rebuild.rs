//! Rebuilding a ContainerActor after berthd's start or a restart: from berthd's record in the task directory
//! and the shim (State RPC), never from a previous actor's memory. The record also tells what a crashed
//! berthd left half done, and the rebuild finishes it: a create that never completed is undone, a delete the
//! shim already did is finished (events, directory), a shim that died is reaped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use berth_proto::containerd_client::types::v1::Status as ProcStatus;
use berth_proto::shim;

use super::create::undo_dir;
use super::delete::{finish, teardown_network};
use super::shim_events::reap_dead_shim;
use super::{guarded, ContainerActor, Phase};
use crate::tasks::bundle::{self, TaskRecord};
use crate::tasks::error::TaskError;
use crate::tasks::shim::{self as shimio, ShimClient};
use crate::tasks::state::{status_from_shim, ExitInfo, ProcState, StdioPaths, TaskState};
use crate::tasks::{task_key, Guarded, Shared};

/// What a rebuild found.
pub(super) enum Rebuilt {
    /// The shim answers.
    Live {
        /// Connected client.
        client: Box<ShimClient>,
        /// berthd's record.
        record: Box<TaskRecord>,
        /// State from the shim.
        task: Box<TaskState>,
    },
    /// The shim is gone: the task is stopped with the recorded exit; the events are what the shim had
    /// journaled (applied before falling back to 137 for execs without an exit).
    Dead(Box<TaskRecord>, Vec<shim::Event>),
    /// There is no task any more (a create that never completed was undone, or a delete was finished).
    Gone,
}

fn apply_state(p: &mut ProcState, st: &shim::StateResponse) {
    p.pid = st.pid;
    let status = status_from_shim(st.status);
    if status == ProcStatus::Stopped {
        p.set_exited(ExitInfo::new(st.pid, st.exit_status, st.exited_at.as_ref()));
    } else {
        p.status = status;
    }
    if p.stdio == StdioPaths::default() {
        if let Some(s) = &st.stdio {
            p.stdio = StdioPaths::from_shim(s);
        }
    }
}

/// Connect to the task's shim, retrying while its process lives.
async fn connect_shim(dir: &std::path::Path) -> Option<ShimClient> {
    let address = bundle::read_address(dir)?;
    for _ in 0..50 {
        match shimio::connect(&address, Duration::from_secs(1)).await {
            Ok(c) => return Some(c),
            Err(e) => {
                if !bundle::read_shim_pid(dir).is_some_and(bundle::pid_alive) {
                    tracing::debug!(error = %e, "shim is gone");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

/// A create cut short by berthd's death may have left the container in the runtime (berthd died while the
/// runtime created it): `berth-shim delete` runs the runtime's `delete --force`, so the id can be used again.
/// Only once the task's shim is gone. Best effort.
async fn runtime_delete(shared: &Arc<Shared>, ns: &str, id: &str, record: &TaskRecord) {
    let args = shared.start_args(ns, id, record);
    match tokio::task::spawn_blocking(move || shimio::delete_shim(&args)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "no runtime container to delete"),
        Err(e) => tracing::warn!(error = %e, "runtime delete failed"),
    }
}

/// Wait (bounded) for a shim told to shut down to be gone.
async fn wait_shim_gone(dir: &std::path::Path) {
    for _ in 0..50 {
        match bundle::read_shim_pid(dir) {
            Some(pid) if bundle::pid_alive(pid) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            _ => return,
        }
    }
}

async fn rebuild(
    shared: Arc<Shared>,
    ns: String,
    id: String,
    dir: PathBuf,
) -> Result<Rebuilt, TaskError> {
    let _permit = shared.recovery.limit.clone().acquire_owned().await;
    let d = dir.clone();
    let Some(mut record) = tokio::task::spawn_blocking(move || bundle::load_record(&d))
        .await
        .map_err(|e| TaskError::ActorFailed(e.to_string()))??
    else {
        return Ok(Rebuilt::Gone);
    };
    if dir
        .join(shim::journal::DELETED_MARKER)
        .try_exists()
        .unwrap_or(false)
    {
        // berthd died while deleting: the shim deleted the container; finish the rest.
        tracing::info!("finishing a delete interrupted by a berthd restart");
        let exit = record
            .dead
            .map(|d| d.exit)
            .unwrap_or_else(|| ExitInfo::new(0, 137, None));
        finish(&shared, &ns, &id, &dir, exit).await?;
        if let Some(mut c) = connect_shim(&dir).await {
            let _ = c.shutdown(shim::ShutdownRequest { now: true }).await;
        }
        if record.network {
            teardown_network(&shared, &ns, &id).await;
        }
        undo_dir(&shared, &ns, &id, &dir).await;
        return Ok(Rebuilt::Gone);
    }
    if record.dead.is_some() {
        let (record, journaled) = reap_dead_shim(shared, ns, id, dir, record, None).await?;
        return Ok(Rebuilt::Dead(Box::new(record), journaled));
    }
    let Some(mut c) = connect_shim(&dir).await else {
        if !record.created && shared.ctx.events.last_shim_seq(&task_key(&ns, &id)).await? == 0 {
            // A create that never got as far as the runtime: nobody saw this task.
            tracing::info!("removing a task whose create never completed");
            runtime_delete(&shared, &ns, &id, &record).await;
            if record.network {
                teardown_network(&shared, &ns, &id).await;
            }
            undo_dir(&shared, &ns, &id, &dir).await;
            return Ok(Rebuilt::Gone);
        }
        let (record, journaled) = reap_dead_shim(shared, ns, id, dir, record, None).await?;
        return Ok(Rebuilt::Dead(Box::new(record), journaled));
    };
    let st = match c
        .state(shim::StateRequest {
            exec_id: String::new(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound && !record.created => {
            tracing::info!("removing a task whose create never completed");
            let _ = c.shutdown(shim::ShutdownRequest { now: true }).await;
            wait_shim_gone(&dir).await;
            runtime_delete(&shared, &ns, &id, &record).await;
            if record.network {
                teardown_network(&shared, &ns, &id).await;
            }
            undo_dir(&shared, &ns, &id, &dir).await;
            return Ok(Rebuilt::Gone);
        }
        Err(s) => return Err(TaskError::Shim(s)),
    };
    if !record.created {
        // The runtime did create it; berthd died before noting that.
        record.created = true;
        let (d, r) = (dir.clone(), record.clone());
        tokio::task::spawn_blocking(move || bundle::save_record(&d, &r))
            .await
            .map_err(|e| TaskError::ActorFailed(e.to_string()))??;
    }
    let mut task = TaskState::new(record.stdio.clone());
    apply_state(&mut task.init, &st);
    for (exec_id, stdio) in &record.execs {
        match c
            .state(shim::StateRequest {
                exec_id: exec_id.clone(),
            })
            .await
        {
            Ok(r) => {
                let mut p = ProcState::new(stdio.clone());
                apply_state(&mut p, &r.into_inner());
                task.execs.insert(exec_id.clone(), p);
            }
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(TaskError::Shim(s)),
        }
    }
    Ok(Rebuilt::Live {
        client: Box::new(c),
        record: Box::new(record),
        task: Box::new(task),
    })
}

impl ContainerActor {
    /// Rebuild in `started`: no message is handled until the state is back (`ctx.wait`).
    pub(super) fn rebuild(&mut self, ctx: &mut Context<Self>) {
        use tracing::Instrument;
        let fut = rebuild(
            self.shared.clone(),
            self.ns.clone(),
            self.id.clone(),
            self.dir.clone(),
        )
        .instrument(self.span.clone());
        let release = self.release();
        ctx.wait(guarded(fut).into_actor(self).then(move |res, act, ctx| {
            let gone = match res {
                Err(TaskError::Panicked(p)) => {
                    act.fail(ctx, "rebuild", p);
                    false
                }
                Err(e) => {
                    let _e = act.span.enter();
                    tracing::error!(error = %e, "rebuilding the task failed");
                    act.failure = format!("rebuild: {e}");
                    ctx.stop();
                    false
                }
                Ok(rebuilt) => act
                    .guard(ctx, "rebuild", |act, ctx| {
                        Ok(act.apply_rebuilt(ctx, rebuilt))
                    })
                    .unwrap_or(false),
            };
            act.shared.recovery.done();
            async move {
                if gone {
                    release.await;
                }
            }
            .into_actor(act)
            .map(move |(), act, ctx| {
                if gone {
                    act.terminate(ctx);
                }
            })
        }));
    }

    /// Take over the rebuilt state; true when there is no task any more.
    fn apply_rebuilt(&mut self, ctx: &mut Context<Self>, rebuilt: Rebuilt) -> bool {
        match rebuilt {
            Rebuilt::Live {
                client,
                record,
                task,
            } => {
                self.client = Some(*client);
                self.record = *record;
                self.task = *task;
                self.phase = Phase::Live;
                self.start_pump(ctx);
                self.sync_waiters();
                false
            }
            Rebuilt::Dead(record, journaled) => {
                self.task = TaskState::new(record.stdio.clone());
                for (exec_id, stdio) in &record.execs {
                    self.task
                        .execs
                        .insert(exec_id.clone(), ProcState::new(stdio.clone()));
                }
                self.become_dead(*record, journaled);
                false
            }
            Rebuilt::Gone => {
                self.shared.waiters.remove_task(&self.ns, &self.id);
                true
            }
        }
    }
}
