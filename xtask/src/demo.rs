//! `cargo xtask demo`: the README's main job (owned by the ISO remaster issue).

use crate::flags::DemoArgs;

/// Run the demo.
pub fn run(_sh: &xshell::Shell, _args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("demo: not written yet")
}
