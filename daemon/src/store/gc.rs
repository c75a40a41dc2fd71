//! Garbage collection of metadata, containerd's way, in ONE write transaction (so nothing can be added or
//! referenced halfway through): expired leases are deleted; then, per namespace, everything reachable from
//! the roots is marked and every unmarked content and snapshot record is removed.
//!
//! Roots: images (their targets), containers (their snapshot, and `containerd.io/gc.ref.*` labels), leases
//! not expired (their resources; a `containerd.io/gc.flat` lease keeps only its direct resources), and any
//! object labelled `containerd.io/gc.root`. Edges: a blob's or snapshot's `containerd.io/gc.ref.content.*`
//! labels (digests) and `containerd.io/gc.ref.snapshot.<snapshotter>[.*]` labels (keys), and a snapshot's
//! parent. The bytes and directories are removed afterwards by the caller (`images::gc`), from what this
//! returns. This module must never remove anything reachable from a root.

use std::collections::{HashMap, HashSet, VecDeque};

use containerd_client::services::v1::Container;
use prost::Message;
use redb::{ReadableTable, WriteTransaction};

use super::content::content_in;
use super::images::images_in;
use super::leases::{decode_lease, LeaseRecord, RES_CONTENT, RES_INGESTS};
use super::pins::Pins;
use super::snapshots::snapshots_in;
use super::tables::{
    each_in_namespace, CONTAINERS, CONTENT, IMAGES, LEASES, NAMESPACES, SNAPSHOTS,
};
use super::{Store, StoreError};

/// Label that pins an object.
pub const LABEL_ROOT: &str = "containerd.io/gc.root";
/// Label prefix of content references.
pub const LABEL_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Label prefix of snapshot references (`.<snapshotter>` follows).
pub const LABEL_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// Lease label: RFC 3339 time after which the lease is deleted.
pub const LABEL_EXPIRE: &str = "containerd.io/gc.expire";
/// Lease label: keep only the lease's own resources, not what they reference.
pub const LABEL_FLAT: &str = "containerd.io/gc.flat";

/// What a metadata collection did and what it leaves for the bytes and directories.
#[derive(Debug, Default, Clone)]
pub struct Swept {
    /// Leases deleted because they expired.
    pub leases: usize,
    /// Content records removed.
    pub content: usize,
    /// Snapshot records removed.
    pub snapshots: usize,
    /// Digests some namespace still has a record of (blobs not in it may be deleted).
    pub live_blobs: HashSet<String>,
    /// Snapshot numbers still recorded, per snapshotter.
    pub live_snapshots: HashMap<String, HashSet<u64>>,
    /// Ingests (`<ns>/<ref>`) held by live leases.
    pub leased_ingests: HashSet<String>,
}

/// A node of the reference graph within one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Content(String),
    Snapshot(String, String),
}

/// The references a label map holds.
fn label_refs(labels: &HashMap<String, String>) -> Vec<Node> {
    let mut out = Vec::new();
    for (k, v) in labels {
        if k == LABEL_REF_CONTENT || k.starts_with(&format!("{LABEL_REF_CONTENT}.")) {
            out.push(Node::Content(v.clone()));
        } else if let Some(rest) = k.strip_prefix(LABEL_REF_SNAPSHOT) {
            let sn = rest.split('/').next().unwrap_or(rest);
            let sn = sn.split('.').next().unwrap_or(sn);
            if !sn.is_empty() {
                out.push(Node::Snapshot(sn.to_string(), v.clone()));
            }
        }
    }
    out
}

fn expired(lease: &LeaseRecord, now: &prost_types::Timestamp) -> bool {
    lease
        .labels
        .get(LABEL_EXPIRE)
        .and_then(|v| crate::util::rfc3339::parse(v))
        .is_some_and(|t| (t.seconds, t.nanos) <= (now.seconds, now.nanos))
}

/// Collect in the write transaction (see the module doc).
fn sweep_in(wtx: &WriteTransaction, pins: &Pins) -> Result<Swept, StoreError> {
    let now = super::now_timestamp();
    let mut out = Swept::default();
    let namespaces: Vec<String> = {
        let t = wtx.open_table(NAMESPACES)?;
        let mut v = Vec::new();
        for item in t.iter()? {
            v.push(item?.0.value().to_string());
        }
        v
    };
    for ns in &namespaces {
        sweep_namespace(wtx, ns, &now, &pins.in_namespace(ns), &mut out)?;
    }
    let content = wtx.open_table(CONTENT)?;
    for item in content.iter()? {
        out.live_blobs.insert(item?.0.value().1.to_string());
    }
    let snaps = wtx.open_table(SNAPSHOTS)?;
    for item in snaps.iter()? {
        let (k, v) = item?;
        let (sn, _, key) = k.value();
        let rec: super::snapshots::SnapshotRecord = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Corrupt(format!("snapshot {key:?}: {e}")))?;
        out.live_snapshots
            .entry(sn.to_string())
            .or_default()
            .insert(rec.id);
    }
    Ok(out)
}

fn sweep_namespace(
    wtx: &WriteTransaction,
    ns: &str,
    now: &prost_types::Timestamp,
    pinned: &[(String, String)],
    out: &mut Swept,
) -> Result<(), StoreError> {
    // Pinned snapshots (prepared in process, not yet recorded) are roots.
    let mut roots: Vec<Node> = pinned
        .iter()
        .map(|(sn, key)| Node::Snapshot(sn.clone(), key.clone()))
        .collect();
    // Leases: delete the expired ones, keep the others' resources as roots.
    let mut flat: Vec<Node> = Vec::new();
    {
        let mut t = wtx.open_table(LEASES)?;
        let mut gone = Vec::new();
        each_in_namespace(&t, ns, |id, v| {
            let lease = decode_lease(ns, id, v)?;
            if expired(&lease, now) {
                gone.push(id.to_string());
                return Ok(());
            }
            let is_flat = lease.labels.contains_key(LABEL_FLAT);
            for r in &lease.resources {
                let node = if r.r#type == RES_CONTENT {
                    Node::Content(r.id.clone())
                } else if r.r#type == RES_INGESTS {
                    out.leased_ingests.insert(format!("{ns}/{}", r.id));
                    continue;
                } else if let Some(sn) = r.r#type.strip_prefix("snapshots/") {
                    Node::Snapshot(sn.to_string(), r.id.clone())
                } else {
                    continue;
                };
                if is_flat {
                    flat.push(node);
                } else {
                    roots.push(node);
                }
            }
            Ok(())
        })?;
        for id in gone {
            t.remove((ns, id.as_str()))?;
            out.leases += 1;
        }
    }
    for img in images_in(&wtx.open_table(IMAGES)?, ns)? {
        if let Some(t) = img.target {
            roots.push(Node::Content(t.digest));
        }
        roots.extend(label_refs(&img.labels));
    }
    {
        let t = wtx.open_table(CONTAINERS)?;
        each_in_namespace(&t, ns, |id, v| {
            let c = Container::decode(v)
                .map_err(|e| StoreError::Corrupt(format!("container {ns}/{id}: {e}")))?;
            if !c.snapshot_key.is_empty() {
                let sn = if c.snapshotter.is_empty() {
                    "overlayfs".to_string()
                } else {
                    c.snapshotter.clone()
                };
                roots.push(Node::Snapshot(sn, c.snapshot_key.clone()));
            }
            roots.extend(label_refs(&c.labels));
            Ok(())
        })?;
    }
    let content: HashMap<String, super::content::ContentRecord> =
        content_in(&wtx.open_table(CONTENT)?, ns)?
            .into_iter()
            .collect();
    let mut snapshots: HashMap<(String, String), super::snapshots::SnapshotRecord> = HashMap::new();
    {
        let t = wtx.open_table(SNAPSHOTS)?;
        let mut sns = HashSet::new();
        for item in t.iter()? {
            let (k, _) = item?;
            if k.value().1 == ns {
                sns.insert(k.value().0.to_string());
            }
        }
        for sn in sns {
            for (key, rec) in snapshots_in(&t, &sn, ns)? {
                snapshots.insert((sn.clone(), key), rec);
            }
        }
    }
    for (d, rec) in &content {
        if rec.labels.contains_key(LABEL_ROOT) {
            roots.push(Node::Content(d.clone()));
        }
    }
    for ((sn, key), rec) in &snapshots {
        if rec.labels.contains_key(LABEL_ROOT) {
            roots.push(Node::Snapshot(sn.clone(), key.clone()));
        }
    }

    // Mark.
    let mut marked: HashSet<Node> = flat.into_iter().collect();
    let mut queue: VecDeque<Node> = roots.into();
    while let Some(node) = queue.pop_front() {
        if !marked.insert(node.clone()) {
            continue;
        }
        match &node {
            Node::Content(d) => {
                if let Some(rec) = content.get(d) {
                    queue.extend(label_refs(&rec.labels));
                }
            }
            Node::Snapshot(sn, key) => {
                if let Some(rec) = snapshots.get(&(sn.clone(), key.clone())) {
                    if !rec.parent.is_empty() {
                        queue.push_back(Node::Snapshot(sn.clone(), rec.parent.clone()));
                    }
                    queue.extend(label_refs(&rec.labels));
                }
            }
        }
    }

    // Sweep.
    let mut ct = wtx.open_table(CONTENT)?;
    for d in content.keys() {
        if !marked.contains(&Node::Content(d.clone())) {
            ct.remove((ns, d.as_str()))?;
            out.content += 1;
        }
    }
    let mut st = wtx.open_table(SNAPSHOTS)?;
    for (sn, key) in snapshots.keys() {
        if !marked.contains(&Node::Snapshot(sn.clone(), key.clone())) {
            st.remove((sn.as_str(), ns, key.as_str()))?;
            out.snapshots += 1;
        }
    }
    Ok(())
}

impl Store {
    /// Collect metadata (see the module doc), in one transaction.
    pub async fn gc_sweep(&self) -> Result<Swept, StoreError> {
        // The pins are read inside the transaction: a snapshot committed before it began was pinned
        // before its Prepare was submitted, and is unpinned only once a committed record names it.
        let pins = self.inner.pins.clone();
        self.writer().write(move |wtx| sweep_in(wtx, &pins)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::snapshots::SnapshotKind;
    use crate::store::test_util::TempStore;
    use containerd_client::services::v1::Image;
    use containerd_client::types::Descriptor;

    fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// An active overlayfs snapshot `key` on `parent` in namespace "n".
    async fn active(s: &Store, key: &str, parent: &str) {
        let p = s
            .plan_snapshot("overlayfs", "n", key, parent)
            .await
            .expect("plan");
        s.insert_snapshot(
            "overlayfs",
            "n",
            key,
            parent,
            p.id,
            SnapshotKind::Active,
            HashMap::new(),
            None,
        )
        .await
        .expect("insert");
    }

    #[tokio::test]
    async fn images_leases_and_labels_keep_what_they_reference() {
        let t = TempStore::new("gc");
        let s = t.store();
        // manifest -> config + layer; config -> top snapshot -> parent snapshot.
        s.add_content(
            "n",
            "sha256:m",
            labels(&[
                ("containerd.io/gc.ref.content.config", "sha256:c"),
                ("containerd.io/gc.ref.content.l.0", "sha256:l"),
            ]),
            None,
            None,
        )
        .await
        .expect("m");
        s.add_content(
            "n",
            "sha256:c",
            labels(&[("containerd.io/gc.ref.snapshot.overlayfs", "top")]),
            None,
            None,
        )
        .await
        .expect("c");
        s.add_content("n", "sha256:l", HashMap::new(), None, None)
            .await
            .expect("l");
        s.add_content("n", "sha256:orphan", HashMap::new(), None, None)
            .await
            .expect("o");
        active(s, "k", "").await;
        s.commit_snapshot("overlayfs", "n", "k", "base", HashMap::new(), None)
            .await
            .expect("commit");
        active(s, "k2", "base").await;
        s.commit_snapshot("overlayfs", "n", "k2", "top", HashMap::new(), None)
            .await
            .expect("commit");
        active(s, "stray", "").await;
        // A lease that expired long ago holds the stray snapshot: it goes too.
        let lease = crate::store::leases::generate_lease_id();
        s.create_lease(
            "n",
            &lease,
            labels(&[(LABEL_EXPIRE, "2000-01-01T00:00:00Z")]),
        )
        .await
        .expect("lease");
        s.add_lease_resource(
            "n",
            &lease,
            crate::store::leases::LeaseResource {
                id: "stray".into(),
                r#type: "snapshots/overlayfs".into(),
            },
        )
        .await
        .expect("res");

        // Without an image only nothing is rooted: everything goes.
        s.create_image(
            "n",
            Image {
                name: "img".into(),
                target: Some(Descriptor {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    digest: "sha256:m".into(),
                    size: 1,
                    annotations: Default::default(),
                }),
                ..Default::default()
            },
        )
        .await
        .expect("image");
        let swept = s.gc_sweep().await.expect("gc");
        assert_eq!((swept.leases, swept.content, swept.snapshots), (1, 1, 1));
        assert!(
            swept.live_blobs.contains("sha256:l") && !swept.live_blobs.contains("sha256:orphan")
        );
        assert_eq!(
            swept.live_snapshots.get("overlayfs").map(|s| s.len()),
            Some(2),
            "top and its parent stay"
        );
        s.delete_image("n", "img").await.expect("delete image");
        let swept = s.gc_sweep().await.expect("gc");
        assert_eq!((swept.content, swept.snapshots), (3, 2));
        assert!(swept.live_blobs.is_empty());
    }

    #[tokio::test]
    async fn a_pinned_snapshot_stays_until_unpinned() {
        let t = TempStore::new("gc-pin");
        let s = t.store();
        let pin = s.pin_snapshot("n", "overlayfs", "young");
        let other_ns = s.pin_snapshot("m", "overlayfs", "young");
        active(s, "young", "").await;
        let twice = s.pin_snapshot("n", "overlayfs", "young");
        drop(twice);
        let swept = s.gc_sweep().await.expect("gc");
        assert_eq!(swept.snapshots, 0, "a pinned snapshot is a root");
        drop(pin);
        drop(other_ns);
        let swept = s.gc_sweep().await.expect("gc");
        assert_eq!(swept.snapshots, 1, "unpinned and unnamed, it goes");
    }
}
