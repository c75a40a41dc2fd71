//! berth-image: content store, snapshot storage, safe layer unpacking and diffs (a synchronous library).
//!
//! berthd keeps all metadata (namespaces, labels, snapshot keys, leases, GC) in its own database; this crate
//! owns the bytes on disk and the dangerous file-system work. It must never write outside the directory it
//! was given.

pub mod oci;
