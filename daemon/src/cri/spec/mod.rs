//! OCI specs of a pod's pause container and of its app containers, built as containerd's CRI builds them:
//! berth-oci's default spec and shared defaults (containerd's capabilities, masked and read-only paths), the
//! image config under the CRI config (command/args as Kubernetes applies them to Entrypoint/Cmd), the
//! security context (capabilities, privileged, run_as_user/group/username and the image's `User` resolved in
//! the image's /etc/passwd and /etc/group, supplementary groups by policy, read-only rootfs, no_new_privs,
//! masked/readonly paths, RuntimeDefault or Localhost seccomp), resources, and the pod's namespaces: app containers join the pause container's
//! network (its netns file), IPC and UTS (and PID when the pod shares it) namespaces, and bind its hosts,
//! resolv.conf and hostname files.
//!
//! Pure data work except reading a Localhost seccomp profile and stat-ing devices (the image's files come
//! from the caller): this module must never start or mount anything.

use std::collections::BTreeMap;
use std::path::Path;

use berth_image::oci::ImageConfig;
use berth_proto::cri;
use serde_json::{json, Value};
use tonic::Status;

mod security;

use security::{apparmor, capabilities, seccomp, user_of};
pub use security::{ImageFiles, UserRequest};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The pause container's files its pod's containers bind (written by the network layer into its task dir).
const POD_FILES: [(&str, &str); 3] = [
    ("hosts", "/etc/hosts"),
    ("resolv.conf", "/etc/resolv.conf"),
    ("hostname", "/etc/hostname"),
];

/// What an app container joins of its pod.
pub struct PodNamespaces<'a> {
    /// The pause container's pid (for its IPC, UTS and PID namespaces).
    pub pause_pid: u32,
    /// The pod's netns file (None: the host's network).
    pub netns: Option<&'a Path>,
    /// The pause container's task dir (hosts, resolv.conf, hostname).
    pub pause_dir: &'a Path,
    /// PID namespace mode TARGET: the pid of the running container whose PID namespace to join.
    pub target_pid: Option<u32>,
}

pub(super) fn invalid(what: impl Into<String>) -> Status {
    Status::invalid_argument(what.into())
}

/// Later keys replace earlier ones; order of first appearance kept.
fn merge_env(lists: &[&[String]]) -> Vec<String> {
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

/// Kubernetes' rule: `command` replaces Entrypoint, `args` replaces Cmd (and Cmd is dropped when only
/// command is given).
fn process_args(
    image: &ImageConfig,
    command: &[String],
    args: &[String],
) -> Result<Vec<String>, Status> {
    let entry = image.config.entrypoint.clone().unwrap_or_default();
    let cmd = image.config.cmd.clone().unwrap_or_default();
    let mut out = if command.is_empty() {
        entry
    } else {
        command.to_vec()
    };
    if !args.is_empty() {
        out.extend(args.iter().cloned());
    } else if command.is_empty() {
        out.extend(cmd);
    }
    if out.is_empty() {
        return Err(invalid(
            "no command: the image has no Entrypoint or Cmd and the config gives none",
        ));
    }
    Ok(out)
}

fn cgroups_path(parent: &str, id: &str) -> String {
    if parent.is_empty() {
        format!("/{}/{id}", super::NAMESPACE)
    } else {
        format!("{}/{id}", parent.trim_end_matches('/'))
    }
}

/// oom_score_adj no lower than berthd's own (root here may not lower it: see TRAPS).
fn oom_score_adj(want: i64) -> i64 {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(-1000);
    want.clamp(own, 1000)
}

fn set_namespace(spec: &mut Value, kind: &str, path: Option<String>, keep: bool) {
    if let Some(nss) = spec["linux"]["namespaces"].as_array_mut() {
        nss.retain(|n| n["type"] != kind);
        if keep {
            match path {
                Some(p) => nss.push(json!({ "type": kind, "path": p })),
                None => nss.push(json!({ "type": kind })),
            }
        }
    }
}

fn mode(
    opts: Option<&cri::NamespaceOption>,
    f: impl Fn(&cri::NamespaceOption) -> i32,
) -> cri::NamespaceMode {
    opts.map(|o| cri::NamespaceMode::try_from(f(o)).unwrap_or(cri::NamespaceMode::Pod))
        .unwrap_or(cri::NamespaceMode::Pod)
}

/// berth-oci's default spec with the shared hardening (or what privileged relaxes of it).
fn base(privileged: bool) -> Value {
    let mut spec = berth_oci::commands::spec::default_spec();
    berth_oci::defaults::harden_paths(&mut spec);
    if privileged {
        berth_oci::defaults::relax_for_privileged(&mut spec);
    }
    spec
}

/// Refuse a sysctl that is not isolated by a namespace the pod owns: it would change the host. Namespaced are
/// the IPC ones (`kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`) with a pod IPC namespace and
/// `net.*` with a pod network namespace, as the kubelet's and runc's rules have it.
fn check_sysctl(key: &str, own_net: bool, own_ipc: bool) -> Result<(), Status> {
    let ipc = [
        "kernel.shmmax",
        "kernel.shmall",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ]
    .contains(&key)
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.");
    let net = key.starts_with("net.");
    let why = match (ipc, net) {
        (true, _) if own_ipc => return Ok(()),
        (_, true) if own_net => return Ok(()),
        (true, _) => "the pod shares the host's IPC namespace",
        (_, true) => "the pod uses the host's network",
        _ => "it is not namespaced (it would change the host)",
    };
    Err(invalid(format!("sysctl {key:?} is refused: {why}")))
}

/// The pause container's spec.
pub fn sandbox(
    id: &str,
    image: &ImageConfig,
    config: &cri::PodSandboxConfig,
) -> Result<Value, Status> {
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let mut spec = base(sc.privileged);
    let args = process_args(image, &[], &[])?;
    let env = merge_env(&[
        &[DEFAULT_PATH.to_string()],
        image.config.env.as_deref().unwrap_or_default(),
    ]);
    let req = UserRequest {
        run_as_user: sc.run_as_user.as_ref(),
        run_as_group: sc.run_as_group.as_ref(),
        run_as_username: "",
        supplemental_groups: &sc.supplemental_groups,
        strict: sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32,
    };
    let (user, _) = user_of(image, &req, None)?;
    let caps = capabilities(sc.privileged, None)?;
    spec["process"] = json!({
        "terminal": false,
        "user": user,
        "args": args,
        "env": env,
        "cwd": if image.config.working_dir.is_empty() { "/" } else { image.config.working_dir.as_str() },
        "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
        "noNewPrivileges": true,
        // The pause container is the last one the OOM killer should pick.
        "oomScoreAdj": oom_score_adj(-998),
    });
    spec["root"] = json!({ "path": "rootfs", "readonly": sc.readonly_rootfs });
    let ns = sc.namespace_options.as_ref();
    let host_net = mode(ns, |o| o.network) == cri::NamespaceMode::Node;
    if !host_net {
        let mut h = config.hostname.clone();
        h.truncate(63);
        spec["hostname"] = json!(h);
    } else {
        set_namespace(&mut spec, "uts", None, false);
        spec.as_object_mut().map(|o| o.remove("hostname"));
    }
    // Network: the network layer puts the netns path in (or none for host).
    set_namespace(
        &mut spec,
        "pid",
        None,
        mode(ns, |o| o.pid) != cri::NamespaceMode::Node,
    );
    set_namespace(
        &mut spec,
        "ipc",
        None,
        mode(ns, |o| o.ipc) != cri::NamespaceMode::Node,
    );
    spec["linux"]["cgroupsPath"] = json!(cgroups_path(&linux.cgroup_parent, id));
    if !linux.sysctls.is_empty() {
        let ipc_shared = mode(ns, |o| o.ipc) != cri::NamespaceMode::Node;
        for key in linux.sysctls.keys() {
            check_sysctl(key, !host_net, ipc_shared)?;
        }
        spec["linux"]["sysctl"] = json!(linux.sysctls);
    }
    if let Some(s) = seccomp(sc.seccomp.as_ref(), sc.privileged)? {
        spec["linux"]["seccomp"] = s;
    }
    Ok(spec)
}

/// An app container's spec; `files` are the image's /etc/passwd and /etc/group when
/// [`UserRequest::needs_files`] said so.
pub fn container(
    id: &str,
    image: &ImageConfig,
    config: &cri::ContainerConfig,
    sandbox: &cri::PodSandboxConfig,
    pod: &PodNamespaces<'_>,
    files: Option<&ImageFiles>,
) -> Result<Value, Status> {
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let mut spec = base(sc.privileged);
    let args = process_args(image, &config.command, &config.args)?;
    let envs: Vec<String> = config
        .envs
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    let mut defaults = vec![DEFAULT_PATH.to_string()];
    if config.tty {
        defaults.push("TERM=xterm".into());
    }
    let hostname = sandbox.hostname.clone();
    if !hostname.is_empty() {
        defaults.push(format!("HOSTNAME={hostname}"));
    }
    let (user, home) = user_of(image, &UserRequest::of_container(&sc), files)?;
    let mut env = merge_env(&[
        &defaults,
        image.config.env.as_deref().unwrap_or_default(),
        &envs,
    ]);
    // runc sets HOME from the container's passwd when the env has none; berth-runc leaves that to the spec.
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !image.config.working_dir.is_empty() {
        image.config.working_dir.clone()
    } else {
        "/".to_string()
    };
    let caps = capabilities(sc.privileged, sc.capabilities.as_ref())?;
    spec["process"] = json!({
        "terminal": config.tty,
        "user": user,
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
        "noNewPrivileges": sc.no_new_privs,
    });
    let res = linux.resources.clone().unwrap_or_default();
    if res.oom_score_adj != 0 {
        spec["process"]["oomScoreAdj"] = json!(oom_score_adj(res.oom_score_adj));
    }
    spec["root"] = json!({ "path": "rootfs", "readonly": sc.readonly_rootfs });
    spec.as_object_mut().map(|o| o.remove("hostname"));

    // The pod's namespaces.
    let ns = sc.namespace_options.as_ref();
    let proc_ns = |kind: &str| format!("/proc/{}/ns/{kind}", pod.pause_pid);
    match pod.netns {
        Some(p) => set_namespace(&mut spec, "network", Some(p.display().to_string()), true),
        None => set_namespace(&mut spec, "network", None, false),
    }
    let host_net = pod.netns.is_none();
    set_namespace(&mut spec, "uts", Some(proc_ns("uts")), !host_net);
    match mode(ns, |o| o.ipc) {
        cri::NamespaceMode::Node => set_namespace(&mut spec, "ipc", None, false),
        _ => set_namespace(&mut spec, "ipc", Some(proc_ns("ipc")), true),
    }
    match mode(ns, |o| o.pid) {
        cri::NamespaceMode::Node => set_namespace(&mut spec, "pid", None, false),
        cri::NamespaceMode::Pod => set_namespace(&mut spec, "pid", Some(proc_ns("pid")), true),
        cri::NamespaceMode::Target => {
            let pid = pod.target_pid.ok_or_else(|| {
                invalid("PID namespace mode TARGET needs a running target_id container")
            })?;
            set_namespace(&mut spec, "pid", Some(format!("/proc/{pid}/ns/pid")), true)
        }
        cri::NamespaceMode::Container => set_namespace(&mut spec, "pid", None, true),
    }

    // Mounts: the pod's files, then the CRI's (which win on the same destination).
    let mut mounts = spec["mounts"].as_array().cloned().unwrap_or_default();
    let wanted: Vec<&str> = config
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    for (file, dest) in POD_FILES {
        let src = pod.pause_dir.join(file);
        if src.exists() && !wanted.contains(&dest) {
            let ro = if sc.readonly_rootfs { "ro" } else { "rw" };
            mounts.push(
                json!({"destination": dest, "type": "bind", "source": src.display().to_string(),
                "options": ["rbind", "rprivate", ro]}),
            );
        }
    }
    for m in &config.mounts {
        if !m.container_path.starts_with('/') {
            return Err(invalid(format!(
                "mount container_path {:?} must be absolute",
                m.container_path
            )));
        }
        let host = Path::new(&m.host_path);
        if !host.is_absolute() {
            return Err(invalid(format!(
                "mount host_path {:?} must be absolute",
                m.host_path
            )));
        }
        let real = std::fs::canonicalize(host)
            .map_err(|e| invalid(format!("mount host_path {}: {e}", m.host_path)))?;
        let prop = match cri::MountPropagation::try_from(m.propagation)
            .unwrap_or(cri::MountPropagation::PropagationPrivate)
        {
            cri::MountPropagation::PropagationPrivate => "rprivate",
            cri::MountPropagation::PropagationHostToContainer => "rslave",
            cri::MountPropagation::PropagationBidirectional => "rshared",
        };
        let ro = if m.readonly { "ro" } else { "rw" };
        mounts.retain(|x| x["destination"] != m.container_path.as_str());
        mounts.push(json!({"destination": m.container_path, "type": "bind",
            "source": real.display().to_string(), "options": ["rbind", prop, ro]}));
    }
    spec["mounts"] = Value::Array(mounts);

    let l = &mut spec["linux"];
    l["cgroupsPath"] = json!(cgroups_path(
        &sandbox
            .linux
            .as_ref()
            .map(|x| x.cgroup_parent.clone())
            .unwrap_or_default(),
        id
    ));
    if !sc.privileged {
        if !sc.masked_paths.is_empty() {
            l["maskedPaths"] = json!(sc.masked_paths);
        }
        if !sc.readonly_paths.is_empty() {
            l["readonlyPaths"] = json!(sc.readonly_paths);
        }
    }
    let mut resources = l["resources"].clone();
    if res.memory_limit_in_bytes > 0 {
        resources["memory"] = json!({ "limit": res.memory_limit_in_bytes });
    }
    let mut cpu = serde_json::Map::new();
    if res.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(res.cpu_shares));
    }
    if res.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(res.cpu_quota));
    }
    if res.cpu_period > 0 {
        cpu.insert("period".into(), json!(res.cpu_period));
    }
    if !res.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(res.cpuset_cpus));
    }
    if !res.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(res.cpuset_mems));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    l["resources"] = resources;
    devices(&mut spec, &config.devices)?;
    if let Some(s) = seccomp(sc.seccomp.as_ref(), sc.privileged)? {
        spec["linux"]["seccomp"] = s;
    }
    if let Some(p) = apparmor(&sc, berth_oci::lsm::apparmor_enabled())? {
        spec["process"]["apparmorProfile"] = json!(p);
    }
    Ok(spec)
}

/// Host devices the config asks for: the node and a cgroup rule for it.
fn devices(spec: &mut Value, devices: &[cri::Device]) -> Result<(), Status> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for d in devices {
        let meta = std::fs::metadata(&d.host_path)
            .map_err(|e| invalid(format!("device {}: {e}", d.host_path)))?;
        let kind = if meta.file_type().is_char_device() {
            "c"
        } else if meta.file_type().is_block_device() {
            "b"
        } else {
            return Err(invalid(format!("{} is not a device", d.host_path)));
        };
        let rdev = meta.rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if let Some(a) = spec["linux"]["devices"].as_array_mut() {
            a.push(
                json!({"path": d.container_path, "type": kind, "major": major, "minor": minor,
                "fileMode": meta.mode() & 0o7777, "uid": meta.uid(), "gid": meta.gid()}),
            );
        } else {
            spec["linux"]["devices"] = json!([{"path": d.container_path, "type": kind, "major": major,
                "minor": minor, "fileMode": meta.mode() & 0o7777, "uid": meta.uid(), "gid": meta.gid()}]);
        }
        if let Some(r) = spec["linux"]["resources"]["devices"].as_array_mut() {
            r.push(json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": access}));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_namespaced_sysctls_pass() {
        assert!(super::check_sysctl("net.ipv4.ip_forward", true, true).is_ok());
        assert!(super::check_sysctl("kernel.shmmax", false, true).is_ok());
        assert!(super::check_sysctl("fs.mqueue.msg_max", false, true).is_ok());
        assert!(super::check_sysctl("net.ipv4.ip_forward", false, true).is_err());
        assert!(super::check_sysctl("kernel.msgmax", true, false).is_err());
        assert!(super::check_sysctl("vm.swappiness", true, true).is_err());
        assert!(super::check_sysctl("kernel.pid_max", true, true).is_err());
    }

    use super::*;

    fn image(entry: &[&str], cmd: &[&str]) -> ImageConfig {
        let mut i = ImageConfig::default();
        i.config.entrypoint = Some(entry.iter().map(|s| s.to_string()).collect());
        i.config.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
        i
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes() {
        let img = image(&["/entry"], &["cmd"]);
        assert_eq!(
            process_args(&img, &[], &[]).ok(),
            Some(v(&["/entry", "cmd"]))
        );
        assert_eq!(process_args(&img, &v(&["sh"]), &[]).ok(), Some(v(&["sh"])));
        assert_eq!(
            process_args(&img, &[], &v(&["a"])).ok(),
            Some(v(&["/entry", "a"]))
        );
        assert_eq!(
            process_args(&img, &v(&["sh"]), &v(&["-c", "x"])).ok(),
            Some(v(&["sh", "-c", "x"]))
        );
        assert!(process_args(&image(&[], &[]), &[], &[]).is_err());
    }
}
