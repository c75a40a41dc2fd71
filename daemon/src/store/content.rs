//! Content records: (namespace, digest) → labels and times. The bytes are stored once for all namespaces by
//! berth-image's content store; a blob is visible in a namespace only while it has a record there (as in
//! containerd's metadata store), and the last record's removal is what lets GC delete the bytes.
//!
//! This module must never touch the blob files.

use std::collections::{HashMap, HashSet};

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::leases::{add_resource_in, drop_resource_in, LeaseResource, RES_CONTENT, RES_INGESTS};
use super::namespaces::{apply_label_mask, ensure_namespace};
use super::tables::{each_in_namespace, CONTENT};
use super::{Stamp, Store, StoreError};

/// What a namespace knows of a blob besides its bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContentRecord {
    /// Labels (GC references, distribution sources, `containerd.io/uncompressed`...).
    #[serde(default)]
    pub labels: HashMap<String, String>,
    /// When the namespace got the blob.
    pub created: Stamp,
    /// Last label change.
    pub updated: Stamp,
}

fn decode(ns: &str, digest: &str, bytes: &[u8]) -> Result<ContentRecord, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("content {ns}/{digest}: {e}")))
}

fn encode(rec: &ContentRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(format!("encoding content: {e}")))
}

/// Every record of a namespace, inside a read or write.
pub(crate) fn content_in(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    ns: &str,
) -> Result<Vec<(String, ContentRecord)>, StoreError> {
    let mut out = Vec::new();
    each_in_namespace(t, ns, |digest, v| {
        out.push((digest.to_string(), decode(ns, digest, v)?));
        Ok(())
    })?;
    Ok(out)
}

/// Add the record of a committed blob inside a write (the ingest's lease now holds the blob instead).
/// `Ok(false)` when the namespace already had it (its labels are left alone).
pub(crate) fn add_content_in(
    wtx: &WriteTransaction,
    ns: &str,
    digest: &str,
    labels: HashMap<String, String>,
    lease: Option<&str>,
    ingest_ref: Option<&str>,
) -> Result<bool, StoreError> {
    if let Some(l) = lease {
        // First: an unknown lease must leave the transaction untouched.
        add_resource_in(
            wtx,
            ns,
            l,
            LeaseResource {
                id: digest.to_string(),
                r#type: RES_CONTENT.into(),
            },
        )?;
    }
    if let Some(r) = ingest_ref {
        drop_resource_in(
            wtx,
            ns,
            &LeaseResource {
                id: r.to_string(),
                r#type: RES_INGESTS.into(),
            },
        )?;
    }
    let mut t = wtx.open_table(CONTENT)?;
    if t.get((ns, digest))?.is_some() {
        return Ok(false);
    }
    ensure_namespace(wtx, ns)?;
    let now = Stamp::now();
    let rec = ContentRecord {
        labels: labels.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
        created: now,
        updated: now,
    };
    t.insert((ns, digest), encode(&rec)?.as_slice())?;
    Ok(true)
}

impl Store {
    /// A namespace's record of a blob.
    pub fn get_content(&self, ns: &str, digest: &str) -> Result<Option<ContentRecord>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(CONTENT)?;
        let r = t
            .get((ns, digest))?
            .map(|v| decode(ns, digest, v.value()))
            .transpose()?;
        Ok(r)
    }

    /// Every blob record of a namespace, by digest.
    pub fn list_content(&self, ns: &str) -> Result<Vec<(String, ContentRecord)>, StoreError> {
        let rtx = self.read()?;
        content_in(&rtx.open_table(CONTENT)?, ns)
    }

    /// Digests some namespace still has a record of.
    pub fn referenced_blobs(&self) -> Result<HashSet<String>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(CONTENT)?;
        let mut out = HashSet::new();
        for item in t.iter()? {
            let (k, _) = item?;
            out.insert(k.value().1.to_string());
        }
        Ok(out)
    }

    /// Record a committed blob in a namespace (under `lease` when given); false if it was there already.
    pub async fn add_content(
        &self,
        ns: &str,
        digest: &str,
        labels: HashMap<String, String>,
        lease: Option<String>,
        ingest_ref: Option<String>,
    ) -> Result<bool, StoreError> {
        let (ns, digest) = (ns.to_string(), digest.to_string());
        self.writer()
            .write(move |wtx| {
                add_content_in(
                    wtx,
                    &ns,
                    &digest,
                    labels,
                    lease.as_deref(),
                    ingest_ref.as_deref(),
                )
            })
            .await
    }

    /// Put an ingest under a lease (it is kept while the lease lives).
    pub async fn lease_ingest(&self, ns: &str, lease: &str, r#ref: &str) -> Result<(), StoreError> {
        self.lease_resource(ns, lease, r#ref, RES_INGESTS).await
    }

    /// Put an existing blob under a lease (a write that found it already stored: containerd leases it too).
    pub async fn lease_content(
        &self,
        ns: &str,
        lease: &str,
        digest: &str,
    ) -> Result<(), StoreError> {
        self.lease_resource(ns, lease, digest, RES_CONTENT).await
    }

    async fn lease_resource(
        &self,
        ns: &str,
        lease: &str,
        id: &str,
        kind: &str,
    ) -> Result<(), StoreError> {
        let (ns, lease) = (ns.to_string(), lease.to_string());
        let res = LeaseResource {
            id: id.to_string(),
            r#type: kind.to_string(),
        };
        self.writer()
            .write(move |wtx| add_resource_in(wtx, &ns, &lease, res))
            .await
    }

    /// Change a blob record's labels (containerd's field mask rules); NotFound without a record.
    pub async fn update_content(
        &self,
        ns: &str,
        digest: &str,
        labels: HashMap<String, String>,
        mask: Vec<String>,
    ) -> Result<ContentRecord, StoreError> {
        let (ns, digest) = (ns.to_string(), digest.to_string());
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(CONTENT)?;
                let mut rec = {
                    let found = t
                        .get((ns.as_str(), digest.as_str()))?
                        .map(|v| decode(&ns, &digest, v.value()))
                        .transpose()?;
                    found.ok_or_else(|| StoreError::NotFound(format!("content {digest}")))?
                };
                apply_label_mask(&mut rec.labels, &labels, &mask, "content")?;
                rec.updated = Stamp::now();
                t.insert((ns.as_str(), digest.as_str()), encode(&rec)?.as_slice())?;
                Ok(rec)
            })
            .await
    }

    /// Remove a namespace's record of a blob; NotFound without one. Returns whether another namespace still
    /// has it (if not, the bytes may go).
    pub async fn delete_content(&self, ns: &str, digest: &str) -> Result<bool, StoreError> {
        let (ns, digest) = (ns.to_string(), digest.to_string());
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(CONTENT)?;
                if t.remove((ns.as_str(), digest.as_str()))?.is_none() {
                    return Err(StoreError::NotFound(format!("content {digest}")));
                }
                let mut others = false;
                for item in t.iter()? {
                    let (k, _) = item?;
                    if k.value().1 == digest {
                        others = true;
                        break;
                    }
                }
                Ok(others)
            })
            .await
    }
}
