//! containerd `Leases` service: Create (an id is generated when the request's is empty), Delete, List with filters
//! (`id`, `labels.<k>`), and the resources a lease holds. Garbage collection comes with the images work.
//!
//! This module must never identifier-check lease ids (containerd's are free-form) and publishes no events
//! (containerd publishes none for leases).

use berth_proto::containerd::leases::leases_server::Leases;
use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest, CreateResponse, DeleteRequest, DeleteResourceRequest, Lease,
    ListRequest, ListResourcesRequest, ListResourcesResponse, ListResponse, Resource,
};
use tonic::{Request, Response, Status};

use super::parse_filters;
use crate::context::Context;
use crate::namespace::{namespace_from, validate_labels};
use crate::store::leases::{generate_lease_id, LeaseResource};
use crate::store::{blocking, LeaseRecord};

/// Longest lease id accepted.
const MAX_LEASE_ID: usize = 256;

crate::fields!(LeaseRecord { id, labels });

fn to_lease(r: LeaseRecord) -> Lease {
    Lease {
        created_at: Some(r.created_at()),
        id: r.id,
        labels: r.labels,
    }
}

fn check_lease_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("lease id must not be empty"));
    }
    if id.len() > MAX_LEASE_ID {
        return Err(Status::invalid_argument(format!(
            "lease id longer than {MAX_LEASE_ID} bytes"
        )));
    }
    Ok(())
}

fn resource(r: Option<Resource>) -> Result<LeaseResource, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("resource is required"))?;
    if r.id.is_empty() || r.r#type.is_empty() {
        return Err(Status::invalid_argument(
            "resource id and type must not be empty",
        ));
    }
    Ok(LeaseResource {
        id: r.id,
        r#type: r.r#type,
    })
}

/// The Leases service.
#[derive(Debug, Clone)]
pub struct LeasesService {
    ctx: Context,
}

impl LeasesService {
    /// Over the shared context.
    pub fn new(ctx: Context) -> Self {
        LeasesService { ctx }
    }
}

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(
        &self,
        req: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        tracing::Span::current().record("namespace", ns.as_str());
        let r = req.into_inner();
        let id = if r.id.is_empty() {
            generate_lease_id()
        } else {
            r.id
        };
        check_lease_id(&id)?;
        validate_labels(&r.labels)?;
        let rec = self.ctx.store.create_lease(&ns, &id, r.labels).await?;
        tracing::debug!(namespace = %ns, lease = %id, "lease created");
        Ok(Response::new(CreateResponse {
            lease: Some(to_lease(rec)),
        }))
    }

    #[tracing::instrument(skip_all, fields(namespace))]
    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        tracing::Span::current().record("namespace", ns.as_str());
        let r = req.into_inner();
        check_lease_id(&r.id)?;
        self.ctx.store.delete_lease(&ns, &r.id).await?;
        // What only the lease held is garbage now.
        if r.sync {
            self.ctx.images.gc_now().await?;
        } else {
            self.ctx.images.schedule_gc();
        }
        Ok(Response::new(()))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        tracing::Span::current().record("namespace", ns.as_str());
        let filter = parse_filters(&req.get_ref().filters)?;
        let store = self.ctx.store.clone();
        let all = blocking(move || store.list_leases(&ns)).await?;
        let leases = all
            .into_iter()
            .filter(|l| filter.matches(l))
            .map(to_lease)
            .collect();
        Ok(Response::new(ListResponse { leases }))
    }

    #[tracing::instrument(skip_all, fields(namespace))]
    async fn add_resource(&self, req: Request<AddResourceRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        tracing::Span::current().record("namespace", ns.as_str());
        let r = req.into_inner();
        check_lease_id(&r.id)?;
        let res = resource(r.resource)?;
        self.ctx.store.add_lease_resource(&ns, &r.id, res).await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        req: Request<DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        tracing::Span::current().record("namespace", ns.as_str());
        let r = req.into_inner();
        check_lease_id(&r.id)?;
        let res = resource(r.resource)?;
        self.ctx
            .store
            .delete_lease_resource(&ns, &r.id, res)
            .await?;
        self.ctx.images.schedule_gc();
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        tracing::Span::current().record("namespace", ns.as_str());
        let id = req.into_inner().id;
        check_lease_id(&id)?;
        let store = self.ctx.store.clone();
        let i = id.clone();
        let rec = blocking(move || store.get_lease(&ns, &i))
            .await?
            .ok_or_else(|| Status::not_found(format!("lease {id:?}: not found")))?;
        let resources = rec
            .resources
            .into_iter()
            .map(|r| Resource {
                id: r.id,
                r#type: r.r#type,
            })
            .collect();
        Ok(Response::new(ListResourcesResponse { resources }))
    }
}
