//! berth-tests: the harness every integration test uses.
