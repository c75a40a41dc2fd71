//! Loading and checking a bundle's config.json. Errors name the file and the serde
//! position; this module must never act on the spec, only read and validate it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// Read and validate `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path).map_err(|e| Error::Config {
        path: path.clone(),
        msg: match e.kind() {
            std::io::ErrorKind::NotFound => "config.json not found in bundle".into(),
            _ => e.to_string(),
        },
    })?;
    let spec: Spec = serde_json::from_slice(&data).map_err(|e| Error::Config {
        path: path.clone(),
        msg: format!("invalid JSON: {e}"),
    })?;
    validate(&spec, &path)?;
    Ok(spec)
}

fn validate(spec: &Spec, path: &Path) -> Result<()> {
    let bad = |msg: String| Error::Config {
        path: path.to_path_buf(),
        msg,
    };
    if spec.root().is_none() {
        return Err(bad("root: missing".into()));
    }
    let Some(process) = spec.process() else {
        return Err(bad("process: missing".into()));
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(bad("process.args: must not be empty".into()));
    }
    crate::lsm::check_apparmor(process.apparmor_profile().as_deref())
        .map_err(|m| bad(format!("process.apparmorProfile: {m}")))?;
    if !process.cwd().is_absolute() {
        return Err(bad(format!(
            "process.cwd {:?} must be an absolute path",
            process.cwd()
        )));
    }
    let linux = spec.linux().as_ref();
    let mut seen = HashSet::new();
    for ns in linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        if !seen.insert(ns.typ()) {
            return Err(bad(format!("linux.namespaces: {} given twice", ns.typ())));
        }
    }
    let has = |t| seen.contains(&t);
    if spec.hostname().is_some() && !has(LinuxNamespaceType::Uts) {
        return Err(bad("hostname requires a new uts namespace".into()));
    }
    if spec.domainname().is_some() && !has(LinuxNamespaceType::Uts) {
        return Err(bad("domainname requires a new uts namespace".into()));
    }
    // Without a mount namespace the container's mounts are made in the caller's (as runc
    // does); what would change the caller's own mounts is refused.
    if !has(LinuxNamespaceType::Mount) {
        let some = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
        if linux.is_some_and(|l| some(l.masked_paths()) || some(l.readonly_paths())) {
            return Err(bad(
                "linux.maskedPaths/readonlyPaths need a mount namespace (runc: \
                 unable to restrict sys entries without a private MNT namespace)"
                    .into(),
            ));
        }
        if linux
            .and_then(|l| l.rootfs_propagation().as_deref())
            .is_some_and(|p| !p.is_empty())
        {
            return Err(bad(
                "linux.rootfsPropagation needs a mount namespace: it would \
                 change the propagation of the host's /"
                    .into(),
            ));
        }
    }
    let maps = linux.is_some_and(|l| l.uid_mappings().is_some() || l.gid_mappings().is_some());
    if maps && !has(LinuxNamespaceType::User) {
        return Err(bad("uid/gid mappings require a user namespace".into()));
    }
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return Err(bad(format!(
                "mount destination {:?} must be absolute",
                m.destination()
            )));
        }
    }
    Ok(())
}

/// Absolute rootfs path of a spec in a bundle.
pub fn rootfs(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::Spec("root: missing".into()))?;
    let p = bundle.join(root.path());
    std::fs::canonicalize(&p).map_err(|e| Error::io("resolve rootfs", p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(linux: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": { "path": "rootfs" },
            "process": { "args": ["true"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
            "linux": linux,
        }))
        .expect("spec")
    }

    #[test]
    fn no_mount_namespace_refuses_only_what_would_touch_the_callers_mounts() {
        let p = Path::new("config.json");
        let ok = spec(serde_json::json!({ "namespaces": [{ "type": "pid" }] }));
        assert!(validate(&ok, p).is_ok());
        let masked = spec(serde_json::json!({
            "namespaces": [{ "type": "pid" }], "maskedPaths": ["/proc/kcore"]
        }));
        let e = validate(&masked, p).expect_err("masked paths").to_string();
        assert!(e.contains("maskedPaths"), "{e}");
        let prop = spec(serde_json::json!({
            "namespaces": [{ "type": "pid" }], "rootfsPropagation": "shared"
        }));
        let e = validate(&prop, p).expect_err("propagation").to_string();
        assert!(e.contains("rootfsPropagation"), "{e}");
        let with_mnt = spec(serde_json::json!({
            "namespaces": [{ "type": "mount" }], "rootfsPropagation": "shared",
            "maskedPaths": ["/proc/kcore"]
        }));
        assert!(validate(&with_mnt, p).is_ok());
    }
}
