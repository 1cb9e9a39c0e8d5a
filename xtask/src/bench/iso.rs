//! `cargo xtask bench iso` (owned by the issue for this area).

use crate::flags::BenchArgs;

/// Run this benchmark.
pub fn run(_sh: &xshell::Shell, _args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench iso: not written yet")
}
