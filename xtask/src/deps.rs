//! `cargo xtask deps`
use crate::flags::DepsArgs;
/// Run deps.
pub fn run(_sh: &xshell::Shell, _a: &DepsArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
