//! Small helpers with no berthd state: time formats.

pub mod rfc3339;
