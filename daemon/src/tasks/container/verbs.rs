//! The short verbs: Start, Get, Kill, ResizePty, CloseIO, Pause, Resume, ListPids, Update, ReopenLog, Metrics. Each is a
//! state check, one shim call and, for some, a state update (see [`ContainerActor::verb`]).

use actix::prelude::*;
use berth_proto::containerd_client::types::v1::{Process, ProcessInfo, Status as ProcStatus};
use berth_proto::shim;

use super::messages::*;
use super::{ContainerActor, Reply};
use crate::tasks::error::TaskError;

/// `Err(e)` mapped to the shim error variant.
fn shim_err(s: tonic::Status) -> TaskError {
    TaskError::Shim(s)
}

impl Handler<Start> for ContainerActor {
    type Result = Reply<u32>;

    fn handle(&mut self, m: Start, _: &mut Self::Context) -> Reply<u32> {
        let exec_id = m.exec_id;
        let started = exec_id.clone();
        self.verb(
            "start",
            true,
            move |act| {
                let status = act.status(&exec_id)?;
                if status != ProcStatus::Created {
                    return Err(TaskError::FailedPrecondition(format!(
                        "process {exec_id:?} of task {:?} is {} and cannot be started",
                        act.id,
                        status.as_str_name()
                    )));
                }
                let mut c = act.client()?;
                Ok(async move {
                    let r = c.start(shim::StartRequest { exec_id }).await;
                    r.map(|r| r.into_inner().pid).map_err(shim_err)
                })
            },
            move |act, _, pid| {
                if let Some(p) = act.task.process_mut(&started) {
                    p.pid = pid;
                    p.set_status(ProcStatus::Running);
                }
                Ok(pid)
            },
        )
    }
}

impl Handler<Get> for ContainerActor {
    type Result = Reply<Process>;

    fn handle(&mut self, m: Get, _: &mut Self::Context) -> Reply<Process> {
        let id = if m.exec_id.is_empty() {
            self.id.clone()
        } else {
            m.exec_id.clone()
        };
        let r = self
            .process(&m.exec_id)
            .map(|p| p.to_process(&self.id, &id));
        Box::pin(actix::fut::ready(r))
    }
}

impl Handler<Kill> for ContainerActor {
    type Result = Reply<()>;

    fn handle(&mut self, m: Kill, _: &mut Self::Context) -> Reply<()> {
        self.shim_call(
            "kill",
            true,
            move |act| {
                let status = act.status(&m.exec_id)?;
                if act.phase == super::Phase::Dead || (status == ProcStatus::Stopped && !m.all) {
                    return Err(TaskError::TaskNotFound(format!(
                        "{}: process already finished",
                        act.id
                    )));
                }
                let mut c = act.client()?;
                let req = shim::KillRequest {
                    exec_id: m.exec_id,
                    signal: m.signal,
                    all: m.all,
                };
                Ok(async move { c.kill(req).await.map_err(shim_err) })
            },
            |_| (),
        )
    }
}

impl Handler<ResizePty> for ContainerActor {
    type Result = Reply<()>;

    fn handle(&mut self, m: ResizePty, _: &mut Self::Context) -> Reply<()> {
        self.shim_call(
            "resize_pty",
            true,
            move |act| {
                act.process(&m.exec_id)?;
                let mut c = act.client()?;
                let req = shim::ResizePtyRequest {
                    exec_id: m.exec_id,
                    width: m.width,
                    height: m.height,
                };
                Ok(async move { c.resize_pty(req).await.map_err(shim_err) })
            },
            |_| (),
        )
    }
}

impl Handler<CloseIo> for ContainerActor {
    type Result = Reply<()>;

    fn handle(&mut self, m: CloseIo, _: &mut Self::Context) -> Reply<()> {
        self.shim_call(
            "close_io",
            true,
            move |act| {
                act.process(&m.exec_id)?;
                let mut c = act.client()?;
                let req = shim::CloseIoRequest {
                    exec_id: m.exec_id,
                    stdin: m.stdin,
                };
                Ok(async move { c.close_io(req).await.map_err(shim_err) })
            },
            |_| (),
        )
    }
}

impl ContainerActor {
    fn pause_resume(&mut self, pause: bool) -> Reply<()> {
        let verb = if pause { "pause" } else { "resume" };
        self.verb(
            verb,
            true,
            move |act| {
                let mut c = act.client()?;
                Ok(async move {
                    let r = if pause {
                        c.pause(shim::Empty {}).await
                    } else {
                        c.resume(shim::Empty {}).await
                    };
                    r.map(|_| ()).map_err(shim_err)
                })
            },
            move |act, _, ()| {
                if pause {
                    act.task.init.set_status(ProcStatus::Paused);
                } else if act.task.init.status == ProcStatus::Paused {
                    act.task.init.set_status(ProcStatus::Running);
                }
                Ok(())
            },
        )
    }
}

impl Handler<Pause> for ContainerActor {
    type Result = Reply<()>;

    fn handle(&mut self, _: Pause, _: &mut Self::Context) -> Reply<()> {
        self.pause_resume(true)
    }
}

impl Handler<Resume> for ContainerActor {
    type Result = Reply<()>;

    fn handle(&mut self, _: Resume, _: &mut Self::Context) -> Reply<()> {
        self.pause_resume(false)
    }
}

impl Handler<ListPids> for ContainerActor {
    type Result = Reply<Vec<ProcessInfo>>;

    fn handle(&mut self, _: ListPids, _: &mut Self::Context) -> Reply<Vec<ProcessInfo>> {
        self.shim_call(
            "list_pids",
            false,
            |act| {
                let mut c = act.client()?;
                Ok(async move { c.pids(shim::PidsRequest {}).await.map_err(shim_err) })
            },
            |resp| {
                resp.into_inner()
                    .processes
                    .into_iter()
                    .map(|p| ProcessInfo {
                        pid: p.pid,
                        info: (!p.exec_id.is_empty()).then(|| {
                            berth_proto::to_any(&berth_proto::runc::ProcessDetails {
                                exec_id: p.exec_id,
                            })
                        }),
                    })
                    .collect()
            },
        )
    }
}

impl Handler<Update> for ContainerActor {
    type Result = Reply<()>;

    fn handle(&mut self, m: Update, _: &mut Self::Context) -> Reply<()> {
        self.shim_call(
            "update",
            true,
            move |act| {
                let mut c = act.client()?;
                let req = shim::UpdateRequest {
                    resources_json: m.resources,
                };
                Ok(async move { c.update(req).await.map_err(shim_err) })
            },
            |_| (),
        )
    }
}

impl Handler<ReopenLog> for ContainerActor {
    type Result = Reply<()>;

    fn handle(&mut self, _: ReopenLog, _: &mut Self::Context) -> Reply<()> {
        self.shim_call(
            "reopen_log",
            false,
            |act| {
                let mut c = act.client()?;
                Ok(async move {
                    c.reopen_log(shim::ReopenLogRequest {})
                        .await
                        .map_err(shim_err)
                })
            },
            |_| (),
        )
    }
}

impl Handler<Metrics> for ContainerActor {
    type Result = Reply<Option<prost_types::Any>>;

    fn handle(&mut self, _: Metrics, _: &mut Self::Context) -> Reply<Option<prost_types::Any>> {
        self.shim_call(
            "metrics",
            false,
            |act| {
                let mut c = act.client()?;
                Ok(async move { c.stats(shim::StatsRequest {}).await.map_err(shim_err) })
            },
            |r| r.into_inner().metrics,
        )
    }
}
