//! Exec and DeleteProcess: an exec is recorded in berthd's task record before the shim hears of it (so a
//! restarted actor knows to ask the shim about it), and forgotten from the record when it is deleted.

use actix::prelude::*;
use berth_proto::containerd_client::services::v1::DeleteResponse;
use berth_proto::containerd_client::types::v1::Status as ProcStatus;
use berth_proto::shim;

use super::messages::{DeleteProcess, Exec};
use super::{ContainerActor, Phase, Reply};
use crate::tasks::bundle::{self, TaskRecord};
use crate::tasks::error::TaskError;
use crate::tasks::state::{ExitInfo, ProcState};

/// Save the record off the actor thread.
async fn save(dir: std::path::PathBuf, record: TaskRecord) -> Result<(), TaskError> {
    tokio::task::spawn_blocking(move || bundle::save_record(&dir, &record))
        .await
        .map_err(|e| TaskError::ActorFailed(format!("saving the task record: {e}")))?
}

impl Handler<Exec> for ContainerActor {
    type Result = Reply<()>;

    fn handle(&mut self, m: Exec, _: &mut Self::Context) -> Reply<()> {
        let exec_id = m.exec_id.clone();
        self.verb(
            "exec",
            true,
            move |act| {
                act.require_task()?;
                if act.task.execs.contains_key(&m.exec_id) {
                    return Err(TaskError::ExecExists {
                        id: act.id.clone(),
                        exec_id: m.exec_id,
                    });
                }
                if act.phase == Phase::Dead || act.task.init.status == ProcStatus::Stopped {
                    return Err(TaskError::FailedPrecondition(format!(
                        "task {:?} is stopped; cannot exec into it",
                        act.id
                    )));
                }
                let mut c = act.client()?;
                let before = act.record.clone();
                let mut record = before.clone();
                record.execs.insert(m.exec_id.clone(), m.stdio.clone());
                let dir = act.dir.clone();
                let req = shim::ExecRequest {
                    exec_id: m.exec_id,
                    stdio: Some(m.stdio.to_shim()),
                    process_json: m.process_json,
                };
                Ok(async move {
                    save(dir.clone(), record.clone()).await?;
                    if let Err(s) = c.exec(req).await {
                        // The shim refused it: the record must not keep it.
                        save(dir, before).await?;
                        return Err(TaskError::Shim(s));
                    }
                    Ok(record)
                })
            },
            move |act, _, record| {
                let stdio = record.execs.get(&exec_id).cloned().unwrap_or_default();
                act.record = record;
                act.task
                    .execs
                    .insert(exec_id.clone(), ProcState::new(stdio));
                act.shared.waiters.reset(&act.ns, &act.id, &exec_id);
                Ok(())
            },
        )
    }
}

impl Handler<DeleteProcess> for ContainerActor {
    type Result = Reply<DeleteResponse>;

    fn handle(&mut self, m: DeleteProcess, _: &mut Self::Context) -> Reply<DeleteResponse> {
        let exec_id = m.exec_id;
        let deleted = exec_id.clone();
        self.verb(
            "delete_process",
            true,
            move |act| {
                if exec_id.is_empty() {
                    return Err(TaskError::InvalidArgument("exec id is required".into()));
                }
                let p = act.process(&exec_id)?.clone();
                if !matches!(p.status, ProcStatus::Stopped | ProcStatus::Created) {
                    return Err(TaskError::FailedPrecondition(format!(
                        "process {exec_id:?} must be stopped before deletion (it is {})",
                        p.status.as_str_name()
                    )));
                }
                let client = act.client().ok();
                let mut record = act.record.clone();
                record.execs.remove(&exec_id);
                let dir = act.dir.clone();
                Ok(async move {
                    let resp = match client {
                        Some(mut c) => match c.delete(shim::DeleteRequest { exec_id }).await {
                            Ok(r) => Some(r.into_inner()),
                            Err(s) if s.code() == tonic::Code::NotFound => None,
                            Err(s) => return Err(TaskError::Shim(s)),
                        },
                        None => None,
                    };
                    save(dir, record.clone()).await?;
                    let exit = match resp {
                        Some(r) => ExitInfo::new(r.pid, r.exit_status, r.exited_at.as_ref()),
                        None => p.exit.unwrap_or_else(|| ExitInfo::new(p.pid, 0, None)),
                    };
                    Ok((record, exit))
                })
            },
            move |act, _, (record, exit)| {
                act.record = record;
                act.task.execs.remove(&deleted);
                act.shared.waiters.remove(&act.ns, &act.id, &deleted);
                Ok(DeleteResponse {
                    id: deleted,
                    pid: exit.pid,
                    exit_status: exit.status,
                    exited_at: Some(exit.timestamp()),
                })
            },
        )
    }
}
