//! `state`: print runc's state JSON for a container.

use std::path::Path;

use crate::container::Container;
use crate::error::Result;

/// Print the state of `id`.
pub fn run(root: &Path, id: &str) -> Result<()> {
    let c = Container::load(root, id)?;
    super::print_json(&c.oci_state())
}
