//! diskforge's developer tasks, run as `cargo xtask TASK` (alias in `.cargo/config.toml`).
//!
//! - `deps`: apt-get install every system tool the tests and tools use, when missing.
//! - `vm-test`: run `vm-tests/` inside a QEMU VM (Debian kernel, host root over 9p).
//! - `ci`: deps + fmt check + clippy + `cargo test --workspace` + vm-test (what `.ci/run` runs).
//! - `bench AREA`: side-by-side benchmarks against the conventional tools, as ratios.
//! - `demo`: the README's main job (build an installer-like ISO, remaster it, boot it).
//! - `dist [--install PREFIX]`: man pages and shell completions for every tool, from clap.

mod bench;
mod ci;
mod demo;
mod deps;
mod dist;
mod flags;
mod hardening;
mod tidy;
mod vm;

use std::path::PathBuf;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let flags = flags::Xtask::parse();
    let sh = xshell::Shell::new()?;
    sh.change_dir(project_root());
    match flags.task {
        flags::Task::Deps(a) => deps::run(&sh, &a),
        flags::Task::VmTest(a) => vm::run(&sh, &a),
        flags::Task::Ci(a) => ci::run(&sh, &a),
        flags::Task::Bench(a) => bench::run(&sh, &a),
        flags::Task::Demo(a) => demo::run(&sh, &a),
        flags::Task::Dist(a) => dist::run(&sh, &a),
        flags::Task::Hardening(a) => hardening::run(&sh, &a),
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `target/` in the workspace root.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
}

/// The workspace root (parent of `xtask/`).
pub fn project_root() -> PathBuf {
    let dir = env!("CARGO_MANIFEST_DIR");
    PathBuf::from(dir)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(dir))
}
