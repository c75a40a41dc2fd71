//! In-memory GC roots for snapshots that an in-process caller has prepared but not yet named in a
//! record (the CRI prepares a container's rootfs, reads the image's /etc/passwd from it, then creates
//! the container). A gRPC client closes that window with a lease; berthd's own callers pin instead,
//! which costs no commit. Pins die with the process, so after a crash such a snapshot is collected,
//! as nothing names it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// (namespace, snapshotter, key).
type PinKey = (String, String, String);

/// The pinned snapshots, counted (two callers may pin the same key).
#[derive(Debug, Default)]
pub(super) struct Pins(Mutex<HashMap<PinKey, usize>>);

impl Pins {
    /// The pinned keys of one namespace, as (snapshotter, key).
    pub(super) fn in_namespace(&self, ns: &str) -> Vec<(String, String)> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.keys()
            .filter(|(n, _, _)| n == ns)
            .map(|(_, sn, key)| (sn.clone(), key.clone()))
            .collect()
    }
}

/// Keeps one snapshot out of GC until dropped. Take it before the snapshot is prepared, drop it once a
/// record names the snapshot (or it was removed).
#[derive(Debug)]
pub struct SnapshotPin {
    pins: Arc<Pins>,
    key: PinKey,
}

impl SnapshotPin {
    pub(super) fn new(pins: Arc<Pins>, ns: &str, snapshotter: &str, key: &str) -> Self {
        let key = (ns.to_string(), snapshotter.to_string(), key.to_string());
        *pins
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default() += 1;
        SnapshotPin { pins, key }
    }
}

impl Drop for SnapshotPin {
    fn drop(&mut self) {
        let mut map = self.pins.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}
