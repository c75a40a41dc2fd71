//! containerd `Images` service: Get, List (filters `name`, `target.digest`, `target.mediatype`, `labels.*`),
//! Create, Update (field masks), Delete (with `sync`: garbage collected before the reply). Publishes
//! `/images/create|update|delete`. An image is only a name for a target descriptor: its content may arrive
//! before or after it.
//!
//! This module must never delete content itself; deleting an image only makes it collectable.

use berth_proto::containerd::images::images_server::Images as ImagesApi;
use berth_proto::to_any;
use containerd_client::services::v1::{
    CreateImageRequest, CreateImageResponse, DeleteImageRequest, GetImageRequest, GetImageResponse,
    Image, ImageCreate, ImageDelete, ImageUpdate, ListImagesRequest, ListImagesResponse,
    UpdateImageRequest, UpdateImageResponse,
};
use containerd_client::types::Descriptor;
use tonic::{Request, Response, Status};

use super::content::parse_digest;
use super::{mask_paths, parse_filters};
use crate::context::Context;
use crate::namespace::{namespace_from, validate_labels};
use crate::store::blocking;

crate::fields!(Image {
    name,
    labels,
    target
});
crate::fields!(Descriptor {
    digest,
    media_type,
    size
} aliases {
    "mediatype" => media_type
});

/// The Images service.
#[derive(Debug, Clone)]
pub struct ImagesService {
    ctx: Context,
}

impl ImagesService {
    /// Over the shared context.
    pub fn new(ctx: Context) -> Self {
        ImagesService { ctx }
    }

    async fn publish(&self, ns: &str, topic: &str, ev: prost_types::Any) {
        if let Err(e) = self.ctx.events.publish(ns, topic, ev).await {
            tracing::error!(namespace = ns, topic, error = %e, "cannot publish event");
        }
    }
}

fn validate_image(img: &Image) -> Result<(), Status> {
    if img.name.is_empty() {
        return Err(Status::invalid_argument("image name must not be empty"));
    }
    validate_labels(&img.labels)?;
    let t = img.target.as_ref().ok_or_else(|| {
        Status::invalid_argument(format!("image {:?}: target is required", img.name))
    })?;
    parse_digest(&t.digest).map_err(|e| {
        Status::invalid_argument(format!("image {:?}: target: {}", img.name, e.message()))
    })?;
    if t.size <= 0 {
        return Err(Status::invalid_argument(format!(
            "image {:?}: target size must be greater than zero",
            img.name
        )));
    }
    if t.media_type.is_empty() {
        return Err(Status::invalid_argument(format!(
            "image {:?}: target media type must not be empty",
            img.name
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl ImagesApi for ImagesService {
    async fn get(
        &self,
        req: Request<GetImageRequest>,
    ) -> Result<Response<GetImageResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let name = req.into_inner().name;
        let store = self.ctx.store.clone();
        let n = name.clone();
        let image = blocking(move || store.get_image(&ns, &n))
            .await?
            .ok_or_else(|| Status::not_found(format!("image {name:?}: not found")))?;
        Ok(Response::new(GetImageResponse { image: Some(image) }))
    }

    async fn list(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let filter = parse_filters(&req.into_inner().filters)?;
        let store = self.ctx.store.clone();
        let images = blocking(move || store.list_images(&ns))
            .await?
            .into_iter()
            .filter(|i| filter.matches(i))
            .collect();
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn create(
        &self,
        req: Request<CreateImageRequest>,
    ) -> Result<Response<CreateImageResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let img = req
            .into_inner()
            .image
            .ok_or_else(|| Status::invalid_argument("image is required"))?;
        validate_image(&img)?;
        let img = self.ctx.store.create_image(&ns, img).await?;
        let ev = ImageCreate {
            name: img.name.clone(),
            labels: img.labels.clone(),
        };
        self.publish(&ns, "/images/create", to_any(&ev)).await;
        Ok(Response::new(CreateImageResponse { image: Some(img) }))
    }

    async fn update(
        &self,
        req: Request<UpdateImageRequest>,
    ) -> Result<Response<UpdateImageResponse>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        let img = r
            .image
            .ok_or_else(|| Status::invalid_argument("image is required"))?;
        let mask = mask_paths(r.update_mask);
        if mask.is_empty() || mask.iter().any(|p| p == "target") {
            validate_image(&img)?;
        } else {
            validate_labels(&img.labels)?;
        }
        let img = self.ctx.store.update_image(&ns, img, mask).await?;
        let ev = ImageUpdate {
            name: img.name.clone(),
            labels: img.labels.clone(),
        };
        self.publish(&ns, "/images/update", to_any(&ev)).await;
        // The old target may have become garbage.
        self.ctx.images.schedule_gc();
        Ok(Response::new(UpdateImageResponse { image: Some(img) }))
    }

    async fn delete(&self, req: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_from(req.metadata())?;
        let r = req.into_inner();
        self.ctx.store.delete_image(&ns, &r.name).await?;
        self.publish(&ns, "/images/delete", to_any(&ImageDelete { name: r.name }))
            .await;
        if r.sync {
            self.ctx.images.gc_now().await?;
        } else {
            self.ctx.images.schedule_gc();
        }
        Ok(Response::new(()))
    }
}
