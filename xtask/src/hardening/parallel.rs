//! Hardening group `parallel`: 8 runs of the same kind at once on one host, per tool —
//! `disk-image-create busybox vm -t qcow2` (one shared DIB_IMAGE_CACHE), `iso-remaster --mode
//! direct` and `--mode patch`, `dflayers run --upper` then `dflayers commit` (one shared
//! layer store, which the 8 runs fill at the same time), and `diskforge blockdev create
//! --kernel` (8 builds attaching loop devices and mounting at once).
//!
//! The outputs of one batch go to one shared directory under distinct names, so temporary
//! names next to the outputs must not collide either; each run's TMPDIR and work dirs are its
//! own. All must succeed; each output is checked with an independent tool (`qemu-img check`,
//! `xorriso -report_el_torito`, `tar -tf`, `sgdisk -v` + `blkid`); afterwards the shared
//! output directory holds exactly the outputs, every run directory holds nothing but what
//! the tool keeps by design until its cleanup (which then removes it), the shared store has no
//! temporary entries left, and no loop device, mount or process of ours remains.
#![allow(clippy::disallowed_methods)] // xtask runs processes directly by design (ci.rs too)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use super::signals::{
    Inputs, Job, RUN_LIMIT, blockdev_job, dib_job, iso_job, judge_end, kernel_objects,
    layers_commit_job, layers_run_job, listing, spawn, verify, wait,
};
use super::{Ctx, Table};

/// Runs per batch.
pub const N: usize = 8;

/// Run the group, adding to `table`.
pub fn run(ctx: &Ctx, table: &mut Table) -> Result<()> {
    let inputs = Inputs::prepare(ctx)?;
    let bins = ctx.bins.clone();
    let base = ctx.scratch.path().join("parallel");

    let cache = base.join("dib-cache");
    std::fs::create_dir_all(&cache)?;
    batch(ctx, table, "dib", |i, dir, out| {
        Ok(dib_job(&bins, dir, &out.join(format!("img-{i}")), &cache))
    })?;
    for mode in ["direct", "patch"] {
        batch(ctx, table, &format!("iso-{mode}"), |i, dir, out| {
            iso_job(
                &bins,
                &inputs,
                dir,
                &out.join(format!("out-{i}.iso")),
                mode,
                false,
            )
        })?;
    }
    let store = base.join("store");
    let uppers = (0..N)
        .map(|i| base.join(format!("uppers/up-{i}")))
        .collect::<Vec<_>>();
    batch(ctx, table, "dflayers-run", |i, dir, _| {
        let mut job = layers_run_job(&bins, &inputs, dir, &store, true)?;
        // The upper dir lives outside the run dir, for the commit batch.
        let up = &uppers[i];
        if let Some(p) = up.parent() {
            std::fs::create_dir_all(p)?;
        }
        let mut cmd = Command::new(job.cmd.get_program());
        for a in job.cmd.get_args() {
            cmd.arg(if Path::new(a) == dir.join("up") {
                up.as_os_str()
            } else {
                a
            });
        }
        for (k, v) in job.cmd.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        job.cmd = cmd;
        job.outputs = Vec::new();
        Ok(job)
    })?;
    // The shared store: nothing temporary left, and gc finds nothing to remove.
    let tmp = listing(&store.join("tmp"));
    if !tmp.is_empty() {
        table.row("dflayers").leaked += tmp.len() as u32;
        table.problem(
            "dflayers",
            format!("parallel: the shared store kept temporary entries {tmp:?}"),
        );
    }
    batch(ctx, table, "dflayers-commit", |i, dir, out| {
        Ok(layers_commit_job(
            &bins,
            &uppers[i],
            dir,
            &out.join(format!("layer-{i}.tar.gz")),
            "made/f60",
        ))
    })?;
    batch(ctx, table, "blockdev-kernel", |_, dir, _| {
        blockdev_job(&bins, &inputs, dir, true)
    })?;
    Ok(())
}

/// Start `N` jobs made by `make(i, run_dir, shared_out_dir)` at once, wait for all, check.
fn batch(
    ctx: &Ctx,
    table: &mut Table,
    name: &str,
    make: impl Fn(usize, &Path, &Path) -> Result<Job>,
) -> Result<()> {
    let t = Instant::now();
    let out = ctx.dir(&format!("parallel/{name}/out"))?;
    let mut jobs = Vec::new();
    for i in 0..N {
        let dir = ctx.dir(&format!("parallel/{name}/run-{i}"))?;
        let job = make(i, &dir, &out).with_context(|| format!("setting up {name} #{i}"))?;
        let before = listing(&dir);
        jobs.push((job, before));
    }
    let tool = jobs.first().map(|(j, _)| j.tool).unwrap_or("(none)");
    let before_kernel = kernel_objects(ctx.scratch.path());
    let mut children = Vec::new();
    for (i, (job, _)) in jobs.iter().enumerate() {
        let logs = ctx.dir(&format!("parallel-logs/{name}-{i}"))?;
        children.push((spawn(&job.cmd, &[], &logs)?, logs));
    }
    // All finish before any is checked or cleaned up.
    let mut ends = Vec::new();
    for (mut child, logs) in children {
        let ended = wait(&mut child, &logs, RUN_LIMIT)?;
        ends.push((child.id(), ended));
    }
    let mut outputs: BTreeSet<PathBuf> = BTreeSet::new();
    for (i, ((job, before), (pid, ended))) in jobs.iter().zip(ends).enumerate() {
        let label = format!("parallel {name} #{i}");
        table.row(tool).parallel += 1;
        let Some(ended) = judge_end(table, tool, &label, pid, ended) else {
            continue;
        };
        if ended.stderr.contains("panicked at") || ended.status.code() == Some(101) {
            table.row(tool).crashed += 1;
        }
        if !ended.status.success() {
            table.problem(
                tool,
                format!("{label}: failed ({}): {}", ended.status, ended.last_line()),
            );
        } else if let Err(e) = verify(&job.verify, &job.outputs, &ended.stdout) {
            table.problem(tool, format!("{label}: wrong output: {e:#}"));
        }
        outputs.extend(job.outputs.iter().cloned());
        // What the tool keeps by design goes with its cleanup; then the run dir must be as
        // before (outputs inside it excepted).
        for argv in &job.cleanup {
            let o = Command::new(&argv[0])
                .args(&argv[1..])
                .output()
                .with_context(|| format!("running {argv:?}"))?;
            if !o.status.success() {
                table.problem(
                    tool,
                    format!(
                        "{label}: cleanup {argv:?} failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                );
            }
        }
        let extra: Vec<PathBuf> = listing(&job.dir)
            .into_iter()
            .filter(|p| {
                !before.contains(p) && !job.outputs.iter().any(|o| job.dir.join(p).starts_with(o))
            })
            .collect();
        if !extra.is_empty() {
            table.row(tool).leaked += extra.len() as u32;
            table.problem(tool, format!("{label}: left behind {extra:?}"));
        }
    }
    let got: BTreeSet<PathBuf> = listing(&out).into_iter().map(|p| out.join(p)).collect();
    let expected: BTreeSet<PathBuf> = outputs
        .iter()
        .filter(|o| o.starts_with(&out))
        .cloned()
        .collect();
    let stray: Vec<&PathBuf> = got.difference(&expected).collect();
    if !stray.is_empty() {
        table.row(tool).leaked += stray.len() as u32;
        table.problem(
            tool,
            format!("parallel {name}: the shared output dir has more than the outputs: {stray:?}"),
        );
    }
    let leaked: Vec<String> = kernel_objects(ctx.scratch.path())
        .difference(&before_kernel)
        .cloned()
        .collect();
    if !leaked.is_empty() {
        table.row(tool).leaked += leaked.len() as u32;
        table.problem(tool, format!("parallel {name}: left {leaked:?}"));
    }
    eprintln!(
        "hardening: parallel: {N} × {name} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
