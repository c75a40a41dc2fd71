//! The host side of the network fixture: one fixture at a time per test binary ([`HostLock`]), host
//! commands, polling, free ports and subnets, and the removal of iptables rules that carry a fixture's
//! markers. Nothing here touches what does not carry the calling fixture's markers.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::COUNTER;
use crate::run_timeout;

/// Held by one fixture at a time (a guard that can move between threads, unlike a `MutexGuard`).
static HOST_BUSY: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

pub(super) struct HostLock;

impl HostLock {
    pub(super) fn take() -> HostLock {
        let (busy, freed) = &HOST_BUSY;
        let mut b = busy.lock().unwrap_or_else(|e| e.into_inner());
        while *b {
            b = freed.wait(b).unwrap_or_else(|e| e.into_inner());
        }
        *b = true;
        HostLock
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let (busy, freed) = &HOST_BUSY;
        *busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        freed.notify_one();
    }
}
/// Run a host command with a time limit; its stdout (stderr appended when it failed).
pub fn sh(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = run_timeout(&mut cmd, Duration::from_secs(30));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), text)
}

/// Poll `f` until it holds or `limit` passes; its last answer.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP port free on every host address right now (a published port DNATs all its connections).
pub fn free_port() -> u16 {
    use std::net::TcpListener;
    let seed = std::process::id() * 7919 + COUNTER.fetch_add(1, Ordering::Relaxed) * 104_729;
    for k in 0..2000u32 {
        let p = 20000 + ((seed + k * 977) % 40000) as u16;
        if TcpListener::bind(("0.0.0.0", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port");
}

/// A third octet K such that 10.215.K.0/24 is used by no host address or route.
pub(super) fn free_third_octet(n: u32) -> u32 {
    let (_, routes) = sh(&["ip", "-o", "-4", "route", "show", "table", "all"]);
    let (_, addrs) = sh(&["ip", "-o", "-4", "addr"]);
    for k in 0..250u32 {
        let third = ((std::process::id().wrapping_mul(7) + n * 13 + k) % 250) + 1;
        let prefix = format!("10.215.{third}.");
        if !routes.contains(&prefix) && !addrs.contains(&prefix) {
            return third;
        }
    }
    panic!("no free /24 in 10.215.0.0/16");
}

/// Delete iptables rules (nat, filter) carrying a marker, and the chains that only those rules filled.
pub(super) fn remove_marked_rules(markers: &[String]) {
    for table in ["nat", "filter"] {
        let (_, text) = sh(&["iptables", "-w", "-t", table, "-S"]);
        let marked = |l: &str| markers.iter().any(|m| l.contains(m.as_str()));
        let mut script = format!("*{table}\n");
        let mut emptied: HashMap<String, bool> = HashMap::new();
        for l in text.lines() {
            let Some(rule) = l.strip_prefix("-A ") else {
                continue;
            };
            let chain = rule.split(' ').next().unwrap_or("").to_string();
            let is_marked = marked(l);
            let e = emptied.entry(chain).or_insert(true);
            *e &= is_marked;
            if is_marked {
                script.push_str(&format!("-D {rule}\n"));
            }
        }
        for (chain, empty) in &emptied {
            if *empty && chain.starts_with("CNI-DN-") {
                script.push_str(&format!("-X {chain}\n"));
            }
        }
        script.push_str("COMMIT\n");
        if script.lines().count() <= 2 {
            continue;
        }
        let mut child = Command::new("iptables-restore")
            .args(["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("iptables-restore");
        use std::io::Write;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let _ = child.wait();
    }
}
