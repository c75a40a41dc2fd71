//! GetContainerEvents: berthd's durable event journal, filtered to `k8s.io`'s container and task events and
//! turned into CRI's container events (created, started, stopped, deleted) with the container's status and
//! its pod's status, as the kubelet's evented PLEG wants them. An event is only seen once it is durable, so a
//! stopped event is never sent for an exit berthd could lose. Each event carries its journal seq (a field of
//! Berth's far from CRI's numbers); a client passing the last one back resumes without a gap.
//!
//! This module must never block the event bus: a subscriber that falls behind is cut off by the bus (the
//! kubelet then relists and subscribes again).

use std::pin::Pin;

use berth_proto::containerd_client::events::{
    ContainerCreate, ContainerDelete, TaskExit, TaskStart,
};
use berth_proto::cri;
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::Status;

use super::{containers, meta, pods, Cri};

/// The stream a GetContainerEvents call gets.
pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

/// The topics that become CRI events.
const FILTER: &str =
    r#"namespace=="k8s.io",topic~="^/(tasks/(start|exit)|containers/(create|delete))$""#;

/// Which container an event is about and what happened to it (None: not a CRI event).
fn classify(topic: &str, event: &prost_types::Any) -> Option<(String, cri::ContainerEventType)> {
    use cri::ContainerEventType as T;
    let bytes = event.value.as_slice();
    match topic {
        "/containers/create" => ContainerCreate::decode(bytes)
            .ok()
            .map(|e| (e.id, T::ContainerCreatedEvent)),
        "/tasks/start" => TaskStart::decode(bytes)
            .ok()
            .map(|e| (e.container_id, T::ContainerStartedEvent)),
        // Only the init's exit stops a container (an exec's exit has its own id).
        "/tasks/exit" => TaskExit::decode(bytes)
            .ok()
            .filter(|e| e.id.is_empty() || e.id == e.container_id)
            .map(|e| (e.container_id, T::ContainerStoppedEvent)),
        "/containers/delete" => ContainerDelete::decode(bytes)
            .ok()
            .map(|e| (e.id, T::ContainerDeletedEvent)),
        _ => None,
    }
}

/// The CRI event of one journal event (None when it is not about a CRI container or sandbox).
async fn to_cri(
    cri: &Cri,
    topic: &str,
    event: &prost_types::Any,
    at: i64,
) -> Option<cri::ContainerEventResponse> {
    let (id, kind) = classify(topic, event)?;
    let mut out = cri::ContainerEventResponse {
        container_id: id.clone(),
        container_event_type: kind as i32,
        created_at: at,
        pod_sandbox_status: None,
        containers_statuses: vec![],
        berth_seq: 0,
    };
    if kind == cri::ContainerEventType::ContainerDeletedEvent {
        // The record is gone: the id is all there is (the kubelet knows which pod it was in).
        return Some(out);
    }
    let record = meta::get(&cri.ctx().store, &id).await.ok().flatten()?;
    let pod = if let Some(c) = meta::container_of(&record) {
        if let Ok(s) = containers::status(cri, &id, false).await {
            out.containers_statuses.extend(s.status);
        }
        // The task layer may not have taken the exit in yet: the event itself is the truth.
        if kind == cri::ContainerEventType::ContainerStoppedEvent {
            if let (Ok(exit), Some(st)) = (
                TaskExit::decode(event.value.as_slice()),
                out.containers_statuses.first_mut(),
            ) {
                st.state = cri::ContainerState::ContainerExited as i32;
                st.exit_code = exit.exit_status as i32;
                st.finished_at = super::ts_nanos(exit.exited_at.as_ref());
                st.reason = if exit.exit_status == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_string();
            }
        }
        c.sandbox_id
    } else if meta::sandbox_of(&record).is_some() {
        id.clone()
    } else {
        return None;
    };
    if let Ok(s) = pods::status(cri, &pod, false).await {
        out.pod_sandbox_status = s.status;
    }
    Some(out)
}

/// Subscribe: events from now on, or (Berth's extension `berth_after_seq`) every event after that journal seq
/// first, so a client that reconnects after a berthd restart misses nothing; OutOfRange when the journal no
/// longer holds that seq (the client relists, as the kubelet does when its stream breaks).
pub async fn subscribe(cri: &Cri, after_seq: u64) -> Result<EventStream, Status> {
    let filter = crate::services::parse_filters(&[FILTER.to_string()])?;
    let events: Pin<Box<dyn Stream<Item = Result<_, Status>> + Send>> = if after_seq == 0 {
        Box::pin(cri.ctx().events.subscribe(filter)?)
    } else {
        Box::pin(
            cri.ctx()
                .events
                .subscribe_from(filter, after_seq, false)
                .await?,
        )
    };
    let cri = cri.clone();
    let stream = events
        .then(move |item| {
            let cri = cri.clone();
            async move {
                match item {
                    Err(e) => Some(Err(e)),
                    Ok(ev) => {
                        let at = super::ts_nanos(ev.timestamp.as_ref());
                        let any = ev.event.as_ref()?;
                        let mut out = to_cri(&cri, &ev.topic, any, at).await?;
                        out.berth_seq = ev.seq;
                        Some(Ok(out))
                    }
                }
            }
        })
        .filter_map(futures::future::ready);
    Ok(Box::pin(stream))
}
