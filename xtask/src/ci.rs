//! `cargo xtask ci`: everything CI runs, in order, stopping at the first failure:
//! deps, `cargo fmt --check`, `cargo clippy --workspace --all-targets -D warnings`,
//! `cargo test --workspace`, then `vm-test`. Each step's time is printed at the end.

use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

use crate::flags::{CiArgs, VmTestArgs};

/// Run CI.
pub fn run(sh: &Shell, args: &CiArgs) -> Result<()> {
    let mut times = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        eprintln!("==> {name}");
        let t = Instant::now();
        let r = f().with_context(|| format!("ci step `{name}` failed"));
        times.push((name.to_owned(), t.elapsed()));
        r
    };
    step("deps", &mut || crate::deps::ensure_installed(sh))?;
    step(
        "fmt",
        &mut || Ok(cmd!(sh, "cargo fmt --all --check").run()?),
    )?;
    step("clippy", &mut || {
        Ok(cmd!(
            sh,
            "cargo clippy --workspace --all-targets --locked -- -D warnings"
        )
        .run()?)
    })?;
    step("test", &mut || {
        Ok(cmd!(sh, "cargo test --workspace --locked").run()?)
    })?;
    if !args.no_vm {
        let vm = VmTestArgs {
            filter: None,
            timeout: 1200,
            keep_going: true,
            shell: false,
            release: false,
            memory: 4096,
        };
        step("vm-test", &mut || crate::vm::run(sh, &vm))?;
    }
    for (n, t) in &times {
        eprintln!("ci: {n:<8} {:>7.1} s", t.as_secs_f64());
    }
    Ok(())
}
