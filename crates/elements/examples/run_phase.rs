//! Run one phase of a set of elements against a target directory, printing progress.
//!
//! ```text
//! cargo run -p diskforge-elements --example run_phase -- ELEMENTS_DIR TARGET BUILD_DIR PHASE ELEMENT...
//! # e.g.  … /tmp/els /tmp/root /tmp/build root.d my-os my-element
//! ```
//!
//! Resolves the elements (searching `ELEMENTS_DIR`, then the shipped ones), merges their hooks
//! into `BUILD_DIR/hooks` and runs `PHASE` (`root.d`, `install.d`, …). In-chroot phases need
//! root and a target with `/bin/sh`. Output lines are printed as they come.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use diskforge_elements::{
    Phase, ResolveOptions, RunContext, ScriptEvent, prepare_hooks, resolve, run_phase,
    shipped_elements,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [elements_dir, target, build_dir, phase, requested @ ..] = args.as_slice() else {
        return Err("usage: run_phase ELEMENTS_DIR TARGET BUILD_DIR PHASE ELEMENT...".into());
    };
    let phase = Phase::from_dir(phase).ok_or_else(|| format!("{phase}: not a phase"))?;
    let build_dir = PathBuf::from(build_dir);
    let shipped = shipped_elements(&build_dir.join("shipped"))?;
    let opts = ResolveOptions {
        elements_path: vec![PathBuf::from(elements_dir), shipped],
        allow_nonexec: false,
        env: BTreeMap::new(),
    };
    let resolved = resolve(requested, &opts)?;
    let ctx = RunContext {
        target_root: PathBuf::from(target),
        hooks_dir: build_dir.join("hooks"),
        build_dir: build_dir.clone(),
        env: BTreeMap::new(),
        script_timeout: Duration::from_secs(3600),
        trace: false,
        cancel: None,
    };
    prepare_hooks(&resolved, &ctx.hooks_dir)?;
    let report = run_phase(&resolved, phase, &ctx, &mut |e| match e {
        ScriptEvent::Start {
            element, script, ..
        } => println!("==> {element}/{phase}/{script}"),
        ScriptEvent::Output { line } => println!("    {line}"),
        ScriptEvent::Done { elapsed, .. } => println!("    ({elapsed:.2?})"),
    })?;
    println!(
        "{phase}: {} scripts in {:.2?}",
        report.scripts.len(),
        report.elapsed
    );
    Ok(())
}
