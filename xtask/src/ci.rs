//! `cargo xtask ci`: everything CI runs, in order, stopping at the first failure:
//! deps, `cargo fmt --check`, `cargo clippy --workspace --all-targets -D warnings`,
//! `cargo test --workspace`, then `vm-test`. Each step's time is printed at the end.
//! Publishing hygiene runs after fmt: `package` (every publishable crate packages, offline),
//! `deny` (`cargo deny --offline check licenses bans`, deny.toml) and `doc` (rustdoc with
//! warnings denied).

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
    step("package", &mut || package(sh))?;
    step("deny", &mut || deny(sh))?;
    step("doc", &mut || doc(sh))?;
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

/// The `package` step: `cargo package --no-verify --offline` for every crate that may be
/// published (`publish = false` ones left out), so manifests, versions of internal
/// dependencies and packaged files are checked without the network. The full
/// `cargo publish --workspace --dry-run` also compiles each packaged crate (minutes here).
fn package(sh: &Shell) -> Result<()> {
    let json = cmd!(
        sh,
        "cargo metadata --no-deps --format-version 1 --offline --locked"
    )
    .quiet()
    .read()?;
    let meta: serde_json::Value = serde_json::from_str(&json)?;
    let mut packages = Vec::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        // `publish = false` reads as an empty registry list.
        let unpublished = p["publish"].as_array().is_some_and(|r| r.is_empty());
        if let (false, Some(name)) = (unpublished, p["name"].as_str()) {
            packages.extend(["-p".to_owned(), name.to_owned()]);
        }
    }
    anyhow::ensure!(!packages.is_empty(), "no publishable packages");
    cmd!(
        sh,
        "cargo package --no-verify --offline --locked --allow-dirty {packages...}"
    )
    .run()?;
    Ok(())
}

/// The `deny` step: licenses and bans (deny.toml) without fetching anything; installs
/// cargo-deny first when missing.
fn deny(sh: &Shell) -> Result<()> {
    crate::deps::ensure_cargo_deny(sh)?;
    cmd!(sh, "cargo deny --offline --locked check licenses bans").run()?;
    Ok(())
}

/// The `doc` step: `cargo doc --workspace --no-deps` with rustdoc warnings denied.
fn doc(sh: &Shell) -> Result<()> {
    cmd!(sh, "cargo doc --workspace --no-deps --locked")
        .env("RUSTDOCFLAGS", "-D warnings")
        .run()?;
    Ok(())
}
