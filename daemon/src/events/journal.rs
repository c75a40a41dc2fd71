//! The durable event journal inside `<state>/events.redb` (see [`super::db`]): seq → `berth.v1.JournalEvent`,
//! bounded by retention, plus the shims' last journaled seqs (exactly-once delivery of shim events).
//!
//! Write helpers run inside the journal writer's transaction (see `store::writer`); read helpers are blocking.
//! This module must never renumber events (a seq, once given, stays with its event until the event is trimmed)
//! and never hand out a seq the reservation in meta.redb does not cover.

use berth_proto::berth::JournalEvent;
use prost::Message;
use redb::{ReadableTable, WriteTransaction};

use super::db::{
    decode, JournalDb, SeqReservation, JOURNAL, META, META_JOURNAL_FLOOR, SHIM_ONCE, SHIM_SEQS,
};
use super::Once;
use crate::store::tables::u64_le;
use crate::store::StoreError;

/// Append one event (seq assigned here, covered by `seqs`) and trim the journal to `retention` events.
pub(crate) fn append(
    wtx: &WriteTransaction,
    seqs: &std::sync::Arc<SeqReservation>,
    retention: u64,
    mut ev: JournalEvent,
) -> Result<JournalEvent, StoreError> {
    let mut j = wtx.open_table(JOURNAL)?;
    let last = j.last()?.map(|(k, _)| k.value());
    let seq = match last {
        Some(l) => l + 1,
        None => floor_in(wtx)? + 1,
    };
    // Before writing anything: a failed reservation must leave the transaction untouched.
    seqs.ensure(seq)?;
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

/// Whether the shim key has journaled its `once` event, inside a write.
pub(crate) fn once_done_in(
    wtx: &WriteTransaction,
    key: &str,
    once: Once,
) -> Result<bool, StoreError> {
    let t = wtx.open_table(SHIM_ONCE)?;
    let done = t.get((key, once.name()))?.is_some();
    Ok(done)
}

/// Record that the shim key journaled its `once` event, inside a write.
pub(crate) fn set_once_in(wtx: &WriteTransaction, key: &str, once: Once) -> Result<(), StoreError> {
    wtx.open_table(SHIM_ONCE)?.insert((key, once.name()), ())?;
    Ok(())
}

/// Forget a shim's seq and once-markers inside a write.
pub(crate) fn remove_shim_seq(wtx: &WriteTransaction, key: &str) -> Result<(), StoreError> {
    let mut t = wtx.open_table(SHIM_SEQS)?;
    t.remove(key)?;
    let mut once = wtx.open_table(SHIM_ONCE)?;
    for o in Once::ALL {
        once.remove((key, o.name()))?;
    }
    Ok(())
}

impl JournalDb {
    /// Highest seq trimmed from the journal, or the reserved mark a fresh journal started above (0 if none):
    /// cursors below it are out of range.
    pub fn journal_floor(&self) -> Result<u64, StoreError> {
        let rtx = self.read()?;
        let t = rtx.open_table(META)?;
        let v = t.get(META_JOURNAL_FLOOR)?.and_then(|v| u64_le(v.value()));
        Ok(v.unwrap_or(0))
    }

    /// Seq of the newest journaled event (the floor if none).
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
            out.push(decode(k.value(), v.value())?);
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

    /// The reserved seq mark as this process knows it (durable in meta.redb).
    pub fn reserved_seq(&self) -> u64 {
        self.seqs().reserved()
    }
}
