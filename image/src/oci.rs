//! OCI image-spec and Docker schema2 JSON types: descriptors, manifests, indexes, image configs, platforms.
//!
//! Shared by the unpacker, the archive importer/exporter, the registry client and berthd. Plain data with
//! serde: field names follow the specs exactly (camelCase), unknown fields are ignored on input and absent
//! optional fields are omitted on output, so a re-serialised manifest keeps its meaning. Digests of stored
//! manifests are always computed over the bytes as received, never over a re-serialisation: this module must
//! never be used to produce bytes whose digest is expected to match the original.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Media types Berth reads and writes.
pub mod media {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI layer, uncompressed.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI layer, gzip.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI layer, zstd.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// OCI non-distributable layer, uncompressed (deprecated, still seen).
    pub const OCI_LAYER_NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    /// OCI non-distributable layer, gzip.
    pub const OCI_LAYER_NONDIST_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    /// OCI non-distributable layer, zstd.
    pub const OCI_LAYER_NONDIST_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    /// Docker schema2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker layer, gzip.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker foreign layer, gzip.
    pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// Docker layer, uncompressed (seen in `docker save` manifests).
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

    /// Whether `mt` names a single-platform manifest.
    pub fn is_manifest(mt: &str) -> bool {
        mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
    }

    /// Whether `mt` names an index / manifest list.
    pub fn is_index(mt: &str) -> bool {
        mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
    }

    /// Whether `mt` names an image config.
    pub fn is_config(mt: &str) -> bool {
        mt == OCI_CONFIG || mt == DOCKER_CONFIG
    }

    /// Whether `mt` names a layer (any compression).
    pub fn is_layer(mt: &str) -> bool {
        mt.starts_with("application/vnd.oci.image.layer.")
            || mt.starts_with("application/vnd.docker.image.rootfs.")
    }
}

/// Annotation holding an image's reference name in an OCI layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd writes with the full image name in exported indexes.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A platform as the image spec describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (GOARCH spelling: amd64, arm64, ...).
    pub architecture: String,
    /// Operating system (GOOS spelling: linux, ...).
    pub os: String,
    /// OS version (Windows only in practice).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    /// OS features.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// CPU variant (v7, v8, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    /// The platform this process runs on, in GOARCH/GOOS spelling.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Platform {
            architecture: architecture.to_string(),
            os: std::env::consts::OS.to_string(),
            variant: if architecture == "arm64" {
                "v8".to_string()
            } else {
                String::new()
            },
            ..Default::default()
        }
    }

    /// Parse `os/arch[/variant]` (e.g. `linux/amd64`, `linux/arm/v7`).
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let arch = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().unwrap_or("");
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            architecture: arch.to_string(),
            os: os.to_string(),
            variant: variant.to_string(),
            ..Default::default()
        })
    }

    /// Whether an image for `candidate` runs where `self` is wanted: same os and architecture, and the same
    /// variant when both name one (arm64's v8 is the default and matches an empty variant).
    pub fn matches(&self, candidate: &Platform) -> bool {
        let norm = |p: &Platform| {
            if p.architecture == "arm64" && p.variant == "v8" {
                String::new()
            } else {
                p.variant.clone()
            }
        };
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && (norm(self).is_empty()
                || norm(candidate).is_empty()
                || norm(self) == norm(candidate))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// A content descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
    /// Alternate download locations (foreign layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform (in indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Artifact type (image-spec 1.1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub artifact_type: String,
}

/// An image manifest (OCI or Docker schema2: same shape).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type (optional in OCI, required in Docker).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The image config blob.
    pub config: Descriptor,
    /// Layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Subject (image-spec 1.1 referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// Child manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    /// The child manifest for `want`: the first one whose platform matches (a child without a platform
    /// matches only when it is the sole child).
    pub fn select(&self, want: &Platform) -> Option<&Descriptor> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
            .or_else(|| match self.manifests.as_slice() {
                [only] if only.platform.is_none() => Some(only),
                _ => None,
            })
    }
}

/// The runtime part of an image config (`config` in the JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Default user.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Ports to expose (`80/tcp` → {}).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// Environment, `K=V`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Stop signal (`SIGTERM`, `15`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
}

/// The rootfs part of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed digests of the layers, base first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// An image config (OCI or Docker: the fields Berth uses are common to both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Creation time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
    /// OS.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    /// Runtime defaults.
    #[serde(default)]
    pub config: RunConfig,
    /// Layer diff ids.
    #[serde(default)]
    pub rootfs: RootFs,
}

impl ImageConfig {
    /// The config's platform.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            ..Default::default()
        }
    }
}

/// containerd's chain ids: `chain[0] = diff_ids[0]`, `chain[i] = sha256(chain[i-1] + " " + diff_ids[i])`.
/// Snapshots of unpacked layers are named by these, so every client computes the same names.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::{Digest as _, Sha256};
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let h = Sha256::digest(format!("{prev} {d}").as_bytes());
                format!("sha256:{}", hex::encode(h))
            }
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_matching() {
        let amd = Platform::parse("linux/amd64").expect("parses");
        assert!(amd.matches(&Platform::parse("linux/amd64").expect("parses")));
        assert!(!amd.matches(&Platform::parse("linux/arm64").expect("parses")));
        let v8 = Platform::parse("linux/arm64/v8").expect("parses");
        assert!(v8.matches(&Platform::parse("linux/arm64").expect("parses")));
        assert!(!Platform::parse("linux/arm/v7")
            .expect("parses")
            .matches(&Platform::parse("linux/arm/v6").expect("parses")));
        assert!(Platform::parse("linux").is_none());
        assert_eq!(amd.to_string(), "linux/amd64");
    }

    #[test]
    fn index_selects_host_platform() {
        let idx: Index = serde_json::from_str(
            r#"{"schemaVersion":2,"manifests":[
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,
               "platform":{"architecture":"arm64","os":"linux"}},
              {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,
               "platform":{"architecture":"amd64","os":"linux"}}]}"#,
        )
        .expect("parses");
        let amd = Platform::parse("linux/amd64").expect("parses");
        assert_eq!(
            idx.select(&amd).map(|d| d.digest.as_str()),
            Some("sha256:bb")
        );
    }

    #[test]
    fn chain_ids_follow_containerd() {
        let a = "sha256:".to_string() + &"a".repeat(64);
        let b = "sha256:".to_string() + &"b".repeat(64);
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        use sha2::{Digest as _, Sha256};
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(c[1], want);
    }

    #[test]
    fn config_fields_round_trip() {
        let cfg: ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"],
                "WorkingDir":"/w","StopSignal":"SIGQUIT"},"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#,
        )
        .expect("parses");
        assert_eq!(cfg.config.cmd.as_deref(), Some(&["sh".to_string()][..]));
        assert_eq!(cfg.config.stop_signal, "SIGQUIT");
        assert_eq!(cfg.rootfs.diff_ids, vec!["sha256:x".to_string()]);
        assert_eq!(cfg.platform().to_string(), "linux/amd64");
    }
}
