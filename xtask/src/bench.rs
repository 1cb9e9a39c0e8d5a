//! `cargo xtask bench [AREA]`: side-by-side benchmarks against the conventional tool, each
//! reported as a ratio in one run. One module per area.

mod blockdev;
mod build;
mod dib;
mod iso;
mod layers;
mod loop_dev;
mod mkfs;

use crate::flags::BenchArgs;

/// Run the benchmarks for `args.area`, or all of them.
pub fn run(sh: &xshell::Shell, args: &BenchArgs) -> anyhow::Result<()> {
    let all = ["loop", "mkfs", "iso", "layers", "blockdev", "build"];
    let areas: Vec<&str> = match &args.area {
        Some(a) => vec![a.as_str()],
        None => all.to_vec(),
    };
    if args.vs_dib {
        anyhow::ensure!(
            args.area.as_deref() == Some("build"),
            "--vs-dib goes with the build area: cargo xtask bench build --vs-dib"
        );
    }
    for area in areas {
        match area {
            "loop" => loop_dev::run(sh, args)?,
            "mkfs" => mkfs::run(sh, args)?,
            "iso" => iso::run(sh, args)?,
            "layers" => layers::run(sh, args)?,
            "blockdev" => blockdev::run(sh, args)?,
            "build" => build::run(sh, args)?,
            other => anyhow::bail!("unknown bench area {other:?} (one of {})", all.join(", ")),
        }
    }
    Ok(())
}
