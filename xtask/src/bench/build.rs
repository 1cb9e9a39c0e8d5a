//! `cargo xtask bench build`: `disk-image-create busybox vm block-device-efi` → qcow2, wall
//! time split by build step, without and with the boot check (SeaBIOS and OVMF), from the
//! release binary. Each round's output is checked (`qemu-img check`, the boots' markers).
//!
//! Targets (issue 15, this 2-core machine under TCG): build < 10 s; build + BIOS boot
//! check < 20 s.
//!
//! With `--vs-dib`: diskimage-builder against ours on `debian-minimal` instead (see
//! [`super::dib`]).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::flags::BenchArgs;

/// Run this benchmark.
pub fn run(sh: &Shell, args: &BenchArgs) -> Result<()> {
    if args.vs_dib {
        return super::dib::run(sh, args);
    }
    let root = crate::project_root();
    sh.change_dir(&root);
    cmd!(sh, "cargo build --release -q -p disk-image-create").run()?;
    let dic = crate::target_dir().join("release/disk-image-create");
    let base = std::env::var("DISKFORGE_SCRATCH").unwrap_or_else(|_| "/var/tmp".into());
    let work = tempfile::Builder::new()
        .prefix("diskforge-bench-build-")
        .tempdir_in(&base)?;
    let rounds = if args.quick { 1 } else { 3 };
    let mut table: Vec<(String, Vec<f64>)> = Vec::new();
    let mut totals: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for (label, boot) in [("build", false), ("build + boot check", true)] {
            let name = work.path().join(format!("r{round}-{}", boot as u8));
            let mut argv = vec![
                "-o".to_owned(),
                name.display().to_string(),
                "-t".into(),
                "qcow2".into(),
                "--json".into(),
            ];
            if boot {
                argv.push("--boot-check".into());
            }
            argv.extend(["busybox", "vm", "block-device-efi"].map(String::from));
            let t = Instant::now();
            let out = cmd!(sh, "{dic} {argv...}").quiet().read()?;
            let wall = t.elapsed().as_secs_f64();
            let v: Value = serde_json::from_str(&out).context("parsing --json")?;
            let qcow2 = format!("{}.qcow2", name.display());
            cmd!(sh, "qemu-img check -q {qcow2}").quiet().run()?;
            if boot {
                let n = v["boots"].as_array().map(Vec::len).unwrap_or(0);
                ensure!(n == 2, "expected SeaBIOS and OVMF boots, got {n}");
                for b in v["boots"].as_array().into_iter().flatten() {
                    let key = format!(
                        "{label}: {} to the marker (QEMU start → marker)",
                        b["firmware"].as_str().unwrap_or("?")
                    );
                    let secs = b["seconds"].as_f64().unwrap_or(0.0);
                    match table.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push(secs),
                        None => table.push((key, vec![secs])),
                    }
                }
            }
            totals.entry(label).or_default().push(wall);
            for s in v["steps"].as_array().into_iter().flatten() {
                let step = s["step"].as_str().unwrap_or("?").to_owned();
                let secs = s["millis"].as_f64().unwrap_or(0.0) / 1000.0;
                let key = format!("{label}: {step}");
                match table.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(secs),
                    None => table.push((key, vec![secs])),
                }
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("bench build: busybox vm block-device-efi → qcow2 (median of {rounds} round(s))");
    for (k, v) in &table {
        println!("  {k:<52} {:>7.2} s", median(v));
    }
    for (k, v) in &totals {
        println!(
            "  {:<52} {:>7.2} s  (wall, whole process)",
            format!("TOTAL {k}"),
            median(v)
        );
    }
    Ok(())
}
