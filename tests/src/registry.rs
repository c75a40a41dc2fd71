//! A loopback docker-registry for tests (written below).
