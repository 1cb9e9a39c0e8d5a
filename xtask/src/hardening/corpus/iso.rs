//! Corpus cases for format `iso` (see `hardening::corpus`): every `tests/corpus/iso/*.iso.gz`
//! (a good image made by xorriso and hostile byte patches of it, made by
//! `tests/corpus/iso/make.py`; gzip keeps the checked-in files at ~2 KB) is unpacked into
//! its case dir and fed to each reading mode of `iso-remaster`:
//!
//! - `inspect --strict` (exit 4 when the reader lists problems);
//! - `--check-md5` (the implanted MD5 over the whole volume);
//! - the remaster modes that read the image without the kernel: `auto` (our patch writer),
//!   `direct` (our writer, xorriso for what it cannot do) and `copy` (`osirrox -extract` of
//!   the whole tree, then `xorriso -as mkisofs`), each adding one file, output into the
//!   case's target dir.
//!
//! `overlay` and `bind` need iso9660 in the kernel (VM tests only) and are not run here.

use std::io::Read as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Case, Expect};
use crate::hardening::Ctx;

/// The reading modes, as (label, arguments before/after the input).
#[derive(Clone, Copy)]
enum Run {
    Inspect,
    CheckMd5,
    Remaster(&'static str),
}

impl Run {
    fn label(self) -> String {
        match self {
            Run::Inspect => "inspect".into(),
            Run::CheckMd5 => "check-md5".into(),
            Run::Remaster(m) => format!("remaster-{m}"),
        }
    }
}

/// What a file × mode should do. Good images are positive controls; an image that only
/// carries a bad implanted MD5 is sound ISO 9660 (every mode but `--check-md5` may accept
/// it); a volume space larger than the file is a warning for the remaster modes (every
/// extent is still inside the file), so they may go either way — also for `truncated-half`,
/// cut where only padding and unreferenced blocks are lost (a cut through a file or boot image
/// is an extent past the end, which every mode refuses; `inspect --strict` refuses both).
fn expect(file: &str, run: Run) -> Option<Expect> {
    Some(match (file, run) {
        ("good.iso", Run::CheckMd5) => return None,
        ("good.iso", _) | ("md5-good.iso", _) => Expect::Accept,
        ("md5-mismatch.iso", Run::CheckMd5) => Expect::Refuse,
        ("md5-mismatch.iso", _) => Expect::Either,
        ("volume-space-huge.iso" | "truncated-half.iso", Run::Remaster(_)) => Expect::Either,
        (_, Run::CheckMd5) if !file.starts_with("md5-") => return None,
        _ => Expect::Refuse,
    })
}

fn gunzip(src: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .with_context(|| format!("decompressing {}", src.display()))?;
    Ok(out)
}

/// The cases of this format.
pub fn cases(ctx: &Ctx) -> Result<Vec<Case>> {
    let files = super::listing(
        ctx,
        "iso",
        |p| p.to_string_lossy().ends_with(".iso.gz"),
        Some("good.iso.gz"),
    )?;
    let runs = [
        Run::Inspect,
        Run::CheckMd5,
        Run::Remaster("auto"),
        Run::Remaster("direct"),
        Run::Remaster("copy"),
    ];
    let mut cases = Vec::new();
    for (gz, name) in files {
        let file = name
            .strip_suffix(".gz")
            .context("corpus file name")?
            .to_owned();
        let bytes = gunzip(&gz)?;
        for run in runs {
            let Some(expect) = expect(&file, run) else {
                continue;
            };
            if ctx.quick && matches!(run, Run::Remaster("direct")) {
                continue;
            }
            let case_dir = ctx.dir(&format!("iso-{}-{}", file, run.label()))?;
            let input_dir = case_dir.join("input");
            std::fs::create_dir_all(&input_dir)?;
            let input = input_dir.join(&file);
            std::fs::write(&input, &bytes)?;
            let target = case_dir.join("target");
            std::fs::create_dir_all(&target)?;
            let mut cmd = Command::new(ctx.bin("iso-remaster"));
            match run {
                Run::Inspect => {
                    cmd.arg("inspect").arg("--strict").arg(&input);
                }
                Run::CheckMd5 => {
                    cmd.arg("--check-md5").arg(&input);
                }
                Run::Remaster(mode) => {
                    let add = input_dir.join("added.txt");
                    std::fs::write(&add, "added by the corpus run\n")?;
                    cmd.arg(&input)
                        .arg("-o")
                        .arg(target.join("out.iso"))
                        .arg("--mode")
                        .arg(mode)
                        .arg("--no-sync")
                        .arg("--add")
                        .arg(format!("{}:/added.txt", add.display()));
                }
            }
            // Their temporary files go next to the output (inside the target) or here.
            cmd.env("TMPDIR", &target);
            cases.push(Case {
                tool: "iso-remaster",
                name: format!("iso/{file} ({})", run.label()),
                input_name: file.clone(),
                cmd,
                target,
                case_dir,
                expect,
                limit: Duration::from_secs(60),
            });
        }
    }
    Ok(cases)
}
