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

/// containerd's (and Docker's) default capability set.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

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
                "options" => options = v.split(':').filter(|o| !o.is_empty()).map(String::from).collect(),
                _ => return Err(format!("unknown mount field {k:?} (in {s:?}; use type=, src=, dst=, options=)")),
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

/// The user a container process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids.
    pub additional_gids: Vec<u32>,
}

/// Whether `user` (a `--user` or image `User` value) needs the image's /etc/passwd or
/// /etc/group: anything but empty or a numeric `uid:gid`.
pub fn needs_lookup(user: &str) -> bool {
    if user.is_empty() {
        return false;
    }
    match user.split_once(':') {
        Some((u, g)) => u.parse::<u32>().is_err() || g.parse::<u32>().is_err(),
        None => true,
    }
}

/// Resolve `user` (`name`, `uid`, `name:group`, `uid:gid`) against the image's passwd and
/// group files, as Docker does: a numeric uid missing from passwd gets gid 0; a name must
/// exist; supplementary groups are those in /etc/group that list the user's name.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<User> {
    if user.is_empty() {
        return Ok(User::default());
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    let by_name = entries.iter().find(|f| f[0] == u);
    let numeric = u.parse::<u32>().ok();
    let entry = by_name.or_else(|| {
        numeric.and_then(|n| entries.iter().find(|f| f[2].parse::<u32>().ok() == Some(n)))
    });
    let (uid, mut gid, name) = match (entry, numeric) {
        (Some(f), _) => (
            f[2].parse::<u32>().unwrap_or(0),
            f[3].parse::<u32>().unwrap_or(0),
            Some(f[0]),
        ),
        (None, Some(n)) => (n, 0, None),
        (None, None) => {
            return Err(Error::Usage(format!(
                "user {u:?} is not in the image's /etc/passwd"
            )))
        }
    };
    let groups: Vec<Vec<&str>> = group
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 3)
        .collect();
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse::<u32>().ok())
                .ok_or_else(|| {
                    Error::Usage(format!("group {g:?} is not in the image's /etc/group"))
                })?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for f in &groups {
            let members = f.get(3).copied().unwrap_or("");
            if members.split(',').any(|m| m == name) {
                if let Ok(n) = f[2].parse::<u32>() {
                    if n != gid && !additional_gids.contains(&n) {
                        additional_gids.push(n);
                    }
                }
            }
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
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
}

/// The image's Entrypoint + Cmd with the flags' command replacing Cmd, as Docker does.
pub fn process_args(image_config: &Value, args: &[String]) -> Result<Vec<String>> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
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
    order.into_iter().filter_map(|k| values.remove(&k)).collect()
}

/// Normalise a capability name to `CAP_X`.
fn cap_name(name: &str) -> Result<String> {
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") { up } else { format!("CAP_{up}") };
    if full == "CAP_ALL" || berth_oci::caps::number(&full).is_some() {
        Ok(full)
    } else {
        Err(Error::Usage(format!("unknown capability {name:?}")))
    }
}

/// Every capability berth itself may pass on: the names in its own bounding set (in a
/// container or a restricted sandbox that is less than all the kernel knows, and asking for
/// more fails at capset). As ctr, `--privileged` means "all the caps I have".
fn grantable() -> Vec<String> {
    let all = berth_oci::caps::all_names();
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        });
    match bounding {
        Some(mask) => all
            .into_iter()
            .filter(|n| berth_oci::caps::number(n).is_some_and(|b| b < 64 && mask & (1u64 << b) != 0))
            .collect(),
        None => all,
    }
}

/// The capability set after `--privileged`, `--cap-add` and `--cap-drop`.
pub fn capabilities(f: &SpecFlags) -> Result<Vec<String>> {
    let all = grantable();
    let mut caps: Vec<String> = if f.privileged {
        all.clone()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    // As Docker: drops first (ALL empties the set), then adds, which win.
    for c in &f.cap_drop {
        let c = cap_name(c)?;
        if c == "CAP_ALL" {
            caps.clear();
        } else {
            caps.retain(|x| *x != c);
        }
    }
    for c in &f.cap_add {
        let c = cap_name(c)?;
        if c == "CAP_ALL" {
            caps = all.clone();
        } else if !caps.contains(&c) {
            caps.push(c);
        }
    }
    Ok(caps)
}

/// Build the spec from the image config and the flags.
pub fn build(image_config: &Value, f: &SpecFlags) -> Result<Value> {
    let mut spec = berth_oci::commands::spec::default_spec();
    let args = process_args(image_config, &f.args)?;
    let image_env: Vec<String> = image_config["Env"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
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
    spec["root"] = json!({ "path": "rootfs", "readonly": f.read_only });
    let mut hostname = f.hostname.clone().unwrap_or_else(|| f.id.clone());
    hostname.truncate(63);
    spec["hostname"] = json!(hostname);

    let mut mounts = spec["mounts"].as_array().cloned().unwrap_or_default();
    mounts.push(json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}));
    if f.privileged {
        for m in mounts.iter_mut() {
            if m["type"] == "sysfs" || m["type"] == "cgroup" {
                if let Some(opts) = m["options"].as_array_mut() {
                    opts.retain(|o| o != "ro");
                    opts.push(json!("rw"));
                }
            }
        }
    }
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
    let mut resources = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    if f.privileged {
        resources["devices"] = json!([{ "allow": true, "access": "rwm" }]);
        linux["maskedPaths"] = json!([]);
        linux["readonlyPaths"] = json!([]);
        linux["devices"] = Value::Array(host_devices());
    } else {
        if let Some(masked) = linux["maskedPaths"].as_array_mut() {
            masked.push(json!("/sys/devices/virtual/powercap"));
        }
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
                if !matches!(name.to_str(), Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".udev")) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> SpecFlags {
        SpecFlags {
            id: "web".into(),
            namespace: "default".into(),
            pids_limit: DEFAULT_PIDS_LIMIT,
            ..Default::default()
        }
    }

    #[test]
    fn the_default_is_locked_down() {
        let cfg = json!({"Cmd": ["sh"], "Env": ["PATH=/bin", "A=1"]});
        let s = build(&cfg, &flags()).expect("spec");
        assert_eq!(s["process"]["args"], json!(["sh"]));
        assert_eq!(s["process"]["env"], json!(["PATH=/bin", "A=1"]));
        assert_eq!(s["process"]["noNewPrivileges"], json!(true));
        assert_eq!(s["process"]["terminal"], json!(false));
        let caps = s["process"]["capabilities"]["bounding"].as_array().expect("caps");
        assert_eq!(caps.len(), 14);
        assert!(!caps.contains(&json!("CAP_SYS_ADMIN")));
        assert_eq!(s["linux"]["cgroupsPath"], json!("/default/web"));
        assert_eq!(s["linux"]["resources"]["pids"]["limit"], json!(4096));
        assert!(s["linux"]["seccomp"]["syscalls"].is_array());
        assert!(s["linux"]["maskedPaths"].as_array().expect("masked").contains(&json!("/proc/kcore")));
        assert!(s["linux"]["readonlyPaths"].as_array().expect("ro").contains(&json!("/proc/sys")));
        assert_eq!(s["root"]["readonly"], json!(false));
        assert_eq!(s["hostname"], json!("web"));
        let ns: Vec<_> = s["linux"]["namespaces"].as_array().expect("ns").iter().map(|n| n["type"].clone()).collect();
        assert!(ns.contains(&json!("network")));
    }

    #[test]
    fn flags_relax_it() {
        let cfg = json!({"Entrypoint": ["/bin/app"], "Cmd": ["--default"], "WorkingDir": "/srv"});
        let mut f = flags();
        f.args = vec!["--x".into()];
        f.privileged = true;
        f.read_only = true;
        f.host_network = true;
        f.tty = true;
        f.cap_drop = vec!["net_raw".into()];
        f.memory_limit = Some(1 << 20);
        f.cpus = Some(0.5);
        f.env = vec!["A=2".into()];
        let s = build(&cfg, &f).expect("spec");
        assert_eq!(s["process"]["args"], json!(["/bin/app", "--x"]));
        assert_eq!(s["process"]["cwd"], json!("/srv"));
        assert_eq!(s["process"]["noNewPrivileges"], json!(false));
        assert!(s["linux"]["seccomp"].is_null());
        assert_eq!(s["linux"]["maskedPaths"], json!([]));
        let caps = s["process"]["capabilities"]["bounding"].as_array().expect("caps");
        assert!(caps.contains(&json!("CAP_SYS_ADMIN")));
        assert!(!caps.contains(&json!("CAP_NET_RAW")));
        assert_eq!(s["root"]["readonly"], json!(true));
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], json!(1 << 20));
        assert_eq!(s["linux"]["resources"]["cpu"]["quota"], json!(50000));
        assert!(s["process"]["env"].as_array().expect("env").contains(&json!("TERM=xterm")));
        let ns: Vec<_> = s["linux"]["namespaces"].as_array().expect("ns").iter().map(|n| n["type"].clone()).collect();
        assert!(!ns.contains(&json!("network")));
    }

    #[test]
    fn no_command_is_an_error() {
        assert!(build(&json!({}), &flags()).is_err());
    }

    #[test]
    fn mount_flags() {
        let m: MountFlag = "type=bind,src=/a,dst=/b,options=ro".parse().expect("mount");
        assert_eq!(m.options, vec!["ro", "rbind"]);
        let m: MountFlag = "src=/a,dst=/b".parse().expect("mount");
        assert_eq!(m.options, vec!["rbind", "rw"]);
        assert!("src=/a".parse::<MountFlag>().is_err());
        assert!("src=a,dst=/b".parse::<MountFlag>().is_err());
        assert!("src=/a,dst=b".parse::<MountFlag>().is_err());
        assert!("bogus".parse::<MountFlag>().is_err());
        assert!("src=/a,dst=/b,color=red".parse::<MountFlag>().is_err());
    }

    #[test]
    fn users() {
        let passwd = "root:x:0:0::/root:/bin/sh\nwww:x:33:44::/var/www:/bin/false\n";
        let group = "root:x:0:\nstaff:x:50:www,bob\nwww:x:44:\n";
        assert_eq!(resolve_user("", passwd, group).expect("root"), User::default());
        let u = resolve_user("www", passwd, group).expect("www");
        assert_eq!((u.uid, u.gid, u.additional_gids), (33, 44, vec![50]));
        let u = resolve_user("1000", passwd, group).expect("numeric");
        assert_eq!((u.uid, u.gid), (1000, 0));
        let u = resolve_user("www:staff", passwd, group).expect("group");
        assert_eq!(u.gid, 50);
        assert!(resolve_user("nobody", passwd, group).is_err());
        assert!(resolve_user("www:nogroup", passwd, group).is_err());
        assert!(needs_lookup("www"));
        assert!(needs_lookup("1000"));
        assert!(!needs_lookup("1000:1000"));
        assert!(!needs_lookup(""));
    }

    #[test]
    fn env_merging() {
        let a = vec!["PATH=/bin".to_string(), "A=1".into()];
        let b = vec!["A=2".to_string(), "B=3".into()];
        assert_eq!(merge_env(&[&a, &b]), vec!["PATH=/bin", "A=2", "B=3"]);
    }
}
