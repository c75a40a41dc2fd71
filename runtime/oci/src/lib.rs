//! berth-oci: the OCI runtime library behind `berth-runc`.
//!
//! Synchronous and single-threaded on purpose: the create path forks, and a
//! forked child of a multi-threaded process may only do async-signal-safe work.
