//! What a containerd Events subscriber of a [`TaskFixture`]'s namespace sees: [`EventLog`] collects the
//! envelopes in the background, [`describe`] turns task event payloads into short comparable strings.
//! Never filters or reorders what berthd sent.

use std::time::{Duration, Instant};

use berth_proto::containerd_client::services::v1::events_client::EventsClient;
use berth_proto::containerd_client::services::v1::SubscribeRequest;
use berth_proto::containerd_client::types::Envelope;

use super::{req, TaskFixture, POLL};

impl TaskFixture {
    /// Subscribe to this namespace's events; envelopes are collected in the background.
    pub async fn subscribe(&self) -> EventLog {
        let mut e = EventsClient::new(self.channel().await);
        let mut stream = e
            .subscribe(req(
                &self.ns,
                SubscribeRequest {
                    filters: vec![format!("namespace=={}", self.ns)],
                },
            ))
            .await
            .expect("subscribe")
            .into_inner();
        let log = EventLog::default();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(env)) = stream.message().await {
                sink.0.lock().unwrap_or_else(|e| e.into_inner()).push(env);
            }
        });
        log
    }
}

/// Envelopes received by a subscriber.
#[derive(Clone, Default)]
pub struct EventLog(pub std::sync::Arc<std::sync::Mutex<Vec<Envelope>>>);

impl EventLog {
    /// (topic, decoded container id, id) of every task event so far.
    pub fn task_events(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| (e.topic.clone(), describe(e.event.as_ref())))
            .collect()
    }

    /// Wait until `pred` holds on the events, or panic after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[(String, String)]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.task_events();
            if pred(&ev) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "events never matched; got {ev:#?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A short description of a task event payload: `container_id[/id] key=value`.
pub fn describe(any: Option<&prost_types::Any>) -> String {
    use berth_proto::containerd_client::events::*;
    use prost::Message;
    let Some(any) = any else { return String::new() };
    let v = any.value.as_slice();
    match any.type_url.as_str() {
        "containerd.events.TaskCreate" => TaskCreate::decode(v)
            .map(|e| e.container_id)
            .unwrap_or_default(),
        "containerd.events.TaskStart" => TaskStart::decode(v)
            .map(|e| e.container_id)
            .unwrap_or_default(),
        "containerd.events.TaskExit" => TaskExit::decode(v)
            .map(|e| format!("{}/{} status={}", e.container_id, e.id, e.exit_status))
            .unwrap_or_default(),
        "containerd.events.TaskDelete" => TaskDelete::decode(v)
            .map(|e| format!("{} status={}", e.container_id, e.exit_status))
            .unwrap_or_default(),
        "containerd.events.TaskExecAdded" => TaskExecAdded::decode(v)
            .map(|e| format!("{}/{}", e.container_id, e.exec_id))
            .unwrap_or_default(),
        "containerd.events.TaskExecStarted" => TaskExecStarted::decode(v)
            .map(|e| format!("{}/{}", e.container_id, e.exec_id))
            .unwrap_or_default(),
        "containerd.events.TaskPaused" => TaskPaused::decode(v)
            .map(|e| e.container_id)
            .unwrap_or_default(),
        "containerd.events.TaskResumed" => TaskResumed::decode(v)
            .map(|e| e.container_id)
            .unwrap_or_default(),
        other => other.to_string(),
    }
}
