//! The OCI spec `berth run` and `containers create` build: Berth's secure default (berth-oci's
//! runc-spec-like default, containerd's default capability set, masked and read-only /proc and
//! /sys paths, no_new_privileges, berth-oci's default seccomp profile, a pids limit, cgroup
//! `/<namespace>/<id>`), the image config on top as Docker applies it (Entrypoint, Cmd, Env,
//! WorkingDir, User), then the flags, which may relax it (`--privileged`, `--cap-add`, ...).
//!
//! Pure data work: this module must never talk to berthd or touch the host, except reading
//! /dev for `--privileged`'s device list.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{Error, Result};

#[cfg(test)]
mod tests;
mod user;

pub use user::{needs_lookup, resolve_user, User};

/// Default pids limit of a container's cgroup (a fork bomb stays inside it).
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// PATH when neither the image nor the flags give one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A `--mount type=bind,src=...,dst=...,options=a:b` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFlag {
    /// Mount type (default `bind`).
    pub kind: String,
    /// Source path.
    pub source: String,
    /// Destination inside the container (absolute).
    pub destination: String,
    /// Options (default `rbind`, `rw` for binds).
    pub options: Vec<String>,
}

impl std::str::FromStr for MountFlag {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut kind = "bind".to_string();
        let (mut source, mut destination, mut options) = (None, None, Vec::new());
        for field in s.split(',').filter(|f| !f.is_empty()) {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("{field:?} is not key=value (in {s:?})"))?;
            match k {
                "type" => kind = v.to_string(),
                "src" | "source" => source = Some(v.to_string()),
                "dst" | "destination" | "target" => destination = Some(v.to_string()),
                "options" => {
                    options = v
                        .split(':')
                        .filter(|o| !o.is_empty())
                        .map(String::from)
                        .collect()
                }
                _ => {
                    return Err(format!(
                        "unknown mount field {k:?} (in {s:?}; use type=, src=, dst=, options=)"
                    ))
                }
            }
        }
        let destination = destination.ok_or_else(|| format!("dst= is missing (in {s:?})"))?;
        if !destination.starts_with('/') {
            return Err(format!("dst={destination} is not an absolute path"));
        }
        let source = source.ok_or_else(|| format!("src= is missing (in {s:?})"))?;
        if kind == "bind" {
            if !source.starts_with('/') {
                return Err(format!("src={source} is not an absolute path"));
            }
            if !options.iter().any(|o| o == "bind" || o == "rbind") {
                options.push("rbind".into());
            }
            if !options.iter().any(|o| o == "ro" || o == "rw") {
                options.push("rw".into());
            }
        }
        Ok(MountFlag {
            kind,
            source,
            destination,
            options,
        })
    }
}

/// Everything the flags say about the spec.
#[derive(Debug, Clone, Default)]
pub struct SpecFlags {
    /// Container id (hostname default, cgroup path).
    pub id: String,
    /// Namespace (cgroup path).
    pub namespace: String,
    /// Command and arguments after the id (replace the image's Cmd).
    pub args: Vec<String>,
    /// `-t`.
    pub tty: bool,
    /// `KEY=VALUE` from `-e` and `--env-file`, in order.
    pub env: Vec<String>,
    /// `--cwd`.
    pub cwd: Option<String>,
    /// The resolved user.
    pub user: User,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--mount`.
    pub mounts: Vec<MountFlag>,
    /// `--memory-limit` in bytes.
    pub memory_limit: Option<u64>,
    /// `--cpus`.
    pub cpus: Option<f64>,
    /// `--pids-limit` (0 or less: none).
    pub pids_limit: i64,
    /// `--read-only`.
    pub read_only: bool,
    /// `--cap-add`.
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--privileged`.
    pub privileged: bool,
    /// `--net host`: share the host's network namespace.
    pub host_network: bool,
    /// The local terminal's (columns, rows) for `-t`: the pty's size from the start.
    pub console_size: Option<(u16, u16)>,
}

/// The image's Entrypoint + Cmd with the flags' command replacing Cmd, as Docker does.
pub fn process_args(image_config: &Value, args: &[String]) -> Result<Vec<String>> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = strings(&image_config["Entrypoint"]);
    if args.is_empty() {
        out.extend(strings(&image_config["Cmd"]));
    } else {
        out.extend(args.iter().cloned());
    }
    if out.is_empty() {
        return Err(Error::Usage(
            "no command to run: the image has no Entrypoint or Cmd; give one after the container id"
                .into(),
        ));
    }
    Ok(out)
}

/// Merge `KEY=VALUE` lists: later keys replace earlier ones, order of first appearance kept.
pub fn merge_env(lists: &[&[String]]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for list in lists {
        for kv in list.iter() {
            let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv).to_string();
            if !values.contains_key(&key) {
                order.push(key.clone());
            }
            values.insert(key, kv.clone());
        }
    }
    order
        .into_iter()
        .filter_map(|k| values.remove(&k))
        .collect()
}

/// The capability set after `--privileged`, `--cap-add` and `--cap-drop` (drops first, as Docker).
pub fn capabilities(f: &SpecFlags) -> Result<Vec<String>> {
    berth_oci::defaults::capabilities(f.privileged, &f.cap_drop, &f.cap_add)
        .map_err(|e| Error::Usage(e.to_string()))
}

/// Build the spec from the image config and the flags.
pub fn build(image_config: &Value, f: &SpecFlags) -> Result<Value> {
    let mut spec = berth_oci::commands::spec::default_spec();
    berth_oci::defaults::harden_paths(&mut spec);
    if f.privileged {
        berth_oci::defaults::relax_for_privileged(&mut spec);
    }
    let args = process_args(image_config, &f.args)?;
    let image_env: Vec<String> = image_config["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut base = vec![DEFAULT_PATH.to_string()];
    if f.tty {
        base.push("TERM=xterm".into());
    }
    let env = merge_env(&[&base, &image_env, &f.env]);
    let cwd = f
        .cwd
        .clone()
        .or_else(|| {
            image_config["WorkingDir"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from)
        })
        .unwrap_or_else(|| "/".into());
    let caps = capabilities(f)?;
    let mut user = json!({ "uid": f.user.uid, "gid": f.user.gid });
    if !f.user.additional_gids.is_empty() {
        user["additionalGids"] = json!(f.user.additional_gids);
    }
    spec["process"] = json!({
        "terminal": f.tty,
        "user": user,
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
        "noNewPrivileges": !f.privileged,
    });
    if let (true, Some((cols, rows))) = (f.tty, f.console_size) {
        spec["process"]["consoleSize"] = json!({ "height": rows, "width": cols });
    }
    spec["root"] = json!({ "path": "rootfs", "readonly": f.read_only });
    let mut hostname = f.hostname.clone().unwrap_or_else(|| f.id.clone());
    hostname.truncate(63);
    spec["hostname"] = json!(hostname);

    let mut mounts = spec["mounts"].as_array().cloned().unwrap_or_default();
    mounts.push(
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    );
    for m in &f.mounts {
        mounts.push(json!({
            "destination": m.destination, "type": m.kind, "source": m.source, "options": m.options,
        }));
    }
    spec["mounts"] = Value::Array(mounts);

    let linux = &mut spec["linux"];
    linux["cgroupsPath"] = json!(format!("/{}/{}", f.namespace, f.id));
    if f.host_network {
        if let Some(ns) = linux["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
    }
    let mut resources = linux["resources"].clone();
    if f.privileged {
        linux["devices"] = Value::Array(host_devices());
    } else {
        let profile = berth_oci::seccomp::default_profile();
        linux["seccomp"] = serde_json::to_value(profile)
            .map_err(|e| Error::invalid("the default seccomp profile", e))?;
    }
    if f.pids_limit > 0 {
        resources["pids"] = json!({ "limit": f.pids_limit });
    }
    if let Some(m) = f.memory_limit {
        resources["memory"] = json!({ "limit": m });
    }
    if let Some(c) = f.cpus {
        let period: u64 = 100_000;
        resources["cpu"] = json!({ "quota": (c * period as f64) as i64, "period": period });
    }
    linux["resources"] = resources;
    Ok(spec)
}

/// Every character and block device below /dev (as `--privileged` gives them), skipping what
/// the runtime mounts itself (pts, shm, mqueue) and the console.
fn host_devices() -> Vec<Value> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from("/dev")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                let name = e.file_name();
                if !matches!(
                    name.to_str(),
                    Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".udev")
                ) {
                    dirs.push(path);
                }
                continue;
            }
            let kind = if ft.is_char_device() {
                "c"
            } else if ft.is_block_device() {
                "b"
            } else {
                continue;
            };
            if path == std::path::Path::new("/dev/console") {
                continue;
            }
            let rdev = meta.rdev();
            out.push(json!({
                "path": path.display().to_string(), "type": kind,
                "major": nix::sys::stat::major(rdev), "minor": nix::sys::stat::minor(rdev),
                "fileMode": meta.mode() & 0o7777, "uid": meta.uid(), "gid": meta.gid(),
            }));
        }
    }
    out
}
