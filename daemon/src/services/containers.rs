//! containerd `Containers` service: Get, List / ListStream with filters (`id`, `image`, `labels.<k>`,
//! `runtime.name`, `snapshotter`, `snapshot_key`), Create, Update with field masks, Delete (refused while the
//! container has a task). Timestamps are set by the server. Publishes `/containers/create|update|delete`.
//!
//! This module must never delete a container that has a task, and never store one without runtime name or spec.

use std::pin::Pin;

use berth_proto::containerd::containers::containers_server::Containers;
use berth_proto::to_any;
use containerd_client::events::{
    container_create, ContainerCreate, ContainerDelete, ContainerUpdate,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateContainerResponse, DeleteContainerRequest,
    GetContainerRequest, GetContainerResponse, ListContainerMessage, ListContainersRequest,
    ListContainersResponse, UpdateContainerRequest, UpdateContainerResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{mask_paths, parse_filters};
use crate::context::Context;
use crate::namespace::{namespace_from, validate_id, validate_labels};
use crate::store::blocking;
use crate::tasks::Tasks;

// Filter fields of a container (containerd's container adaptor, plus the snapshot fields).
crate::fields!(Container {
    id,
    image,
    labels,
    runtime,
    snapshotter,
    snapshot_key
});
crate::fields!(containerd_client::services::v1::container::Runtime { name });

/// The Containers service.
#[derive(Clone)]
pub struct ContainersService {
    ctx: Context,
    tasks: Tasks,
}

impl ContainersService {
    /// Over the shared context; `tasks` answers whether a container has a task.
    pub fn new(ctx: Context, tasks: Tasks) -> Self {
        ContainersService { ctx, tasks }
    }

    async fn list_filtered(
        &self,
        ns: String,
        filters: &[String],
    ) -> Result<Vec<Container>, Status> {
        let filter = parse_filters(filters)?;
        let store = self.ctx.store.clone();
        let all = blocking(move || store.list_containers(&ns)).await?;
        Ok(all.into_iter().filter(|c| filter.matches(c)).collect())
    }

    async fn publish(&self, ns: &str, topic: &str, ev: prost_types::Any) {
        if let Err(e) = self.ctx.events.publish(ns, topic, ev).await {
            tracing::error!(namespace = ns, topic, error = %e, "cannot publish event");
        }
    }
}

fn validate_container(c: &Container) -> Result<(), Status> {
    validate_id("container", &c.id)?;
    validate_labels(&c.labels)?;
    if c.runtime.as_ref().is_none_or(|r| r.name.is_empty()) {
        return Err(Status::invalid_argument(format!(
            "container {:?}: runtime name must not be empty",
            c.id
        )));
    }
    if c.spec.is_none() {
        return Err(Status::invalid_argument(format!(
            "container {:?}: spec must not be empty",
            c.id
        )));
    }
    Ok(())
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListContainerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(
        &self,
        req: Request<GetContainerRequest>,
    ) -> Result<Response<GetContainerResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let id = req.into_inner().id;
        validate_id("container", &id)?;
        let store = self.ctx.store.clone();
        let i = id.clone();
        let c = blocking(move || store.get_container(&ns, &i))
            .await?
            .ok_or_else(|| Status::not_found(format!("container {id:?}: not found")))?;
        Ok(Response::new(GetContainerResponse { container: Some(c) }))
    }

    async fn list(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let containers = self.list_filtered(ns, &req.get_ref().filters).await?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    type ListStreamStream = ListStream;

    async fn list_stream(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListStream>, Status> {
        let ns = namespace_from(req.metadata())?;
        let containers = self.list_filtered(ns, &req.get_ref().filters).await?;
        let items = containers
            .into_iter()
            .map(|c| Ok(ListContainerMessage { container: Some(c) }));
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    #[tracing::instrument(skip_all, fields(namespace, container_id))]
    async fn create(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let c = req
            .into_inner()
            .container
            .ok_or_else(|| Status::invalid_argument("container is required"))?;
        tracing::Span::current().record("namespace", ns.as_str());
        tracing::Span::current().record("container_id", c.id.as_str());
        validate_container(&c)?;
        let c = self.ctx.store.create_container(&ns, c).await?;
        tracing::info!("container created");
        let ev = ContainerCreate {
            id: c.id.clone(),
            image: c.image.clone(),
            runtime: c.runtime.as_ref().map(|r| container_create::Runtime {
                name: r.name.clone(),
                options: r.options.clone(),
            }),
        };
        self.publish(&ns, "/containers/create", to_any(&ev)).await;
        Ok(Response::new(CreateContainerResponse {
            container: Some(c),
        }))
    }

    #[tracing::instrument(skip_all, fields(namespace, container_id))]
    async fn update(
        &self,
        req: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let c = r
            .container
            .ok_or_else(|| Status::invalid_argument("container is required"))?;
        tracing::Span::current().record("namespace", ns.as_str());
        tracing::Span::current().record("container_id", c.id.as_str());
        validate_id("container", &c.id)?;
        validate_labels(&c.labels)?;
        let c = self
            .ctx
            .store
            .update_container(&ns, c, mask_paths(r.update_mask))
            .await?;
        let ev = ContainerUpdate {
            id: c.id.clone(),
            image: c.image.clone(),
            labels: c.labels.clone(),
            snapshot_key: c.snapshot_key.clone(),
        };
        self.publish(&ns, "/containers/update", to_any(&ev)).await;
        Ok(Response::new(UpdateContainerResponse {
            container: Some(c),
        }))
    }

    #[tracing::instrument(skip_all, fields(namespace, container_id = %req.get_ref().id))]
    async fn delete(&self, req: Request<DeleteContainerRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        tracing::Span::current().record("namespace", ns.as_str());
        let id = req.into_inner().id;
        validate_id("container", &id)?;
        // Held until the record is gone: Tasks.Create of this id waits its turn instead of interleaving.
        let _hold = self.tasks.hold_for_container_delete(&ns, &id).await?;
        self.ctx.store.delete_container(&ns, &id).await?;
        tracing::info!("container deleted");
        self.publish(&ns, "/containers/delete", to_any(&ContainerDelete { id }))
            .await;
        Ok(Response::new(()))
    }
}
