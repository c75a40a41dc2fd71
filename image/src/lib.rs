//! Content store, snapshot storage, safe layer unpacking and diffs (sync library).
