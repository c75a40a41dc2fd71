//! containerd `Version` service: the crate version and the git revision it was built from.
//!
//! This module must never report anything but build-time facts.

use berth_proto::containerd::version::version_server::Version;
use containerd_client::services::v1::VersionResponse;
use tonic::{Request, Response, Status};

/// berthd's version (the crate version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `git describe` at build time, or "unknown".
pub const REVISION: &str = env!("BERTH_GIT_REVISION");

/// The Version service.
#[derive(Debug, Default, Clone)]
pub struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: VERSION.to_string(),
            revision: REVISION.to_string(),
        }))
    }
}
