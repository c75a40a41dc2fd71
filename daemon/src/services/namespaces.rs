//! containerd `Namespaces` service: Get / List / Create / Update (label masks) / Delete (refused while the
//! namespace holds objects). A namespace that does not exist is absent here until the first write in it.
//!
//! Publishes `/namespaces/create|update` (envelope namespace: the caller's header, else the namespace itself)
//! and `/namespaces/delete` (envelope namespace: the deleted one). This module must never create a namespace
//! on a read; an Update is a write and, as in containerd, creates a missing namespace (`ctr ns label`).

use berth_proto::containerd::namespaces::namespaces_server::Namespaces;
use berth_proto::to_any;
use containerd_client::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use containerd_client::services::v1::{
    CreateNamespaceRequest, CreateNamespaceResponse, DeleteNamespaceRequest, GetNamespaceRequest,
    GetNamespaceResponse, ListNamespacesRequest, ListNamespacesResponse, Namespace,
    UpdateNamespaceRequest, UpdateNamespaceResponse,
};
use tonic::{Request, Response, Status};

use super::mask_paths;
use crate::context::Context;
use crate::namespace::{namespace_opt, validate_id, validate_labels};
use crate::store::blocking;

/// The Namespaces service.
#[derive(Debug, Clone)]
pub struct NamespacesService {
    ctx: Context,
}

impl NamespacesService {
    /// Over the shared context.
    pub fn new(ctx: Context) -> Self {
        NamespacesService { ctx }
    }

    async fn publish(&self, ns: &str, topic: &str, ev: prost_types::Any) {
        if let Err(e) = self.ctx.events.publish(ns, topic, ev).await {
            tracing::error!(namespace = ns, topic, error = %e, "cannot publish event");
        }
    }
}

#[tonic::async_trait]
impl Namespaces for NamespacesService {
    #[tracing::instrument(skip_all, fields(namespace = %req.get_ref().name))]
    async fn get(
        &self,
        req: Request<GetNamespaceRequest>,
    ) -> Result<Response<GetNamespaceResponse>, Status> {
        let name = req.into_inner().name;
        validate_id("namespace", &name)?;
        let store = self.ctx.store.clone();
        let n = name.clone();
        let rec = blocking(move || store.get_namespace(&n))
            .await?
            .ok_or_else(|| Status::not_found(format!("namespace {name}: not found")))?;
        Ok(Response::new(GetNamespaceResponse {
            namespace: Some(Namespace {
                name,
                labels: rec.labels,
            }),
        }))
    }

    async fn list(
        &self,
        _: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let store = self.ctx.store.clone();
        let namespaces = blocking(move || {
            let mut out = Vec::new();
            for name in store.namespaces()? {
                let labels = store
                    .get_namespace(&name)?
                    .map(|r| r.labels)
                    .unwrap_or_default();
                out.push(Namespace { name, labels });
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        req: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let caller = namespace_opt(req.metadata()).ok().flatten();
        let n = req
            .into_inner()
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace is required"))?;
        validate_id("namespace", &n.name)?;
        validate_labels(&n.labels)?;
        let rec = self.ctx.store.create_namespace(&n.name, n.labels).await?;
        tracing::info!(namespace = %n.name, "namespace created");
        let ev = NamespaceCreate {
            name: n.name.clone(),
            labels: rec.labels.clone(),
        };
        self.publish(
            caller.as_deref().unwrap_or(&n.name),
            "/namespaces/create",
            to_any(&ev),
        )
        .await;
        Ok(Response::new(CreateNamespaceResponse {
            namespace: Some(Namespace {
                name: n.name,
                labels: rec.labels,
            }),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let caller = namespace_opt(req.metadata()).ok().flatten();
        let r = req.into_inner();
        let n = r
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace is required"))?;
        validate_id("namespace", &n.name)?;
        validate_labels(&n.labels)?;
        let mask = mask_paths(r.update_mask);
        let rec = self
            .ctx
            .store
            .update_namespace(&n.name, n.labels, mask)
            .await?;
        let ev = NamespaceUpdate {
            name: n.name.clone(),
            labels: rec.labels.clone(),
        };
        self.publish(
            caller.as_deref().unwrap_or(&n.name),
            "/namespaces/update",
            to_any(&ev),
        )
        .await;
        Ok(Response::new(UpdateNamespaceResponse {
            namespace: Some(Namespace {
                name: n.name,
                labels: rec.labels,
            }),
        }))
    }

    async fn delete(&self, req: Request<DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        let name = req.into_inner().name;
        validate_id("namespace", &name)?;
        self.ctx.store.delete_namespace(&name).await?;
        tracing::info!(namespace = %name, "namespace deleted");
        self.publish(
            &name,
            "/namespaces/delete",
            to_any(&NamespaceDelete { name: name.clone() }),
        )
        .await;
        Ok(Response::new(()))
    }
}
