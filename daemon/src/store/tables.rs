//! The redb tables and the schema version check done at open.
//!
//! Layout (schema version 1):
//! - `meta`: `schema_version` (u32 LE), `server_uuid` (text), `journal_reserved` (u64 LE: the event journal may
//!   have handed out seqs up to this one, never beyond; see `events::db`).
//! - `namespaces`: name → JSON [`NamespaceRecord`](super::namespaces::NamespaceRecord).
//! - `containers`: (namespace, id) → prost-encoded containerd `Container`.
//! - `leases`: (namespace, id) → JSON [`LeaseRecord`](super::leases::LeaseRecord).
//! - `images`: (namespace, name) → prost-encoded containerd `Image`.
//! - `content`: (namespace, digest) → JSON [`ContentRecord`](super::content::ContentRecord): a blob is visible
//!   in a namespace only with a record there; the bytes live once in `<root>/content` (berth-image).
//! - `snapshots`: (snapshotter, namespace, key) → JSON [`SnapshotRecord`](super::snapshots::SnapshotRecord);
//!   the record's number names the snapshot's directory `<root>/snapshots/<snapshotter>/<number>`.
//! - `meta` also holds `snapshot_next_id` (u64 LE): the next snapshot number.
//! - `net_attachments`: (owner, network) → JSON [`NetAttachmentRecord`](super::networks::NetAttachmentRecord):
//!   each CNI attachment berthd made and has not yet removed (a table older berthds simply do not open).
//!
//! The event journal and the shims' seqs live in `<state>/events/` (`events::db`). Older berthds kept them
//! here (tables `journal`, `shim_seqs`, meta key `journal_floor`): the event journal takes their seqs over once,
//! when it is created, and then deletes them from this file.
//!
//! This module must never rewrite or drop data written by a newer schema.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use super::StoreError;

/// The schema this berthd reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
pub(crate) const CONTAINERS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("containers");
pub(crate) const LEASES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("leases");
pub(crate) const IMAGES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("images");
pub(crate) const CONTENT: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("content");
pub(crate) const SNAPSHOTS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("snapshots");
pub(crate) const NET_ATTACHMENTS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("net_attachments");
/// Journal of older berthds (now in `<state>/events/`): read once to migrate, then deleted.
pub(crate) const LEGACY_JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// Shim seqs of older berthds (now in `<state>/events/`): read once to migrate, then deleted.
pub(crate) const LEGACY_SHIM_SEQS: TableDefinition<&str, u64> = TableDefinition::new("shim_seqs");

pub(crate) const META_SCHEMA: &str = "schema_version";
pub(crate) const META_UUID: &str = "server_uuid";
/// The next snapshot number.
pub(crate) const META_SNAPSHOT_NEXT_ID: &str = "snapshot_next_id";
/// Highest journal seq that may have been handed out (reserved in blocks, written before use).
pub(crate) const META_JOURNAL_RESERVED: &str = "journal_reserved";
/// Journal floor of older berthds (legacy, see [`LEGACY_JOURNAL`]).
pub(crate) const LEGACY_JOURNAL_FLOOR: &str = "journal_floor";

/// Create missing tables, check (or set) the schema version, and return the server uuid (created on first use).
pub(crate) fn initialise(db: &Database, path: &Path) -> Result<String, StoreError> {
    let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut wtx = db.begin_write().map_err(|e| open_err(&e))?;
    wtx.set_quick_repair(true);
    let uuid;
    {
        let mut meta = wtx.open_table(META).map_err(|e| open_err(&e))?;
        let found = meta
            .get(META_SCHEMA)
            .map_err(|e| open_err(&e))?
            .map(|v| v.value().to_vec());
        match found {
            None => {
                meta.insert(META_SCHEMA, SCHEMA_VERSION.to_le_bytes().as_slice())
                    .map_err(|e| open_err(&e))?;
            }
            Some(bytes) => {
                let arr: [u8; 4] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| open_err(&"the schema version record is malformed"))?;
                let v = u32::from_le_bytes(arr);
                if v > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path: path.to_path_buf(),
                        found: v,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
        }
        let existing = meta
            .get(META_UUID)
            .map_err(|e| open_err(&e))?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        uuid = match existing {
            Some(u) => u,
            None => {
                let u = new_uuid();
                meta.insert(META_UUID, u.as_bytes())
                    .map_err(|e| open_err(&e))?;
                u
            }
        };
    }
    wtx.open_table(NAMESPACES).map_err(|e| open_err(&e))?;
    wtx.open_table(CONTAINERS).map_err(|e| open_err(&e))?;
    wtx.open_table(LEASES).map_err(|e| open_err(&e))?;
    wtx.open_table(IMAGES).map_err(|e| open_err(&e))?;
    wtx.open_table(CONTENT).map_err(|e| open_err(&e))?;
    wtx.open_table(SNAPSHOTS).map_err(|e| open_err(&e))?;
    wtx.open_table(NET_ATTACHMENTS).map_err(|e| open_err(&e))?;
    wtx.commit().map_err(|e| open_err(&e))?;
    Ok(uuid)
}

/// A random (v4) uuid from the kernel.
pub fn new_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            // /proc is always there on Linux; fall back to time and pid rather than fail.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let hex = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 64));
            format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            )
        })
}

/// Decode a u64 stored little-endian.
pub(crate) fn u64_le(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_le_bytes)
}

/// Visit every entry of namespace `ns` in a table keyed by (namespace, name), in name order. Each
/// namespace's keys are contiguous, so the scan starts at `(ns, "")` and stops at the first other namespace.
pub(crate) fn each_in_namespace(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    ns: &str,
    mut f: impl FnMut(&str, &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for item in t.range((ns, "")..)? {
        let (k, v) = item?;
        let (kns, name) = k.value();
        if kns != ns {
            break;
        }
        f(name, v.value())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_schema_is_refused() {
        let dir = std::env::temp_dir().join(format!("berthd-unit-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("meta.redb");
        {
            let db = Database::create(&p).expect("create");
            let wtx = db.begin_write().expect("write");
            {
                let mut meta = wtx.open_table(META).expect("meta");
                meta.insert(META_SCHEMA, 99u32.to_le_bytes().as_slice())
                    .expect("insert");
            }
            wtx.commit().expect("commit");
        }
        let db = Database::create(&p).expect("open");
        let e = initialise(&db, &p).expect_err("newer refused");
        assert!(
            matches!(e, StoreError::NewerSchema { found: 99, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("meta.redb"));
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
