//! The shared context handed to services and to the task subsystem: configuration, store, event bus and the
//! actix arbiter that actors are started on.
//!
//! Everything in it is cheap to clone and Send + Sync. This module must never hold per-request state.

use std::sync::Arc;

use crate::config::Config;
use crate::events::EventBus;
use crate::store::Store;

/// What every part of berthd shares.
#[derive(Clone)]
pub struct Context {
    /// The configuration berthd started with.
    pub config: Arc<Config>,
    /// The metadata store.
    pub store: Store,
    /// The event bus (durable journal + fan-out).
    pub events: EventBus,
    /// Blobs, snapshot directories and the garbage collector.
    pub images: crate::images::Images,
    /// The arbiter of the actix System (running on its own thread) that the supervision tree (`tree.rs`)
    /// starts its actors on.
    pub actors: actix::ArbiterHandle,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}
