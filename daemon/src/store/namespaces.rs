//! Namespaces in the store: name → labels. A namespace that does not exist reads as empty and is created by the
//! first write in it ([`ensure_namespace`], called inside container and lease writes).
//!
//! This module must never delete a namespace that still holds objects.

use std::collections::HashMap;

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::{CONTAINERS, CONTENT, IMAGES, LEASES, NAMESPACES};
use super::{Store, StoreError};

/// A stored namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// Labels.
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

fn decode(name: &str, bytes: &[u8]) -> Result<NamespaceRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("namespace {name}: {e}")))
}

fn encode(rec: &NamespaceRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(format!("encoding a namespace: {e}")))
}

/// Create `ns` with no labels if it does not exist (inside a write).
pub(crate) fn ensure_namespace(wtx: &WriteTransaction, ns: &str) -> Result<(), StoreError> {
    let mut t = wtx.open_table(NAMESPACES)?;
    if t.get(ns)?.is_none() {
        t.insert(ns, encode(&NamespaceRecord::default())?.as_slice())?;
    }
    Ok(())
}

/// Apply a containerd label update: with no mask (`None` or empty) the labels are replaced; a `labels` path
/// replaces them; `labels.<k>` sets `k` to `new[k]`, or removes it when absent or empty. Other paths are refused.
pub fn apply_label_mask(
    current: &mut HashMap<String, String>,
    new: &HashMap<String, String>,
    mask: &[String],
    object: &str,
) -> Result<(), StoreError> {
    if mask.is_empty() {
        *current = new.clone();
        current.retain(|_, v| !v.is_empty());
        return Ok(());
    }
    for path in mask {
        if path == "labels" {
            *current = new.clone();
            current.retain(|_, v| !v.is_empty());
        } else if let Some(key) = path.strip_prefix("labels.") {
            match new.get(key) {
                Some(v) if !v.is_empty() => {
                    current.insert(key.to_string(), v.clone());
                }
                _ => {
                    current.remove(key);
                }
            }
        } else {
            return Err(StoreError::InvalidArgument(format!(
                "cannot update {path:?} field on {object}"
            )));
        }
    }
    Ok(())
}

impl Store {
    /// Names of all namespaces, sorted.
    pub fn namespaces(&self) -> Result<Vec<String>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(NAMESPACES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, _) = item?;
            out.push(k.value().to_string());
        }
        Ok(out)
    }

    /// One namespace, if it exists.
    pub fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRecord>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(NAMESPACES)?;
        let rec = t.get(name)?.map(|v| decode(name, v.value())).transpose()?;
        Ok(rec)
    }

    /// Create a namespace; AlreadyExists if it exists.
    pub async fn create_namespace(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<NamespaceRecord, StoreError> {
        let name = name.to_string();
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(NAMESPACES)?;
                if t.get(name.as_str())?.is_some() {
                    return Err(StoreError::AlreadyExists(format!("namespace {name}")));
                }
                let mut rec = NamespaceRecord { labels };
                rec.labels.retain(|_, v| !v.is_empty());
                t.insert(name.as_str(), encode(&rec)?.as_slice())?;
                Ok(rec)
            })
            .await
    }

    /// Update a namespace's labels with a field mask (see [`apply_label_mask`]). Like containerd (whose SetLabel
    /// creates the namespace's bucket), an update is a write: a namespace that does not exist is created.
    pub async fn update_namespace(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        mask: Vec<String>,
    ) -> Result<NamespaceRecord, StoreError> {
        let name = name.to_string();
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(NAMESPACES)?;
                let mut rec = match t.get(name.as_str())? {
                    Some(v) => decode(&name, v.value())?,
                    None => NamespaceRecord::default(),
                };
                apply_label_mask(
                    &mut rec.labels,
                    &labels,
                    &mask,
                    &format!("namespace {name:?}"),
                )?;
                t.insert(name.as_str(), encode(&rec)?.as_slice())?;
                Ok(rec)
            })
            .await
    }

    /// Delete an empty namespace: NotFound if absent, FailedPrecondition if it still holds objects.
    pub async fn delete_namespace(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(NAMESPACES)?;
                if t.get(name.as_str())?.is_none() {
                    return Err(StoreError::NotFound(format!("namespace {name}")));
                }
                let mut holds = Vec::new();
                if has_prefix(&wtx.open_table(IMAGES)?, &name)? {
                    holds.push("images");
                }
                if has_prefix(&wtx.open_table(CONTENT)?, &name)? {
                    holds.push("blobs");
                }
                if super::snapshots::namespace_has_snapshots(wtx, &name)? {
                    holds.push("snapshots");
                }
                if has_prefix(&wtx.open_table(CONTAINERS)?, &name)? {
                    holds.push("containers");
                }
                if has_prefix(&wtx.open_table(LEASES)?, &name)? {
                    holds.push("leases");
                }
                if !holds.is_empty() {
                    return Err(StoreError::FailedPrecondition(format!(
                        "namespace {name:?} must be empty, but it still has {}",
                        holds.join(", ")
                    )));
                }
                t.remove(name.as_str())?;
                Ok(())
            })
            .await
    }
}

/// Whether a (namespace, id)-keyed table has any key in `ns`.
pub(crate) fn has_prefix(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    ns: &str,
) -> Result<bool, StoreError> {
    let mut range = t.range((ns, "")..)?;
    match range.next() {
        Some(item) => {
            let (k, _) = item?;
            Ok(k.value().0 == ns)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::TempStore;

    fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn crud_and_masks() {
        let t = TempStore::new("ns-crud");
        let s = t.store();
        s.create_namespace("a", labels(&[("x", "1")]))
            .await
            .expect("create");
        assert!(matches!(
            s.create_namespace("a", HashMap::new()).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let r = s
            .update_namespace("a", labels(&[("y", "2")]), vec!["labels.y".into()])
            .await
            .expect("update");
        assert_eq!(r.labels, labels(&[("x", "1"), ("y", "2")]));
        let r = s
            .update_namespace("a", HashMap::new(), vec!["labels.x".into()])
            .await
            .expect("update");
        assert_eq!(r.labels, labels(&[("y", "2")]));
        assert!(matches!(
            s.update_namespace("a", HashMap::new(), vec!["name".into()])
                .await,
            Err(StoreError::InvalidArgument(_))
        ));
        // An update creates a missing namespace (it is a write).
        s.update_namespace("zz", labels(&[("k", "v")]), vec!["labels.k".into()])
            .await
            .expect("update creates");
        assert_eq!(
            s.namespaces().expect("list"),
            vec!["a".to_string(), "zz".to_string()]
        );
        s.delete_namespace("a").await.expect("delete");
        assert!(matches!(
            s.delete_namespace("a").await,
            Err(StoreError::NotFound(_))
        ));
    }
}
