//! `cargo xtask bench layers` (owned by the issue for this area).

use crate::flags::BenchArgs;

/// Run this benchmark.
pub fn run(_sh: &xshell::Shell, _args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench layers: not written yet")
}
