//! The containerd Tasks gRPC service: validate, convert proto ⇄ domain, call the [`Tasks`] handle, map errors.
//!
//! Thin by design: no task logic lives here. Never hold a lock or block across an `.await` in a handler.

use berth_proto::containerd::tasks::tasks_server;
use berth_proto::containerd_client::services::v1::*;
use tonic::{Request, Response, Status};

use super::bundle;
use super::container::{Op, Reply};
use super::error::TaskError;
use super::state::StdioPaths;
use super::Tasks;
use crate::namespace::{namespace_from, validate_id};

/// The service object registered with tonic.
pub struct TasksService {
    tasks: Tasks,
}

impl TasksService {
    /// A service over the handle.
    pub fn new(tasks: Tasks) -> Self {
        TasksService { tasks }
    }

    async fn simple(&self, ns: &str, id: &str, op: Op) -> Result<Response<()>, Status> {
        require_id(id)?;
        self.tasks.op(ns, id, op).await?;
        Ok(Response::new(()))
    }
}

fn require_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("container id is required"));
    }
    Ok(())
}

fn unexpected(r: Reply) -> Status {
    Status::internal(format!("unexpected reply from the container actor: {r:?}"))
}

/// Whether an id matches containerd-style filters (`id==X`, `id!=X`, `,` = AND, several = OR; empty = all).
pub(crate) fn filters_match(filters: &[String], id: &str) -> bool {
    let filters: Vec<&String> = filters.iter().filter(|f| !f.trim().is_empty()).collect();
    if filters.is_empty() {
        return true;
    }
    filters.iter().any(|f| {
        f.split(',').all(|cond| {
            let cond = cond.trim();
            if let Some(v) = cond.strip_prefix("id==") {
                v.trim_matches('"') == id
            } else if let Some(v) = cond.strip_prefix("id!=") {
                v.trim_matches('"') != id
            } else {
                // Fields Berth does not index for tasks match everything.
                true
            }
        })
    })
}

#[tonic::async_trait]
impl tasks_server::Tasks for TasksService {
    async fn create(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        require_id(&req.container_id)?;
        Ok(Response::new(self.tasks.create(&ns, req).await?))
    }

    async fn start(
        &self,
        request: Request<StartRequest>,
    ) -> Result<Response<StartResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        require_id(&req.container_id)?;
        match self
            .tasks
            .op(
                &ns,
                &req.container_id,
                Op::Start {
                    exec_id: req.exec_id,
                },
            )
            .await?
        {
            Reply::Pid(pid) => Ok(Response::new(StartResponse { pid })),
            r => Err(unexpected(r)),
        }
    }

    async fn delete(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        require_id(&req.container_id)?;
        match self.tasks.op(&ns, &req.container_id, Op::Delete).await? {
            Reply::Deleted(d) => Ok(Response::new(d)),
            r => Err(unexpected(r)),
        }
    }

    async fn delete_process(
        &self,
        request: Request<DeleteProcessRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        require_id(&req.container_id)?;
        match self
            .tasks
            .op(
                &ns,
                &req.container_id,
                Op::DeleteProcess {
                    exec_id: req.exec_id,
                },
            )
            .await?
        {
            Reply::Deleted(d) => Ok(Response::new(d)),
            r => Err(unexpected(r)),
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        require_id(&req.container_id)?;
        match self
            .tasks
            .op(
                &ns,
                &req.container_id,
                Op::Get {
                    exec_id: req.exec_id,
                },
            )
            .await?
        {
            Reply::Process(p) => Ok(Response::new(GetResponse { process: Some(p) })),
            r => Err(unexpected(r)),
        }
    }

    async fn list(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        let mut tasks = self.tasks.list(&ns).await?;
        if !req.filter.trim().is_empty() {
            let filters = vec![req.filter];
            tasks.retain(|p| filters_match(&filters, &p.id));
        }
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        let op = Op::Kill {
            exec_id: req.exec_id,
            signal: req.signal,
            all: req.all,
        };
        self.simple(&ns, &req.container_id, op).await
    }

    async fn exec(&self, request: Request<ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        require_id(&req.container_id)?;
        validate_id("exec", &req.exec_id)?;
        let process_json = bundle::validate_process(req.spec.as_ref())?;
        let op = Op::Exec {
            exec_id: req.exec_id,
            stdio: StdioPaths {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
            },
            process_json,
        };
        self.simple(&ns, &req.container_id, op).await
    }

    async fn resize_pty(&self, request: Request<ResizePtyRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        let op = Op::ResizePty {
            exec_id: req.exec_id,
            width: req.width,
            height: req.height,
        };
        self.simple(&ns, &req.container_id, op).await
    }

    async fn close_io(&self, request: Request<CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        let op = Op::CloseIo {
            exec_id: req.exec_id,
            stdin: req.stdin,
        };
        self.simple(&ns, &req.container_id, op).await
    }

    async fn pause(&self, request: Request<PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        self.simple(&ns, &req.container_id, Op::Pause).await
    }

    async fn resume(&self, request: Request<ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        self.simple(&ns, &req.container_id, Op::Resume).await
    }

    async fn list_pids(
        &self,
        request: Request<ListPidsRequest>,
    ) -> Result<Response<ListPidsResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        require_id(&req.container_id)?;
        match self.tasks.op(&ns, &req.container_id, Op::ListPids).await? {
            Reply::Pids(processes) => Ok(Response::new(ListPidsResponse { processes })),
            r => Err(unexpected(r)),
        }
    }

    async fn checkpoint(
        &self,
        _request: Request<CheckpointTaskRequest>,
    ) -> Result<Response<CheckpointTaskResponse>, Status> {
        Err(TaskError::Unimplemented("checkpoint is not supported by Berth".into()).into())
    }

    async fn update(&self, request: Request<UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        let resources = req
            .resources
            .ok_or_else(|| Status::invalid_argument("resources are required"))?;
        serde_json::from_slice::<serde_json::Value>(&resources.value)
            .map_err(|e| Status::invalid_argument(format!("resources are not valid JSON: {e}")))?;
        let op = Op::Update {
            resources_json: resources.value,
        };
        self.simple(&ns, &req.container_id, op).await
    }

    async fn metrics(
        &self,
        request: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        Ok(Response::new(self.tasks.metrics(&ns, &req.filters).await?))
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let req = request.into_inner();
        require_id(&req.container_id)?;
        let exit = self
            .tasks
            .wait(&ns, &req.container_id, &req.exec_id)
            .await?;
        Ok(Response::new(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::filters_match;

    #[test]
    fn id_filters() {
        assert!(filters_match(&[], "a"));
        assert!(filters_match(&["".into()], "a"));
        assert!(filters_match(&["id==a".into()], "a"));
        assert!(!filters_match(&["id==b".into()], "a"));
        assert!(filters_match(&["id==b".into(), "id==a".into()], "a"));
        assert!(!filters_match(&["id==a,id!=a".into()], "a"));
    }
}
