//! The EventBus: a durable journal with group commit, and fan-out to subscribers.
//!
//! The journal is an append-only, checksummed, fsync-free log in `<state>/events/` ([`log`], [`db`]: it only has
//! to survive berthd crashes and restarts, which the page cache does), with its own writer thread: metadata
//! writes to `<root>/meta.redb` never queue in front of an event. Publishing hands the event to that writer, which
//! writes it with whatever else is queued (one `write` per batch), and only then fans it out, in seq order, to
//! every subscriber whose filter matches. Each subscriber has a bounded tokio queue fed with `try_send`: a subscriber whose queue
//! is full is cut off (its stream ends with RESOURCE_EXHAUSTED naming the seq where events were dropped), so a
//! slow subscriber never delays the publisher or anyone else. Seqs survive restarts and never go backwards, also
//! across reboots (a reserved mark in meta.redb, see [`db`]); the journal keeps the newest `event_retention`
//! events, and a replay cursor older than that (or from before a reboot emptied the journal) gets OUT_OF_RANGE.
//!
//! Shim events are exactly-once: [`EventBus::publish_from_shim`] writes the event and the shim's seq in ONE
//! record and drops replays of a seq already recorded. A task's init exit and its delete are also at-most-once
//! per task ([`Once`]): whichever path journals one first (the shim's own event, or the one berthd synthesises
//! for a shim that died), a later one is dropped.
//!
//! This module must never block the writer thread (fan-out is `try_send` only) and never show a subscriber an
//! event before it is written.

pub mod db;
pub mod fields;
pub mod filter;
mod legacy;
pub mod log;
mod subscription;
pub(crate) mod writer;

use std::sync::{Arc, Mutex};

use berth_proto::berth::JournalEvent;
use tonic::Status;

use crate::store::StoreError;
pub use db::JournalDb;
pub use fields::FieldValue;
pub use filter::{Fields, Filter, FilterError};
pub use subscription::{ReplayStream, Subscription};

/// Event bus errors.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Journaling failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A replay cursor is older than the retained journal.
    #[error("cursor {cursor} is older than the journal (events up to seq {floor} were dropped)")]
    OutOfRange {
        /// The cursor asked for.
        cursor: u64,
        /// Highest dropped seq.
        floor: u64,
    },
    /// The bus is shut down.
    #[error("the event bus is shut down")]
    Closed,
}

impl From<EventError> for Status {
    fn from(e: EventError) -> Status {
        match e {
            EventError::Store(s) => s.into(),
            e @ EventError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
            e @ EventError::Closed => Status::unavailable(e.to_string()),
        }
    }
}

/// Events a task has at most one of (per task, until [`EventBus::forget_task`]), whichever source sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    /// `/tasks/exit` of the init process.
    InitExit,
    /// `/tasks/delete`.
    Delete,
}

impl Once {
    /// Every kind.
    pub const ALL: [Once; 2] = [Once::InitExit, Once::Delete];

    /// Its key in the journal database.
    pub fn name(self) -> &'static str {
        match self {
            Once::InitExit => "init-exit",
            Once::Delete => "delete",
        }
    }
}

/// An event from a shim (or synthesised by berthd for a dead or silent one), deduplicated by its source's seq.
#[derive(Debug, Clone)]
pub struct ShimEvent {
    /// Where the seq comes from: the shim (`<ns>/<id>`) or berthd synthesising (`<ns>/<id>#berthd`).
    pub source: String,
    /// The task (`<ns>/<id>`): [`Once`] events are counted per task, whatever their source.
    pub task: String,
    /// Seq within the source; a seq at or below the source's last one is a replay and is dropped.
    pub seq: u64,
    /// Namespace of the task.
    pub namespace: String,
    /// containerd topic.
    pub topic: &'static str,
    /// Payload.
    pub event: prost_types::Any,
    /// Set for events a task has at most one of.
    pub once: Option<Once>,
}

/// The source key of events berthd synthesises for a task (`<ns>/<id>#berthd`): its own seqs, so they never
/// collide with the shim's.
pub fn berthd_source(task: &str) -> String {
    format!("{task}#berthd")
}

/// Handle to the event bus; cheap to clone, Send + Sync.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

pub(crate) struct BusInner {
    journal: JournalDb,
    queue: usize,
    pub(crate) subs: Mutex<Subscribers>,
}

/// Live subscribers, and the seq of the last event fanned out (under the same lock, so a subscriber registers
/// exactly between two events).
pub(crate) struct Subscribers {
    next_id: u64,
    list: Vec<subscription::Sub>,
    pub(crate) last_seq: u64,
    closed: bool,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

fn now() -> prost_types::Timestamp {
    crate::store::now_timestamp()
}

impl EventBus {
    /// A bus journaling into `journal`, keeping `retention` events, with `queue` slots per subscriber.
    pub fn new(journal: JournalDb, retention: u64, queue: usize) -> Result<EventBus, EventError> {
        journal.set_retention(retention.max(1));
        let last_seq = journal.journal_last_seq()?;
        Ok(EventBus {
            inner: Arc::new(BusInner {
                journal,
                queue: queue.max(1),
                subs: Mutex::new(Subscribers {
                    next_id: 1,
                    list: Vec::new(),
                    last_seq,
                    closed: false,
                }),
            }),
        })
    }

    /// The journal database.
    pub fn journal(&self) -> &JournalDb {
        &self.inner.journal
    }

    /// Journal one event (written before it returns) and fan it out; returns its journal seq.
    pub async fn publish(
        &self,
        namespace: &str,
        topic: &str,
        event: prost_types::Any,
    ) -> Result<u64, EventError> {
        self.publish_at(namespace, topic, event, now()).await
    }

    /// [`EventBus::publish`] with a given timestamp (Events.Forward keeps the envelope's).
    pub async fn publish_at(
        &self,
        namespace: &str,
        topic: &str,
        event: prost_types::Any,
        timestamp: prost_types::Timestamp,
    ) -> Result<u64, EventError> {
        let ev = JournalEvent {
            seq: 0,
            timestamp: Some(timestamp),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(event),
        };
        let bus = self.inner.clone();
        let rx = self.inner.journal.writer().submit(
            move |b| b.append(ev, None).map(Arc::new),
            move |ev: &Arc<JournalEvent>| bus.fan_out(ev),
        );
        let ev = rx.await.map_err(|_| StoreError::Closed)??;
        Ok(ev.seq)
    }

    /// Exactly-once for shim events: in ONE transaction, append the event and record its seq as the last seq
    /// seen from its shim key. If the seq is <= the recorded one, or the event is a [`Once`] kind the key
    /// task already journaled, nothing is appended (the seq is still recorded): `Ok(None)`.
    pub async fn publish_from_shim(&self, ev: ShimEvent) -> Result<Option<u64>, EventError> {
        let ShimEvent {
            source,
            task,
            seq: shim_seq,
            namespace,
            topic,
            event,
            once,
        } = ev;
        let ev = JournalEvent {
            seq: 0,
            timestamp: Some(now()),
            namespace,
            topic: topic.to_string(),
            event: Some(event),
        };
        let bus = self.inner.clone();
        let rx = self.inner.journal.writer().submit(
            move |b| {
                if shim_seq <= b.source_seq(&source) {
                    return Ok(None);
                }
                if let Some(o) = once {
                    if b.once_done(&task, o) {
                        b.set_source_seq(&source, shim_seq);
                        return Ok(None);
                    }
                }
                let ev = b.append(ev, Some((&source, shim_seq, &task, once)))?;
                Ok(Some(Arc::new(ev)))
            },
            move |ev: &Option<Arc<JournalEvent>>| {
                if let Some(ev) = ev {
                    bus.fan_out(ev);
                }
            },
        );
        let ev = rx.await.map_err(|_| StoreError::Closed)??;
        Ok(ev.map(|e| e.seq))
    }

    /// Last shim seq recorded for `shim_key` (0 if none): where to resume the shim's `Events(after_seq)`.
    pub async fn last_shim_seq(&self, shim_key: &str) -> Result<u64, EventError> {
        Ok(self.inner.journal.shim_seq(shim_key).await?)
    }

    /// Forget a task's seqs (from its shim and from berthd) and its once-markers: the id may be used again,
    /// and the new shim counts from 1.
    pub async fn forget_task(&self, task: &str) -> Result<(), EventError> {
        let task = task.to_string();
        self.inner
            .journal
            .writer()
            .write(move |b| {
                b.forget(&task);
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Seq of the last event fanned out (every event up to it is written).
    pub fn last_seq(&self) -> u64 {
        self.inner.lock_subs().last_seq
    }

    /// Subscribe to live events matching `filter`.
    pub fn subscribe(&self, filter: Filter) -> Result<Subscription, EventError> {
        let mut subs = self.inner.lock_subs();
        if subs.closed {
            return Err(EventError::Closed);
        }
        let after = subs.last_seq;
        Ok(self.inner.register(&mut subs, filter, after))
    }

    /// Replay journaled events after `after_seq` (from the oldest retained one when `from_oldest`), then live
    /// ones, matching `filter`. OutOfRange when the cursor is older than the journal.
    pub async fn subscribe_from(
        &self,
        filter: Filter,
        after_seq: u64,
        from_oldest: bool,
    ) -> Result<ReplayStream, EventError> {
        if self.inner.lock_subs().closed {
            return Err(EventError::Closed);
        }
        let floor = self.inner.journal.journal_floor()?;
        let cursor = if from_oldest { floor } else { after_seq };
        if cursor < floor {
            return Err(EventError::OutOfRange { cursor, floor });
        }
        Ok(subscription::replay(self.inner.clone(), filter, cursor))
    }

    /// End every subscription (their streams finish) and refuse new ones: berthd is stopping.
    pub fn close(&self) {
        let mut subs = self.inner.lock_subs();
        subs.closed = true;
        subs.list.clear();
    }

    /// Number of live subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.inner.lock_subs().list.len()
    }
}

impl BusInner {
    pub(crate) fn lock_subs(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a live subscriber (the caller holds the lock); events with seq <= `after` are not delivered.
    pub(crate) fn register(
        self: &Arc<Self>,
        subs: &mut Subscribers,
        filter: Filter,
        after: u64,
    ) -> Subscription {
        let id = subs.next_id;
        subs.next_id += 1;
        let (sub, stream) =
            subscription::new_pair(id, filter, self.queue, Arc::downgrade(self), after);
        subs.list.push(sub);
        stream
    }

    /// Remove a subscriber by id.
    pub(crate) fn unregister(&self, id: u64) {
        self.lock_subs().list.retain(|s| s.id != id);
    }

    /// Deliver a written event to every matching subscriber (runs on the journal writer thread; never blocks).
    fn fan_out(&self, ev: &Arc<JournalEvent>) {
        let mut subs = self.lock_subs();
        if ev.seq > subs.last_seq {
            subs.last_seq = ev.seq;
        }
        subs.list.retain(|s| s.offer(ev));
    }
}

#[cfg(test)]
mod tests;
