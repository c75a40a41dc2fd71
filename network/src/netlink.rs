//! The one rtnetlink request Berth sends itself: set a link up (`lo` in a fresh netns).
//!
//! Everything else about interfaces is the CNI plugins' job. The request acts on the network
//! namespace of the calling thread (a netlink socket belongs to the netns it was created in),
//! so it must only be called on a thread that is in the namespace it means to change.

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const IFF_UP: u32 = 0x1;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// Bring the interface `name` up in the calling thread's network namespace.
pub(crate) fn set_link_up(name: &str) -> io::Result<()> {
    let index = nix::net::if_::if_nametoindex(name).map_err(io::Error::from)?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(io::Error::from)?;
    // The kernel answers at once; the timeout only guards against a wedged kernel path.
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(5, 0)).map_err(io::Error::from)?;

    let seq: u32 = 1;
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + IFINFOMSG_LEN);
    // struct nlmsghdr
    msg.extend_from_slice(&((NLMSG_HDRLEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
                                                // struct ifinfomsg { family, pad, type, index, flags, change }
    msg.push(0); // AF_UNSPEC
    msg.push(0);
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&(index as i32).to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes());
    msg.extend_from_slice(&IFF_UP.to_ne_bytes());

    sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;

    let mut buf = [0u8; 4096];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io::Error::from)?;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes(field(&buf, off)?) as usize;
            let kind = u16::from_ne_bytes(field(&buf, off + 4)?);
            let got_seq = u32::from_ne_bytes(field(&buf, off + 8)?);
            if len < NLMSG_HDRLEN || off + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed netlink reply",
                ));
            }
            if kind == NLMSG_ERROR && got_seq == seq {
                let errno = i32::from_ne_bytes(field(&buf, off + NLMSG_HDRLEN)?);
                return if errno == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-errno))
                };
            }
            off += (len + 3) & !3;
        }
    }
}

fn field<const N: usize>(buf: &[u8], off: usize) -> io::Result<[u8; N]> {
    buf.get(off..off + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"))
}
