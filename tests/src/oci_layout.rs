//! OCI image layouts for tests: the busybox image, and any image built from layer tars.
//!
//! Layers are written with our own tar and gzip writers ([`crate::archive`], re-exported here;
//! see there why). Images are deterministic (fixed mtimes and timestamps), so digests are
//! stable across runs. This module only writes below the dir it is given.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub use crate::archive::{crc32, gzip, Entry, EntryKind, TarBuilder, TAR_MTIME};

/// OCI media types used here.
pub mod media {
    /// Image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// Image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// gzip layer.
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// Uncompressed layer.
    pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Descriptor {
    /// Descriptor of `data` with `media_type`.
    pub fn of(media_type: &str, data: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: sha256_digest(data),
            size: data.len() as u64,
        }
    }

    /// As OCI JSON (`mediaType`, `digest`, `size`).
    pub fn to_json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// An OCI image layout written to disk.
#[derive(Debug, Clone)]
pub struct OciLayout {
    /// The layout dir (holds `oci-layout`, `index.json`, `blobs/`).
    pub path: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name` in index.json).
    pub tag: String,
    /// The image manifest.
    pub manifest: Descriptor,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
    /// `sha256:` digests of the uncompressed layer tars (the config's `rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
}

impl OciLayout {
    /// Path of the blob with `digest`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.path, digest)
    }

    /// Bytes of the blob with `digest`.
    #[track_caller]
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let p = self.blob_path(digest);
        std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read blob {}: {e}", p.display()))
    }

    /// Every blob of the image: config first, then the layers.
    pub fn blobs(&self) -> Vec<Descriptor> {
        std::iter::once(self.config.clone())
            .chain(self.layers.iter().cloned())
            .collect()
    }
}

impl AsRef<Path> for OciLayout {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// `<layout>/blobs/<alg>/<hex>` for `digest` (`<alg>:<hex>`).
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(alg).join(hex)
}

/// Store `data` as a blob of the layout at `layout`; returns its descriptor.
#[track_caller]
pub fn write_blob(layout: &Path, media_type: &str, data: &[u8]) -> Descriptor {
    let d = Descriptor::of(media_type, data);
    let p = blob_path(layout, &d.digest);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    d
}

/// The OCI architecture name of this host (`amd64`, `arm64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Write an image layout at `dir` with the given uncompressed layer tars (base first), each
/// stored gzip-compressed, an image config (`config` is merged into the config's `config`
/// field: `Cmd`, `Env`, ...), a manifest and an index tagging it `tag`.
#[track_caller]
pub fn write_image(dir: &Path, layer_tars: &[Vec<u8>], config: Value, tag: &str) -> OciLayout {
    let image = write_manifest(dir, layer_tars, config, host_arch(), tag);
    let mut entry = image.manifest.to_json();
    entry["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    entry["platform"] = json!({ "architecture": host_arch(), "os": "linux" });
    write_index_json(dir, &[entry]);
    image
}

/// Write the blobs of one image (layers, config for `arch`/linux, manifest) into the layout at
/// `dir`, without touching index.json.
#[track_caller]
pub fn write_manifest(
    dir: &Path,
    layer_tars: &[Vec<u8>],
    config: Value,
    arch: &str,
    tag: &str,
) -> OciLayout {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layer_tars {
        diff_ids.push(sha256_digest(tar));
        layers.push(write_blob(dir, media::LAYER_GZIP, &gzip(tar)));
    }
    let mut image_config = json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"]
    });
    if let (Some(base), Value::Object(extra)) = (image_config.as_object_mut(), config) {
        base.extend(extra);
    }
    let config_json = json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": image_config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layer_tars.iter().map(|_| json!({
            "created": "2026-01-01T00:00:00Z",
            "created_by": "berth-tests"
        })).collect::<Vec<_>>()
    });
    let config = write_blob(dir, media::CONFIG, &to_bytes(&config_json));
    let manifest_json = json!({
        "schemaVersion": 2,
        "mediaType": media::MANIFEST,
        "config": config.to_json(),
        "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>()
    });
    let manifest = write_blob(dir, media::MANIFEST, &to_bytes(&manifest_json));
    OciLayout {
        path: dir.to_path_buf(),
        tag: tag.into(),
        manifest,
        config,
        layers,
        diff_ids,
    }
}

/// Write `oci-layout` and an `index.json` listing `manifests` (descriptor JSON objects).
#[track_caller]
pub fn write_index_json(dir: &Path, manifests: &[Value]) {
    let index = json!({ "schemaVersion": 2, "mediaType": media::INDEX, "manifests": manifests });
    for (name, value) in [
        ("oci-layout", json!({ "imageLayoutVersion": "1.0.0" })),
        ("index.json", index),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, to_bytes(&value))
            .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
}

/// A multi-platform image in an OCI layout: index.json tags an image index blob that lists
/// one manifest per platform.
#[derive(Debug, Clone)]
pub struct MultiPlatformLayout {
    /// The layout dir.
    pub path: PathBuf,
    /// The tag.
    pub tag: String,
    /// The image index blob (what the tag points to).
    pub index: Descriptor,
    /// `(architecture, image)` per platform, in index order.
    pub images: Vec<(String, OciLayout)>,
}

/// Write a multi-platform image at `dir`: for each `(architecture, layer tars)` an image
/// (linux/`architecture`), an image index listing them with their platforms, and index.json
/// tagging that index `tag`. Push it with `Registry::push_oci_layout`, which pushes every
/// manifest (the trap of `skopeo copy` without `--all` does not apply).
#[track_caller]
pub fn write_multi_platform(
    dir: &Path,
    variants: &[(&str, Vec<Vec<u8>>)],
    tag: &str,
) -> MultiPlatformLayout {
    let mut images = Vec::new();
    let mut entries = Vec::new();
    for (arch, tars) in variants {
        let config = json!({ "Labels": { "berth.test.arch": arch } });
        let image = write_manifest(dir, tars, config, arch, tag);
        let mut entry = image.manifest.to_json();
        entry["platform"] = json!({ "architecture": arch, "os": "linux" });
        entries.push(entry);
        images.push((arch.to_string(), image));
    }
    let index_json = json!({ "schemaVersion": 2, "mediaType": media::INDEX, "manifests": entries });
    let index = write_blob(dir, media::INDEX, &to_bytes(&index_json));
    let mut top = index.to_json();
    top["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    write_index_json(dir, &[top]);
    MultiPlatformLayout {
        path: dir.to_path_buf(),
        tag: tag.into(),
        index,
        images,
    }
}

/// The busybox layer for the host's architecture and a small layer standing for another
/// architecture (`arm64`, or `amd64` on an arm64 host), as a multi-platform layout.
#[track_caller]
pub fn busybox_multi_platform_layout(dir: &Path) -> MultiPlatformLayout {
    let other = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let mut t = TarBuilder::new();
    t.dir("etc", 0o755)
        .file("etc/arch", 0o644, format!("{other}\n").as_bytes());
    write_multi_platform(
        dir,
        &[
            (host_arch(), vec![busybox_layer_tar()]),
            (other, vec![t.finish()]),
        ],
        "latest",
    )
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The busybox image (one layer: the rootfs of [`crate::bundle::busybox_rootfs`]) as an OCI
/// layout at `dir`, tagged `latest`.
#[track_caller]
pub fn busybox_layout(dir: &Path) -> OciLayout {
    write_image(dir, &[busybox_layer_tar()], json!({}), "latest")
}

/// The busybox rootfs as an uncompressed layer tar: dirs, /bin/busybox (a copy of the host's
/// busybox-static), applet symlinks, /etc/passwd, /etc/group.
#[track_caller]
pub fn busybox_layer_tar() -> Vec<u8> {
    let busybox = std::fs::read(crate::bundle::HOST_BUSYBOX).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); install busybox-static",
            crate::bundle::HOST_BUSYBOX
        )
    });
    let mut t = TarBuilder::new();
    for d in ["bin", "etc", "root", "proc", "sys", "dev", "run", "var"] {
        t.dir(d, 0o755);
    }
    t.dir("tmp", 0o1777);
    t.file("bin/busybox", 0o755, &busybox);
    for applet in crate::bundle::busybox_applets() {
        t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.file("etc/passwd", 0o644, crate::bundle::PASSWD.as_bytes());
    t.file("etc/group", 0o644, crate::bundle::GROUP.as_bytes());
    t.finish()
}
