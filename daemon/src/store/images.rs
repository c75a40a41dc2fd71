//! Image records: (namespace, name) → containerd's `Image` (name, labels, target descriptor, times). An image
//! is a GC root: its target and everything the target's labels reference stay.
//!
//! This module must never check that the target's content exists (a client may create an image before or
//! after writing its content, as containerd allows).

use std::collections::HashMap;

use containerd_client::services::v1::Image;
use prost::Message;
use redb::{ReadableTable, WriteTransaction};

use super::namespaces::{apply_label_mask, ensure_namespace};
use super::tables::{each_in_namespace, IMAGES};
use super::{now_timestamp, Store, StoreError};

fn decode(ns: &str, name: &str, bytes: &[u8]) -> Result<Image, StoreError> {
    Image::decode(bytes).map_err(|e| StoreError::Corrupt(format!("image {ns}/{name}: {e}")))
}

fn insert(wtx: &WriteTransaction, ns: &str, img: &Image) -> Result<(), StoreError> {
    wtx.open_table(IMAGES)?
        .insert((ns, img.name.as_str()), img.encode_to_vec().as_slice())?;
    Ok(())
}

/// Every image of a namespace, inside a read or write.
pub(crate) fn images_in(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    ns: &str,
) -> Result<Vec<Image>, StoreError> {
    let mut out = Vec::new();
    each_in_namespace(t, ns, |name, v| {
        out.push(decode(ns, name, v)?);
        Ok(())
    })?;
    Ok(out)
}

/// Apply an Images.Update mask: empty = replace labels and target; `labels`, `labels.<k>`, `target`.
fn apply_image_update(cur: &mut Image, new: &Image, mask: &[String]) -> Result<(), StoreError> {
    if mask.is_empty() {
        cur.labels = new.labels.clone();
        cur.labels.retain(|_, v| !v.is_empty());
        cur.target = new.target.clone();
        return Ok(());
    }
    let mut label_paths = Vec::new();
    for path in mask {
        match path.as_str() {
            "target" => cur.target = new.target.clone(),
            p if p == "labels" || p.starts_with("labels.") => label_paths.push(path.clone()),
            other => {
                return Err(StoreError::InvalidArgument(format!(
                    "cannot update {other:?} field on image {:?}",
                    cur.name
                )))
            }
        }
    }
    if !label_paths.is_empty() {
        let mut labels: HashMap<String, String> = cur.labels.clone();
        apply_label_mask(&mut labels, &new.labels, &label_paths, "image")?;
        cur.labels = labels;
    }
    Ok(())
}

impl Store {
    /// One image, if it exists.
    pub fn get_image(&self, ns: &str, name: &str) -> Result<Option<Image>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(IMAGES)?;
        let img = t
            .get((ns, name))?
            .map(|v| decode(ns, name, v.value()))
            .transpose()?;
        Ok(img)
    }

    /// Every image of a namespace, by name.
    pub fn list_images(&self, ns: &str) -> Result<Vec<Image>, StoreError> {
        let rtx = self.read()?;
        images_in(&rtx.open_table(IMAGES)?, ns)
    }

    /// Create an image (its namespace too); AlreadyExists if the name is taken. Sets the times.
    pub async fn create_image(&self, ns: &str, mut img: Image) -> Result<Image, StoreError> {
        let ns = ns.to_string();
        let now = now_timestamp();
        img.created_at = Some(now);
        img.updated_at = Some(now);
        img.labels.retain(|_, v| !v.is_empty());
        self.writer()
            .write(move |wtx| {
                if wtx
                    .open_table(IMAGES)?
                    .get((ns.as_str(), img.name.as_str()))?
                    .is_some()
                {
                    return Err(StoreError::AlreadyExists(format!("image {:?}", img.name)));
                }
                ensure_namespace(wtx, &ns)?;
                insert(wtx, &ns, &img)?;
                Ok(img)
            })
            .await
    }

    /// Update an image with a field mask; NotFound if it does not exist.
    pub async fn update_image(
        &self,
        ns: &str,
        update: Image,
        mask: Vec<String>,
    ) -> Result<Image, StoreError> {
        let ns = ns.to_string();
        self.writer()
            .write(move |wtx| {
                let mut cur = {
                    let t = wtx.open_table(IMAGES)?;
                    let found = t
                        .get((ns.as_str(), update.name.as_str()))?
                        .map(|v| decode(&ns, &update.name, v.value()))
                        .transpose()?;
                    found.ok_or_else(|| StoreError::NotFound(format!("image {:?}", update.name)))?
                };
                apply_image_update(&mut cur, &update, &mask)?;
                cur.updated_at = Some(now_timestamp());
                insert(wtx, &ns, &cur)?;
                Ok(cur)
            })
            .await
    }

    /// Delete an image; NotFound if it does not exist.
    pub async fn delete_image(&self, ns: &str, name: &str) -> Result<Image, StoreError> {
        let (ns, name) = (ns.to_string(), name.to_string());
        self.writer()
            .write(move |wtx| {
                let mut t = wtx.open_table(IMAGES)?;
                let old = t
                    .remove((ns.as_str(), name.as_str()))?
                    .map(|v| decode(&ns, &name, v.value()))
                    .transpose()?;
                old.ok_or_else(|| StoreError::NotFound(format!("image {name:?}")))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::TempStore;
    use containerd_client::types::Descriptor;

    fn image(name: &str, digest: &str) -> Image {
        Image {
            name: name.into(),
            target: Some(Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: digest.into(),
                size: 10,
                annotations: Default::default(),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn crud_and_masks() {
        let t = TempStore::new("images");
        let s = t.store();
        let img = s
            .create_image("n", image("a", "sha256:1"))
            .await
            .expect("create");
        assert!(img.created_at.is_some());
        assert!(matches!(
            s.create_image("n", image("a", "sha256:1")).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let mut upd = image("a", "sha256:2");
        upd.labels.insert("k".into(), "v".into());
        let img = s
            .update_image("n", upd.clone(), vec!["labels.k".into()])
            .await
            .expect("labels");
        assert_eq!(img.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(
            img.target.as_ref().map(|t| t.digest.as_str()),
            Some("sha256:1")
        );
        let img = s.update_image("n", upd, vec![]).await.expect("replace");
        assert_eq!(img.target.map(|t| t.digest), Some("sha256:2".into()));
        assert!(matches!(
            s.update_image("n", image("a", "x"), vec!["name".into()])
                .await,
            Err(StoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.delete_namespace("n").await,
            Err(StoreError::FailedPrecondition(_))
        ));
        s.delete_image("n", "a").await.expect("delete");
        assert!(s.get_image("n", "a").expect("get").is_none());
    }
}
