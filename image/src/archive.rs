//! Import and export of image archives: OCI image-layout tarballs and `docker save` tarballs.
//!
//! Import streams the archive entry by entry into the content store (every blob verified against
//! its name's digest, nothing buffered but the small JSON index files); a docker-save archive gets a
//! synthesized docker schema2 manifest so the result has real descriptors. Export writes an OCI
//! layout tar (plus docker's `manifest.json`, as containerd's exporter does) with every reachable
//! blob once, in a deterministic order. This module must never store a blob it did not verify.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{self, media, Descriptor, Index, Manifest};
use crate::tarw::{TarHeader, TarWriter};
use crate::unpack::root::clean;
use crate::unpack::Compression;

/// An image found in (or to be written to) an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// Its name (`io.containerd.image.name`, `org.opencontainers.image.ref.name`, or a docker
    /// RepoTag, as found: not normalised).
    pub name: Option<String>,
    /// The root descriptor (manifest or index).
    pub descriptor: Descriptor,
}

/// Export options.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Also write docker's `manifest.json` (for `docker load`).
    pub docker_manifest: bool,
}

/// One entry of docker's `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

const SMALL_MAX: u64 = 64 << 20;
static IMPORT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn arch_err(msg: impl Into<String>) -> Error {
    Error::Archive(msg.into())
}

/// Store a blob from `r`, verified against `expected` when given; an already stored blob is fine.
fn store_blob(
    store: &ContentStore,
    r: &mut dyn Read,
    size: u64,
    expected: Option<&Digest>,
    shown: &str,
) -> Result<Digest> {
    let n = IMPORT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let reference = match expected {
        Some(d) => format!("import-{d}"),
        None => format!("import-{}-{n}-{shown}", std::process::id()),
    };
    let mut w = match store.writer(&reference, Some(size), expected.cloned()) {
        Ok(w) => w,
        Err(Error::AlreadyExists(d)) => return Ok(d),
        Err(e) => return Err(e),
    };
    w.truncate()?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = r
            .read(&mut buf)
            .map_err(|e| arch_err(format!("reading {shown}: {e}")))?;
        if k == 0 {
            break;
        }
        w.write(&buf[..k])?;
    }
    match w.commit(Some(size), expected.cloned()) {
        Ok(d) | Err(Error::AlreadyExists(d)) => Ok(d),
        Err(Error::DigestMismatch {
            expected, actual, ..
        }) => Err(arch_err(format!(
            "{shown}: digest mismatch: the archive names {expected} but the data is {actual}"
        ))),
        Err(e) => Err(e),
    }
}

/// Import an OCI layout tar or a docker-save tar into `store`; returns the images found.
pub fn import<R: Read>(store: &ContentStore, reader: R) -> Result<Vec<ArchiveImage>> {
    let mut archive = tar::Archive::new(reader);
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    let mut by_path: HashMap<String, (Digest, u64)> = HashMap::new();
    let mut aliases: HashMap<String, String> = HashMap::new();
    let entries = archive
        .entries()
        .map_err(|e| arch_err(format!("not a tar: {e}")))?;
    for e in entries {
        let mut e = e.map_err(|e| arch_err(format!("reading the archive: {e}")))?;
        let raw = e.path_bytes().into_owned();
        let path = clean(&raw).to_string_lossy().into_owned();
        let kind = e.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let link = e
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let target = if kind.is_symlink() && !link.starts_with(b"/") {
                let parent = Path::new(&path).parent().unwrap_or(Path::new(""));
                let mut j = parent.as_os_str().as_encoded_bytes().to_vec();
                j.push(b'/');
                j.extend_from_slice(&link);
                clean(&j)
            } else {
                clean(&link)
            };
            aliases.insert(path, target.to_string_lossy().into_owned());
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = e.size();
        if matches!(
            path.as_str(),
            "index.json" | "oci-layout" | "manifest.json" | "repositories"
        ) {
            if size > SMALL_MAX {
                return Err(arch_err(format!("{path} is {size} bytes: too big")));
            }
            let mut v = Vec::with_capacity(size as usize);
            e.read_to_end(&mut v)
                .map_err(|x| arch_err(format!("reading {path}: {x}")))?;
            small.insert(path, v);
            continue;
        }
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let d = Digest::parse(&format!("sha256:{hex}"))
                .map_err(|x| arch_err(format!("{path}: {x}")))?;
            store_blob(store, &mut e, size, Some(&d), &path)?;
            by_path.insert(path, (d, size));
            continue;
        }
        let base = path.rsplit('/').next().unwrap_or("");
        if base == "VERSION" || base == "json" {
            continue;
        }
        let d = store_blob(store, &mut e, size, None, &path)?;
        by_path.insert(path, (d, size));
    }
    if let Some(index) = small.get("index.json") {
        return import_oci(store, index);
    }
    if let Some(manifest) = small.get("manifest.json") {
        return import_docker(store, manifest, &by_path, &aliases);
    }
    Err(arch_err(
        "neither index.json (OCI layout) nor manifest.json (docker save) in the archive",
    ))
}

fn import_oci(store: &ContentStore, index: &[u8]) -> Result<Vec<ArchiveImage>> {
    let index: Index =
        serde_json::from_slice(index).map_err(|e| arch_err(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for d in index.manifests {
        let mut blobs = BTreeMap::new();
        reachable(store, &d, &mut blobs)?;
        let name = d
            .annotations
            .get(oci::ANNOTATION_CONTAINERD_NAME)
            .or_else(|| d.annotations.get(oci::ANNOTATION_REF_NAME))
            .cloned();
        out.push(ArchiveImage {
            name,
            descriptor: d,
        });
    }
    Ok(out)
}

fn resolve<'a>(aliases: &'a HashMap<String, String>, mut p: &'a str) -> &'a str {
    for _ in 0..16 {
        match aliases.get(p) {
            Some(t) => p = t,
            None => break,
        }
    }
    p
}

fn import_docker(
    store: &ContentStore,
    manifest: &[u8],
    by_path: &HashMap<String, (Digest, u64)>,
    aliases: &HashMap<String, String>,
) -> Result<Vec<ArchiveImage>> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(manifest).map_err(|e| arch_err(format!("manifest.json: {e}")))?;
    let find = |p: &str| -> Result<(Digest, u64)> {
        let c = clean(p.as_bytes()).to_string_lossy().into_owned();
        by_path.get(resolve(aliases, &c)).cloned().ok_or_else(|| {
            arch_err(format!(
                "manifest.json names {p:?}, which is not in the archive"
            ))
        })
    };
    let mut out = Vec::new();
    for e in entries {
        let (cd, cs) = find(&e.config)?;
        let config = Descriptor {
            media_type: media::DOCKER_CONFIG.into(),
            digest: cd.to_string(),
            size: cs as i64,
            ..Default::default()
        };
        let mut layers = Vec::new();
        for l in &e.layers {
            let (ld, ls) = find(l)?;
            let head = store.read_at(&ld, 0, 8)?;
            let mt = match Compression::sniff(&head) {
                Compression::Gzip => media::DOCKER_LAYER_GZIP,
                Compression::Zstd => media::OCI_LAYER_ZSTD,
                Compression::None => media::DOCKER_LAYER,
            };
            layers.push(Descriptor {
                media_type: mt.into(),
                digest: ld.to_string(),
                size: ls as i64,
                ..Default::default()
            });
        }
        let m = Manifest {
            schema_version: 2,
            media_type: media::DOCKER_MANIFEST.into(),
            config,
            layers,
            ..Default::default()
        };
        let bytes = serde_json::to_vec(&m).map_err(|x| arch_err(format!("manifest: {x}")))?;
        let md = Digest::of(&bytes);
        store_blob(
            store,
            &mut &bytes[..],
            bytes.len() as u64,
            Some(&md),
            "synthesized manifest",
        )?;
        let descriptor = Descriptor {
            media_type: media::DOCKER_MANIFEST.into(),
            digest: md.to_string(),
            size: bytes.len() as i64,
            ..Default::default()
        };
        match e.repo_tags.filter(|t| !t.is_empty()) {
            Some(tags) => out.extend(tags.into_iter().map(|t| ArchiveImage {
                name: Some(t),
                descriptor: descriptor.clone(),
            })),
            None => out.push(ArchiveImage {
                name: None,
                descriptor,
            }),
        }
    }
    Ok(out)
}

fn parse_digest(d: &Descriptor) -> Result<Digest> {
    Digest::parse(&d.digest).map_err(|e| arch_err(format!("descriptor {}: {e}", d.digest)))
}

fn read_json<T: serde::de::DeserializeOwned>(store: &ContentStore, d: &Digest) -> Result<T> {
    let mut f = store.open_blob(d)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)
        .map_err(|e| Error::io("read", store.blob_path(d), e))?;
    serde_json::from_slice(&v).map_err(|e| arch_err(format!("{d}: {e}")))
}

/// Every blob reachable from `d` (indexes: children missing from the store are skipped, as after
/// a single-platform pull; manifests: config and layers must be there).
fn reachable(store: &ContentStore, d: &Descriptor, out: &mut BTreeMap<Digest, u64>) -> Result<()> {
    let dig = parse_digest(d)?;
    let info = store
        .info(&dig)
        .map_err(|e| arch_err(format!("{} {}: {e}", d.media_type, d.digest)))?;
    out.insert(dig.clone(), info.size);
    if media::is_index(&d.media_type) {
        let idx: Index = read_json(store, &dig)?;
        for c in &idx.manifests {
            let cd = parse_digest(c)?;
            if store.exists(&cd) {
                reachable(store, c, out)?;
            }
        }
    } else if media::is_manifest(&d.media_type) {
        let m: Manifest = read_json(store, &dig)?;
        for c in std::iter::once(&m.config).chain(m.layers.iter()) {
            let cd = parse_digest(c)?;
            let info = store
                .info(&cd)
                .map_err(|e| arch_err(format!("{} of manifest {dig}: {e}", c.digest)))?;
            out.insert(cd, info.size);
        }
    }
    Ok(())
}

fn tag_of(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        Some((_, t)) => t.to_string(),
        None => "latest".into(),
    }
}

/// Write an OCI layout tar of `images` (and their reachable blobs, from `store`) to `writer`.
pub fn export<W: Write>(
    store: &ContentStore,
    images: &[ArchiveImage],
    writer: W,
    opts: &ExportOptions,
) -> Result<W> {
    let werr = |e: std::io::Error| Error::io("write archive", "<export output>", e);
    let mut blobs = BTreeMap::new();
    let mut index = Index {
        schema_version: 2,
        media_type: media::OCI_INDEX.into(),
        ..Default::default()
    };
    let mut docker = Vec::new();
    for img in images {
        reachable(store, &img.descriptor, &mut blobs)?;
        let mut d = img.descriptor.clone();
        if let Some(n) = &img.name {
            d.annotations
                .insert(oci::ANNOTATION_CONTAINERD_NAME.into(), n.clone());
            d.annotations
                .insert(oci::ANNOTATION_REF_NAME.into(), tag_of(n));
        }
        index.manifests.push(d);
        if opts.docker_manifest {
            let mut md = img.descriptor.clone();
            if media::is_index(&md.media_type) {
                let idx: Index = read_json(store, &parse_digest(&md)?)?;
                match idx.select(&oci::Platform::host()) {
                    Some(c) if store.exists(&parse_digest(c)?) => md = c.clone(),
                    _ => continue,
                }
            }
            if media::is_manifest(&md.media_type) {
                let m: Manifest = read_json(store, &parse_digest(&md)?)?;
                let p = |d: &Descriptor| -> Result<String> {
                    Ok(format!("blobs/sha256/{}", parse_digest(d)?.hex()))
                };
                docker.push(DockerEntry {
                    config: p(&m.config)?,
                    repo_tags: img.name.clone().map(|n| vec![n]),
                    layers: m.layers.iter().map(p).collect::<Result<_>>()?,
                });
            }
        }
    }
    let mut tw = TarWriter::new(writer);
    let file = |path: &str, size: u64| TarHeader {
        path: path.as_bytes().to_vec(),
        kind: b'0',
        mode: 0o444,
        size,
        ..Default::default()
    };
    let dir = |path: &str| TarHeader {
        path: path.as_bytes().to_vec(),
        kind: b'5',
        mode: 0o755,
        ..Default::default()
    };
    let json = |v: &dyn erased::Json| v.bytes();
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let index_bytes = json(&index)?;
    tw.append(&dir("blobs/"), None).map_err(werr)?;
    tw.append(&dir("blobs/sha256/"), None).map_err(werr)?;
    for (d, size) in &blobs {
        let mut f = store.open_blob(d)?;
        tw.append(
            &file(&format!("blobs/sha256/{}", d.hex()), *size),
            Some(&mut f as &mut dyn Read),
        )
        .map_err(werr)?;
    }
    tw.append(
        &file("oci-layout", layout.len() as u64),
        Some(&mut &layout[..]),
    )
    .map_err(werr)?;
    tw.append(
        &file("index.json", index_bytes.len() as u64),
        Some(&mut &index_bytes[..]),
    )
    .map_err(werr)?;
    if opts.docker_manifest {
        let m = json(&docker)?;
        tw.append(&file("manifest.json", m.len() as u64), Some(&mut &m[..]))
            .map_err(werr)?;
    }
    tw.finish().map_err(werr)
}

mod erased {
    /// Serialize without naming the type at the call site.
    pub trait Json {
        fn bytes(&self) -> crate::error::Result<Vec<u8>>;
    }
    impl<T: serde::Serialize> Json for T {
        fn bytes(&self) -> crate::error::Result<Vec<u8>> {
            serde_json::to_vec(self).map_err(|e| crate::error::Error::Archive(e.to_string()))
        }
    }
}
