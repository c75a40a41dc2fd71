//! Leases in the store: (namespace, id) → JSON [`LeaseRecord`] with labels, creation time and the resources the
//! lease holds. Garbage collection (which reads these) comes with the images work.
//!
//! This module must never interpret lease ids: they are free-form (not identifier-checked).

use std::collections::HashMap;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::namespaces::ensure_namespace;
use super::tables::{each_in_namespace, LEASES};
use super::{Store, StoreError};

/// One resource held by a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResource {
    /// Resource id (a digest, a snapshot key...).
    pub id: String,
    /// Resource type (`content`, `snapshots/overlayfs`, `ingests`...).
    pub r#type: String,
}

/// A stored lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Lease id.
    pub id: String,
    /// Labels.
    #[serde(default)]
    pub labels: HashMap<String, String>,
    /// Creation time: seconds since the epoch.
    pub created_secs: i64,
    /// Creation time: nanoseconds.
    pub created_nanos: i32,
    /// Resources, in insertion order.
    #[serde(default)]
    pub resources: Vec<LeaseResource>,
}

impl LeaseRecord {
    /// Creation time as a protobuf timestamp.
    pub fn created_at(&self) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: self.created_secs,
            nanos: self.created_nanos,
        }
    }
}

fn decode(ns: &str, id: &str, bytes: &[u8]) -> Result<LeaseRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("lease {ns}/{id}: {e}")))
}

fn encode(rec: &LeaseRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(format!("encoding a lease: {e}")))
}

/// A fresh lease id: `<unix nanos>-<random>`, like containerd's generated ones.
pub fn generate_lease_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let rand: String = super::tables::new_uuid()
        .chars()
        .filter(|c| *c != '-')
        .take(8)
        .collect();
    format!("{nanos}-{rand}")
}

/// Resource type of a blob held by a lease.
pub const RES_CONTENT: &str = "content";
/// Resource type of an ingest (resumable write) held by a lease.
pub const RES_INGESTS: &str = "ingests";

/// Resource type of a snapshot of `snapshotter` held by a lease.
pub fn res_snapshots(snapshotter: &str) -> String {
    format!("snapshots/{snapshotter}")
}

/// Add a resource to a lease inside a write (idempotent); NotFound when the lease does not exist, as
/// containerd answers a request carrying an unknown lease.
pub(crate) fn add_resource_in(
    wtx: &redb::WriteTransaction,
    ns: &str,
    lease: &str,
    res: LeaseResource,
) -> Result<(), StoreError> {
    let mut t = wtx.open_table(LEASES)?;
    let mut rec = {
        let found = t
            .get((ns, lease))?
            .map(|v| decode(ns, lease, v.value()))
            .transpose()?;
        found.ok_or_else(|| StoreError::NotFound(format!("lease {lease:?}")))?
    };
    if !rec.resources.contains(&res) {
        rec.resources.push(res);
        t.insert((ns, lease), encode(&rec)?.as_slice())?;
    }
    Ok(())
}

/// Remove a resource from every lease of the namespace that holds it, inside a write.
pub(crate) fn drop_resource_in(
    wtx: &redb::WriteTransaction,
    ns: &str,
    res: &LeaseResource,
) -> Result<(), StoreError> {
    let mut t = wtx.open_table(LEASES)?;
    let mut changed = Vec::new();
    each_in_namespace(&t, ns, |id, v| {
        let mut rec = decode(ns, id, v)?;
        if rec.resources.contains(res) {
            rec.resources.retain(|r| r != res);
            changed.push((id.to_string(), rec));
        }
        Ok(())
    })?;
    for (id, rec) in changed {
        t.insert((ns, id.as_str()), encode(&rec)?.as_slice())?;
    }
    Ok(())
}

pub(crate) fn decode_lease(ns: &str, id: &str, bytes: &[u8]) -> Result<LeaseRecord, StoreError> {
    decode(ns, id, bytes)
}

impl Store {
    /// All leases of a namespace.
    pub fn list_leases(&self, ns: &str) -> Result<Vec<LeaseRecord>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(LEASES)?;
        let mut out = Vec::new();
        each_in_namespace(&t, ns, |id, v| {
            out.push(decode(ns, id, v)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// One lease, if it exists.
    pub fn get_lease(&self, ns: &str, id: &str) -> Result<Option<LeaseRecord>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(LEASES)?;
        let rec = t
            .get((ns, id))?
            .map(|v| decode(ns, id, v.value()))
            .transpose()?;
        Ok(rec)
    }

    /// Create a lease (creating its namespace if needed); AlreadyExists if the id is taken.
    pub async fn create_lease(
        &self,
        ns: &str,
        id: &str,
        labels: HashMap<String, String>,
    ) -> Result<LeaseRecord, StoreError> {
        let ns = ns.to_string();
        let now = super::now_timestamp();
        let rec = LeaseRecord {
            id: id.to_string(),
            labels,
            created_secs: now.seconds,
            created_nanos: now.nanos,
            resources: Vec::new(),
        };
        self.writer()
            .write(move |wtx| {
                {
                    let t = wtx.open_table(LEASES)?;
                    if t.get((ns.as_str(), rec.id.as_str()))?.is_some() {
                        return Err(StoreError::AlreadyExists(format!("lease {:?}", rec.id)));
                    }
                }
                ensure_namespace(wtx, &ns)?;
                let mut t = wtx.open_table(LEASES)?;
                t.insert((ns.as_str(), rec.id.as_str()), encode(&rec)?.as_slice())?;
                Ok(rec)
            })
            .await
    }

    /// Delete a lease; NotFound if it does not exist.
    pub async fn delete_lease(&self, ns: &str, id: &str) -> Result<(), StoreError> {
        let (ns, id) = (ns.to_string(), id.to_string());
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(LEASES)?;
                let removed = t.remove((ns.as_str(), id.as_str()))?.is_some();
                if removed {
                    Ok(())
                } else {
                    Err(StoreError::NotFound(format!("lease {id:?}")))
                }
            })
            .await
    }

    /// Change a lease's resources with `f`; NotFound if the lease does not exist.
    async fn modify_lease_resources(
        &self,
        ns: &str,
        id: &str,
        f: impl FnOnce(&mut Vec<LeaseResource>) + Send + 'static,
    ) -> Result<(), StoreError> {
        let (ns, id) = (ns.to_string(), id.to_string());
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(LEASES)?;
                let mut rec = {
                    let found = t
                        .get((ns.as_str(), id.as_str()))?
                        .map(|v| decode(&ns, &id, v.value()))
                        .transpose()?;
                    found.ok_or_else(|| StoreError::NotFound(format!("lease {id:?}")))?
                };
                f(&mut rec.resources);
                t.insert((ns.as_str(), id.as_str()), encode(&rec)?.as_slice())?;
                Ok(())
            })
            .await
    }

    /// Add a resource to a lease (idempotent).
    pub async fn add_lease_resource(
        &self,
        ns: &str,
        id: &str,
        res: LeaseResource,
    ) -> Result<(), StoreError> {
        self.modify_lease_resources(ns, id, move |rs| {
            if !rs.contains(&res) {
                rs.push(res);
            }
        })
        .await
    }

    /// Remove a resource from a lease (idempotent).
    pub async fn delete_lease_resource(
        &self,
        ns: &str,
        id: &str,
        res: LeaseResource,
    ) -> Result<(), StoreError> {
        self.modify_lease_resources(ns, id, move |rs| rs.retain(|r| *r != res))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::TempStore;

    #[tokio::test]
    async fn lease_lifecycle() {
        let t = TempStore::new("leases");
        let s = t.store();
        let id = generate_lease_id();
        let l = s
            .create_lease("n", &id, HashMap::new())
            .await
            .expect("create");
        assert!(l.created_secs > 0);
        assert!(matches!(
            s.create_lease("n", &id, HashMap::new()).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let r = LeaseResource {
            id: "sha256:abc".into(),
            r#type: "content".into(),
        };
        s.add_lease_resource("n", &id, r.clone())
            .await
            .expect("add");
        s.add_lease_resource("n", &id, r.clone())
            .await
            .expect("add again");
        assert_eq!(
            s.get_lease("n", &id).expect("get").expect("some").resources,
            vec![r.clone()]
        );
        s.delete_lease_resource("n", &id, r).await.expect("del res");
        assert!(s.list_leases("n").expect("list")[0].resources.is_empty());
        s.delete_lease("n", &id).await.expect("delete");
        assert!(matches!(
            s.delete_lease("n", &id).await,
            Err(StoreError::NotFound(_))
        ));
    }
}
