//! The `berth.shim.v1.Shim` gRPC service: thin handlers that validate, call [`Inner`] and
//! map errors to statuses. Never log request payloads here.

use std::sync::Arc;

use berth_proto::shim::{
    event::Kind, shim_server::Shim, AckRequest, CloseIoRequest, CreateRequest, CreateResponse,
    DeleteRequest, DeleteResponse, Empty, Event, EventsRequest, ExecRequest, KillRequest,
    PidsRequest, PidsResponse, ProcessPid, ReopenLogRequest, ResizePtyRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    TaskPaused, TaskResumed, UpdateRequest, WaitRequest, WaitResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::args;
use crate::container::{no_exec, not_created, Inner};
use crate::error::{Error, Result};
use crate::journal::write_atomic;
use crate::log::timestamp;

/// Events sent per journal read.
const BATCH: usize = 64;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct ShimService {
    inner: Arc<Inner>,
}

impl ShimService {
    /// Serve `inner`.
    pub fn new(inner: Arc<Inner>) -> Self {
        ShimService { inner }
    }

    async fn pids(&self) -> Result<Vec<ProcessPid>> {
        let out = self
            .inner
            .runtime
            .run(args!["ps", "--format", "json", &self.inner.id], None)
            .await?;
        let pids: Vec<u32> = serde_json::from_slice(&out).map_err(|e| Error::Runtime {
            cmd: "ps".into(),
            msg: format!("bad JSON: {e}"),
        })?;
        let st = self.inner.state();
        Ok(pids
            .into_iter()
            .map(|pid| ProcessPid {
                pid,
                exec_id: st
                    .execs
                    .values()
                    .find(|p| p.pid == pid && pid != 0)
                    .map(|p| p.exec_id.clone())
                    .unwrap_or_default(),
            })
            .collect())
    }

    async fn pause_resume(&self, pause: bool) -> Result<()> {
        let inner = &self.inner;
        let _op = inner.op().await;
        if inner.state().init.is_none() {
            return Err(not_created(&inner.id));
        }
        let verb = if pause { "pause" } else { "resume" };
        inner.runtime.run(args![verb, &inner.id], None).await?;
        inner.state().paused = pause;
        inner.journal.emit(if pause {
            Kind::Paused(TaskPaused {})
        } else {
            Kind::Resumed(TaskResumed {})
        })?;
        Ok(())
    }

    fn state_of(&self, exec_id: &str) -> Result<StateResponse> {
        let st = self.inner.state();
        let p = if exec_id.is_empty() {
            st.init
                .as_ref()
                .ok_or_else(|| not_created(&self.inner.id))?
        } else {
            st.execs.get(exec_id).ok_or_else(|| no_exec(exec_id))?
        };
        let exit = p.exited();
        Ok(StateResponse {
            id: self.inner.id.clone(),
            exec_id: exec_id.to_string(),
            bundle: self.inner.bundle.to_string_lossy().into_owned(),
            pid: p.pid,
            status: p.status(st.paused) as i32,
            stdio: Some(p.stdio.clone()),
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| timestamp(e.at)),
        })
    }

    async fn update(&self, resources: &[u8]) -> Result<()> {
        serde_json::from_slice::<serde_json::Value>(resources)
            .map_err(|e| Error::InvalidArgument(format!("resources are not JSON: {e}")))?;
        let inner = &self.inner;
        let _op = inner.op().await;
        if inner.state().init.is_none() {
            return Err(not_created(&inner.id));
        }
        let file = inner.bundle.join("resources.json");
        write_atomic(&file, resources)?;
        let res = inner
            .runtime
            .run(args!["update", "--resources", &file, &inner.id], None)
            .await;
        let _ = std::fs::remove_file(&file);
        res.map(|_| ())
    }
}

type Res<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl Shim for ShimService {
    async fn create(&self, req: Request<CreateRequest>) -> Res<CreateResponse> {
        let pid = self.inner.create(req.into_inner()).await?;
        Ok(Response::new(CreateResponse { pid }))
    }

    async fn start(&self, req: Request<StartRequest>) -> Res<StartResponse> {
        let exec_id = req.into_inner().exec_id;
        let pid = if exec_id.is_empty() {
            self.inner.start_init().await?
        } else {
            self.inner.start_exec(&exec_id).await?
        };
        Ok(Response::new(StartResponse { pid }))
    }

    async fn exec(&self, req: Request<ExecRequest>) -> Res<Empty> {
        self.inner.add_exec(req.into_inner())?;
        Ok(Response::new(Empty {}))
    }

    async fn kill(&self, req: Request<KillRequest>) -> Res<Empty> {
        let r = req.into_inner();
        if r.exec_id.is_empty() {
            self.inner.kill_init(r.signal, r.all).await?;
        } else {
            self.inner.kill_exec(&r.exec_id, r.signal)?;
        }
        Ok(Response::new(Empty {}))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Res<DeleteResponse> {
        let exec_id = req.into_inner().exec_id;
        let rec = if exec_id.is_empty() {
            self.inner.delete_init().await?
        } else {
            self.inner.delete_exec(&exec_id)?
        };
        Ok(Response::new(DeleteResponse {
            pid: rec.pid,
            exit_status: rec.status,
            exited_at: Some(timestamp(rec.at)),
        }))
    }

    async fn state(&self, req: Request<StateRequest>) -> Res<StateResponse> {
        Ok(Response::new(self.state_of(&req.into_inner().exec_id)?))
    }

    async fn pids(&self, _req: Request<PidsRequest>) -> Res<PidsResponse> {
        if self.inner.state().init.is_none() {
            return Err(not_created(&self.inner.id).into());
        }
        let processes = self.pids().await?;
        Ok(Response::new(PidsResponse { processes }))
    }

    async fn pause(&self, _req: Request<Empty>) -> Res<Empty> {
        self.pause_resume(true).await?;
        Ok(Response::new(Empty {}))
    }

    async fn resume(&self, _req: Request<Empty>) -> Res<Empty> {
        self.pause_resume(false).await?;
        Ok(Response::new(Empty {}))
    }

    async fn resize_pty(&self, req: Request<ResizePtyRequest>) -> Res<Empty> {
        let r = req.into_inner();
        let st = self.inner.state();
        let p = if r.exec_id.is_empty() {
            st.init
                .as_ref()
                .ok_or_else(|| not_created(&self.inner.id))?
        } else {
            st.execs
                .get(&r.exec_id)
                .ok_or_else(|| no_exec(&r.exec_id))?
        };
        let console = p.console.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!("process {:?} has no terminal", r.exec_id))
        })?;
        console.resize(r.width, r.height)?;
        Ok(Response::new(Empty {}))
    }

    async fn close_io(&self, req: Request<CloseIoRequest>) -> Res<Empty> {
        let r = req.into_inner();
        let mut st = self.inner.state();
        let p = if r.exec_id.is_empty() {
            st.init
                .as_mut()
                .ok_or_else(|| not_created(&self.inner.id))?
        } else {
            st.execs
                .get_mut(&r.exec_id)
                .ok_or_else(|| no_exec(&r.exec_id))?
        };
        if r.stdin {
            p.holders.stdin = None;
        }
        Ok(Response::new(Empty {}))
    }

    async fn update(&self, req: Request<UpdateRequest>) -> Res<Empty> {
        self.update(&req.into_inner().resources_json).await?;
        Ok(Response::new(Empty {}))
    }

    async fn stats(&self, _req: Request<StatsRequest>) -> Res<StatsResponse> {
        let cg =
            self.inner.state().cgroups.clone().ok_or_else(|| {
                Error::FailedPrecondition("container has no cgroups (yet)".into())
            })?;
        Ok(Response::new(StatsResponse {
            metrics: Some(berth_proto::to_any(&cg.stats())),
        }))
    }

    async fn reopen_log(&self, _req: Request<ReopenLogRequest>) -> Res<Empty> {
        let st = self.inner.state();
        let init = st
            .init
            .as_ref()
            .ok_or_else(|| not_created(&self.inner.id))?;
        let log = init.holders.crilog.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!("{}: its output is not a CRI log", self.inner.id))
        })?;
        log.reopen()?;
        Ok(Response::new(Empty {}))
    }

    async fn wait(&self, req: Request<WaitRequest>) -> Res<WaitResponse> {
        let rec = self.inner.wait(&req.into_inner().exec_id).await?;
        Ok(Response::new(WaitResponse {
            exit_status: rec.status,
            exited_at: Some(timestamp(rec.at)),
        }))
    }

    async fn shutdown(&self, req: Request<ShutdownRequest>) -> Res<Empty> {
        self.inner.shutdown(req.into_inner().now);
        Ok(Response::new(Empty {}))
    }

    type EventsStream = ReceiverStream<std::result::Result<Event, Status>>;

    async fn events(&self, req: Request<EventsRequest>) -> Res<Self::EventsStream> {
        let mut after = req.into_inner().after_seq;
        let journal = self.inner.journal.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            // Subscribe before reading so no event falls between the read and the wait.
            let mut changes = journal.subscribe();
            loop {
                let batch = journal.since(after, BATCH);
                if batch.is_empty() {
                    tokio::select! {
                        r = changes.changed() => if r.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                for ev in batch {
                    after = ev.seq;
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Res<Empty> {
        self.inner.journal.ack(req.into_inner().seq)?;
        Ok(Response::new(Empty {}))
    }
}
