//! SPDY/3.1 flow control for the streaming server: the peer's receive windows (what berthd may still send,
//! per stream and for the session: 64 KiB each at first, grown by the peer's WINDOW_UPDATE frames, the
//! streams' initial size set by its SETTINGS_INITIAL_WINDOW_SIZE), consulted by the writer before every data
//! frame. berthd's own receive windows are replenished by the readers: a WINDOW_UPDATE for every data frame
//! once its bytes were handed on (see [`super::frame::Out::Window`]).
//!
//! Why a peer can be "not flow controlled": Kubernetes' SPDY library (moby/spdystream, used by kubectl and
//! the kubelet) frames SPDY/3 under the `SPDY/3.1` upgrade name; it never sends WINDOW_UPDATE nor SETTINGS
//! and ignores ours. Enforcing the window against it would stall every transfer at 64 KiB. So the window is
//! enforced once the peer has shown it keeps one (a SETTINGS or WINDOW_UPDATE frame). When the window runs
//! out before that, the writer sends a PING: the peer answers it after the frames before it, so a reply with
//! still no WINDOW_UPDATE means the peer does no flow control, and the window is no longer checked.
//!
//! This module must never let the writer send more than the window of a peer that keeps one.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

/// SPDY/3.1's initial window, per stream and for the session.
pub(super) const INITIAL_WINDOW: i64 = 64 << 10;
/// SETTINGS id of the streams' initial window.
const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// The id of berthd's probe PING (a server's ping ids are even).
pub(super) const PROBE_PING: u32 = 2;

/// Whether the peer keeps windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not known yet: nothing heard, no probe answered.
    Unknown,
    /// The peer sent SETTINGS or WINDOW_UPDATE: its windows hold.
    Enforced,
    /// The peer answered the probe without any WINDOW_UPDATE: SPDY/3 without flow control.
    Off,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    initial: i64,
    session: i64,
    /// Window per stream that has sent data or had an update (others are at `initial`).
    streams: HashMap<u32, i64>,
    probed: bool,
}

/// What the writer may do with a data frame now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Grant {
    /// Send this many bytes (the window shrank by as much).
    Send(usize),
    /// Send the probe PING, then ask again.
    Probe,
    /// Wait for the peer (call [`Flow::changed`] first, then ask again).
    Wait,
}

/// The peer's windows, shared by the reader (updates) and the writer (grants).
#[derive(Debug)]
pub(super) struct Flow {
    state: Mutex<State>,
    changed: Notify,
}

impl Flow {
    pub(super) fn new() -> Flow {
        Flow {
            state: Mutex::new(State {
                mode: Mode::Unknown,
                initial: INITIAL_WINDOW,
                session: INITIAL_WINDOW,
                streams: HashMap::new(),
                probed: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A future that completes at the next change (create it before [`Flow::grant`] so no change is missed).
    pub(super) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// How much of `want` bytes may go on `stream` now.
    pub(super) fn grant(&self, stream: u32, want: usize) -> Grant {
        let mut s = self.lock();
        if s.mode == Mode::Off || want == 0 {
            return Grant::Send(want);
        }
        let initial = s.initial;
        let window = *s.streams.get(&stream).unwrap_or(&initial);
        let room = window.min(s.session);
        if room <= 0 {
            return match s.mode {
                Mode::Unknown if !s.probed => {
                    s.probed = true;
                    Grant::Probe
                }
                _ => Grant::Wait,
            };
        }
        let n = room.min(want as i64);
        s.streams.insert(stream, window - n);
        s.session -= n;
        Grant::Send(n as usize)
    }

    /// A control frame from the peer: WINDOW_UPDATE (9), SETTINGS (4) or the reply to the probe PING (6).
    /// True when it was one of those (the caller has nothing more to do with it).
    pub(super) fn control(&self, ty: u16, data: &[u8]) -> bool {
        let word = |i: usize| {
            data.get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let mut s = self.lock();
        match ty {
            9 => {
                let (Some(id), Some(delta)) = (word(0), word(4)) else {
                    return true;
                };
                let (id, delta) = (id & 0x7fff_ffff, i64::from(delta & 0x7fff_ffff));
                s.mode = Mode::Enforced;
                if id == 0 {
                    s.session += delta;
                } else {
                    let initial = s.initial;
                    *s.streams.entry(id).or_insert(initial) += delta;
                }
            }
            4 => {
                s.mode = Mode::Enforced;
                let n = word(0).unwrap_or(0) as usize;
                for i in 0..n.min(data.len() / 8) {
                    let (Some(idw), Some(value)) = (word(4 + i * 8), word(8 + i * 8)) else {
                        break;
                    };
                    if idw & 0x00ff_ffff == SETTINGS_INITIAL_WINDOW_SIZE {
                        // A new initial size moves every open stream's window by the difference.
                        let diff = i64::from(value & 0x7fff_ffff) - s.initial;
                        s.initial += diff;
                        for w in s.streams.values_mut() {
                            *w += diff;
                        }
                    }
                }
            }
            6 if word(0) == Some(PROBE_PING) => {
                if s.mode == Mode::Unknown {
                    s.mode = Mode::Off;
                }
            }
            _ => return false,
        }
        drop(s);
        self.changed.notify_waiters();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: u32, delta: u32) -> Vec<u8> {
        [id.to_be_bytes(), delta.to_be_bytes()].concat()
    }

    #[test]
    fn a_flow_controlled_peer_gets_no_more_than_its_window() {
        let f = Flow::new();
        assert!(f.control(9, &update(1, 0)));
        assert_eq!(f.grant(1, 40 << 10), Grant::Send(40 << 10));
        assert_eq!(f.grant(1, 40 << 10), Grant::Send(24 << 10));
        assert_eq!(f.grant(1, 1), Grant::Wait);
        f.control(9, &update(1, 1000));
        // The session window is spent too.
        assert_eq!(f.grant(1, 1), Grant::Wait);
        f.control(9, &update(0, 500));
        assert_eq!(f.grant(1, 2000), Grant::Send(500));
    }

    #[test]
    fn settings_initial_window_moves_open_streams() {
        let f = Flow::new();
        f.control(9, &update(0, 1 << 20));
        assert_eq!(f.grant(3, 1000), Grant::Send(1000));
        // SETTINGS: one entry, INITIAL_WINDOW_SIZE = 4096.
        let settings = [
            1u32.to_be_bytes(),
            7u32.to_be_bytes(),
            4096u32.to_be_bytes(),
        ]
        .concat();
        assert!(f.control(4, &settings));
        assert_eq!(f.grant(3, 10_000), Grant::Send(3096));
        assert_eq!(f.grant(5, 10_000), Grant::Send(4096));
    }

    #[test]
    fn a_peer_without_flow_control_is_probed_once_then_unlimited() {
        let f = Flow::new();
        assert_eq!(f.grant(1, 64 << 10), Grant::Send(64 << 10));
        assert_eq!(f.grant(1, 1), Grant::Probe);
        assert_eq!(f.grant(1, 1), Grant::Wait);
        assert!(!f.control(6, &7u32.to_be_bytes()), "the peer's own ping");
        assert!(f.control(6, &PROBE_PING.to_be_bytes()));
        assert_eq!(f.grant(1, 10 << 20), Grant::Send(10 << 20));
    }
}
