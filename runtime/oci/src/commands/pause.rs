//! `pause`: freeze every process of a container.

use std::path::Path;

use crate::container::Container;
use crate::error::Result;

/// Freeze `id`.
pub fn run(root: &Path, id: &str) -> Result<()> {
    let c = Container::load(root, id)?;
    c.can_pause()?;
    c.saved.cgroup.freeze()?;
    Ok(())
}
