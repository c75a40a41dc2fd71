//! Content, Images, Snapshots and Diff: registered so clients get UNIMPLEMENTED (not an unknown service) until
//! their own work lands. `Snapshots.List` answers an empty stream for any snapshotter so `ctr snapshots ls` works.
//!
//! This module must never pretend to store anything.

use std::pin::Pin;

use berth_proto::containerd::content::content_server::Content;
use berth_proto::containerd::diff::diff_server::Diff;
use berth_proto::containerd::images::images_server::Images;
use berth_proto::containerd::snapshots::snapshots_server::Snapshots;
use containerd_client::services::v1;
use containerd_client::services::v1::snapshots as snap;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

/// The services that are not implemented yet.
#[derive(Debug, Default, Clone)]
pub struct Unimplemented;

fn unimplemented<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not implemented in berthd yet"
    )))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Content for Unimplemented {
    async fn info(
        &self,
        _: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::InfoResponse>, Status> {
        unimplemented("Content.Info")
    }
    async fn update(
        &self,
        _: Request<v1::UpdateRequest>,
    ) -> Result<Response<v1::UpdateResponse>, Status> {
        unimplemented("Content.Update")
    }
    type ListStream = BoxStream<v1::ListContentResponse>;
    async fn list(
        &self,
        _: Request<v1::ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        unimplemented("Content.List")
    }
    async fn delete(&self, _: Request<v1::DeleteContentRequest>) -> Result<Response<()>, Status> {
        unimplemented("Content.Delete")
    }
    type ReadStream = BoxStream<v1::ReadContentResponse>;
    async fn read(
        &self,
        _: Request<v1::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        unimplemented("Content.Read")
    }
    async fn status(
        &self,
        _: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        unimplemented("Content.Status")
    }
    async fn list_statuses(
        &self,
        _: Request<v1::ListStatusesRequest>,
    ) -> Result<Response<v1::ListStatusesResponse>, Status> {
        unimplemented("Content.ListStatuses")
    }
    type WriteStream = BoxStream<v1::WriteContentResponse>;
    async fn write(
        &self,
        _: Request<Streaming<v1::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        unimplemented("Content.Write")
    }
    async fn abort(&self, _: Request<v1::AbortRequest>) -> Result<Response<()>, Status> {
        unimplemented("Content.Abort")
    }
}

#[tonic::async_trait]
impl Images for Unimplemented {
    async fn get(
        &self,
        _: Request<v1::GetImageRequest>,
    ) -> Result<Response<v1::GetImageResponse>, Status> {
        unimplemented("Images.Get")
    }
    async fn list(
        &self,
        _: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        unimplemented("Images.List")
    }
    async fn create(
        &self,
        _: Request<v1::CreateImageRequest>,
    ) -> Result<Response<v1::CreateImageResponse>, Status> {
        unimplemented("Images.Create")
    }
    async fn update(
        &self,
        _: Request<v1::UpdateImageRequest>,
    ) -> Result<Response<v1::UpdateImageResponse>, Status> {
        unimplemented("Images.Update")
    }
    async fn delete(&self, _: Request<v1::DeleteImageRequest>) -> Result<Response<()>, Status> {
        unimplemented("Images.Delete")
    }
}

#[tonic::async_trait]
impl Snapshots for Unimplemented {
    async fn prepare(
        &self,
        _: Request<snap::PrepareSnapshotRequest>,
    ) -> Result<Response<snap::PrepareSnapshotResponse>, Status> {
        unimplemented("Snapshots.Prepare")
    }
    async fn view(
        &self,
        _: Request<snap::ViewSnapshotRequest>,
    ) -> Result<Response<snap::ViewSnapshotResponse>, Status> {
        unimplemented("Snapshots.View")
    }
    async fn mounts(
        &self,
        _: Request<snap::MountsRequest>,
    ) -> Result<Response<snap::MountsResponse>, Status> {
        unimplemented("Snapshots.Mounts")
    }
    async fn commit(
        &self,
        _: Request<snap::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        unimplemented("Snapshots.Commit")
    }
    async fn remove(
        &self,
        _: Request<snap::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        unimplemented("Snapshots.Remove")
    }
    async fn stat(
        &self,
        _: Request<snap::StatSnapshotRequest>,
    ) -> Result<Response<snap::StatSnapshotResponse>, Status> {
        unimplemented("Snapshots.Stat")
    }
    async fn update(
        &self,
        _: Request<snap::UpdateSnapshotRequest>,
    ) -> Result<Response<snap::UpdateSnapshotResponse>, Status> {
        unimplemented("Snapshots.Update")
    }
    type ListStream = BoxStream<snap::ListSnapshotsResponse>;
    async fn list(
        &self,
        _: Request<snap::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        // No snapshots exist yet: an empty list keeps `ctr snapshots ls` working.
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
    async fn usage(
        &self,
        _: Request<snap::UsageRequest>,
    ) -> Result<Response<snap::UsageResponse>, Status> {
        unimplemented("Snapshots.Usage")
    }
    async fn cleanup(&self, _: Request<snap::CleanupRequest>) -> Result<Response<()>, Status> {
        unimplemented("Snapshots.Cleanup")
    }
}

#[tonic::async_trait]
impl Diff for Unimplemented {
    async fn apply(
        &self,
        _: Request<v1::ApplyRequest>,
    ) -> Result<Response<v1::ApplyResponse>, Status> {
        unimplemented("Diff.Apply")
    }
    async fn diff(
        &self,
        _: Request<v1::DiffRequest>,
    ) -> Result<Response<v1::DiffResponse>, Status> {
        unimplemented("Diff.Diff")
    }
}
