//! berthd's durable event journal (berth.v1 Journal) and the shims' on-disk journals, as the task tests read
//! them: up to a barrier (everything journaled before a call), until a condition, or with a quiet window for
//! duplicates. The barrier markers go to a namespace of their own; this module never lets them into what it
//! returns for the test's namespace.

use std::time::{Duration, Instant};

use berth_proto::berth::journal_client::JournalClient;
use berth_proto::berth::{JournalEvent, JournalSubscribeRequest};
use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::PublishRequest;

use super::{describe, req, TaskFixture};

impl TaskFixture {
    /// The events the task's shim has journaled on disk and berthd has not acked yet (its `events.log`).
    pub fn shim_journal(&self, id: &str) -> Vec<berth_proto::shim::Event> {
        let p = self.task_dir(id).join(berth_proto::shim::journal::LOG_FILE);
        std::fs::read(p)
            .map(|b| berth_proto::shim::journal::decode_frames(&b))
            .unwrap_or_default()
    }

    /// The exit status of init (`exec_id` "") or an exec that the shim journaled on disk, if it did.
    pub fn shim_journaled_exit(&self, id: &str, exec_id: &str) -> Option<u32> {
        self.shim_journal(id).iter().find_map(|e| match &e.kind {
            Some(berth_proto::shim::event::Kind::Exited(x)) if x.exec_id == exec_id => {
                Some(x.exit_status)
            }
            _ => None,
        })
    }

    /// A journal seq at or after every event journaled before this call: publishes a marker event into a
    /// namespace of its own (so that this test's namespace sees nothing of it) and returns the marker's seq.
    /// A cursor taken this way does not depend on how fast the replay streams.
    pub async fn journal_barrier(&self) -> u64 {
        let marks = format!("{}-mark", self.ns);
        let mut stream = self.journal_stream(&[&marks], 0).await;
        let topic = format!("/berth-test/{}", crate::unique_id("barrier"));
        self.publish_marker(&marks, &topic).await;
        let deadline = Instant::now() + JOURNAL_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(ev))) if ev.topic == topic => return ev.seq,
                Ok(Ok(Some(_))) => {}
                other => panic!("the journal never showed the barrier {topic}: {other:?}"),
            }
        }
    }

    /// This namespace's journal events after `after_seq` (from the oldest when 0), read until `until` holds on
    /// them; panics naming `what` when it does not within a deadline.
    pub async fn journal_until(
        &self,
        after_seq: u64,
        what: &str,
        until: impl Fn(&[JournalEvent]) -> bool,
    ) -> Vec<JournalEvent> {
        let mut stream = self.journal_stream(&[&self.ns], after_seq).await;
        let mut out = Vec::new();
        let deadline = Instant::now() + JOURNAL_WAIT;
        while !until(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(ev))) => out.push(ev),
                other => panic!(
                    "the journal never showed {what} within {JOURNAL_WAIT:?} ({other:?}); got {:#?}",
                    journal_lines(&out)
                ),
            }
        }
        out
    }

    /// Every journal event of this namespace after `after_seq` (from the oldest when 0): all those journaled
    /// before the call (read up to a barrier, see [`TaskFixture::journal_barrier`]), then whatever else arrives
    /// until none has for `quiet`. The quiet window is deliberate: it is where a late duplicate would show up.
    pub async fn journal(&self, after_seq: u64, quiet: Duration) -> Vec<JournalEvent> {
        let marks = format!("{}-mark", self.ns);
        let mut stream = self.journal_stream(&[&self.ns, &marks], after_seq).await;
        let topic = format!("/berth-test/{}", crate::unique_id("barrier"));
        self.publish_marker(&marks, &topic).await;
        let mut out = Vec::new();
        let deadline = Instant::now() + JOURNAL_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(ev))) if ev.topic == topic => break,
                Ok(Ok(Some(ev))) => out.push(ev),
                other => panic!(
                    "the journal never showed the barrier {topic} ({other:?}); got {:#?}",
                    journal_lines(&out)
                ),
            }
        }
        while let Ok(Ok(Some(ev))) = tokio::time::timeout(quiet, stream.message()).await {
            out.push(ev);
        }
        out.retain(|e| e.namespace == self.ns);
        out
    }

    async fn journal_stream(
        &self,
        namespaces: &[&str],
        after_seq: u64,
    ) -> tonic::Streaming<JournalEvent> {
        let mut j = JournalClient::new(self.channel().await);
        j.subscribe(crate::grpc::req_with(
            &self.ns,
            JournalSubscribeRequest {
                filters: namespaces
                    .iter()
                    .map(|ns| format!("namespace=={ns}"))
                    .collect(),
                after_seq,
                from_oldest: after_seq == 0,
            },
            None,
        ))
        .await
        .expect("journal subscribe")
        .into_inner()
    }

    async fn publish_marker(&self, ns: &str, topic: &str) {
        let mut e = EventsClient::new(self.channel().await);
        e.publish(req(
            ns,
            PublishRequest {
                topic: topic.into(),
                event: Some(prost_types::Any {
                    type_url: "berth.test.Barrier".into(),
                    value: Vec::new(),
                }),
            },
        ))
        .await
        .expect("publish the journal barrier");
    }
}

/// How long the journal helpers wait for what they look for.
pub const JOURNAL_WAIT: Duration = Duration::from_secs(20);

/// `topic describe(event)` of journal events, for assertion messages.
pub fn journal_lines(events: &[JournalEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {} {}", e.seq, e.topic, describe(e.event.as_ref())))
        .collect()
}
