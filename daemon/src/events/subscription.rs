//! Subscriber queues and streams: live [`Subscription`]s (bounded queue, cut off when full) and the
//! replay-then-live [`ReplayStream`] behind berth.v1 `Journal.Subscribe`.
//!
//! This module must never block the fan-out (it only `try_send`s) and never deliver an event twice or out of
//! order to one subscriber.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use berth_proto::berth::JournalEvent;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use super::{BusInner, Filter};

/// How many journal events a replay reads per store read.
const REPLAY_CHUNK: usize = 512;

/// The fan-out side of one subscriber.
pub(crate) struct Sub {
    pub(crate) id: u64,
    filter: Filter,
    tx: mpsc::Sender<Arc<JournalEvent>>,
    /// Seq at which this subscriber was cut off (0 = not cut).
    cut: Arc<AtomicU64>,
}

impl Sub {
    /// Offer an event; false means the subscriber is gone or was cut off (remove it).
    pub(crate) fn offer(&self, ev: &Arc<JournalEvent>) -> bool {
        if !self.filter.matches(&**ev) {
            return !self.tx.is_closed();
        }
        match self.tx.try_send(ev.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.cut.store(ev.seq, Ordering::Release);
                tracing::warn!(
                    subscriber = self.id,
                    seq = ev.seq,
                    "event subscriber too slow; cut off"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// A live subscription: a stream of durable events matching its filter. When the subscriber falls a whole queue
/// behind, the stream ends with RESOURCE_EXHAUSTED.
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Arc<JournalEvent>>,
    cut: Arc<AtomicU64>,
    bus: Weak<BusInner>,
    /// Skip events with seq <= this (registration raced with a replay's end).
    after: u64,
    done: bool,
}

pub(crate) fn new_pair(
    id: u64,
    filter: Filter,
    queue: usize,
    bus: Weak<BusInner>,
    after: u64,
) -> (Sub, Subscription) {
    let (tx, rx) = mpsc::channel(queue);
    let cut = Arc::new(AtomicU64::new(0));
    (
        Sub {
            id,
            filter,
            tx,
            cut: cut.clone(),
        },
        Subscription {
            id,
            rx,
            cut,
            bus,
            after,
            done: false,
        },
    )
}

impl Stream for Subscription {
    type Item = Result<Arc<JournalEvent>, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => {
                    if ev.seq <= self.after {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(ev)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let cut = self.cut.load(Ordering::Acquire);
                    if cut > 0 {
                        return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                            "subscriber too slow, events dropped at seq {cut}"
                        )))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unregister(self.id);
        }
    }
}

/// Replay-then-live stream (berth.v1 Journal.Subscribe).
pub type ReplayStream = tokio_stream::wrappers::ReceiverStream<Result<Arc<JournalEvent>, Status>>;

/// Start a task that replays the journal after `cursor`, registers a live subscription exactly where the replay
/// ends, and forwards live events.
pub(crate) fn replay(bus: Arc<BusInner>, filter: Filter, mut cursor: u64) -> ReplayStream {
    let (out, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let live = loop {
            let target = bus.lock_subs().last_seq;
            while cursor < target {
                let journal = bus.journal.clone();
                let from = cursor;
                let chunk = match crate::store::blocking(move || {
                    journal.read_journal(from, target, REPLAY_CHUNK)
                })
                .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = out.send(Err(e.into())).await;
                        return;
                    }
                };
                let next_kept = chunk.first().map(|e| e.seq);
                if next_kept.is_none_or(|seq| seq > cursor + 1) {
                    let _ = out
                        .send(Err(Status::out_of_range(format!(
                            "cursor {cursor} fell out of the journal during replay (next kept seq {next_kept:?})"
                        ))))
                        .await;
                    return;
                }
                for ev in chunk {
                    cursor = ev.seq;
                    if filter.matches(&ev) && out.send(Ok(Arc::new(ev))).await.is_err() {
                        return;
                    }
                }
            }
            let mut subs = bus.lock_subs();
            if subs.closed {
                return;
            }
            // Replayed up to `cursor` (>= target): register only if nothing was fanned out since.
            if subs.last_seq <= cursor {
                break bus.register(&mut subs, filter.clone(), cursor);
            }
        };
        drop(bus);
        let mut live = live;
        while let Some(item) = futures::StreamExt::next(&mut live).await {
            if out.send(item).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
