//! The ContainerActor's longer operations: Exec, Pause/Resume, DeleteProcess, Delete, and applying shim events.
//!
//! They run as actor futures (never blocking the actor thread) and touch the actor's state only in their `map`
//! closures. Delete must journal the shim's TaskDeleted before it removes the task directory.

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use berth_proto::containerd_client::services::v1::DeleteResponse;
use berth_proto::containerd_client::types::v1::Status as ProcStatus;
use berth_proto::shim;
use berth_proto::shim::event::Kind;

use super::super::bundle;
use super::super::error::TaskError;
use super::super::events::delete_event;
use super::super::shim as shimio;
use super::super::state::{ExitInfo, ProcState, StdioPaths};
use super::{done, guarded, ContainerActor, Reply, Resp};

impl ContainerActor {
    pub(super) fn exec(
        &mut self,
        exec_id: String,
        stdio: StdioPaths,
        process_json: Vec<u8>,
    ) -> Resp {
        if self.task.execs.contains_key(&exec_id) {
            return done(Err(TaskError::ExecExists {
                id: self.id.clone(),
                exec_id,
            }));
        }
        if self.dead || self.task.init.status == ProcStatus::Stopped {
            return done(Err(TaskError::FailedPrecondition(format!(
                "task {:?} is stopped; cannot exec into it",
                self.id
            ))));
        }
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return done(Err(e)),
        };
        // Remember the exec (record first, so a restart knows to ask the shim about it).
        self.record.execs.insert(exec_id.clone(), stdio.clone());
        if let Err(e) = bundle::save_record(&self.dir, &self.record) {
            self.record.execs.remove(&exec_id);
            return done(Err(e));
        }
        self.task
            .execs
            .insert(exec_id.clone(), ProcState::new(stdio.clone()));
        self.shared.waiters.reset(&self.ns, &self.id, &exec_id);
        let req = shim::ExecRequest {
            exec_id: exec_id.clone(),
            stdio: Some(stdio.to_shim()),
            process_json,
        };
        Box::pin(
            guarded(async move {
                let mut c = client;
                c.exec(req).await.map(|_| ()).map_err(TaskError::Shim)
            })
            .into_actor(self)
            .map(
                move |res, act, ctx| match act.check_panic(ctx, "exec", res) {
                    Ok(()) => Ok(Reply::Done),
                    Err(e) => {
                        act.task.execs.remove(&exec_id);
                        act.record.execs.remove(&exec_id);
                        let _ = bundle::save_record(&act.dir, &act.record);
                        act.shared.waiters.remove(&act.ns, &act.id, &exec_id);
                        Err(e)
                    }
                },
            ),
        )
    }

    pub(super) fn pause_resume(&mut self, pause: bool) -> Resp {
        let name = if pause { "pause" } else { "resume" };
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return done(Err(e)),
        };
        self.call(
            name,
            async move {
                let mut c = client;
                let r = if pause {
                    c.pause(shim::Empty {}).await
                } else {
                    c.resume(shim::Empty {}).await
                };
                r.map(|_| ()).map_err(TaskError::Shim)
            },
            move |act, _, ()| {
                if pause {
                    act.task.init.set_status(ProcStatus::Paused);
                } else if act.task.init.status == ProcStatus::Paused {
                    act.task.init.set_status(ProcStatus::Running);
                }
                Ok(Reply::Done)
            },
        )
    }

    pub(super) fn delete_process(&mut self, exec_id: String) -> Resp {
        if exec_id.is_empty() {
            return done(Err(TaskError::InvalidArgument(
                "exec id is required".into(),
            )));
        }
        let p = match self.process(&exec_id) {
            Ok(p) => p.clone(),
            Err(e) => return done(Err(e)),
        };
        if !matches!(p.status, ProcStatus::Stopped | ProcStatus::Created) {
            return done(Err(TaskError::FailedPrecondition(format!(
                "process {exec_id:?} must be stopped before deletion (it is {})",
                p.status.as_str_name()
            ))));
        }
        let client = if self.dead { None } else { self.client.clone() };
        let req = shim::DeleteRequest {
            exec_id: exec_id.clone(),
        };
        self.call(
            "delete_process",
            async move {
                match client {
                    Some(mut c) => match c.delete(req).await {
                        Ok(r) => Ok(Some(r.into_inner())),
                        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                        Err(s) => Err(TaskError::Shim(s)),
                    },
                    None => Ok(None),
                }
            },
            move |act, _, resp| {
                let exit = match resp {
                    Some(r) => ExitInfo::new(r.pid, r.exit_status, r.exited_at.as_ref()),
                    None => p.exit.unwrap_or_else(|| ExitInfo::new(p.pid, 0, None)),
                };
                act.task.execs.remove(&exec_id);
                act.record.execs.remove(&exec_id);
                let _ = bundle::save_record(&act.dir, &act.record);
                act.shared.waiters.remove(&act.ns, &act.id, &exec_id);
                Ok(Reply::Deleted(DeleteResponse {
                    id: exec_id,
                    pid: exit.pid,
                    exit_status: exit.status,
                    exited_at: Some(exit.timestamp()),
                }))
            },
        )
    }

    pub(super) fn delete(&mut self) -> Resp {
        let status = self.task.init.status;
        if !matches!(status, ProcStatus::Stopped | ProcStatus::Created) {
            return done(Err(TaskError::FailedPrecondition(format!(
                "task {:?} must be stopped before deletion: it is {}",
                self.id,
                status.as_str_name()
            ))));
        }
        let client = if self.dead { None } else { self.client.clone() };
        let known = self.task.init.exit;
        let pid = self.task.init.pid;
        let mut seen = self.deleted_seen.subscribe();
        let dir = self.dir.clone();
        let events = self.shared.ctx.events.clone();
        let (ns, id) = (self.ns.clone(), self.id.clone());
        let fut = async move {
            let mut exit = known.unwrap_or_else(|| ExitInfo::new(pid, 0, None));
            if let Some(mut c) = client {
                let r = c
                    .delete(shim::DeleteRequest {
                        exec_id: String::new(),
                    })
                    .await
                    .map_err(TaskError::Shim)?
                    .into_inner();
                exit = ExitInfo::new(r.pid, r.exit_status, r.exited_at.as_ref());
                // The shim's TaskDeleted goes through the journal first, so /tasks/delete follows /tasks/exit.
                let waited =
                    tokio::time::timeout(Duration::from_secs(3), seen.wait_for(|s| *s)).await;
                if !matches!(waited, Ok(Ok(_))) {
                    tracing::warn!(namespace = %ns, container_id = %id, "no TaskDeleted from the shim; publishing it");
                    let _ = events
                        .publish(&ns, "/tasks/delete", delete_event(&id, &exit))
                        .await;
                }
                let _ = c.shutdown(shim::ShutdownRequest { now: false }).await;
            }
            remove_dir_retrying(dir).await?;
            let _ = events.forget_shim(&shimio::shim_key(&ns, &id)).await;
            Ok(exit)
        };
        self.deleting = true;
        Box::pin(
            guarded(fut)
                .into_actor(self)
                .map(|res: Result<ExitInfo, TaskError>, act, ctx| {
                    let exit = match act.check_panic(ctx, "delete", res) {
                        Ok(e) => e,
                        Err(e) => {
                            act.deleting = false;
                            return Err(e);
                        }
                    };
                    act.terminated = true;
                    act.shared
                        .registry
                        .remove(&(act.ns.clone(), act.id.clone()));
                    act.shared.waiters.remove_task(&act.ns, &act.id);
                    ctx.stop();
                    Ok(Reply::Deleted(DeleteResponse {
                        id: act.id.clone(),
                        pid: exit.pid,
                        exit_status: exit.status,
                        exited_at: Some(exit.timestamp()),
                    }))
                }),
        )
    }

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
}

async fn remove_dir_retrying(dir: PathBuf) -> Result<(), TaskError> {
    let mut last = Ok(());
    for _ in 0..10 {
        let d = dir.clone();
        last = tokio::task::spawn_blocking(move || bundle::remove_task_dir(&d))
            .await
            .unwrap_or_else(|e| Err(TaskError::ActorFailed(e.to_string())));
        if last.is_ok() {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}
