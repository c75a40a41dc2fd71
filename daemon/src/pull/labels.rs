//! The labels a pull writes on content, exactly as containerd's client and Transfer service write them:
//! garbage-collection references from a parent to its children (`containerd.io/gc.ref.content.config`,
//! `….l.<i>` for layers, `….m.<i>` for manifests, `….<i>` for anything else, counted per kind), the
//! distribution source (`containerd.io/distribution.source.<host>` = the repositories the blob came from,
//! comma-separated and sorted), `containerd.io/uncompressed` on applied layers, and
//! `containerd.io/gc.ref.snapshot.<snapshotter>` on a config whose layers were unpacked.
//!
//! This module only computes label maps; it must never decide what to fetch.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use berth_image::oci::{media, Descriptor};

/// Label of a layer's uncompressed digest.
pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Prefix of the distribution source labels.
pub const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";
/// Label on a snapshot naming its chain id (containerd 2.x's unpacker).
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";

/// The gc reference label of a config on its config: `containerd.io/gc.ref.snapshot.<snapshotter>`.
pub fn snapshot_ref(snapshotter: &str) -> String {
    format!("containerd.io/gc.ref.snapshot.{snapshotter}")
}

/// containerd's label key (prefix) for a child of a manifest or an index.
fn child_key(d: &Descriptor) -> &'static str {
    let mt = d.media_type.as_str();
    if media::is_config(mt) {
        "containerd.io/gc.ref.content.config"
    } else if media::is_manifest(mt) {
        "containerd.io/gc.ref.content.m."
    } else if media::is_layer(mt) {
        "containerd.io/gc.ref.content.l."
    } else {
        "containerd.io/gc.ref.content."
    }
}

/// The gc labels a parent gets for its `children` (in order).
pub fn child_gc_labels(children: &[&Descriptor]) -> BTreeMap<String, String> {
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut out = BTreeMap::new();
    for c in children {
        let key = child_key(c);
        let idx = counts.entry(key).or_insert(0);
        let name = if *idx > 0 || key.ends_with('.') {
            format!("{key}{idx}")
        } else {
            key.to_string()
        };
        *idx += 1;
        out.insert(name, c.digest.clone());
    }
    out
}

/// The host part of a registry name as containerd's label uses it (no port; IPv6 without brackets).
pub fn source_host(registry: &str) -> String {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(registry, |(h, _)| h)
        .to_string()
}

/// The distribution source label for `repository` on `registry`, merged into `existing` (the blob's current
/// value, if any): `(key, value)`.
pub fn distribution_source(
    registry: &str,
    repository: &str,
    existing: Option<&str>,
) -> (String, String) {
    let key = format!("{DISTRIBUTION_SOURCE}{}", source_host(registry));
    let mut repos: BTreeSet<&str> = existing
        .map(|v| v.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    repos.insert(repository);
    let value = repos.into_iter().collect::<Vec<_>>().join(",");
    (key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(mt: &str, digest: &str) -> Descriptor {
        Descriptor {
            media_type: mt.into(),
            digest: digest.into(),
            size: 1,
            ..Default::default()
        }
    }

    #[test]
    fn manifest_children() {
        let c = d(media::OCI_CONFIG, "sha256:c");
        let l0 = d(media::OCI_LAYER_GZIP, "sha256:0");
        let l1 = d(media::DOCKER_LAYER_GZIP, "sha256:1");
        let labels = child_gc_labels(&[&c, &l0, &l1]);
        assert_eq!(labels["containerd.io/gc.ref.content.config"], "sha256:c");
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], "sha256:0");
        assert_eq!(labels["containerd.io/gc.ref.content.l.1"], "sha256:1");
        assert_eq!(labels.len(), 3);
    }

    #[test]
    fn index_children() {
        let a = d(media::OCI_MANIFEST, "sha256:a");
        let b = d(media::DOCKER_MANIFEST, "sha256:b");
        let i = d(media::OCI_INDEX, "sha256:i");
        let labels = child_gc_labels(&[&a, &b, &i]);
        assert_eq!(labels["containerd.io/gc.ref.content.m.0"], "sha256:a");
        assert_eq!(labels["containerd.io/gc.ref.content.m.1"], "sha256:b");
        assert_eq!(labels["containerd.io/gc.ref.content.0"], "sha256:i");
    }

    #[test]
    fn sources() {
        assert_eq!(source_host("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(source_host("docker.io"), "docker.io");
        assert_eq!(source_host("[::1]:5000"), "::1");
        assert_eq!(
            distribution_source("127.0.0.1:5000", "busybox", None),
            (
                "containerd.io/distribution.source.127.0.0.1".into(),
                "busybox".into()
            )
        );
        assert_eq!(
            distribution_source("docker.io", "library/a", Some("library/b,library/a")).1,
            "library/a,library/b"
        );
    }
}
