//! Containers in the store: (namespace, id) → the containerd `Container` message, prost-encoded.
//!
//! Field-mask updates follow containerd: with no mask, the mutable fields (labels, spec, extensions, image,
//! snapshot key) are replaced and immutable ones (runtime name, snapshotter) must match. This module must never
//! accept a write that leaves a container without a runtime name or a spec.

use containerd_client::services::v1::Container;
use prost::Message;
use redb::{ReadableTable, WriteTransaction};

use super::namespaces::{apply_label_mask, ensure_namespace};
use super::tables::{each_in_namespace, CONTAINERS};
use super::{now_timestamp, Store, StoreError};

fn decode(ns: &str, id: &str, bytes: &[u8]) -> Result<Container, StoreError> {
    Container::decode(bytes).map_err(|e| StoreError::Corrupt(format!("container {ns}/{id}: {e}")))
}

/// Apply `update` to `current` following `mask` (containerd's Containers.Update rules).
pub fn apply_container_update(
    current: &mut Container,
    update: &Container,
    mask: &[String],
) -> Result<(), StoreError> {
    let what = format!("container {:?}", current.id);
    let paths: Vec<String> = if mask.is_empty() {
        if !update.snapshotter.is_empty() && update.snapshotter != current.snapshotter {
            return Err(StoreError::InvalidArgument(format!(
                "{what}: snapshotter is immutable"
            )));
        }
        let cur_rt = current
            .runtime
            .as_ref()
            .map(|r| r.name.as_str())
            .unwrap_or("");
        if let Some(rt) = &update.runtime {
            if !rt.name.is_empty() && rt.name != cur_rt {
                return Err(StoreError::InvalidArgument(format!(
                    "{what}: runtime name is immutable"
                )));
            }
        }
        ["labels", "spec", "extensions", "image", "snapshot_key"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        mask.to_vec()
    };
    for path in &paths {
        match path.as_str() {
            "labels" => apply_label_mask(
                &mut current.labels,
                &update.labels,
                &["labels".into()],
                &what,
            )?,
            p if p.starts_with("labels.") => apply_label_mask(
                &mut current.labels,
                &update.labels,
                std::slice::from_ref(path),
                &what,
            )?,
            "image" => current.image = update.image.clone(),
            "spec" => {
                if update.spec.is_none() {
                    return Err(StoreError::InvalidArgument(format!(
                        "{what}: spec must not be empty"
                    )));
                }
                current.spec = update.spec.clone();
            }
            "runtime" => match &update.runtime {
                Some(rt) if !rt.name.is_empty() => current.runtime = update.runtime.clone(),
                _ => {
                    return Err(StoreError::InvalidArgument(format!(
                        "{what}: runtime name must not be empty"
                    )))
                }
            },
            "runtime.options" => {
                if let Some(rt) = current.runtime.as_mut() {
                    rt.options = update.runtime.as_ref().and_then(|r| r.options.clone());
                }
            }
            "snapshotter" => current.snapshotter = update.snapshotter.clone(),
            "snapshot_key" | "snapshotkey" => current.snapshot_key = update.snapshot_key.clone(),
            "extensions" => current.extensions = update.extensions.clone(),
            p if p.starts_with("extensions.") => {
                let key = &p["extensions.".len()..];
                match update.extensions.get(key) {
                    Some(v) => {
                        current.extensions.insert(key.to_string(), v.clone());
                    }
                    None => {
                        current.extensions.remove(key);
                    }
                }
            }
            other => {
                return Err(StoreError::InvalidArgument(format!(
                    "cannot update {other:?} field on {what}"
                )))
            }
        }
    }
    Ok(())
}

fn insert(wtx: &WriteTransaction, ns: &str, c: &Container) -> Result<(), StoreError> {
    let mut t = wtx.open_table(CONTAINERS)?;
    t.insert((ns, c.id.as_str()), c.encode_to_vec().as_slice())?;
    Ok(())
}

impl Store {
    /// One container, if it exists.
    pub fn get_container(&self, ns: &str, id: &str) -> Result<Option<Container>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(CONTAINERS)?;
        let c = t
            .get((ns, id))?
            .map(|v| decode(ns, id, v.value()))
            .transpose()?;
        Ok(c)
    }

    /// All containers of a namespace, by id.
    pub fn list_containers(&self, ns: &str) -> Result<Vec<Container>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(CONTAINERS)?;
        let mut out = Vec::new();
        each_in_namespace(&t, ns, |id, v| {
            out.push(decode(ns, id, v)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Every (namespace, container) pair (recovery).
    pub fn all_containers(&self) -> Result<Vec<(String, Container)>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(CONTAINERS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let (ns, id) = k.value();
            out.push((ns.to_string(), decode(ns, id, v.value())?));
        }
        Ok(out)
    }

    /// Create a container (creating its namespace if needed); sets created_at/updated_at. AlreadyExists if the
    /// id is taken.
    pub async fn create_container(
        &self,
        ns: &str,
        mut c: Container,
    ) -> Result<Container, StoreError> {
        let ns = ns.to_string();
        let now = now_timestamp();
        c.created_at = Some(now);
        c.updated_at = Some(now);
        self.writer()
            .write(move |wtx| {
                {
                    let t = wtx.open_table(CONTAINERS)?;
                    if t.get((ns.as_str(), c.id.as_str()))?.is_some() {
                        return Err(StoreError::AlreadyExists(format!("container {:?}", c.id)));
                    }
                }
                ensure_namespace(wtx, &ns)?;
                insert(wtx, &ns, &c)?;
                Ok(c)
            })
            .await
    }

    /// Update a container with a field mask; NotFound if it does not exist.
    pub async fn update_container(
        &self,
        ns: &str,
        update: Container,
        mask: Vec<String>,
    ) -> Result<Container, StoreError> {
        let ns = ns.to_string();
        self.writer()
            .write(move |wtx| {
                let mut cur = {
                    let t = wtx.open_table(CONTAINERS)?;
                    let found = t
                        .get((ns.as_str(), update.id.as_str()))?
                        .map(|v| decode(&ns, &update.id, v.value()))
                        .transpose()?;
                    found
                        .ok_or_else(|| StoreError::NotFound(format!("container {:?}", update.id)))?
                };
                apply_container_update(&mut cur, &update, &mask)?;
                cur.updated_at = Some(now_timestamp());
                insert(wtx, &ns, &cur)?;
                Ok(cur)
            })
            .await
    }

    /// Delete a container; NotFound if it does not exist. Returns the deleted record.
    pub async fn delete_container(&self, ns: &str, id: &str) -> Result<Container, StoreError> {
        let ns = ns.to_string();
        let id = id.to_string();
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(CONTAINERS)?;
                let old = t
                    .remove((ns.as_str(), id.as_str()))?
                    .map(|v| decode(&ns, &id, v.value()))
                    .transpose()?;
                old.ok_or_else(|| StoreError::NotFound(format!("container {id:?}")))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::TempStore;
    use containerd_client::services::v1::container::Runtime;

    fn container(id: &str) -> Container {
        Container {
            id: id.into(),
            runtime: Some(Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: berth_proto::SPEC_TYPE_URL.into(),
                value: b"{}".to_vec(),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn crud_masks_and_namespace_rules() {
        let mut t = TempStore::new("containers");
        let s = t.store().clone();
        let c = s
            .create_container("ns1", container("c1"))
            .await
            .expect("create");
        assert!(c.created_at.is_some());
        assert!(matches!(
            s.create_container("ns1", container("c1")).await,
            Err(StoreError::AlreadyExists(_))
        ));
        s.create_container("ns2", container("c1"))
            .await
            .expect("other ns");
        assert_eq!(
            s.namespaces().expect("ns"),
            vec!["ns1".to_string(), "ns2".to_string()]
        );
        let mut upd = container("c1");
        upd.labels.insert("a".into(), "b".into());
        upd.image = "img".into();
        let c = s
            .update_container("ns1", upd.clone(), vec!["labels.a".into()])
            .await
            .expect("update");
        assert_eq!(c.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(c.image, "");
        let c = s
            .update_container("ns1", upd.clone(), vec![])
            .await
            .expect("replace");
        assert_eq!(c.image, "img");
        upd.snapshotter = "other".into();
        assert!(matches!(
            s.update_container("ns1", upd, vec![]).await,
            Err(StoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.delete_namespace("ns1").await,
            Err(StoreError::FailedPrecondition(_))
        ));
        assert_eq!(s.list_containers("ns1").expect("list").len(), 1);
        drop(s);
        t.reopen();
        let s = t.store().clone();
        assert_eq!(
            s.get_container("ns1", "c1")
                .expect("get")
                .expect("kept")
                .image,
            "img"
        );
        s.delete_container("ns1", "c1").await.expect("delete");
        assert!(matches!(
            s.delete_container("ns1", "c1").await,
            Err(StoreError::NotFound(_))
        ));
        s.delete_namespace("ns1").await.expect("empty ns deleted");
    }
}
