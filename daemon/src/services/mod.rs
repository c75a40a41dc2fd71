//! berthd's gRPC services (containerd API v1 and berth.v1), all thin: validate, convert, call the store or the
//! event bus, map errors to statuses. Tasks live in `crate::tasks`.
//!
//! This module must never hold logic that belongs to the store, the bus or an actor, and never block a tonic
//! worker: store reads go through `spawn_blocking`.

pub mod containers;
pub mod content;
pub mod diff;
pub mod events;
pub mod images;
pub mod introspection;
pub mod leases;
pub mod namespaces;
pub mod networks;
pub mod snapshots;
pub mod version;

use tonic::Status;

use crate::events::{Filter, FilterError};

impl From<FilterError> for Status {
    fn from(e: FilterError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

/// Parse request filters (InvalidArgument on a syntax error).
pub fn parse_filters(filters: &[String]) -> Result<Filter, Status> {
    Ok(Filter::parse(filters)?)
}

/// Paths of an optional field mask.
pub fn mask_paths(mask: Option<prost_types::FieldMask>) -> Vec<String> {
    mask.map(|m| m.paths).unwrap_or_default()
}
