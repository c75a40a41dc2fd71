//! Busybox OCI image layouts for tests (written below).
