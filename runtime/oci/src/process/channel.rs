//! The typed channel of the create/exec chain: a SOCK_SEQPACKET socketpair (one
//! datagram per message, so no framing) carrying JSON-encoded `Msg`s. Both ends
//! are close-on-exec, so the parent sees EOF once the container process execs
//! or dies. It must never carry anything but these messages.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, SysContext};

/// Messages between the runtime parent and the chain (stage1, init, exec process).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Msg {
    /// parent → stage1: the stage1 pid is in the cgroup, go on.
    Go,
    /// stage1 → parent: unshared the user namespace, write the id maps.
    UserNs,
    /// parent → stage1: maps written.
    MapsWritten,
    /// stage1 → parent: the container process's host pid.
    Pid(i32),
    /// init → parent: namespaces and mounts exist; run prestart/createRuntime hooks.
    CreateHooks,
    /// parent → init: hooks done; the state JSON for the container's own hooks.
    HooksDone(String),
    /// init → parent: all set, waiting for start.
    Ready,
    /// any child → parent: a failure.
    Error(String),
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// A connected pair (parent end, child end).
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .sys(|| "socketpair".into())?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    /// Send a message.
    pub fn send(&self, m: &Msg) -> Result<()> {
        let data = serde_json::to_vec(m).map_err(|e| Error::Json {
            what: "channel message".into(),
            source: e,
        })?;
        loop {
            match send(self.fd.as_raw_fd(), &data, MsgFlags::MSG_NOSIGNAL) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => {
                    r.sys(|| "send on sync socket".into())?;
                    return Ok(());
                }
            }
        }
    }

    /// Receive a message; None on EOF (the other side exec'd, exited or died).
    pub fn recv(&self) -> Result<Option<Msg>> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.sys(|| "recv on sync socket".into())?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(Some)
            .map_err(|e| Error::Json {
                what: "channel message".into(),
                source: e,
            })
    }

    /// Receive and require a specific message.
    pub fn expect(&self, what: &str, ok: impl Fn(&Msg) -> bool) -> Result<Msg> {
        match self.recv()? {
            Some(Msg::Error(e)) => Err(Error::Init(e)),
            Some(m) if ok(&m) => Ok(m),
            Some(m) => Err(Error::Init(format!("expected {what}, got {m:?}"))),
            None => Err(Error::Init(format!("expected {what}, got EOF"))),
        }
    }
}
