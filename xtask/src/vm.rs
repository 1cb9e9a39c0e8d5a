//! `cargo xtask vm-test`
use crate::flags::VmTestArgs;
/// Run vm tests.
pub fn run(_sh: &xshell::Shell, _a: &VmTestArgs) -> anyhow::Result<()> { anyhow::bail!("todo") }
