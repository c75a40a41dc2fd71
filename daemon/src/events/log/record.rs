//! What one journal record holds, and the shims' exactly-once state it is replayed into.
//!
//! Every record is one [`berth_proto::frame`] (length, CRC-32C, payload) whose payload is a prost [`Record`]:
//! an event AND the shim seq / once-marker it consumes travel in the same record, so a crash can never keep
//! one without the other. A segment starts with the 8-byte [`MAGIC`] and a [`Snapshot`] record holding the
//! whole exactly-once state at that point, so older segments can be deleted without losing it.
//!
//! This module must never change a field's tag (segments outlive the berthd that wrote them).

use std::collections::{HashMap, HashSet};

use berth_proto::berth::JournalEvent;

/// First bytes of every segment file.
pub(crate) const MAGIC: &[u8; 8] = b"BERTHEJ1";

/// One journal record. Exactly one of: an event (maybe with the shim seq and once-marker it consumes), a shim
/// seq alone (a replay dropped as a second once-event), forgotten tasks, or a segment's snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Record {
    #[prost(message, optional, tag = "1")]
    pub event: Option<JournalEvent>,
    /// Seq source (`<ns>/<id>` or `<ns>/<id>#berthd`) whose last seq becomes `source_seq`; empty: none.
    #[prost(string, tag = "2")]
    pub source: String,
    #[prost(uint64, tag = "3")]
    pub source_seq: u64,
    /// Task whose `once` marker this record sets; empty: none.
    #[prost(string, tag = "4")]
    pub task: String,
    #[prost(string, tag = "5")]
    pub once: String,
    /// Tasks whose seqs (shim and berthd sources) and once-markers are dropped.
    #[prost(string, repeated, tag = "6")]
    pub forget: Vec<String>,
    #[prost(message, optional, tag = "7")]
    pub snapshot: Option<Snapshot>,
}

/// The head of a segment: where its seqs start and the exactly-once state before its first record.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Snapshot {
    /// Seq of the last event before this segment (its events are `base + 1 ..`).
    #[prost(uint64, tag = "1")]
    pub base: u64,
    /// The kernel boot the segment was written under: a journal from another boot is discarded.
    #[prost(string, tag = "2")]
    pub boot_id: String,
    #[prost(message, repeated, tag = "3")]
    pub sources: Vec<SourceSeq>,
    /// Set once-markers, as `task \0 name`.
    #[prost(string, repeated, tag = "4")]
    pub once: Vec<String>,
}

/// One seq source's last journaled seq.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SourceSeq {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

/// The exactly-once state: each source's last seq and the tasks' once-markers.
#[derive(Debug, Default, Clone)]
pub(crate) struct ShimState {
    pub seqs: HashMap<String, u64>,
    pub once: HashSet<String>,
}

/// A once-marker's key.
pub(crate) fn once_key(task: &str, once: &str) -> String {
    format!("{task}\0{once}")
}

impl ShimState {
    /// The state a snapshot holds.
    pub(crate) fn from_snapshot(s: &Snapshot) -> ShimState {
        ShimState {
            seqs: s.sources.iter().map(|x| (x.key.clone(), x.seq)).collect(),
            once: s.once.iter().cloned().collect(),
        }
    }

    /// A snapshot of this state, heading a segment after `base`.
    pub(crate) fn snapshot(&self, base: u64, boot_id: &str) -> Snapshot {
        let mut sources: Vec<SourceSeq> = self
            .seqs
            .iter()
            .map(|(k, v)| SourceSeq {
                key: k.clone(),
                seq: *v,
            })
            .collect();
        sources.sort_by(|a, b| a.key.cmp(&b.key));
        let mut once: Vec<String> = self.once.iter().cloned().collect();
        once.sort();
        Snapshot {
            base,
            boot_id: boot_id.to_string(),
            sources,
            once,
        }
    }

    /// Replay one record into the state.
    pub(crate) fn apply(&mut self, r: &Record) {
        if !r.source.is_empty() {
            self.seqs.insert(r.source.clone(), r.source_seq);
        }
        if !r.task.is_empty() && !r.once.is_empty() {
            self.once.insert(once_key(&r.task, &r.once));
        }
        for task in &r.forget {
            self.forget(task);
        }
    }

    /// Drop a task's sources and once-markers.
    pub(crate) fn forget(&mut self, task: &str) {
        self.seqs.remove(task);
        self.seqs.remove(&super::super::berthd_source(task));
        for o in super::super::Once::ALL {
            self.once.remove(&once_key(task, o.name()));
        }
    }
}
