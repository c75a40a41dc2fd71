//! The task directory `<state>/tasks/<ns>/<id>/`: the OCI bundle (config.json), berthd's record of the task
//! (`berthd.json`: stdio, runtime, execs, a dead shim's exit) and the files the shim writes (address, shim.pid).
//!
//! Also the validation of what Tasks.Create brings (spec, runtime name and options), done BEFORE anything is written.
//! Removing a task directory must never descend into a mount (a rootfs bind mount would lose the user's files).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};

use super::error::TaskError;
use super::state::{ExitInfo, StdioPaths};

/// berthd's own file in the task directory (the shim never touches it).
pub const RECORD_FILE: &str = "berthd.json";

/// What berthd must remember about a task across restarts that the shim does not know.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Namespace of the task.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// The init process's stdio as the client gave it.
    pub stdio: StdioPaths,
    /// Exec processes berthd registered, with their stdio.
    #[serde(default)]
    pub execs: BTreeMap<String, StdioPaths>,
    /// OCI runtime binary the shim drives.
    #[serde(default)]
    pub runtime: PathBuf,
    /// Runtime state root, when the client gave one.
    #[serde(default)]
    pub runtime_root: Option<PathBuf>,
    /// Whether the runtime created the container (false while Tasks.Create runs: a berthd that crashed then
    /// finds a half-made task and removes it instead of reporting a task nobody created). Records of older
    /// berthds lack it and were all created.
    #[serde(default = "yes")]
    pub created: bool,
    /// Whether the create set up a network for the task (its `berth.io/networks` label): whoever removes the
    /// task (delete, or a rebuild finishing a cut-short create or delete) tears it down.
    #[serde(default)]
    pub network: bool,
    /// Set when the shim was found gone: the exit `berth-shim delete` reported (TaskExit and TaskDelete were
    /// journaled then, at most once each: see `events::Once`).
    #[serde(default)]
    pub dead: Option<DeadShim>,
}

fn yes() -> bool {
    true
}

/// The end of a task whose shim disappeared.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct DeadShim {
    /// The init's exit as recorded by the shim (or 137 / now when none was).
    pub exit: ExitInfo,
}

/// Read the record; `Ok(None)` when there is none.
pub fn load_record(dir: &Path) -> Result<Option<TaskRecord>, TaskError> {
    let path = dir.join(RECORD_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            TaskError::io(
                format!("reading {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TaskError::io(format!("reading {}", path.display()), e)),
    }
}

/// Write the record atomically (temp file + rename). No fsync: the state dir only has to survive berthd
/// crashes, not the host's (no task survives a reboot), and a rename is atomic against a process crash.
pub fn save_record(dir: &Path, record: &TaskRecord) -> Result<(), TaskError> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| {
        TaskError::io(
            "encoding task record",
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    write_atomic(&dir.join(RECORD_FILE), &bytes)
}

/// Written 0600: a spec's environment may carry secrets, and the task dir is traversable by others.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TaskError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let ctx = || format!("writing {}", path.display());
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| TaskError::io(ctx(), e))?;
    f.write_all(bytes).map_err(|e| TaskError::io(ctx(), e))?;
    fs::rename(&tmp, path).map_err(|e| TaskError::io(ctx(), e))
}

/// Check the container's spec Any and return the JSON to write as config.json.
pub fn validate_spec(spec: Option<&prost_types::Any>) -> Result<Vec<u8>, TaskError> {
    let spec = spec.ok_or_else(|| TaskError::InvalidArgument("container has no spec".into()))?;
    if spec.type_url != berth_proto::SPEC_TYPE_URL {
        return Err(TaskError::InvalidArgument(format!(
            "container spec has type {:?}, expected {:?}",
            spec.type_url,
            berth_proto::SPEC_TYPE_URL
        )));
    }
    let mut value: serde_json::Value = serde_json::from_slice(&spec.value).map_err(|e| {
        TaskError::InvalidArgument(format!("container spec is not valid JSON: {e}"))
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| TaskError::InvalidArgument("container spec is not a JSON object".into()))?;
    match obj.get("process") {
        Some(p) if p.is_object() => {}
        _ => {
            return Err(TaskError::InvalidArgument(
                "container spec has no process object".into(),
            ))
        }
    }
    match obj
        .get("root")
        .and_then(|r| r.get("path"))
        .and_then(|p| p.as_str())
    {
        Some(p) if !p.is_empty() => {}
        _ => {
            return Err(TaskError::InvalidArgument(
                "container spec has no root.path".into(),
            ))
        }
    }
    if let Some(process) = value.get_mut("process") {
        default_path_env(process);
    }
    serde_json::to_vec(&value)
        .map_err(|e| TaskError::InvalidArgument(format!("container spec: {e}")))
}

/// Check an exec's process Any (OCI `Process` JSON) and return its JSON.
pub fn validate_process(spec: Option<&prost_types::Any>) -> Result<Vec<u8>, TaskError> {
    let spec = spec.ok_or_else(|| TaskError::InvalidArgument("exec has no process spec".into()))?;
    let mut value: serde_json::Value = serde_json::from_slice(&spec.value).map_err(|e| {
        TaskError::InvalidArgument(format!("exec process spec is not valid JSON: {e}"))
    })?;
    let args_ok = value
        .get("args")
        .and_then(|a| a.as_array())
        .is_some_and(|a| !a.is_empty());
    if !args_ok {
        return Err(TaskError::InvalidArgument(
            "exec process spec needs non-empty args".into(),
        ));
    }
    default_path_env(&mut value);
    serde_json::to_vec(&value)
        .map_err(|e| TaskError::InvalidArgument(format!("exec process spec: {e}")))
}

/// PATH given to a process whose spec has none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `ctr run --rootfs` sends a process without any env, and runc then cannot find `sh`: give such a process the
/// default PATH (only in the bundle written for the runtime; the stored spec is untouched).
fn default_path_env(process: &mut serde_json::Value) {
    let Some(obj) = process.as_object_mut() else {
        return;
    };
    let env = obj
        .entry("env")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(list) = env.as_array_mut() {
        let has_path = list
            .iter()
            .any(|e| e.as_str().is_some_and(|s| s.starts_with("PATH=")));
        if !has_path {
            list.push(serde_json::Value::String(DEFAULT_PATH.to_string()));
        }
    }
}

/// Runtime names that map to berth-shim.
pub const RUNTIME_NAMES: &[&str] = &["io.containerd.runc.v2", "io.containerd.runc.v1", "berth"];

/// What the shim is started with, from the container's runtime and the request's options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeChoice {
    /// `--runtime` for the shim (None: the configured default).
    pub binary: Option<PathBuf>,
    /// `--runtime-root` for the shim.
    pub root: Option<PathBuf>,
    /// Pass --no-pivot to the runtime.
    pub no_pivot: bool,
}

/// Resolve the runtime: the name must be one Berth serves; runc options come from the request, else the container.
pub fn resolve_runtime(
    name: &str,
    container_options: Option<&prost_types::Any>,
    request_options: Option<&prost_types::Any>,
) -> Result<RuntimeChoice, TaskError> {
    if !RUNTIME_NAMES.contains(&name) {
        return Err(TaskError::InvalidArgument(format!(
            "runtime {name:?} is not supported (use one of {RUNTIME_NAMES:?})"
        )));
    }
    let mut choice = RuntimeChoice::default();
    for any in [container_options, request_options].into_iter().flatten() {
        if any.type_url.is_empty() && any.value.is_empty() {
            continue;
        }
        if any.type_url != "containerd.runc.v1.Options"
            && !any.type_url.ends_with("/containerd.runc.v1.Options")
        {
            return Err(TaskError::InvalidArgument(format!(
                "runtime options of type {:?} are not supported",
                any.type_url
            )));
        }
        let opts = berth_proto::runc::Options::decode(any.value.as_slice())
            .map_err(|e| TaskError::InvalidArgument(format!("runtime options: {e}")))?;
        if opts.systemd_cgroup {
            // Silently using cgroupfs instead would put the container where the user did not ask.
            return Err(TaskError::InvalidArgument(
                "runtime option systemd_cgroup (ctr run --runc-systemd-cgroup) is not supported: \
                 Berth manages cgroups through cgroupfs only"
                    .into(),
            ));
        }
        if !opts.binary_name.is_empty() {
            choice.binary = Some(PathBuf::from(opts.binary_name));
        }
        if !opts.root.is_empty() {
            choice.root = Some(PathBuf::from(opts.root));
        }
        choice.no_pivot |= opts.no_pivot_root;
    }
    Ok(choice)
}

/// Create the task directory and write config.json. Fails with AlreadyExists-like FailedPrecondition if the dir
/// is there already (a leftover of a task berthd does not know).
/// The task dirs (`tasks/`, `tasks/<ns>/`, `tasks/<ns>/<id>/`) are 0711, as containerd's: a user-namespaced
/// container's init must traverse them to its rootfs, but other users must not list them.
pub fn write_bundle(dir: &Path, spec_json: &[u8]) -> Result<(), TaskError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let traversable = |p: &Path| {
        fs::set_permissions(p, fs::Permissions::from_mode(0o711))
            .map_err(|e| TaskError::io(format!("chmod {}", p.display()), e))
    };
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| TaskError::io(format!("creating {}", parent.display()), e))?;
        traversable(parent)?;
        if let Some(tasks) = parent.parent() {
            traversable(tasks)?;
        }
    }
    let mkdir = || fs::DirBuilder::new().mode(0o711).create(dir);
    match mkdir() {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // A leftover without a live task (a crash during create): start afresh.
            remove_task_dir(dir)?;
            mkdir().map_err(|e| TaskError::io(format!("creating {}", dir.display()), e))?;
        }
        Err(e) => return Err(TaskError::io(format!("creating {}", dir.display()), e)),
    }
    // The umask may have taken bits away; 0711 exactly.
    traversable(dir)?;
    write_atomic(&dir.join("config.json"), spec_json)
}

/// The shim's socket address from `<dir>/address` (`unix://` prefix allowed).
pub fn read_address(dir: &Path) -> Option<PathBuf> {
    let s = fs::read_to_string(dir.join("address")).ok()?;
    parse_address(&s)
}

/// A shim address as printed or written by berth-shim.
pub fn parse_address(s: &str) -> Option<PathBuf> {
    let s = s.trim();
    let s = s.strip_prefix("unix://").unwrap_or(s);
    if s.is_empty() {
        None
    } else {
        Some(PathBuf::from(s))
    }
}

/// The shim's pid from `<dir>/shim.pid`.
pub fn read_shim_pid(dir: &Path) -> Option<u32> {
    fs::read_to_string(dir.join("shim.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a pid is alive (not a zombie), from /proc/PID/stat.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match stat.rfind(')') {
        Some(i) => !matches!(
            stat[i + 1..].trim_start().chars().next(),
            Some('Z' | 'X') | None
        ),
        None => false,
    }
}

/// Mount points at or below `dir`, deepest first, from /proc/self/mountinfo.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Remove a task directory: unmount whatever is mounted below it first (lazily), and refuse to delete anything if
/// a mount is still there, so a rootfs mount's contents are never deleted.
pub fn remove_task_dir(dir: &Path) -> Result<(), TaskError> {
    if !dir.exists() {
        return Ok(());
    }
    for m in mounts_below(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    let left = mounts_below(dir);
    if !left.is_empty() {
        return Err(TaskError::FailedPrecondition(format!(
            "cannot remove {}: still mounted: {left:?}",
            dir.display()
        )));
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TaskError::io(format!("removing {}", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_any(json: &str) -> prost_types::Any {
        prost_types::Any {
            type_url: berth_proto::SPEC_TYPE_URL.into(),
            value: json.as_bytes().to_vec(),
        }
    }

    #[test]
    fn spec_validation() {
        assert!(validate_spec(None).is_err());
        assert!(validate_spec(Some(&spec_any("not json"))).is_err());
        assert!(validate_spec(Some(&spec_any("[]"))).is_err());
        assert!(validate_spec(Some(&spec_any(r#"{"process":{}}"#))).is_err());
        let ok = r#"{"process":{"args":["sh"]},"root":{"path":"/x"}}"#;
        let json = validate_spec(Some(&spec_any(ok))).expect("valid");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(v["process"]["env"][0], DEFAULT_PATH);
        let with_path = r#"{"process":{"args":["sh"],"env":["PATH=/bin"]},"root":{"path":"/x"}}"#;
        let json = validate_spec(Some(&spec_any(with_path))).expect("valid");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(v["process"]["env"], serde_json::json!(["PATH=/bin"]));
        let mut wrong = spec_any(ok);
        wrong.type_url = "type.googleapis.com/x".into();
        assert!(validate_spec(Some(&wrong)).is_err());
    }

    #[test]
    fn runtime_names_and_options() {
        assert!(resolve_runtime("io.containerd.kata.v2", None, None).is_err());
        let opts = berth_proto::to_any(&berth_proto::runc::Options {
            binary_name: "/usr/sbin/runc".into(),
            no_pivot_root: true,
            ..Default::default()
        });
        let c = resolve_runtime("io.containerd.runc.v2", Some(&opts), None).expect("valid");
        assert_eq!(c.binary, Some(PathBuf::from("/usr/sbin/runc")));
        assert!(c.no_pivot);
        let empty = prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![],
        };
        assert_eq!(
            resolve_runtime("berth", Some(&empty), None).expect("valid"),
            RuntimeChoice::default()
        );
        let systemd = berth_proto::to_any(&berth_proto::runc::Options {
            systemd_cgroup: true,
            ..Default::default()
        });
        let e = resolve_runtime("io.containerd.runc.v2", Some(&systemd), None)
            .expect_err("systemd cgroups are refused, not ignored");
        assert!(e.to_string().contains("systemd_cgroup"), "{e}");
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("unix:///run/x.sock\n"),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            parse_address("/run/y.sock"),
            Some(PathBuf::from("/run/y.sock"))
        );
        assert_eq!(parse_address(" \n"), None);
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
    }

    #[test]
    fn record_roundtrip() {
        let dir = std::env::temp_dir().join(format!("berth-record-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let mut rec = TaskRecord {
            namespace: "ns".into(),
            id: "c".into(),
            ..Default::default()
        };
        rec.execs.insert("e1".into(), StdioPaths::default());
        save_record(&dir, &rec).expect("save");
        let back = load_record(&dir).expect("load").expect("present");
        assert_eq!(back.execs.len(), 1);
        remove_task_dir(&dir).expect("remove");
        assert!(!dir.exists());
    }
}
