//! Snapshot records: (snapshotter, namespace, key) → kind, parent key, labels, times and the snapshot's number
//! (its directory `<root>/snapshots/<snapshotter>/<number>`, owned by berth-image). Keys are free-form (an
//! unpacker's `extract-<nanos> sha256:...` has a space and a colon); committed snapshots are known by the name
//! they were committed under.
//!
//! Rules kept here, in one transaction each: a key is unique per snapshotter and namespace; a parent must exist
//! and be committed; only an active snapshot can be committed, under a name not taken; a snapshot with
//! children cannot be removed. This module must never touch snapshot directories.

use std::collections::{HashMap, HashSet};

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::leases::{add_resource_in, drop_resource_in, res_snapshots, LeaseResource};
use super::namespaces::{apply_label_mask, ensure_namespace};
use super::tables::{u64_le, META, META_SNAPSHOT_NEXT_ID, SNAPSHOTS};
use super::{blocking, Stamp, Store, StoreError};

/// containerd's snapshot kinds (the wire numbers are containerd's: View 1, Active 2, Committed 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// Read-only view of a committed snapshot.
    View,
    /// Writable, can be committed.
    Active,
    /// Immutable, can be a parent.
    Committed,
}

impl SnapshotKind {
    /// containerd's enum number.
    pub fn wire(self) -> i32 {
        match self {
            SnapshotKind::View => 1,
            SnapshotKind::Active => 2,
            SnapshotKind::Committed => 3,
        }
    }

    /// The same for berth-image.
    pub fn storage(self) -> berth_image::snapshot::Kind {
        match self {
            SnapshotKind::View => berth_image::snapshot::Kind::View,
            SnapshotKind::Active => berth_image::snapshot::Kind::Active,
            SnapshotKind::Committed => berth_image::snapshot::Kind::Committed,
        }
    }

    /// Filter / display name.
    pub fn name(self) -> &'static str {
        match self {
            SnapshotKind::View => "view",
            SnapshotKind::Active => "active",
            SnapshotKind::Committed => "committed",
        }
    }
}

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its number (directory name).
    pub id: u64,
    /// Its kind.
    pub kind: SnapshotKind,
    /// Key of its parent (empty: none).
    #[serde(default)]
    pub parent: String,
    /// Labels.
    #[serde(default)]
    pub labels: HashMap<String, String>,
    /// Creation time.
    pub created: Stamp,
    /// Last change.
    pub updated: Stamp,
}

fn decode(key: &str, bytes: &[u8]) -> Result<SnapshotRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("snapshot {key:?}: {e}")))
}

fn encode(rec: &SnapshotRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(format!("encoding a snapshot: {e}")))
}

type SnapTable<'a> = redb::Table<'a, (&'static str, &'static str, &'static str), &'static [u8]>;

fn get_in(
    t: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    sn: &str,
    ns: &str,
    key: &str,
) -> Result<Option<SnapshotRecord>, StoreError> {
    t.get((sn, ns, key))?
        .map(|v| decode(key, v.value()))
        .transpose()
}

/// Every snapshot of a snapshotter in a namespace, inside a read or write.
pub(crate) fn snapshots_in(
    t: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    sn: &str,
    ns: &str,
) -> Result<Vec<(String, SnapshotRecord)>, StoreError> {
    let mut out = Vec::new();
    for item in t.range((sn, ns, "")..)? {
        let (k, v) = item?;
        let (ksn, kns, key) = k.value();
        if ksn != sn || kns != ns {
            break;
        }
        out.push((key.to_string(), decode(key, v.value())?));
    }
    Ok(out)
}

/// The numbers of `parent` and its ancestors, nearest first; the parent must exist and be committed.
fn parent_chain_in(
    t: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    sn: &str,
    ns: &str,
    parent: &str,
) -> Result<Vec<u64>, StoreError> {
    let mut chain = Vec::new();
    if parent.is_empty() {
        return Ok(chain);
    }
    let first = get_in(t, sn, ns, parent)?
        .ok_or_else(|| StoreError::NotFound(format!("parent snapshot {parent:?}")))?;
    if first.kind != SnapshotKind::Committed {
        return Err(StoreError::InvalidArgument(format!(
            "parent snapshot {parent:?} is {} (only committed snapshots can be parents)",
            first.kind.name()
        )));
    }
    let mut cur = Some(first);
    while let Some(rec) = cur {
        chain.push(rec.id);
        if chain.len() > 1024 {
            return Err(StoreError::Corrupt(format!(
                "snapshot {parent:?} has a parent chain longer than 1024"
            )));
        }
        cur = if rec.parent.is_empty() {
            None
        } else {
            Some(get_in(t, sn, ns, &rec.parent)?.ok_or_else(|| {
                StoreError::Corrupt(format!("snapshot parent {:?} is missing", rec.parent))
            })?)
        };
    }
    Ok(chain)
}

fn snapshot_resource(sn: &str, key: &str) -> LeaseResource {
    LeaseResource {
        id: key.to_string(),
        r#type: res_snapshots(sn),
    }
}

fn put(
    t: &mut SnapTable<'_>,
    sn: &str,
    ns: &str,
    key: &str,
    rec: &SnapshotRecord,
) -> Result<(), StoreError> {
    t.insert((sn, ns, key), encode(rec)?.as_slice())?;
    Ok(())
}

/// Snapshot numbers reserved per metadata commit.
const SNAPSHOT_ID_BLOCK: u64 = 1024;

/// Snapshot numbers reserved durably and not yet handed out: `next..end`.
#[derive(Debug, Default)]
pub(crate) struct IdBlock {
    next: u64,
    end: u64,
}

/// What Prepare/View need before creating the directory.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The new snapshot's number.
    pub id: u64,
    /// Parent numbers, nearest first.
    pub parents: Vec<u64>,
}

impl Store {
    /// One snapshot.
    pub fn get_snapshot(
        &self,
        sn: &str,
        ns: &str,
        key: &str,
    ) -> Result<Option<SnapshotRecord>, StoreError> {
        let rtx = self.read()?;
        get_in(&rtx.open_table(SNAPSHOTS)?, sn, ns, key)
    }

    /// Every snapshot of a snapshotter in a namespace.
    pub fn list_snapshots(
        &self,
        sn: &str,
        ns: &str,
    ) -> Result<Vec<(String, SnapshotRecord)>, StoreError> {
        let rtx = self.read()?;
        snapshots_in(&rtx.open_table(SNAPSHOTS)?, sn, ns)
    }

    /// A snapshot and the numbers of its ancestors (nearest first), for its mounts.
    pub fn snapshot_with_parents(
        &self,
        sn: &str,
        ns: &str,
        key: &str,
    ) -> Result<(SnapshotRecord, Vec<u64>), StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(SNAPSHOTS)?;
        let rec = get_in(&t, sn, ns, key)?
            .ok_or_else(|| StoreError::NotFound(format!("snapshot {key:?}")))?;
        let parents = parent_chain_in(&t, sn, ns, &rec.parent)?;
        Ok((rec, parents))
    }

    /// Every snapshot number of a snapshotter, in any namespace (what its directory may hold).
    pub fn snapshot_ids(&self, sn: &str) -> Result<HashSet<u64>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(SNAPSHOTS)?;
        let mut out = HashSet::new();
        for item in t.range((sn, "", "")..)? {
            let (k, v) = item?;
            if k.value().0 != sn {
                break;
            }
            out.insert(decode(k.value().2, v.value())?.id);
        }
        Ok(out)
    }

    /// Check a Prepare/View and hand out the new snapshot's number (the directory is made next, then
    /// [`Store::insert_snapshot`] checks again and records it).
    pub async fn plan_snapshot(
        &self,
        sn: &str,
        ns: &str,
        key: &str,
        parent: &str,
    ) -> Result<Planned, StoreError> {
        let (sn, ns, key, parent) = (
            sn.to_string(),
            ns.to_string(),
            key.to_string(),
            parent.to_string(),
        );
        // A read, not a write: `insert_snapshot` checks the same again in the transaction that records it.
        let store = self.clone();
        let parents = blocking(move || {
            let rtx = store.read()?;
            let t = rtx.open_table(SNAPSHOTS)?;
            if get_in(&t, &sn, &ns, &key)?.is_some() {
                return Err(StoreError::AlreadyExists(format!("snapshot {key:?}")));
            }
            parent_chain_in(&t, &sn, &ns, &parent)
        })
        .await?;
        let id = self.next_snapshot_id().await?;
        Ok(Planned { id, parents })
    }

    /// A snapshot number never handed out before, also across crashes. Numbers are reserved durably in blocks
    /// (`META_SNAPSHOT_NEXT_ID` is the first number not reserved), so a Prepare costs one metadata commit, not
    /// two; a crash wastes the rest of a block, and a directory made for a number whose record never landed is
    /// an orphan Cleanup removes, never a number given out again.
    async fn next_snapshot_id(&self) -> Result<u64, StoreError> {
        loop {
            {
                let mut b = self.id_block();
                if b.next < b.end {
                    b.next += 1;
                    return Ok(b.next - 1);
                }
            }
            let (start, end) = self
                .writer()
                .write(|wtx| {
                    let mut meta = wtx.open_table(META)?;
                    let start = meta
                        .get(META_SNAPSHOT_NEXT_ID)?
                        .and_then(|v| u64_le(v.value()))
                        .unwrap_or(1);
                    let end = start + SNAPSHOT_ID_BLOCK;
                    meta.insert(META_SNAPSHOT_NEXT_ID, end.to_le_bytes().as_slice())?;
                    Ok((start, end))
                })
                .await?;
            let mut b = self.id_block();
            // Another caller may have refilled first: its block is used and this one is skipped.
            if b.next >= b.end {
                *b = IdBlock { next: start, end };
            }
        }
    }

    /// Record a prepared snapshot (under `lease` when given); the same checks as the plan, again.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_snapshot(
        &self,
        sn: &str,
        ns: &str,
        key: &str,
        parent: &str,
        id: u64,
        kind: SnapshotKind,
        labels: HashMap<String, String>,
        lease: Option<String>,
    ) -> Result<SnapshotRecord, StoreError> {
        let (sn, ns, key, parent) = (
            sn.to_string(),
            ns.to_string(),
            key.to_string(),
            parent.to_string(),
        );
        self.writer()
            .write(move |wtx| {
                {
                    let t = wtx.open_table(SNAPSHOTS)?;
                    if get_in(&t, &sn, &ns, &key)?.is_some() {
                        return Err(StoreError::AlreadyExists(format!("snapshot {key:?}")));
                    }
                    parent_chain_in(&t, &sn, &ns, &parent)?;
                }
                if let Some(l) = &lease {
                    add_resource_in(wtx, &ns, l, snapshot_resource(&sn, &key))?;
                }
                ensure_namespace(wtx, &ns)?;
                let now = Stamp::now();
                let rec = SnapshotRecord {
                    id,
                    kind,
                    parent,
                    labels: labels.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
                    created: now,
                    updated: now,
                };
                put(&mut wtx.open_table(SNAPSHOTS)?, &sn, &ns, &key, &rec)?;
                Ok(rec)
            })
            .await
    }

    /// Commit active snapshot `key` as `name` (labels merged in); the lease, if any, holds the name.
    pub async fn commit_snapshot(
        &self,
        sn: &str,
        ns: &str,
        key: &str,
        name: &str,
        labels: HashMap<String, String>,
        lease: Option<String>,
    ) -> Result<SnapshotRecord, StoreError> {
        let (sn, ns, key, name) = (
            sn.to_string(),
            ns.to_string(),
            key.to_string(),
            name.to_string(),
        );
        self.writer()
            .write(move |wtx| {
                let mut rec = {
                    let t = wtx.open_table(SNAPSHOTS)?;
                    let rec = get_in(&t, &sn, &ns, &key)?
                        .ok_or_else(|| StoreError::NotFound(format!("snapshot {key:?}")))?;
                    if rec.kind != SnapshotKind::Active {
                        return Err(StoreError::FailedPrecondition(format!(
                            "snapshot {key:?} is {}, only an active snapshot can be committed",
                            rec.kind.name()
                        )));
                    }
                    if get_in(&t, &sn, &ns, &name)?.is_some() {
                        return Err(StoreError::AlreadyExists(format!("snapshot {name:?}")));
                    }
                    rec
                };
                if let Some(l) = &lease {
                    add_resource_in(wtx, &ns, l, snapshot_resource(&sn, &name))?;
                }
                drop_resource_in(wtx, &ns, &snapshot_resource(&sn, &key))?;
                rec.kind = SnapshotKind::Committed;
                rec.labels
                    .extend(labels.into_iter().filter(|(_, v)| !v.is_empty()));
                rec.updated = Stamp::now();
                let mut t = wtx.open_table(SNAPSHOTS)?;
                t.remove((sn.as_str(), ns.as_str(), key.as_str()))?;
                put(&mut t, &sn, &ns, &name, &rec)?;
                Ok(rec)
            })
            .await
    }

    /// Remove a snapshot record; FailedPrecondition while another snapshot has it as parent.
    pub async fn remove_snapshot(
        &self,
        sn: &str,
        ns: &str,
        key: &str,
    ) -> Result<SnapshotRecord, StoreError> {
        let (sn, ns, key) = (sn.to_string(), ns.to_string(), key.to_string());
        self.writer()
            .write(move |wtx| {
                let rec = {
                    let t = wtx.open_table(SNAPSHOTS)?;
                    let rec = get_in(&t, &sn, &ns, &key)?
                        .ok_or_else(|| StoreError::NotFound(format!("snapshot {key:?}")))?;
                    if let Some((child, _)) = snapshots_in(&t, &sn, &ns)?
                        .into_iter()
                        .find(|(_, r)| r.parent == key)
                    {
                        return Err(StoreError::FailedPrecondition(format!(
                            "cannot remove snapshot {key:?}: snapshot {child:?} is its child"
                        )));
                    }
                    rec
                };
                drop_resource_in(wtx, &ns, &snapshot_resource(&sn, &key))?;
                wtx.open_table(SNAPSHOTS)?
                    .remove((sn.as_str(), ns.as_str(), key.as_str()))?;
                Ok(rec)
            })
            .await
    }

    /// Change a snapshot's labels (containerd's mask rules).
    pub async fn update_snapshot(
        &self,
        sn: &str,
        ns: &str,
        key: &str,
        labels: HashMap<String, String>,
        mask: Vec<String>,
    ) -> Result<SnapshotRecord, StoreError> {
        let (sn, ns, key) = (sn.to_string(), ns.to_string(), key.to_string());
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(SNAPSHOTS)?;
                let mut rec = get_in(&t, &sn, &ns, &key)?
                    .ok_or_else(|| StoreError::NotFound(format!("snapshot {key:?}")))?;
                apply_label_mask(&mut rec.labels, &labels, &mask, "snapshot")?;
                rec.updated = Stamp::now();
                put(&mut t, &sn, &ns, &key, &rec)?;
                Ok(rec)
            })
            .await
    }
}

/// Whether a namespace has any snapshot, in any snapshotter (inside a write).
pub(crate) fn namespace_has_snapshots(
    wtx: &WriteTransaction,
    ns: &str,
) -> Result<bool, StoreError> {
    let t = wtx.open_table(SNAPSHOTS)?;
    for item in t.iter()? {
        let (k, _) = item?;
        if k.value().1 == ns {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::TempStore;

    #[tokio::test]
    async fn snapshot_numbers_are_never_handed_out_twice_also_after_a_reopen() {
        let mut t = TempStore::new("snapshot-ids");
        let mut seen = HashSet::new();
        for round in 0..3 {
            for i in 0..(SNAPSHOT_ID_BLOCK + 5) {
                // Plans that never get recorded (a crash between plan and insert) still use their number up.
                let p = t
                    .store()
                    .plan_snapshot("o", "n", &format!("k{round}-{i}"), "")
                    .await
                    .expect("plan");
                assert!(p.id >= 1 && seen.insert(p.id), "number {} twice", p.id);
            }
            t.reopen();
        }
    }

    #[tokio::test]
    async fn chains_commit_and_remove_rules() {
        let t = TempStore::new("snapshots");
        let s = t.store();
        let p = s.plan_snapshot("o", "n", "k1", "").await.expect("plan");
        assert!(p.parents.is_empty());
        s.insert_snapshot(
            "o",
            "n",
            "k1",
            "",
            p.id,
            SnapshotKind::Active,
            HashMap::new(),
            None,
        )
        .await
        .expect("insert");
        assert!(matches!(
            s.plan_snapshot("o", "n", "k2", "k1").await,
            Err(StoreError::InvalidArgument(_))
        ));
        s.commit_snapshot("o", "n", "k1", "layer1", HashMap::new(), None)
            .await
            .expect("commit");
        assert!(s.get_snapshot("o", "n", "k1").expect("get").is_none());
        let q = s
            .plan_snapshot("o", "n", "k2", "layer1")
            .await
            .expect("plan");
        assert_eq!(q.parents, vec![p.id]);
        assert!(q.id > p.id);
        s.insert_snapshot(
            "o",
            "n",
            "k2",
            "layer1",
            q.id,
            SnapshotKind::Active,
            HashMap::new(),
            None,
        )
        .await
        .expect("insert");
        assert!(matches!(
            s.remove_snapshot("o", "n", "layer1").await,
            Err(StoreError::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.plan_snapshot("o", "n", "k2", "").await,
            Err(StoreError::AlreadyExists(_))
        ));
        let (rec, parents) = s.snapshot_with_parents("o", "n", "k2").expect("chain");
        assert_eq!((rec.id, parents), (q.id, vec![p.id]));
        assert_eq!(s.snapshot_ids("o").expect("ids").len(), 2);
        s.remove_snapshot("o", "n", "k2")
            .await
            .expect("remove child");
        s.remove_snapshot("o", "n", "layer1")
            .await
            .expect("remove parent");
        assert!(s.list_snapshots("o", "n").expect("list").is_empty());
    }
}
