//! The journal an older berthd kept in `<state>/events.redb`: read once (its last seq and its shims' seqs and
//! once-markers) so that a berthd upgraded while containers run keeps exactly-once, then deleted by the caller.
//!
//! This module must never write to the old database.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::log::record::{once_key, ShimState};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const SHIM_SEQS: TableDefinition<&str, u64> = TableDefinition::new("shim_seqs");
const SHIM_ONCE: TableDefinition<(&str, &str), ()> = TableDefinition::new("shim_once");

/// The old database's last seq and exactly-once state, if the file exists.
pub(crate) fn read(path: &Path) -> Result<Option<(u64, ShimState)>, redb::Error> {
    if !path.is_file() {
        return Ok(None);
    }
    let db = Database::open(path)?;
    let rtx = db.begin_read()?;
    let mut state = ShimState::default();
    let mut last = 0;
    if let Ok(meta) = rtx.open_table(META) {
        if let Some(v) = meta.get("journal_floor")? {
            last = crate::store::tables::u64_le(v.value()).unwrap_or(0);
        }
    }
    if let Ok(j) = rtx.open_table(JOURNAL) {
        if let Some((k, _)) = j.last()? {
            last = last.max(k.value());
        }
    }
    if let Ok(t) = rtx.open_table(SHIM_SEQS) {
        for item in t.iter()? {
            let (k, v) = item?;
            state.seqs.insert(k.value().to_string(), v.value());
        }
    }
    if let Ok(t) = rtx.open_table(SHIM_ONCE) {
        for item in t.iter()? {
            let (k, _) = item?;
            let (task, once) = k.value();
            state.once.insert(once_key(task, once));
        }
    }
    Ok(Some((last, state)))
}
