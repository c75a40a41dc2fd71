//! berthd: actors, services, stores and configuration.
#![forbid(unsafe_code)]
