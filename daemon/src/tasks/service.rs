//! The containerd Tasks gRPC service: each handler converts the request, calls the [`Tasks`] handle and maps
//! the error. No task logic lives here; never hold a lock or block across an `.await` in a handler.

use berth_proto::containerd::tasks::tasks_server;
use berth_proto::containerd_client::services::v1::*;
use tonic::{Request, Response, Status};

use super::bundle;
use super::container::messages as m;
use super::error::TaskError;
use super::state::StdioPaths;
use super::Tasks;
use crate::namespace::{namespace_from, validate_id};
use crate::services::parse_filters;

/// The service object registered with tonic.
pub struct TasksService {
    tasks: Tasks,
}

impl TasksService {
    /// A service over the handle.
    pub fn new(tasks: Tasks) -> Self {
        TasksService { tasks }
    }
}

/// The namespace and the (required) container id of a request.
fn target<T>(request: Request<T>, id: impl Fn(&T) -> &str) -> Result<(String, T), Status> {
    let ns = namespace_from(request.metadata())?;
    let req = request.into_inner();
    if id(&req).is_empty() {
        return Err(Status::invalid_argument("container id is required"));
    }
    Ok((ns, req))
}

fn ok<T>(r: Result<T, TaskError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl tasks_server::Tasks for TasksService {
    async fn create(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let (ns, req) = target(request, |r| &r.container_id)?;
        ok(self.tasks.create(&ns, req).await)
    }

    async fn start(
        &self,
        request: Request<StartRequest>,
    ) -> Result<Response<StartResponse>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        let pid = self.tasks.start(&ns, &r.container_id, r.exec_id).await?;
        Ok(Response::new(StartResponse { pid }))
    }

    async fn delete(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        ok(self.tasks.delete(&ns, &r.container_id).await)
    }

    async fn delete_process(
        &self,
        request: Request<DeleteProcessRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        ok(self
            .tasks
            .delete_process(&ns, &r.container_id, r.exec_id)
            .await)
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        let process = self.tasks.get(&ns, &r.container_id, r.exec_id).await?;
        Ok(Response::new(GetResponse {
            process: Some(process),
        }))
    }

    async fn list(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let filter = parse_filters(&[request.into_inner().filter])?;
        let tasks = self.tasks.list(&ns, &filter).await?;
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        let msg = m::Kill {
            exec_id: r.exec_id,
            signal: r.signal,
            all: r.all,
        };
        ok(self.tasks.kill(&ns, &r.container_id, msg).await)
    }

    async fn exec(&self, request: Request<ExecProcessRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        validate_id("exec", &r.exec_id)?;
        let process_json = bundle::validate_process(r.spec.as_ref())?;
        let stdio = StdioPaths {
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            terminal: r.terminal,
        };
        ok(self
            .tasks
            .exec(&ns, &r.container_id, r.exec_id, stdio, process_json)
            .await)
    }

    async fn resize_pty(&self, request: Request<ResizePtyRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        let msg = m::ResizePty {
            exec_id: r.exec_id,
            width: r.width,
            height: r.height,
        };
        ok(self.tasks.resize_pty(&ns, &r.container_id, msg).await)
    }

    async fn close_io(&self, request: Request<CloseIoRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        let msg = m::CloseIo {
            exec_id: r.exec_id,
            stdin: r.stdin,
        };
        ok(self.tasks.close_io(&ns, &r.container_id, msg).await)
    }

    async fn pause(&self, request: Request<PauseTaskRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        ok(self.tasks.pause(&ns, &r.container_id).await)
    }

    async fn resume(&self, request: Request<ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        ok(self.tasks.resume(&ns, &r.container_id).await)
    }

    async fn list_pids(
        &self,
        request: Request<ListPidsRequest>,
    ) -> Result<Response<ListPidsResponse>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        let processes = self.tasks.list_pids(&ns, &r.container_id).await?;
        Ok(Response::new(ListPidsResponse { processes }))
    }

    async fn checkpoint(
        &self,
        _request: Request<CheckpointTaskRequest>,
    ) -> Result<Response<CheckpointTaskResponse>, Status> {
        Err(TaskError::Unimplemented("checkpoint is not supported by Berth".into()).into())
    }

    async fn update(&self, request: Request<UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        let resources = r
            .resources
            .ok_or_else(|| Status::invalid_argument("resources are required"))?;
        serde_json::from_slice::<serde_json::Value>(&resources.value)
            .map_err(|e| Status::invalid_argument(format!("resources are not valid JSON: {e}")))?;
        ok(self
            .tasks
            .update(&ns, &r.container_id, resources.value)
            .await)
    }

    async fn metrics(
        &self,
        request: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        let ns = namespace_from(request.metadata())?;
        let filter = parse_filters(&request.into_inner().filters)?;
        ok(self.tasks.metrics(&ns, &filter).await)
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let (ns, r) = target(request, |r| &r.container_id)?;
        let exit = self.tasks.wait(&ns, &r.container_id, &r.exec_id).await?;
        Ok(Response::new(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()),
        }))
    }
}
