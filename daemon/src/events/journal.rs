//! The durable event journal inside the metadata store: seq → `berth.v1.JournalEvent`, bounded by retention,
//! plus the shims' last journaled seqs (exactly-once delivery of shim events).
//!
//! Write helpers run inside the store writer's transaction (see `store::writer`); read helpers are blocking.
//! This module must never renumber events: a seq, once given, stays with its event until the event is trimmed.

use berth_proto::berth::JournalEvent;
use prost::Message;
use redb::{ReadableTable, WriteTransaction};

use crate::store::tables::{u64_le, JOURNAL, META, META_JOURNAL_FLOOR, SHIM_SEQS};
use crate::store::{Store, StoreError};

/// Append one event (seq assigned here) and trim the journal to `retention` events.
pub(crate) fn append(
    wtx: &WriteTransaction,
    retention: u64,
    mut ev: JournalEvent,
) -> Result<JournalEvent, StoreError> {
    let mut j = wtx.open_table(JOURNAL)?;
    let last = j.last()?.map(|(k, _)| k.value());
    let seq = match last {
        Some(l) => l + 1,
        None => floor_in(wtx)? + 1,
    };
    ev.seq = seq;
    j.insert(seq, ev.encode_to_vec().as_slice())?;
    let cutoff = seq.saturating_sub(retention.max(1));
    let mut removed = 0;
    loop {
        let first = j.first()?.map(|(k, _)| k.value());
        match first {
            Some(k) if k <= cutoff => {
                j.pop_first()?;
                removed = k;
            }
            _ => break,
        }
    }
    drop(j);
    if removed > 0 {
        let mut meta = wtx.open_table(META)?;
        meta.insert(META_JOURNAL_FLOOR, removed.to_le_bytes().as_slice())?;
    }
    Ok(ev)
}

fn floor_in(wtx: &WriteTransaction) -> Result<u64, StoreError> {
    let meta = wtx.open_table(META)?;
    let v = meta
        .get(META_JOURNAL_FLOOR)?
        .and_then(|v| u64_le(v.value()));
    Ok(v.unwrap_or(0))
}

/// The shim's last journaled seq inside a write.
pub(crate) fn shim_seq_in(wtx: &WriteTransaction, key: &str) -> Result<u64, StoreError> {
    let t = wtx.open_table(SHIM_SEQS)?;
    let v = t.get(key)?.map(|v| v.value());
    Ok(v.unwrap_or(0))
}

/// Record the shim's last journaled seq inside a write.
pub(crate) fn set_shim_seq(wtx: &WriteTransaction, key: &str, seq: u64) -> Result<(), StoreError> {
    let mut t = wtx.open_table(SHIM_SEQS)?;
    t.insert(key, seq)?;
    Ok(())
}

/// Forget a shim's seq inside a write.
pub(crate) fn remove_shim_seq(wtx: &WriteTransaction, key: &str) -> Result<(), StoreError> {
    let mut t = wtx.open_table(SHIM_SEQS)?;
    t.remove(key)?;
    Ok(())
}

impl Store {
    /// Highest seq trimmed from the journal (0 if none): cursors below it are out of range.
    pub fn journal_floor(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta_get(META_JOURNAL_FLOOR)?
            .and_then(|v| u64_le(&v))
            .unwrap_or(0))
    }

    /// Seq of the newest journaled event (0 if none).
    pub fn journal_last_seq(&self) -> Result<u64, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(JOURNAL)?;
        let last = t.last()?.map(|(k, _)| k.value());
        match last {
            Some(l) => Ok(l),
            None => self.journal_floor(),
        }
    }

    /// Up to `limit` events with `after < seq <= upto`, in order.
    pub fn read_journal(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<JournalEvent>, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(JOURNAL)?;
        let mut out = Vec::new();
        if after >= upto {
            return Ok(out);
        }
        for item in t.range((after + 1)..=upto)? {
            let (k, v) = item?;
            let ev = JournalEvent::decode(v.value())
                .map_err(|e| StoreError::Corrupt(format!("journal event {}: {e}", k.value())))?;
            out.push(ev);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The last seq journaled for a shim (0 if none).
    pub fn shim_seq(&self, key: &str) -> Result<u64, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(SHIM_SEQS)?;
        let v = t.get(key)?.map(|v| v.value());
        Ok(v.unwrap_or(0))
    }
}
