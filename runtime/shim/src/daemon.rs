//! `berth-shim start`: the socket path, the "already running" check, daemonising, and the
//! daemon's serve loop.
//!
//! Order matters: fork/setsid happen while the process is single-threaded; the tokio
//! runtime (current_thread) is built only in the daemon; the foreground waits on a pipe
//! for "ok" (then prints the address) or an error message. Nothing here dials berthd.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, fork, setsid, ForkResult};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::UnixListenerStream;

use crate::container::Inner;
use crate::journal::{write_atomic, Journal};
use crate::reaper::Reaper;
use crate::runtime::Runtime;
use crate::service::ShimService;
use crate::Common;

/// Unix socket paths hold at most 107 bytes plus the NUL.
const MAX_SOCKET_PATH: usize = 107;

/// `<state>/s/<16 hex of sha256("ns/id" + state)>.sock`.
pub fn socket_path(state: &Path, namespace: &str, id: &str) -> PathBuf {
    let mut h = Sha256::new();
    h.update(format!("{namespace}/{id}").as_bytes());
    h.update(state.as_os_str().as_encoded_bytes());
    let digest = h.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    state.join("s").join(format!("{hex}.sock"))
}

/// The address a live shim of this bundle serves, if any.
fn live_shim(bundle: &Path, socket: &Path) -> Option<String> {
    let recorded = std::fs::read_to_string(bundle.join("address")).ok();
    let path = recorded
        .as_deref()
        .map(|a| PathBuf::from(a.trim().trim_start_matches("unix://")))
        .unwrap_or_else(|| socket.to_path_buf());
    std::os::unix::net::UnixStream::connect(&path).ok()?;
    Some(format!("unix://{}", path.display()))
}

/// Entry of `berth-shim start`; returns only in the foreground.
pub fn start(c: &Common, daemon_address: &str) -> anyhow::Result<()> {
    let socket = socket_path(&c.state, &c.namespace, &c.id);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes: use a shorter --state",
            socket.display()
        );
    }
    let sdir = c.state.join("s");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&sdir)
        .with_context(|| format!("creating {}", sdir.display()))?;
    std::fs::set_permissions(&sdir, std::fs::Permissions::from_mode(0o711))?;
    if let Some(addr) = live_shim(&c.bundle, &socket) {
        println!("{addr}");
        return Ok(());
    }
    let runtime = c.runtime_binary();
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // SAFETY: the process is single-threaded here (no runtime, no threads spawned yet), so
    // the child may keep running Rust code after fork.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { child } => {
            drop(wr);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut msg = String::new();
            std::fs::File::from(rd).read_to_string(&mut msg)?;
            match msg.strip_prefix("ok ") {
                Some(addr) => {
                    println!("{}", addr.trim());
                    Ok(())
                }
                None if msg.is_empty() => bail!("berth-shim daemon died before it was ready"),
                None => bail!("{}", msg.trim()),
            }
        }
        ForkResult::Child => {
            drop(rd);
            let code = match daemonise(c, &socket, runtime, daemon_address, wr) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
    }
}

/// In the first child: new session, second fork, stdio to the log, then serve.
fn daemonise(
    c: &Common,
    socket: &Path,
    runtime: PathBuf,
    daemon_address: &str,
    ready: OwnedFd,
) -> anyhow::Result<()> {
    let mut ready = std::fs::File::from(ready);
    let fail = |ready: &mut std::fs::File, e: anyhow::Error| {
        let _ = write!(ready, "{e:#}");
        e
    };
    setsid().map_err(|e| fail(&mut ready, anyhow::anyhow!("setsid: {e}")))?;
    // SAFETY: still single-threaded; the intermediate child only exits.
    match unsafe { fork() } {
        Err(e) => return Err(fail(&mut ready, anyhow::anyhow!("fork: {e}"))),
        Ok(ForkResult::Parent { .. }) => {
            // SAFETY: _exit ends the intermediate child at once without running destructors.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Child) => {}
    }
    close_inherited_fds(&ready);
    crate::signals::reset_ignored();
    let log = c.bundle.join("shim.log");
    let redirect = || -> anyhow::Result<()> {
        let null = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        dup2_stdin(&null)?;
        dup2_stdout(&out)?;
        dup2_stderr(&out)?;
        std::env::set_current_dir("/")?;
        Ok(())
    };
    redirect().map_err(|e| fail(&mut ready, e))?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| fail(&mut ready, anyhow::anyhow!("PR_SET_CHILD_SUBREAPER: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&mut ready, e.into()))?;
    crate::log!(
        "berth-shim {}/{} pid {} starting (daemon {daemon_address}, runtime {})",
        c.namespace,
        c.id,
        std::process::id(),
        runtime.display()
    );
    let (listener, inner, address) = match rt.block_on(setup(c, socket, runtime)) {
        Ok(v) => v,
        Err(e) => {
            crate::log!("shim failed to start: {e:#}");
            return Err(fail(&mut ready, e));
        }
    };
    // "ok", then closing the pipe, lets the foreground print the address and return.
    let _ = write!(ready, "ok {address}");
    drop(ready);
    crate::log!("serving on {address}");
    let res = rt.block_on(
        tonic::transport::Server::builder()
            .add_service(berth_proto::shim::shim_server::ShimServer::new(
                ShimService::new(inner),
            ))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    if let Err(e) = &res {
        crate::log!("serving failed: {e}");
    }
    res.context("serving")
}

/// Close every fd above stderr except the readiness pipe: a leaked fd of the caller (a pipe
/// it reads to EOF, a socket) must not live on in the shim.
fn close_inherited_fds(keep: &std::fs::File) {
    let keep = keep.as_raw_fd();
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if fd > 2 && fd != keep {
            // SAFETY: closing a raw fd number; nothing in this single-threaded process owns
            // these inherited fds (the read_dir handle is already closed, and a stale number
            // just yields EBADF).
            unsafe { libc::close(fd) };
        }
    }
}

/// In the daemon: reaper, journal, socket (0600), address and pid files.
async fn setup(
    c: &Common,
    socket: &Path,
    runtime: PathBuf,
) -> anyhow::Result<(tokio::net::UnixListener, Arc<Inner>, String)> {
    let reaper = Reaper::default();
    reaper.start().context("installing the SIGCHLD handler")?;
    let journal = Journal::open(&c.bundle).context("opening the event journal")?;
    let root = c
        .runtime_root
        .clone()
        .unwrap_or_else(|| c.state.join("runc").join(&c.namespace));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let rt = Runtime::new(runtime, root, c.bundle.join("log.json"), reaper.clone());
    let _ = std::fs::remove_file(socket);
    // SAFETY: umask only changes this process's file creation mask (single-threaded daemon).
    let old = unsafe { libc::umask(0o177) };
    let listener = tokio::net::UnixListener::bind(socket);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let address = format!("unix://{}", socket.display());
    write_atomic(&c.bundle.join("address"), address.as_bytes())?;
    write_atomic(
        &c.bundle.join("shim.pid"),
        std::process::id().to_string().as_bytes(),
    )?;
    let inner = Arc::new(Inner::new(
        c.namespace.clone(),
        c.id.clone(),
        c.bundle.clone(),
        socket.to_path_buf(),
        rt,
        reaper,
        journal,
    ));
    inner.restore().await;
    Ok((listener, inner, address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_is_short_and_stable() {
        let a = socket_path(Path::new("/run/berth"), "default", "c1");
        let b = socket_path(Path::new("/run/berth"), "default", "c1");
        let c = socket_path(Path::new("/run/berth"), "default", "c2");
        assert_eq!(a, b);
        assert_ne!(a, c);
        let name = a.file_name().map(|n| n.to_string_lossy().into_owned());
        assert_eq!(name.map(|n| n.len()), Some(16 + 5));
        assert!(a.starts_with("/run/berth/s"));
    }
}
