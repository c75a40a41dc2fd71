//! `update`: change a running container's resource limits, from a LinuxResources
//! JSON (`--resources FILE|-`) or runc's flag forms.

use std::io::Read;
use std::path::Path;

use oci_spec::runtime::LinuxResources;
use serde_json::{json, Map, Value};

use crate::cli::UpdateArgs;
use crate::container::Container;
use crate::error::{Error, Result};

/// Apply new limits.
pub fn run(root: &Path, a: &UpdateArgs) -> Result<()> {
    let c = Container::load(root, &a.id)?;
    c.can_kill()?;
    let r = resources(a)?;
    c.saved.cgroup.apply(&r)?;
    Ok(())
}

fn resources(a: &UpdateArgs) -> Result<LinuxResources> {
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        return Err(Error::Usage(
            "Intel RDT (--l3-cache-schema, --mem-bw-schema) is not supported".into(),
        ));
    }
    if let Some(p) = &a.resources {
        let mut data = Vec::new();
        if p.as_os_str() == "-" {
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|e| Error::io("read", "stdin", e))?;
        } else {
            data = std::fs::read(p).map_err(|e| Error::io("read", p, e))?;
        }
        return serde_json::from_slice(&data).map_err(|e| Error::Config {
            path: p.clone(),
            msg: format!("invalid resources JSON: {e}"),
        });
    }
    let mut mem = Map::new();
    if let Some(m) = &a.memory {
        mem.insert("limit".into(), json!(size(m)?));
    }
    if let Some(m) = &a.memory_reservation {
        mem.insert("reservation".into(), json!(size(m)?));
    }
    if let Some(m) = &a.memory_swap {
        mem.insert("swap".into(), json!(size(m)?));
    }
    let mut cpu = Map::new();
    if let Some(v) = a.cpu_shares {
        cpu.insert("shares".into(), json!(v));
    }
    if let Some(v) = a.cpu_quota {
        cpu.insert("quota".into(), json!(v));
    }
    if let Some(v) = a.cpu_period {
        cpu.insert("period".into(), json!(v));
    }
    if let Some(v) = a.cpu_rt_period {
        cpu.insert("realtimePeriod".into(), json!(v));
    }
    if let Some(v) = a.cpu_rt_runtime {
        cpu.insert("realtimeRuntime".into(), json!(v));
    }
    if let Some(v) = &a.cpuset_cpus {
        cpu.insert("cpus".into(), json!(v));
    }
    if let Some(v) = &a.cpuset_mems {
        cpu.insert("mems".into(), json!(v));
    }
    let mut r = Map::new();
    if !mem.is_empty() {
        r.insert("memory".into(), Value::Object(mem));
    }
    if !cpu.is_empty() {
        r.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(v) = a.pids_limit {
        r.insert("pids".into(), json!({ "limit": v }));
    }
    if let Some(v) = a.blkio_weight {
        r.insert("blockIO".into(), json!({ "weight": v }));
    }
    serde_json::from_value(Value::Object(r)).map_err(|e| Error::Json {
        what: "resources from flags".into(),
        source: e,
    })
}

/// Parse `123`, `64k`, `10m`, `1g` (powers of 1024), `-1`.
pub fn size(s: &str) -> Result<i64> {
    let bad = || Error::Usage(format!("invalid size {s:?}"));
    if s == "-1" {
        return Ok(-1);
    }
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<i64>().map(|n| n * mul).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::size("64k").ok(), Some(65536));
        assert_eq!(super::size("10M").ok(), Some(10 << 20));
        assert_eq!(super::size("-1").ok(), Some(-1));
        assert!(super::size("x").is_err());
    }
}
