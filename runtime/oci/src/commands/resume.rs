//! `resume`: thaw a paused container.

use std::path::Path;

use crate::container::Container;
use crate::error::Result;

/// Thaw `id`.
pub fn run(root: &Path, id: &str) -> Result<()> {
    let c = Container::load(root, id)?;
    c.can_resume()?;
    c.saved.cgroup.thaw()?;
    Ok(())
}
