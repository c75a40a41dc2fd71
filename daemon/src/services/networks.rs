//! `berth.v1.Networks`: CNI CHECK of a container's network attachments on demand (the attachments themselves
//! are made and removed by the task's create and delete; see `crate::network`).

use berth_proto::berth::networks_server::Networks as NetworksApi;
use berth_proto::berth::{NetworkCheckRequest, NetworkCheckResponse};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::context::Context;
use crate::namespace::{namespace_from, validate_id};
use crate::network::{Networks, Owner};
use crate::store::blocking;

/// The Networks service.
#[derive(Clone)]
pub struct NetworksService {
    ctx: Context,
    networks: Networks,
}

impl NetworksService {
    /// A service over the network layer's handle.
    pub fn new(ctx: Context, networks: Networks) -> Self {
        NetworksService { ctx, networks }
    }
}

#[tonic::async_trait]
impl NetworksApi for NetworksService {
    async fn check(
        &self,
        req: Request<NetworkCheckRequest>,
    ) -> Result<Response<NetworkCheckResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let id = req.into_inner().container_id;
        validate_id("container", &id)?;
        let span = tracing::info_span!("network_check", namespace = %ns, container_id = %id);
        let store = self.ctx.store.clone();
        let (n, i) = (ns.clone(), id.clone());
        let networks = async {
            if blocking(move || store.get_container(&n, &i))
                .await?
                .is_none()
            {
                return Err(Status::not_found(format!("container {id:?}: not found")));
            }
            self.networks
                .check(&Owner::task(&ns, &id))
                .await
                .map_err(|e| e.status())
        }
        .instrument(span)
        .await?;
        Ok(Response::new(NetworkCheckResponse { networks }))
    }
}
