//! The attachment cache: `<cache_dir>/<network>/<container_id>-<ifname>.json`, one file per
//! attachment, written atomically.
//!
//! An entry is written before the first plugin runs (without a result) and again with the
//! final result, so a crash in the middle of an ADD still leaves something `list_cached`
//! finds. It also holds the attachment's parameters and the network config as ADDed, so a
//! restarted berthd can DEL with exactly what was ADDed. An entry is removed only after a
//! successful DEL; this module must never remove one on its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni::Attachment;
use crate::config::Network;
use crate::error::Error;
use crate::ports::PortMapping;
use crate::result::AttachResult;

const KIND: &str = "berth-cni-attachment/v1";

/// An attachment found in the cache (e.g. left by a crash), with everything needed to
/// detach it: `cni.detach(&c.network, &c.attachment)`.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAttachment {
    /// The network config as it was when the attachment was ADDed.
    pub network: Network,
    pub attachment: Attachment,
    /// `None` when the ADD never finished (berthd crashed, or undoing a failed ADD failed).
    pub result: Option<AttachResult>,
    /// For an ADD that never finished: the raw result of the last plugin that succeeded. DEL passes it as
    /// `prevResult`; without it the firewall plugin cannot find the rules it added.
    pub partial: Option<Value>,
    pub path: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    kind: String,
    network_name: String,
    container_id: String,
    ifname: String,
    netns: PathBuf,
    #[serde(default)]
    args: Vec<(String, String)>,
    #[serde(default)]
    port_mappings: Vec<Value>,
    #[serde(default)]
    capabilities: BTreeMap<String, Value>,
    config: Value,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial_result: Option<Value>,
}

/// Path of the entry for (`network`, `container_id`, `ifname`).
pub(crate) fn entry_path(
    cache_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> PathBuf {
    cache_dir
        .join(network)
        .join(format!("{container_id}-{ifname}.json"))
}

/// Write (or replace) the entry of `att` on `net`; `result: None` marks an ADD in progress.
pub(crate) fn write(
    cache_dir: &Path,
    net: &Network,
    att: &Attachment,
    result: Option<&Value>,
) -> Result<PathBuf, Error> {
    write_entry(cache_dir, net, att, result, None)
}

/// Mark an ADD in progress whose plugins so far returned `partial` (what a DEL after a crash needs).
pub(crate) fn write_partial(
    cache_dir: &Path,
    net: &Network,
    att: &Attachment,
    partial: &Value,
) -> Result<PathBuf, Error> {
    write_entry(cache_dir, net, att, None, Some(partial))
}

fn write_entry(
    cache_dir: &Path,
    net: &Network,
    att: &Attachment,
    result: Option<&Value>,
    partial: Option<&Value>,
) -> Result<PathBuf, Error> {
    let path = entry_path(cache_dir, &net.name, &att.container_id, &att.ifname);
    let entry = Entry {
        kind: KIND.into(),
        network_name: net.name.clone(),
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        netns: att.netns.clone(),
        args: att.args.clone(),
        port_mappings: att
            .port_mappings
            .iter()
            .map(PortMapping::to_cni_json)
            .collect(),
        capabilities: att.capabilities.clone(),
        config: net.conflist().clone(),
        result: result.cloned(),
        partial_result: partial.cloned(),
    };
    let fail = |why: String| Error::Cache {
        path: path.clone(),
        why,
    };
    let data = serde_json::to_vec_pretty(&entry).map_err(|e| fail(e.to_string()))?;
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(format!("cannot create directory: {e}")))?;
    }
    crate::fsutil::write_atomic(&path, &data, 0o600)
        .map_err(|e| fail(format!("cannot write: {e}")))?;
    Ok(path)
}

/// Read the entry at `path`: `Ok(None)` when there is none.
pub(crate) fn read(path: &Path) -> Result<Option<CachedAttachment>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Cache {
                path: path.to_path_buf(),
                why: format!("cannot read: {e}"),
            })
        }
    };
    parse(path, &bytes).map(Some)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<CachedAttachment, Error> {
    let fail = |why: String| Error::Cache {
        path: path.to_path_buf(),
        why,
    };
    let e: Entry = serde_json::from_slice(bytes).map_err(|e| fail(format!("invalid JSON: {e}")))?;
    if e.kind != KIND {
        return Err(fail(format!("unknown kind {:?}", e.kind)));
    }
    let network =
        Network::from_conflist_value(e.config, &format!("cache entry {}", path.display()))
            .map_err(|err| fail(err.to_string()))?;
    if network.name != e.network_name {
        return Err(fail(format!(
            "network name {:?} differs from its config's {:?}",
            e.network_name, network.name
        )));
    }
    let mut port_mappings = Vec::new();
    for pm in &e.port_mappings {
        port_mappings.push(
            PortMapping::from_cni_json(pm)
                .ok_or_else(|| fail(format!("invalid port mapping {pm}")))?,
        );
    }
    let result = match e.result {
        Some(v) => {
            Some(AttachResult::from_json(v).map_err(|why| fail(format!("invalid result: {why}")))?)
        }
        None => None,
    };
    Ok(CachedAttachment {
        network,
        attachment: Attachment {
            container_id: e.container_id,
            netns: e.netns,
            ifname: e.ifname,
            args: e.args,
            port_mappings,
            capabilities: e.capabilities,
        },
        result,
        partial: e.partial_result,
        path: path.to_path_buf(),
    })
}

/// Remove the entry at `path` (a missing one is fine).
pub(crate) fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Cache {
            path: path.to_path_buf(),
            why: format!("cannot remove: {e}"),
        }),
    }
}

/// Every entry under `cache_dir`, and the files that could not be read (named in the errors).
pub(crate) fn list(cache_dir: &Path) -> (Vec<CachedAttachment>, Vec<Error>) {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let nets = match std::fs::read_dir(cache_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (found, errors),
        Err(e) => {
            errors.push(Error::Cache {
                path: cache_dir.to_path_buf(),
                why: format!("cannot list: {e}"),
            });
            return (found, errors);
        }
    };
    let mut net_dirs: Vec<PathBuf> = nets
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    net_dirs.sort();
    for dir in net_dirs {
        let entries = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) => {
                errors.push(Error::Cache {
                    path: dir.clone(),
                    why: format!("cannot list: {e}"),
                });
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !crate::fsutil::is_temp_name(&name) && name.ends_with(".json")
            })
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            match read(&f) {
                Ok(Some(c)) => found.push(c),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    (found, errors)
}
