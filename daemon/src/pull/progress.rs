//! Progress of a transfer, as containerd's Transfer service reports it on a client's progress stream: nameless
//! status lines ("Resolving from …", "Pulling from …", "Completed pull from …"), then per blob a node named by
//! its ref key (`layer-sha256:…`) with its parents, going "waiting" → "downloading" (progress/total) →
//! "complete" or "already exists", and "saved" for each image record written.
//!
//! A [`Hub`] fans events out to every client attached to one pull; a client that joins late first gets the
//! latest event of every node, so its display is complete. This module must never block a pull on a slow
//! client: sinks are unbounded queues of small messages, and a closed sink is dropped.

use std::collections::BTreeMap;
use std::sync::Mutex;

use containerd_client::types::transfer::Progress;
use containerd_client::types::Descriptor as ProtoDescriptor;
use tokio::sync::mpsc;

use berth_image::oci::Descriptor;

/// Where a client's progress goes.
pub type ProgressSink = mpsc::UnboundedSender<Progress>;

/// containerd's ref key of a descriptor (`manifest-sha256:…`, `index-…`, `layer-…`, `config-…`, `unknown-…`):
/// the name of its progress node and of its ingest.
pub fn ref_key(desc: &Descriptor) -> String {
    use berth_image::oci::media;
    let mt = desc.media_type.as_str();
    let prefix = if media::is_manifest(mt) {
        "manifest"
    } else if media::is_index(mt) {
        "index"
    } else if media::is_layer(mt) || mt.starts_with("application/vnd.in-toto") {
        "layer"
    } else if media::is_config(mt) || mt.ends_with("config.v1+json") {
        "config"
    } else {
        "unknown"
    };
    format!("{prefix}-{}", desc.digest)
}

/// A descriptor as the wire wants it.
pub fn proto_descriptor(d: &Descriptor) -> ProtoDescriptor {
    ProtoDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A nameless status line.
pub fn status(event: impl Into<String>) -> Progress {
    Progress {
        event: event.into(),
        ..Default::default()
    }
}

/// A node's event.
pub fn node(
    event: &str,
    name: &str,
    parents: &[String],
    progress: i64,
    total: i64,
    desc: Option<&Descriptor>,
) -> Progress {
    Progress {
        event: event.to_string(),
        name: name.to_string(),
        parents: parents.to_vec(),
        progress,
        total,
        desc: desc.map(proto_descriptor),
    }
}

#[derive(Default)]
struct HubState {
    sinks: Vec<ProgressSink>,
    /// Latest event per node, for clients that join late.
    nodes: BTreeMap<String, Progress>,
    /// Nameless status lines so far.
    lines: Vec<Progress>,
}

/// Fan-out of one pull's progress to its clients.
#[derive(Default)]
pub struct Hub {
    state: Mutex<HubState>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attach a client: it first gets what happened so far (status lines, then each node's latest event).
    pub fn attach(&self, sink: ProgressSink) {
        let mut st = self.lock();
        for p in st.lines.iter().chain(st.nodes.values()) {
            if sink.send(p.clone()).is_err() {
                return;
            }
        }
        st.sinks.push(sink);
    }

    /// Send an event to every attached client.
    pub fn send(&self, p: Progress) {
        let mut st = self.lock();
        st.sinks.retain(|s| s.send(p.clone()).is_ok());
        if p.name.is_empty() {
            st.lines.push(p);
        } else {
            st.nodes.insert(p.name.clone(), p);
        }
    }

    /// Send an event to the clients attached so far only, without keeping it for later ones (the end of
    /// one request's pull when others are queued).
    pub fn send_now(&self, p: Progress) {
        let mut st = self.lock();
        st.sinks.retain(|s| s.send(p.clone()).is_ok());
    }

    /// The latest event of node `name`.
    pub fn last(&self, name: &str) -> Option<Progress> {
        self.lock().nodes.get(name).cloned()
    }

    /// Detach every client (their queues end once drained).
    pub fn detach_all(&self) {
        self.lock().sinks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(mt: &str) -> Descriptor {
        Descriptor {
            media_type: mt.into(),
            digest: "sha256:ab".into(),
            size: 3,
            ..Default::default()
        }
    }

    #[test]
    fn ref_keys_are_containerds() {
        use berth_image::oci::media;
        assert_eq!(ref_key(&desc(media::OCI_MANIFEST)), "manifest-sha256:ab");
        assert_eq!(
            ref_key(&desc(media::DOCKER_MANIFEST_LIST)),
            "index-sha256:ab"
        );
        assert_eq!(ref_key(&desc(media::OCI_LAYER_GZIP)), "layer-sha256:ab");
        assert_eq!(ref_key(&desc(media::DOCKER_CONFIG)), "config-sha256:ab");
        assert_eq!(ref_key(&desc("text/plain")), "unknown-sha256:ab");
    }

    #[test]
    fn late_clients_get_the_story_so_far() {
        let hub = Hub::default();
        let (a, mut ra) = mpsc::unbounded_channel();
        hub.attach(a);
        hub.send(status("Resolving"));
        hub.send(node("waiting", "layer-x", &[], 0, 5, None));
        hub.send(node("downloading", "layer-x", &[], 2, 5, None));
        let (b, mut rb) = mpsc::unbounded_channel();
        hub.attach(b);
        let got: Vec<String> = std::iter::from_fn(|| rb.try_recv().ok())
            .map(|p| p.event)
            .collect();
        assert_eq!(got, ["Resolving", "downloading"]);
        assert_eq!(std::iter::from_fn(|| ra.try_recv().ok()).count(), 3);
    }
}
