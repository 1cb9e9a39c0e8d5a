//! The hostile-input corpus: every file under `tests/corpus/<format>/` (plus the large ones
//! `tests/corpus/generate` writes into the scratch dir) fed to the tool that reads that format,
//! each run bounded in time and memory, and classified:
//!
//! - **refused**: non-zero exit with an error that names the input (its file name) — the
//!   expected outcome for hostile input;
//! - **handled**: exit 0 and everything written stays inside the case's target directory
//!   (positive controls must end here; hostile inputs may, where accepting is correct);
//! - **hung**: still running at the deadline; **crashed**: a panic, a signal we did not send,
//!   or the memory bound hit; **escaped**: a file appeared outside the target (every hostile
//!   path in the corpus aims at a name containing [`CANARY`]).
//!
//! Each format has its own module that turns corpus files into [`Case`]s.

pub mod elements;
pub mod iso;
pub mod tar;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::state::SystemState;
use super::{Ctx, Outcome, Table, corpus_dir, run_bounded};

/// The name every escaping path in the corpus aims at (`../diskforge-canary`,
/// `/tmp/diskforge-canary`, a symlink to `/etc/diskforge-canary` …).
pub const CANARY: &str = "diskforge-canary";

/// What a case should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A positive control: must be handled (exit 0).
    Accept,
    /// Hostile: must be refused.
    Refuse,
    /// Hostile, but accepting it is correct as long as nothing escapes (e.g. a tar member
    /// with a leading `/` that is extracted relative to the target).
    Either,
}

/// One run of one tool on one input.
pub struct Case {
    /// The tool's row in the table.
    pub tool: &'static str,
    /// A short name for the report (usually the corpus file's path under tests/corpus).
    pub name: String,
    /// The input's file name, which a refusal must mention.
    pub input_name: String,
    /// The command (built from `ctx.bin(tool)`).
    pub cmd: Command,
    /// The directory the tool may write into; anything new elsewhere under `case_dir` (or
    /// anywhere named with [`CANARY`]) is an escape.
    pub target: PathBuf,
    /// The directory holding this case's files (input copies, target, outputs).
    pub case_dir: PathBuf,
    /// What should happen.
    pub expect: Expect,
    /// Time bound (default 60 s).
    pub limit: Duration,
}

/// Memory bound of every corpus run (address space, via `prlimit`).
pub const MEMORY_LIMIT: u64 = 4 << 30;

/// Run all formats.
pub fn run(ctx: &Ctx, table: &mut Table) -> Result<()> {
    let mut cases = Vec::new();
    cases.extend(iso::cases(ctx)?);
    cases.extend(tar::cases(ctx)?);
    cases.extend(yaml::cases(ctx)?);
    cases.extend(elements::cases(ctx)?);
    for case in cases {
        check(table, case)?;
    }
    Ok(())
}

/// The checked-in inputs of one format: the entries of `tests/corpus/<format>` that `keep`
/// accepts, sorted, each with its file name. With `control`, the entry of that name (the
/// format's positive control) must be among them.
pub fn listing(
    ctx: &Ctx,
    format: &str,
    keep: impl Fn(&Path) -> bool,
    control: Option<&str>,
) -> Result<Vec<(PathBuf, String)>> {
    let dir = corpus_dir(ctx).join(format);
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
        .filter(|(p, _)| keep(p))
        .collect();
    found.sort();
    if let Some(control) = control {
        anyhow::ensure!(
            found.iter().any(|(_, n)| n == control),
            "{}: no {control} (the positive control)",
            dir.display()
        );
    }
    Ok(found)
}

/// Copy `src` (a file or a tree) to `dst` as it is: symlinks, loops and modes included.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    // xtask may run programs directly (clippy.toml exempts it).
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .context("running cp -a")?;
    if !st.success() {
        bail!("cp -a {} {}: {st}", src.display(), dst.display());
    }
    Ok(())
}

fn canaries() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in ["/", "/tmp", "/var/tmp", "/etc", "/root"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains(CANARY) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

fn files_outside(case_dir: &Path, target: &Path) -> Vec<PathBuf> {
    super::files_under(case_dir)
        .into_iter()
        .filter(|p| !p.starts_with(target))
        .collect()
}

/// Run one case and add its outcome to the table.
pub fn check(table: &mut Table, case: Case) -> Result<()> {
    let Case {
        tool,
        name,
        input_name,
        cmd,
        target,
        case_dir,
        expect,
        limit,
    } = case;
    std::fs::create_dir_all(&target)?;
    let outside_before = files_outside(&case_dir, &target);
    let canaries_before = canaries();
    let state = SystemState::capture();
    // Bound memory with prlimit(1) around the real command.
    let mut bounded = Command::new("prlimit");
    bounded.arg(format!("--as={MEMORY_LIMIT}")).arg("--");
    bounded.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => bounded.env(k, v),
            None => bounded.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        bounded.current_dir(d);
    }
    let outcome = run_bounded(bounded, limit)?;
    match outcome {
        Outcome::Hung => {
            table.row(tool).hung += 1;
            table.problem(tool, format!("{name}: hung (over {} s)", limit.as_secs()));
        }
        Outcome::Exited { status, stderr, .. } => {
            use std::os::unix::process::ExitStatusExt as _;
            let panicked = stderr.contains("panicked at") || status.code() == Some(101);
            if panicked || status.signal().is_some() || stderr.contains("memory allocation of") {
                table.row(tool).crashed += 1;
                let last = stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                table.problem(tool, format!("{name}: crashed ({status}): {last}"));
            } else if status.success() {
                table.row(tool).handled += 1;
                if expect == Expect::Refuse {
                    table.problem(tool, format!("{name}: hostile input accepted"));
                }
            } else {
                table.row(tool).refused += 1;
                if expect == Expect::Accept {
                    let last = stderr
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("");
                    table.problem(tool, format!("{name}: positive control refused: {last}"));
                } else if !stderr.contains(&input_name) {
                    let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                    table.problem(
                        tool,
                        format!(
                            "{name}: the error does not name the input `{input_name}`: {first}"
                        ),
                    );
                }
            }
        }
    }
    let escaped: Vec<PathBuf> = files_outside(&case_dir, &target)
        .into_iter()
        .filter(|p| !outside_before.contains(p))
        .chain(
            canaries()
                .into_iter()
                .filter(|p| !canaries_before.contains(p)),
        )
        .collect();
    if !escaped.is_empty() {
        table.row(tool).escaped += 1;
        table.problem(
            tool,
            format!("{name}: wrote outside its target: {escaped:?}"),
        );
        for p in canaries()
            .into_iter()
            .filter(|p| !canaries_before.contains(p))
        {
            let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
        }
    }
    let leaked = state.leaked_since(&SystemState::capture());
    if !leaked.is_empty() {
        table.row(tool).leaked += leaked.len() as u32;
        table.problem(tool, format!("{name}: left behind {leaked:?}"));
    }
    let _ = std::fs::remove_dir_all(&case_dir);
    Ok(())
}
