//! `cargo xtask ci`
use crate::flags::CiArgs;
/// Run CI.
pub fn run(_sh: &xshell::Shell, _a: &CiArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
