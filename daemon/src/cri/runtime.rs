//! The gRPC RuntimeService: validate, run the verb (mutating verbs of a pod as an operation of its PodActor),
//! answer. Reads (status, lists) and ExecSync run directly: they must not wait behind a long stop.
//!
//! This module must never hold logic of its own beyond validation and routing.

use std::collections::HashMap;

use berth_proto::cri;
use berth_proto::cri::runtime_service_server::RuntimeService as RuntimeApi;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::actor::messages as m;
use super::actor::PodActor;
use super::{
    containers, events, exec, meta, pod_stats, pods, stats, stream, Cri, API_VERSION, NAMESPACE,
};

/// The RuntimeService.
#[derive(Clone)]
pub struct RuntimeService {
    cri: Cri,
}

impl RuntimeService {
    pub fn new(cri: Cri) -> RuntimeService {
        RuntimeService { cri }
    }

    /// The pod a container belongs to (its verbs run in that pod's actor); None when it does not exist.
    async fn pod_of(&self, container: &str) -> Result<Option<String>, Status> {
        Ok(meta::get(&self.cri.ctx().store, container)
            .await?
            .as_ref()
            .and_then(meta::container_of)
            .map(|c| c.sandbox_id))
    }

    /// Send a verb to `pod`'s actor (it runs after the pod's earlier verbs).
    async fn in_pod<M, T>(&self, pod: &str, msg: M) -> Result<T, Status>
    where
        M: actix::Message<Result = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
        PodActor: actix::Handler<M>,
    {
        self.cri.inner.pods.call(&self.cri, pod, msg).await
    }
}

/// The span of a verb on one pod or container (for a pod, its pause container's id).
fn span(verb: &'static str, id: &str) -> tracing::Span {
    tracing::info_span!("cri", verb, namespace = NAMESPACE, container_id = %id)
}

fn required<'a>(what: &str, v: &'a str) -> Result<&'a str, Status> {
    if v.is_empty() {
        Err(Status::invalid_argument(format!(
            "{what} must not be empty"
        )))
    } else {
        Ok(v)
    }
}

#[tonic::async_trait]
impl RuntimeApi for RuntimeService {
    type GetContainerEventsStream = events::EventStream;

    async fn get_container_events(
        &self,
        req: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let after = req.into_inner().berth_after_seq;
        Ok(Response::new(events::subscribe(&self.cri, after).await?))
    }

    async fn version(
        &self,
        _: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".to_string(),
            runtime_name: "berth".to_string(),
            runtime_version: crate::services::version::VERSION.to_string(),
            runtime_api_version: API_VERSION.to_string(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let r = req.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let name = config
            .metadata
            .as_ref()
            .map(meta::pod_name)
            .unwrap_or_default();
        // Serialised per pod name: two runs of one pod do not race past the uniqueness check.
        let key = format!("name:{name}");
        let id = self
            .in_pod(
                &key,
                m::RunPod {
                    config,
                    runtime_handler: r.runtime_handler,
                },
            )
            .await;
        self.cri.inner.pods.forget(&key).await;
        let id = id?;
        tracing::info!(namespace = NAMESPACE, container_id = %id, pod = %name, "pod sandbox ready");
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        required("pod_sandbox_id", &id)?;
        self.in_pod(&id, m::StopPod { id: id.clone() }).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        required("pod_sandbox_id", &id)?;
        self.in_pod(&id, m::RemovePod { id: id.clone() }).await?;
        self.cri.inner.pods.forget(&id).await;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let r = req.into_inner();
        required("pod_sandbox_id", &r.pod_sandbox_id)?;
        Ok(Response::new(
            pods::status(&self.cri, &r.pod_sandbox_id, r.verbose).await?,
        ))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let items = pods::list(&self.cri, req.into_inner().filter).await?;
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let r = req.into_inner();
        required("pod_sandbox_id", &r.pod_sandbox_id)?;
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let id = self
            .in_pod(
                &r.pod_sandbox_id,
                m::CreateContainer {
                    pod: r.pod_sandbox_id.clone(),
                    config,
                    sandbox_config: r.sandbox_config,
                },
            )
            .await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        required("container_id", &id)?;
        let pod = self
            .pod_of(&id)
            .await?
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        self.in_pod(&pod, m::StartContainer { id }).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let r = req.into_inner();
        required("container_id", &r.container_id)?;
        // Not found is success.
        let Some(pod) = self.pod_of(&r.container_id).await? else {
            return Ok(Response::new(cri::StopContainerResponse {}));
        };
        let msg = m::StopContainer {
            id: r.container_id,
            timeout: r.timeout,
        };
        self.in_pod(&pod, msg).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        required("container_id", &id)?;
        let Some(pod) = self.pod_of(&id).await? else {
            return Ok(Response::new(cri::RemoveContainerResponse {}));
        };
        self.in_pod(&pod, m::RemoveContainer { id }).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let containers = containers::list(&self.cri, req.into_inner().filter).await?;
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let r = req.into_inner();
        required("container_id", &r.container_id)?;
        Ok(Response::new(
            containers::status(&self.cri, &r.container_id, r.verbose).await?,
        ))
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let r = req.into_inner();
        required("container_id", &r.container_id)?;
        let sp = span("exec_sync", &r.container_id);
        Ok(Response::new(
            exec::exec_sync(&self.cri, r).instrument(sp).await?,
        ))
    }

    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let r = req.into_inner();
        required("container_id", &r.container_id)?;
        let sp = span("exec", &r.container_id);
        Ok(Response::new(
            stream::exec(&self.cri, r).instrument(sp).await?,
        ))
    }

    async fn attach(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let r = req.into_inner();
        required("container_id", &r.container_id)?;
        let sp = span("attach", &r.container_id);
        Ok(Response::new(
            stream::attach(&self.cri, r).instrument(sp).await?,
        ))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let r = req.into_inner();
        required("pod_sandbox_id", &r.pod_sandbox_id)?;
        let sp = span("port_forward", &r.pod_sandbox_id);
        Ok(Response::new(
            stream::port_forward(&self.cri, r).instrument(sp).await?,
        ))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = req.into_inner().container_id;
        required("container_id", &id)?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats::container(&self.cri, &id).await?),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        Ok(Response::new(cri::ListContainerStatsResponse {
            stats: stats::list(&self.cri, req.into_inner().filter).await?,
        }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let r = req.into_inner();
        required("container_id", &r.container_id)?;
        let pod = self.pod_of(&r.container_id).await?.ok_or_else(|| {
            Status::not_found(format!("container {:?} not found", r.container_id))
        })?;
        let msg = m::UpdateResources {
            id: r.container_id,
            linux: r.linux,
        };
        self.in_pod(&pod, msg).await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = req.into_inner().container_id;
        required("container_id", &id)?;
        containers::reopen_log(&self.cri, &id)
            .instrument(span("reopen_container_log", &id))
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        required("pod_sandbox_id", &id)?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(pod_stats::pod(&self.cri, &id).await?),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        Ok(Response::new(cri::ListPodSandboxStatsResponse {
            stats: pod_stats::list(&self.cri, req.into_inner().filter).await?,
        }))
    }

    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // The pod CIDR comes from the pod network's own config; nothing to change here.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        _: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let cond = |t: &str| cri::RuntimeCondition {
            r#type: t.to_string(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![cond("RuntimeReady"), cond("NetworkReady")],
            }),
            info: HashMap::new(),
            // CreateContainer honours SupplementalGroupsPolicy; ContainerStatus reports `user`.
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(Status::unimplemented(
            "CheckpointContainer is not supported by berthd",
        ))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }
}
