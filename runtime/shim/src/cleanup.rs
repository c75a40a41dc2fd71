//! `berth-shim delete`: clean up a container whose shim is gone. Runs in the foreground
//! (no daemon, no tokio): `runtime delete --force`, unmount the rootfs the shim mounted,
//! remove the socket, print the recorded exit status as JSON (137 and now when none).

use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::Context;

use crate::daemon::socket_path;
use crate::process::ExitRecord;
use crate::Common;

/// Entry of `berth-shim delete`.
pub fn delete(c: &Common) -> anyhow::Result<()> {
    let root = c
        .runtime_root
        .clone()
        .unwrap_or_else(|| c.state.join("runc").join(&c.namespace));
    let binary = c.runtime_binary();
    // This process is not the shim daemon: waiting on its own child is fine here.
    let out = Command::new(&binary)
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &c.id])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        if !msg.contains("does not exist") && !msg.contains("not exist") {
            eprintln!("berth-shim delete: runtime delete: {}", msg.trim());
        }
    }
    crate::mount::unmount_rootfs(&c.bundle)
        .map_err(|e| anyhow::anyhow!("unmounting the rootfs: {e}"))?;
    let _ = std::fs::remove_file(socket_path(&c.state, &c.namespace, &c.id));
    let recorded = std::fs::read_to_string(c.bundle.join("init.exit")).ok();
    let json = match recorded {
        Some(j) if serde_json::from_str::<serde_json::Value>(&j).is_ok() => j,
        _ => {
            let pid = std::fs::read_to_string(c.bundle.join("init.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            ExitRecord {
                pid,
                status: 137,
                at: SystemTime::now(),
            }
            .to_json()
        }
    };
    println!("{}", json.trim());
    Ok(())
}
