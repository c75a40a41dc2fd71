//! The plugins' own cost, measured the way any CNI runtime pays it: the chain exec'd directly, and a free
//! subnet for the bench's bridge. Never touches anything but the bench's own netns, bridge and subnet.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The same chain as berthd runs, exec'd directly: each plugin's config as the CNI spec derives it (name,
/// cniVersion, prevResult; no capabilities asked for), the same environment. Times only the plugins; returns
/// the time and the final result (DEL gets ADD's as its prevResult, as berth-net does).
pub fn direct_chain(
    net: &berth_net::Network,
    dirs: &[PathBuf],
    netns: &Path,
    cid: &str,
    verb: &str,
    mut prev: Option<serde_json::Value>,
) -> anyhow::Result<(Duration, Option<serde_json::Value>)> {
    let mut took = Duration::ZERO;
    let plugins: Vec<&berth_net::PluginConf> = if verb == "DEL" {
        net.plugins.iter().rev().collect()
    } else {
        net.plugins.iter().collect()
    };
    let cni_path = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    for p in plugins {
        let mut conf = p.conf.clone();
        conf.insert("name".into(), net.name.clone().into());
        conf.insert("cniVersion".into(), net.cni_version.to_string().into());
        conf.remove("capabilities");
        conf.remove("runtimeConfig");
        conf.remove("prevResult");
        if let Some(prev) = &prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let stdin = serde_json::to_vec(&serde_json::Value::Object(conf))?;
        let bin = dirs
            .iter()
            .map(|d| d.join(&p.plugin_type))
            .find(|b| b.is_file())
            .with_context(|| format!("plugin {} not found", p.plugin_type))?;
        let t = Instant::now();
        let mut child = Command::new(&bin)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", verb)
            .env("CNI_PATH", &cni_path)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut s) = child.stdin.take() {
            use std::io::Write;
            s.write_all(&stdin)?;
        }
        let out = child.wait_with_output()?;
        took += t.elapsed();
        if !out.status.success() {
            bail!(
                "{} {verb} failed: {}{}",
                p.plugin_type,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if verb == "ADD" {
            prev = Some(serde_json::from_slice(&out.stdout)?);
        }
    }
    Ok((took, prev))
}

/// A /24 in 10.216.0.0/16 that no host route or address uses.
pub fn free_subnet() -> anyhow::Result<String> {
    let routes = Command::new("ip")
        .args(["-o", "-4", "route", "show", "table", "all"])
        .output()?;
    let addrs = Command::new("ip").args(["-o", "-4", "addr"]).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&routes.stdout),
        String::from_utf8_lossy(&addrs.stdout)
    );
    for k in 1..250 {
        let third = (std::process::id() + k) % 250 + 1;
        if !text.contains(&format!("10.216.{third}.")) {
            return Ok(format!("10.216.{third}.0/24"));
        }
    }
    bail!("no free /24 in 10.216.0.0/16")
}
