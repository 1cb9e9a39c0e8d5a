//! `cargo xtask bench mkfs` (owned by the issue for this area).

use crate::flags::BenchArgs;

/// Run this benchmark.
pub fn run(_sh: &xshell::Shell, _args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench mkfs: not written yet")
}
