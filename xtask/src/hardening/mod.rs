//! `cargo xtask hardening`: every tool driven through failure — a fault injected at each of
//! its steps, SIGINT/SIGTERM and SIGKILL at seeded random points, 8 runs in parallel, and the
//! hostile-input corpus under `tests/corpus/` — then one table: per tool, what was tried and
//! what went wrong (hung, crashed, escaped, leaked must all be 0; the exit code says so).
//!
//! The tools are built once with `--features fault-injection` (crates/fault) and copied to
//! `<target>/hardening/debug`; release builds never carry the hook. Every run is
//! checked against a [`state::SystemState`] snapshot taken before it: mounts, loop devices,
//! device-mapper tables, LVs, our temp names, and the run's own output paths.
//!
//! Groups (each its own module, each adding to the same [`Table`]):
//! - [`faults`]: enumerate a representative run's fault points (`DISKFORGE_FAULT_LOG`), then
//!   fail each in turn (`DISKFORGE_FAIL_AT`);
//! - [`signals`]: SIGINT/SIGTERM at seeded random times (exit 130/143, full unwind, no partial
//!   output) and SIGKILL (no mount or loop survives; `cleanup` undoes the rest);
//! - [`parallel`]: 8 builds, remasters and layer runs at once;
//! - [`corpus`]: every file of `tests/corpus/` fed to the tool that reads its format.

// The harness drives the tools as a hostile environment would: its own process groups,
// signals to them at chosen moments, bounded memory, killed trees. That needs the raw
// `std::process::Command` (pre-spawn settings, pids), not diskforge-cmd's runner, which the
// tools themselves use.
#![allow(clippy::disallowed_methods)]

pub mod corpus;
pub mod faults;
pub mod parallel;
pub mod signals;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::flags::HardeningArgs;

/// The tools under test, in table order.
pub const TOOLS: &[&str] = &[
    "dfloop",
    "dfmount",
    "dfpart",
    "dfimg",
    "iso-remaster",
    "dflayers",
    "diskforge",
    "disk-image-create",
];

/// What one tool went through.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Row {
    /// Fault points failed on purpose (each one run).
    pub faults: u32,
    /// SIGINT/SIGTERM runs.
    pub signals: u32,
    /// SIGKILL runs (each followed by the tool's cleanup where it has one).
    pub kills: u32,
    /// Runs that were part of a parallel batch.
    pub parallel: u32,
    /// Hostile inputs refused with a one-line error.
    pub refused: u32,
    /// Hostile inputs handled correctly (accepted, output inside its target).
    pub handled: u32,
    /// Runs that did not finish in their time bound.
    pub hung: u32,
    /// Runs that panicked, died of a signal we did not send, or exceeded their memory bound.
    pub crashed: u32,
    /// Runs that wrote outside their target.
    pub escaped: u32,
    /// Kernel objects, temp files or partial outputs left behind.
    pub leaked: u32,
    /// One line per problem (what, which run): the table's footnotes.
    pub problems: Vec<String>,
}

/// The table: one [`Row`] per tool.
#[derive(Debug, Default, serde::Serialize)]
pub struct Table {
    /// Rows by tool name.
    pub rows: BTreeMap<String, Row>,
}

impl Table {
    /// The row of `tool` (created empty).
    pub fn row(&mut self, tool: &str) -> &mut Row {
        self.rows.entry(tool.to_owned()).or_default()
    }

    /// Record a problem on `tool`'s row (it is also counted in the matching column by the
    /// caller).
    pub fn problem(&mut self, tool: &str, what: impl Into<String>) {
        let what = what.into();
        eprintln!("hardening: {tool}: {what}");
        self.row(tool).problems.push(what);
    }

    fn bad(&self) -> bool {
        self.rows
            .values()
            .any(|r| r.hung + r.crashed + r.escaped + r.leaked > 0 || !r.problems.is_empty())
    }

    /// The table as text, tools in [`TOOLS`] order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| tool | faults injected | SIGINT/TERM runs | SIGKILL runs | parallel runs | hostile inputs (refused / handled / hung / crashed / escaped) | leaked |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|\n");
        let mut names: Vec<&String> = self.rows.keys().collect();
        names.sort_by_key(|n| TOOLS.iter().position(|t| t == n).unwrap_or(usize::MAX));
        let mut total = Row::default();
        for n in names {
            let r = &self.rows[n];
            out.push_str(&line(n, r));
            total.faults += r.faults;
            total.signals += r.signals;
            total.kills += r.kills;
            total.parallel += r.parallel;
            total.refused += r.refused;
            total.handled += r.handled;
            total.hung += r.hung;
            total.crashed += r.crashed;
            total.escaped += r.escaped;
            total.leaked += r.leaked;
        }
        out.push_str(&line("**total**", &total));
        for (n, r) in &self.rows {
            for p in &r.problems {
                out.push_str(&format!("- {n}: {p}\n"));
            }
        }
        out
    }
}

fn line(name: &str, r: &Row) -> String {
    let tried = r.refused + r.handled + r.hung + r.crashed + r.escaped;
    format!(
        "| {name} | {} | {} | {} | {} | {tried} ({} / {} / {} / {} / {}) | {} |\n",
        r.faults,
        r.signals,
        r.kills,
        r.parallel,
        r.refused,
        r.handled,
        r.hung,
        r.crashed,
        r.escaped,
        r.leaked
    )
}

/// Everything a group needs.
pub struct Ctx {
    /// The workspace root.
    pub root: PathBuf,
    /// Where the fault-injection builds of the tools are.
    pub bins: PathBuf,
    /// A scratch directory (disk-backed) removed at the end.
    pub scratch: tempfile::TempDir,
    /// `--quick`: fewer signal/kill runs and a corpus subset.
    pub quick: bool,
    /// Seed for the random signal times (printed, so a run can be repeated).
    pub seed: u64,
}

impl Ctx {
    /// The fault-injection build of `tool`.
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bins.join(tool)
    }

    /// A fresh directory under the scratch dir.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.scratch.path().join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("clearing {}", d.display()))?;
        }
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }
}

/// How a bounded run ended.
#[derive(Debug)]
pub enum Outcome {
    /// It exited (status, stdout, stderr).
    Exited {
        /// The exit status.
        status: ExitStatus,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
    /// It was still running at the deadline (and was killed, with its process group).
    Hung,
}

/// Run `cmd` in its own process group with a deadline; at the deadline the whole group gets
/// SIGKILL and the outcome is [`Outcome::Hung`].
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Outcome> {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Outcome::Exited {
                status,
                stdout: t_out.join().unwrap_or_default(),
                stderr: t_err.join().unwrap_or_default(),
            });
        }
        if start.elapsed() > limit {
            if let Some(pg) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::KILL);
            }
            let _ = child.wait();
            return Ok(Outcome::Hung);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run this task.
pub fn run(sh: &Shell, args: &HardeningArgs) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("cargo xtask hardening needs root (loop devices, mounts, chroots)");
    }
    let root = crate::project_root();
    sh.change_dir(&root);
    let target = crate::target_dir().join("hardening");
    let mut argv: Vec<String> = vec!["build".into(), "-q".into()];
    for t in TOOLS {
        argv.push("-p".into());
        argv.push((*t).into());
    }
    argv.push("--features".into());
    argv.push(
        TOOLS
            .iter()
            .map(|t| format!("{t}/fault-injection"))
            .collect::<Vec<_>>()
            .join(","),
    );
    // In the workspace's own target dir, so the third-party crates the tests compiled are
    // reused (only our crates are rebuilt with the hook); the binaries are then copied aside,
    // since the next ordinary build replaces them.
    cmd!(sh, "cargo {argv...}")
        .run()
        .context("building the tools with --features fault-injection")?;
    let bins = target.join("debug");
    std::fs::create_dir_all(&bins).with_context(|| format!("creating {}", bins.display()))?;
    for t in TOOLS {
        let from = crate::target_dir().join("debug").join(t);
        let to = bins.join(t);
        let tmp = bins.join(format!(".{t}.tmp"));
        std::fs::copy(&from, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &to))
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    let base = std::env::var("DISKFORGE_SCRATCH").unwrap_or_else(|_| "/var/tmp".into());
    let scratch = tempfile::Builder::new()
        .prefix("diskforge-hardening-")
        .tempdir_in(&base)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    eprintln!("hardening: seed {seed} (repeat with --seed {seed})");
    let ctx = Ctx {
        root: root.clone(),
        bins,
        scratch,
        quick: args.quick,
        seed,
    };
    let mut table = Table::default();
    for t in TOOLS {
        table.row(t);
    }
    let only = |g: &str| args.only.as_deref().is_none_or(|o| o == g);
    let before = state::SystemState::capture();
    type Group = fn(&Ctx, &mut Table) -> Result<()>;
    let groups: [(&str, Group); 4] = [
        ("faults", faults::run),
        ("signals", signals::run),
        ("parallel", parallel::run),
        ("corpus", corpus::run),
    ];
    for (name, group) in groups {
        if !only(name) {
            continue;
        }
        let t = Instant::now();
        group(&ctx, &mut table).with_context(|| format!("hardening group {name}"))?;
        eprintln!(
            "hardening: {name} done in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    // Whatever no single run was blamed for but is new since the start.
    // Other users of the host (their own diskforge scratch dirs) are not ours to blame.
    let ours = ctx.scratch.path().to_string_lossy().into_owned();
    let foreign = |o: &str| {
        ["/var/tmp/diskforge-", "/tmp/diskforge-"]
            .iter()
            .any(|p| o.contains(p))
            && !o.contains(&ours)
    };
    for leak in before
        .leaked_since(&state::SystemState::capture())
        .into_iter()
        .filter(|o| !foreign(o))
    {
        table.row("(whole run)").leaked += 1;
        table.problem("(whole run)", format!("left behind: {leak}"));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&table)?);
    } else {
        print!("{}", table.render());
    }
    if table.bad() {
        bail!("hardening found problems (see the table)");
    }
    Ok(())
}

/// A path relative to the workspace root.
pub fn corpus_dir(ctx: &Ctx) -> PathBuf {
    ctx.root.join("tests/corpus")
}

/// Every entry under `dir` (sorted), recursively, with its metadata (not following
/// symlinks); `skip` prunes paths (and everything under them). Empty when `dir` is missing.
pub fn walk(dir: &Path, skip: &[PathBuf]) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, m));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every file (not directory) under `dir` (sorted), recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    walk(dir, &[])
        .into_iter()
        .filter(|(_, m)| !m.is_dir())
        .map(|(p, _)| p)
        .collect()
}
