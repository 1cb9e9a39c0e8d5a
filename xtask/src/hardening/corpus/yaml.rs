//! Corpus cases for block-device YAML (`tests/corpus/block-device/*.yaml`, plus the 10 MB
//! configs [`generate`] writes into the scratch dir), each fed to:
//!
//! - `diskforge blockdev plan --config FILE` (parse, normalise, validate, solve the layout);
//! - `diskforge blockdev create --config FILE` (offline build; images and state inside the
//!   case's target directory);
//! - `disk-image-create --dry-run busybox vm` with `DIB_BLOCK_DEVICE_CONFIG=file://FILE`;
//! - outside `--quick`, a real `disk-image-create -t raw busybox vm` build for the positive
//!   controls and a few hostile configs (the config must be refused before any script runs).
//!
//! Files named `ok-*` are positive controls ([`Expect::Accept`]); every other file is hostile
//! and must be refused with an error naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Case, Expect};
use crate::hardening::{Ctx, corpus_dir};

/// Hostile configs that also go through a real `disk-image-create` build (besides the
/// positive controls): the early check must refuse them before the tree phases.
const REAL_BUILDS: &[&str] = &[
    "size-typo-gibb.yaml",
    "name-slash-escape.yaml",
    "name-rtl-override.yaml",
    "mount-point-dotdot.yaml",
    "yaml-bomb.yaml",
    "invalid-utf8.yaml",
    "partition-larger-than-disk.yaml",
];

/// Configs whose only fault is that the partitions do not fit: `--dry-run` checks everything
/// but sizes (they depend on the tree it does not build), so accepting them there is right;
/// the real build refuses them.
const FIT_ONLY: &[&str] = &[
    "partition-larger-than-disk.yaml",
    "too-many-partitions.yaml",
];

/// The configs checked in under `tests/corpus/block-device/` and generated ones, with what
/// each should do.
fn inputs(ctx: &Ctx) -> Result<Vec<(PathBuf, Expect)>> {
    let dir = corpus_dir(ctx).join("block-device");
    let files = super::listing(
        ctx,
        "block-device",
        |p| p.extension().is_some_and(|e| e == "yaml"),
        None,
    )?;
    let mut out: Vec<(PathBuf, Expect)> = files
        .into_iter()
        .map(|(p, name)| {
            let ok = name.starts_with("ok-");
            (p, if ok { Expect::Accept } else { Expect::Refuse })
        })
        .collect();
    out.extend(generate(ctx, &dir)?);
    Ok(out)
}

/// Ten megabytes each: a config of 400 000 nodes, one whose only name is 10 MB long, 10 MB of
/// `[`, and a valid config behind 10 MB of comments (a positive control).
fn generate(ctx: &Ctx, corpus: &Path) -> Result<Vec<(PathBuf, Expect)>> {
    const TEN_MB: usize = 10 << 20;
    let dir = ctx.dir("corpus-yaml-generated")?;
    let mut out = Vec::new();
    let mut write = |name: &str, text: String, expect: Expect| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        out.push((p, expect));
        Ok(())
    };
    let mut nodes = String::with_capacity(TEN_MB + 64);
    let mut i = 0u64;
    while nodes.len() < TEN_MB {
        nodes.push_str(&format!("- local_loop: {{name: i{i}, size: 1MiB}}\n"));
        i += 1;
    }
    write("gen-10mb-nodes.yaml", nodes, Expect::Refuse)?;
    write(
        "gen-10mb-name.yaml",
        format!(
            "- local_loop:\n    name: {}\n    size: 64MiB\n",
            "a".repeat(TEN_MB)
        ),
        Expect::Refuse,
    )?;
    write(
        "gen-10mb-brackets.yaml",
        "- ".to_owned() + &"[".repeat(TEN_MB),
        Expect::Refuse,
    )?;
    let ok = std::fs::read_to_string(corpus.join("ok-mbr.yaml")).context("reading ok-mbr.yaml")?;
    let mut commented = String::with_capacity(TEN_MB + ok.len());
    while commented.len() < TEN_MB {
        commented.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    commented.push_str(&ok);
    write("ok-gen-10mb-comments.yaml", commented, Expect::Accept)?;
    Ok(out)
}

/// A fresh case dir holding a copy of `input` (outside the target) and an empty target.
fn case_dirs(ctx: &Ctx, tag: &str, input: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let stem = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let case_dir = ctx.dir(&format!("corpus-yaml-{tag}-{stem}"))?;
    let copy = case_dir.join(&stem);
    std::fs::copy(input, &copy).with_context(|| format!("copying {}", input.display()))?;
    let target = case_dir.join("target");
    std::fs::create_dir_all(target.join("tmp"))?;
    Ok((case_dir, copy, target))
}

/// The cases of this format.
pub fn cases(ctx: &Ctx) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (input, expect) in inputs(ctx)? {
        let file = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let generated = file.starts_with("gen-") || file.starts_with("ok-gen-");
        let label = if generated {
            format!("block-device/{file} (generated)")
        } else {
            format!("block-device/{file}")
        };

        // diskforge blockdev plan
        let (case_dir, copy, target) = case_dirs(ctx, "plan", &input)?;
        let mut cmd = Command::new(ctx.bin("diskforge"));
        cmd.args(["blockdev", "plan", "--config"])
            .arg(&copy)
            .arg("--image-dir")
            .arg(target.join("images"))
            .current_dir(&target)
            .env("TMPDIR", target.join("tmp"))
            .env_remove("DIB_BLOCK_DEVICE_CONFIG");
        cases.push(Case {
            tool: "diskforge",
            name: format!("{label} (blockdev plan)"),
            input_name: file.clone(),
            cmd,
            target,
            case_dir,
            expect,
            limit: Duration::from_secs(60),
        });

        // diskforge blockdev create (offline)
        let (case_dir, copy, target) = case_dirs(ctx, "create", &input)?;
        let mut cmd = Command::new(ctx.bin("diskforge"));
        cmd.args(["blockdev", "create", "--config"])
            .arg(&copy)
            .arg("--state")
            .arg(target.join("state"))
            .arg("--image-dir")
            .arg(&target)
            .current_dir(&target)
            .env("TMPDIR", target.join("tmp"))
            .env_remove("DIB_BLOCK_DEVICE_CONFIG");
        cases.push(Case {
            tool: "diskforge",
            name: format!("{label} (blockdev create)"),
            input_name: file.clone(),
            cmd,
            target,
            case_dir,
            expect,
            limit: Duration::from_secs(120),
        });

        // disk-image-create: --dry-run for all, a real build for some.
        let real = !ctx.quick && (expect == Expect::Accept || REAL_BUILDS.contains(&&*file));
        let mut modes = vec![true];
        if real {
            modes.push(false);
        }
        for dry in modes {
            let tag = if dry { "dib-dry" } else { "dib-build" };
            let (case_dir, copy, target) = case_dirs(ctx, tag, &input)?;
            let mut cmd = Command::new(ctx.bin("disk-image-create"));
            if dry {
                cmd.arg("--dry-run");
            }
            cmd.arg("-o")
                .arg(target.join("image"))
                .args(["-t", "raw", "--work-dir"])
                .arg(&target)
                .args(["busybox", "vm"])
                .current_dir(&target)
                .env(
                    "DIB_BLOCK_DEVICE_CONFIG",
                    format!("file://{}", copy.display()),
                )
                .env("TMPDIR", target.join("tmp"))
                .env_remove("ELEMENTS_PATH")
                .env("SOURCE_DATE_EPOCH", "1700000000");
            cases.push(Case {
                tool: "disk-image-create",
                name: format!(
                    "{label} (DIB_BLOCK_DEVICE_CONFIG, {})",
                    if dry { "--dry-run" } else { "build" }
                ),
                input_name: file.clone(),
                cmd,
                target,
                case_dir,
                expect: if dry && FIT_ONLY.contains(&&*file) {
                    Expect::Either
                } else {
                    expect
                },
                limit: Duration::from_secs(if dry { 60 } else { 300 }),
            });
        }
    }
    Ok(cases)
}
