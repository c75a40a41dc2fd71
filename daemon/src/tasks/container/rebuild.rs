//! Rebuilding a ContainerActor's state after recovery or a restart: from berthd's record in the task directory
//! and the shim (State RPC), or — when the shim is gone — by reaping it with `berth-shim delete` and journaling
//! TaskExit and TaskDelete exactly once. Never from a previous actor's memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::containerd_client::types::v1::Status as ProcStatus;
use berth_proto::shim;

use super::super::bundle::{self, DeadShim, TaskRecord};
use super::super::error::TaskError;
use super::super::events::{delete_event, exit_event};
use super::super::shim::{self as shimio, ShimClient};
use super::super::state::{status_from_shim, ExitInfo, ProcState, StdioPaths, TaskState};
use super::super::Shared;

/// State rebuilt from the task directory and the shim.
pub enum Rebuilt {
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
    /// journaled (the actor applies them before falling back to 137 for execs without an exit).
    Dead(Box<TaskRecord>, Vec<shim::Event>),
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

/// Rebuild a task: the record, then the shim (connect, State of init and of each exec berthd registered).
pub(super) async fn rebuild(
    shared: Arc<Shared>,
    ns: String,
    id: String,
    dir: PathBuf,
) -> Result<Rebuilt, TaskError> {
    let _permit = shared.recovery_limit.clone().acquire_owned().await;
    let d = dir.clone();
    let record = tokio::task::spawn_blocking(move || bundle::load_record(&d))
        .await
        .map_err(|e| TaskError::ActorFailed(e.to_string()))??
        .ok_or_else(|| {
            TaskError::TaskNotFound(format!("{id}: no task record in {}", dir.display()))
        })?;
    if record.dead.is_some() {
        let (record, journaled) = reap_dead_shim(shared, ns, id, dir, record, None).await?;
        return Ok(Rebuilt::Dead(Box::new(record), journaled));
    }
    let mut client = None;
    if let Some(address) = bundle::read_address(&dir) {
        for _ in 0..50 {
            match shimio::connect(&address, Duration::from_secs(1)).await {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(e) => {
                    if !bundle::read_shim_pid(&dir).is_some_and(bundle::pid_alive) {
                        tracing::debug!(namespace = %ns, container_id = %id, error = %e, "shim is gone");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let Some(mut c) = client else {
        let (record, journaled) = reap_dead_shim(shared, ns, id, dir, record, None).await?;
        return Ok(Rebuilt::Dead(Box::new(record), journaled));
    };
    let st = c
        .state(shim::StateRequest {
            exec_id: String::new(),
        })
        .await
        .map_err(TaskError::Shim)?
        .into_inner();
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

/// What the shim journaled on disk and never saw acked: berthd may have missed it when the shim died.
async fn read_shim_journal(dir: &std::path::Path) -> Vec<shim::Event> {
    let path = dir.join(shim::journal::LOG_FILE);
    match tokio::fs::read(&path).await {
        Ok(buf) => shim::journal::decode_frames(&buf),
        Err(_) => Vec::new(),
    }
}

/// A task whose shim is gone: journal what the shim recorded but never delivered (each event once, under its
/// own shim seq), run `berth-shim delete`, record the exit, journal TaskExit (unless the exit is already known
/// or was among the replayed events) then TaskDelete exactly once (the seqs are chosen once and kept in the
/// record). Returns the record and the shim's journaled events, for the actor's state.
pub(super) async fn reap_dead_shim(
    shared: Arc<Shared>,
    ns: String,
    id: String,
    dir: PathBuf,
    mut record: TaskRecord,
    known_exit: Option<ExitInfo>,
) -> Result<(TaskRecord, Vec<shim::Event>), TaskError> {
    let key = shimio::shim_key(&ns, &id);
    let events = shared.ctx.events.clone();
    let journaled = read_shim_journal(&dir).await;
    for ev in &journaled {
        let Some((topic, any)) = ev
            .kind
            .as_ref()
            .and_then(|k| super::super::events::to_containerd(&id, k))
        else {
            continue;
        };
        // publish_from_shim skips seqs berthd already journaled.
        events
            .publish_from_shim(&key, ev.seq, &ns, topic, any)
            .await
            .map_err(|e| TaskError::Upstream(e.into()))?;
    }
    let replayed_exit = journaled.iter().find_map(|ev| match &ev.kind {
        Some(shim::event::Kind::Exited(e)) if e.exec_id.is_empty() => {
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
                tracing::warn!(namespace = %ns, container_id = %id, error = %e, "berth-shim delete failed");
                ExitInfo::new(0, 137, None)
            }
        };
        let last = events
            .last_shim_seq(&key)
            .await
            .map_err(|e| TaskError::Upstream(e.into()))?;
        record.dead = Some(DeadShim {
            exit,
            exit_seq: if known_exit.is_some() { 0 } else { last + 1 },
            delete_seq: last + 2,
        });
        let (d, r) = (dir.clone(), record.clone());
        tokio::task::spawn_blocking(move || bundle::save_record(&d, &r))
            .await
            .map_err(|e| TaskError::ActorFailed(e.to_string()))??;
    }
    if let Some(d) = record.dead {
        if d.exit_seq > 0 {
            events
                .publish_from_shim(
                    &key,
                    d.exit_seq,
                    &ns,
                    "/tasks/exit",
                    exit_event(&id, &id, &d.exit),
                )
                .await
                .map_err(|e| TaskError::Upstream(e.into()))?;
        }
        events
            .publish_from_shim(
                &key,
                d.delete_seq,
                &ns,
                "/tasks/delete",
                delete_event(&id, &d.exit),
            )
            .await
            .map_err(|e| TaskError::Upstream(e.into()))?;
    }
    Ok((record, journaled))
}
