//! What the metadata store keeps for the event journal (which lives in `<state>/events.redb`): the reserved seq
//! mark, so seqs never go backwards even when a reboot empties the state dir, and the read-once migration of the
//! journal tables older berthds kept in this file.
//!
//! This module must never lower the reserved mark.

use redb::{ReadableTable, WriteTransaction};

use super::tables::{
    u64_le, LEGACY_JOURNAL, LEGACY_JOURNAL_FLOOR, LEGACY_SHIM_SEQS, META, META_JOURNAL_RESERVED,
};
use super::{Store, StoreError};

/// The journal state an older berthd left in meta.redb.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LegacyJournal {
    /// Highest seq it handed out (its last event, or its floor when empty).
    pub last_seq: u64,
    /// Its shims' last journaled seqs.
    pub shim_seqs: Vec<(String, u64)>,
}

/// Inside a metadata write: raise the reserved mark to at least `upto`; returns the mark.
pub(crate) fn raise_reserved(wtx: &WriteTransaction, upto: u64) -> Result<u64, StoreError> {
    let mut meta = wtx.open_table(META)?;
    let cur = meta
        .get(META_JOURNAL_RESERVED)?
        .and_then(|v| u64_le(v.value()))
        .unwrap_or(0);
    let mark = cur.max(upto);
    if mark > cur {
        meta.insert(META_JOURNAL_RESERVED, mark.to_le_bytes().as_slice())?;
    }
    Ok(mark)
}

impl Store {
    /// The highest journal seq that may have been handed out (0: none).
    pub fn journal_reserved(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta_get(META_JOURNAL_RESERVED)?
            .and_then(|v| u64_le(&v))
            .unwrap_or(0))
    }

    /// Raise the reserved mark to at least `upto` (durably, on the writer thread) and return the new mark.
    /// Blocking; never call it from the metadata writer thread itself.
    pub fn reserve_journal_seqs(&self, upto: u64) -> Result<u64, StoreError> {
        self.writer()
            .write_blocking(move |wtx| raise_reserved(wtx, upto))
    }

    /// The journal an older berthd kept in this file, if any (blocking).
    pub fn legacy_journal(&self) -> Result<Option<LegacyJournal>, StoreError> {
        let rtx = self.read()?;
        let journal = match rtx.open_table(LEGACY_JOURNAL) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let shims = match rtx.open_table(LEGACY_SHIM_SEQS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if journal.is_none() && shims.is_none() {
            return Ok(None);
        }
        let floor = self
            .meta_get(LEGACY_JOURNAL_FLOOR)?
            .and_then(|v| u64_le(&v))
            .unwrap_or(0);
        let mut out = LegacyJournal {
            last_seq: floor,
            shim_seqs: Vec::new(),
        };
        if let Some(t) = journal {
            let last = t.last()?.map(|(k, _)| k.value());
            out.last_seq = out.last_seq.max(last.unwrap_or(0));
        }
        if let Some(t) = shims {
            for item in t.iter()? {
                let (k, v) = item?;
                out.shim_seqs.push((k.value().to_string(), v.value()));
            }
        }
        Ok(Some(out))
    }

    /// Delete the legacy journal tables, after raising the reserved mark to their last seq (blocking).
    pub fn drop_legacy_journal(&self, last_seq: u64) -> Result<(), StoreError> {
        self.reserve_journal_seqs(last_seq)?;
        self.writer().write_blocking(|wtx| {
            wtx.delete_table(LEGACY_JOURNAL)?;
            wtx.delete_table(LEGACY_SHIM_SEQS)?;
            let mut meta = wtx.open_table(META)?;
            meta.remove(LEGACY_JOURNAL_FLOOR)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::TempStore;

    #[test]
    fn reserved_mark_only_grows() {
        let mut t = TempStore::new("reserve");
        assert_eq!(t.store().journal_reserved().expect("read"), 0);
        assert_eq!(t.store().reserve_journal_seqs(10).expect("reserve"), 10);
        assert_eq!(t.store().reserve_journal_seqs(5).expect("reserve"), 10);
        t.reopen();
        assert_eq!(t.store().journal_reserved().expect("read"), 10);
        assert_eq!(t.store().legacy_journal().expect("legacy"), None);
    }

    #[test]
    fn legacy_tables_are_read_then_dropped() {
        let t = TempStore::new("legacy");
        t.store()
            .writer()
            .write_blocking(|wtx| {
                wtx.open_table(LEGACY_JOURNAL)?
                    .insert(7, [1u8].as_slice())?;
                wtx.open_table(LEGACY_SHIM_SEQS)?.insert("n/c", 3)?;
                wtx.open_table(META)?
                    .insert(LEGACY_JOURNAL_FLOOR, 4u64.to_le_bytes().as_slice())?;
                Ok(())
            })
            .expect("write legacy");
        let l = t.store().legacy_journal().expect("read").expect("some");
        assert_eq!(l.last_seq, 7);
        assert_eq!(l.shim_seqs, vec![("n/c".to_string(), 3)]);
        t.store().drop_legacy_journal(l.last_seq).expect("drop");
        assert_eq!(t.store().legacy_journal().expect("read"), None);
        assert_eq!(t.store().journal_reserved().expect("read"), 7);
    }
}
