//! Hardening group `signals`: SIGINT and SIGTERM at seeded random times and at each fault
//! point (`DISKFORGE_SIGNAL_AT`), then SIGKILL at random times and at each fault point
//! (`DISKFORGE_KILL_AT`), for `disk-image-create`, `diskforge blockdev create` (offline and
//! kernel route), `iso-remaster` (every mode that writes and this host can run) and
//! `dflayers run`/`commit`.
//!
//! Each scenario first runs once undisturbed (its outputs checked with an independent tool,
//! its duration and fault points recorded), then:
//!
//! - **SIGINT/SIGTERM** (to the tool alone, or to its whole process group as a terminal's
//!   Ctrl-C does): the run must end with 130/143 (or 0 when it finished first, outputs
//!   complete; a death by the very signal we sent counts as 130/143, which is how a shell
//!   reports it), with no partial output, nothing new in its directory but the state the tool
//!   keeps by design, no mount or loop device of ours and no surviving process; then the
//!   tool's cleanup must remove that state.
//! - **SIGKILL**: afterwards no mount, no loop device and no process may remain; the tool's
//!   cleanup (run twice: it must be idempotent) must remove everything else it left (state
//!   dirs, temp files, half-written outputs).
//! - Finally `cleanup` is shown objects it did not create (a foreign directory, a state that
//!   names a loop device, a scratch dir and a mount root that are not its own, a run
//!   directory whose lock is held) and must leave each untouched.
//!
//! Children are spawned with SIGINT and SIGTERM at their default disposition (`env
//! --default-signal`), because a process started in the background by a non-interactive
//! shell inherits SIGINT ignored. Everything a run may write goes under its own directory
//! (TMPDIR too), so leftovers are found by listing it; mounts and loop devices are those under
//! the hardening scratch dir, so other users of the host are never blamed.
//!
//! Not covered on this host: `iso-remaster --mode overlay|bind` (they need the kernel's
//! iso9660 driver, which this kernel lacks) and LVM layouts (no device-mapper); the VM tests
//! run those.
#![allow(clippy::disallowed_methods)] // xtask runs processes directly by design (ci.rs too)

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Ctx, Table};

/// The longest one run may take before it counts as hung.
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(240);

/// splitmix64: small, seedable, good enough to pick times and points reproducibly.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed` (the same seed gives the same sequence).
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Up to `k` items of `v`, picked without repetition, in their original order.
    pub(crate) fn sample<T: Clone>(&mut self, v: &[T], k: usize) -> Vec<T> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        for i in (1..idx.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            idx.swap(i, j);
        }
        let mut pick: Vec<usize> = idx.into_iter().take(k).collect();
        pick.sort_unstable();
        pick.into_iter().map(|i| v[i].clone()).collect()
    }
}

/// How a finished run's outputs are checked, each with an independent tool.
#[derive(Debug, Clone)]
pub(crate) enum Verify {
    /// `qemu-img check` passes.
    Qcow2,
    /// `sgdisk -v` finds no problem and `blkid -p` sees ext4 in each listed partition start.
    Gpt,
    /// `xorriso -report_el_torito` lists a BIOS and a UEFI boot image, and the file `.1` is in
    /// the tree (`isoinfo`-style listing through `xorriso -find`).
    Iso(String),
    /// `tar -tf` lists the member `.1`.
    Tar(String),
    /// The run's stdout (JSON) has `"code": 0` and the line `.1` in its output.
    RunJson(String),
}

/// One run of a tool, set up in its own directory.
pub(crate) struct Job {
    /// Table row.
    pub tool: &'static str,
    /// The command (its program is a fault-injection build).
    pub cmd: Command,
    /// The run's own directory: after an interrupted run nothing may be new in it but
    /// `state`; after a finished run, nothing but `outputs` and `state`.
    pub dir: PathBuf,
    /// What a finished run writes (all present after exit 0, none after an interruption).
    pub outputs: Vec<PathBuf>,
    /// Files that must be byte-for-byte unchanged after an interruption (an in-place edit).
    pub unchanged: Vec<PathBuf>,
    /// What the tool keeps by design until its cleanup (a block-device state dir).
    pub state: Vec<PathBuf>,
    /// The tool's cleanup commands (argv), run after every disturbed run, twice after a kill.
    pub cleanup: Vec<Vec<OsString>>,
    /// The check of a finished run's outputs.
    pub verify: Verify,
    /// Directories of shared caches that must hold nothing once the run and its cleanup are
    /// over (a store's temporary area).
    pub empty_after: Vec<PathBuf>,
}

/// Makes a [`Job`] in the given (empty) directory.
pub(crate) type MakeJob = Box<dyn Fn(&Path) -> Result<Job>>;

/// A representative run of a tool, made afresh for every attempt.
pub(crate) struct Scenario {
    /// Table row.
    pub tool: &'static str,
    /// Short name for reports.
    pub name: String,
    /// Make the job in the given (empty) directory.
    pub make: MakeJob,
    /// Whether SIGKILL runs apply (an in-place edit is documented as not crash-safe).
    pub kill: bool,
}

/// How an attempt disturbs the run.
#[derive(Debug, Clone)]
enum Stop {
    /// Undisturbed (the reference run).
    None,
    /// Signal `sig` after `after`, to the tool alone or to its process group.
    Signal {
        sig: i32,
        after: Duration,
        group: bool,
    },
    /// `DISKFORGE_SIGNAL_AT=point:INT|TERM`.
    SignalAt { sig: i32, point: String },
    /// SIGKILL to the tool alone after `after`.
    Kill { after: Duration },
    /// `DISKFORGE_KILL_AT=point`.
    KillAt { point: String },
}

impl Stop {
    fn label(&self) -> String {
        match self {
            Stop::None => "undisturbed".into(),
            Stop::Signal { sig, after, group } => format!(
                "{} to the {} after {} ms",
                sig_name(*sig),
                if *group { "process group" } else { "tool" },
                after.as_millis()
            ),
            Stop::SignalAt { sig, point } => format!("{} at fault point {point}", sig_name(*sig)),
            Stop::Kill { after } => format!("SIGKILL after {} ms", after.as_millis()),
            Stop::KillAt { point } => format!("SIGKILL at fault point {point}"),
        }
    }

    fn signal(&self) -> Option<i32> {
        match self {
            Stop::Signal { sig, .. } | Stop::SignalAt { sig, .. } => Some(*sig),
            _ => None,
        }
    }

    fn is_kill(&self) -> bool {
        matches!(self, Stop::Kill { .. } | Stop::KillAt { .. })
    }
}

fn sig_name(sig: i32) -> &'static str {
    match sig {
        2 => "SIGINT",
        15 => "SIGTERM",
        9 => "SIGKILL",
        _ => "signal",
    }
}

/// A finished child: status, stdout, stderr, wall time.
pub(crate) struct Ended {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub took: Duration,
}

impl Ended {
    /// The last non-empty line of stderr (for reports).
    pub(crate) fn last_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }
}

/// `job.cmd` wrapped so that SIGINT/SIGTERM are at their default disposition in the child,
/// in its own process group, output to files in `logs`.
pub(crate) fn spawn(cmd: &Command, env: &[(&str, String)], logs: &Path) -> Result<Child> {
    let mut c = Command::new("env");
    c.arg("--default-signal=INT,TERM").arg("--");
    c.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    std::fs::create_dir_all(logs)?;
    let out = std::fs::File::create(logs.join("stdout"))?;
    let err = std::fs::File::create(logs.join("stderr"))?;
    c.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    c.spawn().with_context(|| format!("spawning {cmd:?}"))
}

/// Wait for `child` until `limit` (then SIGKILL its group and return `None`).
pub(crate) fn wait(child: &mut Child, logs: &Path, limit: Duration) -> Result<Option<Ended>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(Ended {
                status,
                stdout: std::fs::read_to_string(logs.join("stdout")).unwrap_or_default(),
                stderr: std::fs::read_to_string(logs.join("stderr")).unwrap_or_default(),
                took: start.elapsed(),
            }));
        }
        if start.elapsed() > limit {
            kill_group(child.id());
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn send(pid: u32, sig: i32, group: bool) {
    use rustix::process::{Pid, Signal, kill_process, kill_process_group};
    let Some(p) = Pid::from_raw(pid as i32) else {
        return;
    };
    let s = match sig {
        2 => Signal::INT,
        15 => Signal::TERM,
        _ => Signal::KILL,
    };
    let _ = if group {
        kill_process_group(p, s)
    } else {
        kill_process(p, s)
    };
}

/// SIGKILL the process group we started (its leader's pid).
/// After a run of `tool`'s process group `pid`: members still alive are leaks (recorded, then
/// killed); no end means it hung (recorded). The end, when there is one.
pub(crate) fn judge_end<T>(
    table: &mut Table,
    tool: &str,
    label: &str,
    pid: u32,
    ended: Option<T>,
) -> Option<T> {
    let survivors = group_members(pid);
    if !survivors.is_empty() {
        table.row(tool).leaked += survivors.len() as u32;
        table.problem(
            tool,
            format!("{label}: processes outlived the tool: {survivors:?}"),
        );
        kill_group(pid);
    }
    if ended.is_none() {
        table.row(tool).hung += 1;
        table.problem(
            tool,
            format!("{label}: hung (over {} s)", RUN_LIMIT.as_secs()),
        );
    }
    ended
}

pub(crate) fn kill_group(pid: u32) {
    send(pid, 9, true);
}

/// Processes still in the process group `pgid` (the tool's children that outlived it).
pub(crate) fn group_members(pgid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for (_, dir) in super::state::processes() {
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces, so split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) && f.first() != Some(&"Z") {
            out.push(format!("{})", head.trim()));
        }
    }
    out
}

/// Every path under `dir` (files and directories), relative; empty when `dir` is missing.
pub(crate) fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    super::walk(dir, &[])
        .into_iter()
        .filter_map(|(p, _)| p.strip_prefix(dir).ok().map(Path::to_path_buf))
        .collect()
}

/// Our loop devices and mounts: those whose backing file or mount point is under `scratch`.
pub(crate) fn kernel_objects(scratch: &Path) -> BTreeSet<String> {
    let k = diskforge_testutil::KernelState::capture();
    let mut s: BTreeSet<String> = k
        .loops_under(scratch)
        .into_iter()
        .map(|l| format!("loop {l}"))
        .collect();
    s.extend(
        k.mounts_under(scratch)
            .into_iter()
            .map(|m| format!("mount {m}")),
    );
    s
}

fn digest(p: &Path) -> Option<u64> {
    use std::hash::{Hash as _, Hasher as _};
    let b = std::fs::read(p).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    Some(h.finish())
}

/// Check a finished run's outputs; `Err` says what is wrong.
pub(crate) fn verify(v: &Verify, outputs: &[PathBuf], stdout: &str) -> Result<()> {
    let run = |c: &mut Command| -> Result<String> {
        let o = c.output().with_context(|| format!("running {c:?}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if !o.status.success() {
            bail!("{c:?}: {}: {}", o.status, text.trim());
        }
        Ok(text)
    };
    for o in outputs {
        if !o.exists() {
            bail!("output {} is missing", o.display());
        }
    }
    match v {
        Verify::Qcow2 => {
            for o in outputs {
                run(Command::new("qemu-img").arg("check").arg(o))?;
            }
        }
        Verify::Gpt => {
            for o in outputs {
                let t = run(Command::new("sgdisk").arg("-v").arg(o))?;
                if !t.contains("No problems found") {
                    bail!("sgdisk -v {}: {}", o.display(), t.trim());
                }
                let j = run(Command::new("sfdisk").arg("--json").arg(o))?;
                let v: serde_json::Value = serde_json::from_str(&j)?;
                let parts = v["partitiontable"]["partitions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if parts.is_empty() {
                    bail!("{}: no partitions", o.display());
                }
                for p in parts {
                    let start = p["start"].as_u64().unwrap_or(0) * 512;
                    let t = run(Command::new("blkid")
                        .args(["-p", "-o", "value", "-s", "TYPE", "-O"])
                        .arg(start.to_string())
                        .arg(o))?;
                    if t.trim() != "ext4" {
                        bail!("{}: no ext4 at byte {start}: {}", o.display(), t.trim());
                    }
                }
            }
        }
        Verify::Iso(member) => {
            for o in outputs {
                let t = run(Command::new("xorriso")
                    .args(["-abort_on", "FAILURE", "-indev"])
                    .arg(o)
                    .args(["-report_el_torito", "plain"]))?;
                if !(t.contains("BIOS") && t.contains("UEFI")) {
                    bail!("{}: El Torito BIOS+UEFI entries missing: {t}", o.display());
                }
                let t = run(Command::new("xorriso")
                    .arg("-indev")
                    .arg(o)
                    .arg("-lsl")
                    .arg(member))?;
                if !t.contains(member.as_str()) {
                    bail!("{}: {member} not in the tree", o.display());
                }
            }
        }
        Verify::Tar(member) => {
            for o in outputs {
                let t = run(Command::new("tar").arg("-tf").arg(o))?;
                let want = member.trim_start_matches("./");
                if !t
                    .lines()
                    .any(|l| l.trim_start_matches("./").trim_end_matches('/') == want)
                {
                    bail!("{}: member {member} missing", o.display());
                }
            }
        }
        Verify::RunJson(line) => {
            let v: serde_json::Value = serde_json::from_str(stdout.trim())
                .with_context(|| format!("run output is not JSON: {stdout:?}"))?;
            if v["code"].as_i64() != Some(0) {
                bail!("the command exited {}", v["code"]);
            }
            let out = v["output"].as_array().cloned().unwrap_or_default();
            if !out.iter().any(|l| l.as_str() == Some(line.as_str())) {
                bail!("output line {line:?} missing: {out:?}");
            }
        }
    }
    Ok(())
}

/// What one attempt came to (for the caller's choice of next attempts).
struct Attempted {
    ended: Option<Ended>,
    points: Vec<String>,
}

/// Run one attempt of `sc` with `stop`, record problems on the table. Counting in the
/// table's columns is the caller's.
fn attempt(
    ctx: &Ctx,
    table: &mut Table,
    sc: &Scenario,
    n: usize,
    stop: &Stop,
) -> Result<Attempted> {
    let label = format!("{} #{n} ({})", sc.name, stop.label());
    let dir = ctx.dir(&format!("signals/{}-{n}", sc.name))?;
    let logs = ctx.dir(&format!("signals-logs/{}-{n}", sc.name))?;
    let job = (sc.make)(&dir).with_context(|| format!("setting up {label}"))?;
    let tool = job.tool;
    let before_files = listing(&dir);
    let hashes: Vec<(PathBuf, Option<u64>)> = job
        .unchanged
        .iter()
        .map(|p| (p.clone(), digest(p)))
        .collect();
    let before_kernel = kernel_objects(ctx.scratch.path());
    let fault_log = logs.join("fault-log");
    let mut env: Vec<(&str, String)> =
        vec![("DISKFORGE_FAULT_LOG", fault_log.display().to_string())];
    match stop {
        Stop::SignalAt { sig, point } => env.push((
            "DISKFORGE_SIGNAL_AT",
            format!("{point}:{}", if *sig == 2 { "INT" } else { "TERM" }),
        )),
        Stop::KillAt { point } => env.push(("DISKFORGE_KILL_AT", point.clone())),
        _ => {}
    }
    let mut child = spawn(&job.cmd, &env, &logs)?;
    let pid = child.id();
    let mut sent_late = false;
    if let Stop::Signal { after, .. } | Stop::Kill { after } = stop {
        let t = Instant::now();
        while t.elapsed() < *after {
            if child.try_wait()?.is_some() {
                sent_late = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if !sent_late {
            match stop {
                Stop::Signal { sig, group, .. } => send(pid, *sig, *group),
                _ => send(pid, 9, false),
            }
        }
    }
    let ended = wait(&mut child, &logs, RUN_LIMIT)?;
    // PDEATHSIG and namespaces act at once; give the kernel a moment to reap.
    std::thread::sleep(Duration::from_millis(100));
    let Some(ended) = judge_end(table, tool, &label, pid, ended) else {
        return Ok(Attempted {
            ended: None,
            points: Vec::new(),
        });
    };
    let code = ended.status.code();
    let died_of = ended.status.signal();
    let panicked = ended.stderr.contains("panicked at") || code == Some(101);
    let finished = code == Some(0);
    if panicked {
        table.row(tool).crashed += 1;
        table.problem(tool, format!("{label}: panicked: {}", ended.last_line()));
    }
    match stop {
        Stop::None => {
            if !finished {
                table.problem(
                    tool,
                    format!(
                        "{label}: the undisturbed run failed ({}): {}",
                        ended.status,
                        ended.last_line()
                    ),
                );
            }
        }
        Stop::Signal { sig, .. } | Stop::SignalAt { sig, .. } => {
            let interrupted = code == Some(128 + sig) || died_of == Some(*sig);
            if !interrupted && !finished {
                table.problem(
                    tool,
                    format!(
                        "{label}: ended with {} instead of {} (or 0): {}",
                        ended.status,
                        128 + sig,
                        ended.last_line()
                    ),
                );
            }
            if died_of.is_some() && died_of != Some(*sig) && !panicked {
                table.row(tool).crashed += 1;
                table.problem(tool, format!("{label}: died of signal {died_of:?}"));
            }
        }
        Stop::Kill { .. } | Stop::KillAt { .. } => {
            if died_of.is_some_and(|s| s != 9) {
                table.row(tool).crashed += 1;
                table.problem(tool, format!("{label}: died of signal {died_of:?}"));
            }
        }
    }
    if finished && let Err(e) = verify(&job.verify, &job.outputs, &ended.stdout) {
        table.problem(
            tool,
            format!("{label}: exit 0 but the output is wrong: {e:#}"),
        );
    }
    // Interrupted: no output may exist, unless it is complete (the signal came after the
    // output was published: outputs are all-or-nothing); an in-place edit is either complete
    // or the input is unchanged. After a kill, what the cleanup leaves is checked below.
    let complete = |job: &Job| {
        !job.outputs.is_empty() && verify(&job.verify, &job.outputs, &ended.stdout).is_ok()
    };
    let mut finished = finished;
    if !finished && stop.signal().is_some() {
        if job.outputs.iter().any(|o| o.exists()) && complete(&job) {
            finished = true;
        } else {
            for o in &job.outputs {
                if o.exists() && !job.unchanged.contains(o) {
                    table.row(tool).leaked += 1;
                    table.problem(
                        tool,
                        format!("{label}: partial output {} left", o.display()),
                    );
                }
            }
            for (p, h) in &hashes {
                if digest(p) != *h {
                    table.row(tool).leaked += 1;
                    table.problem(
                        tool,
                        format!("{label}: {} was changed by an interrupted run", p.display()),
                    );
                }
            }
        }
    }
    let leaked_kernel: Vec<String> = kernel_objects(ctx.scratch.path())
        .difference(&before_kernel)
        .cloned()
        .collect();
    if !leaked_kernel.is_empty() {
        table.row(tool).leaked += leaked_kernel.len() as u32;
        table.problem(tool, format!("{label}: left {leaked_kernel:?}"));
    }
    // Files: after a signal, nothing but the state may be new before cleanup.
    let allowed = |p: &Path, with_outputs: bool, with_state: bool| {
        let abs = dir.join(p);
        (with_outputs && job.outputs.iter().any(|o| abs.starts_with(o)))
            || (with_state && job.state.iter().any(|s| abs.starts_with(s)))
            || before_files.contains(p)
    };
    if stop.signal().is_some() {
        let extra: Vec<PathBuf> = listing(&dir)
            .into_iter()
            .filter(|p| !allowed(p, finished, true))
            .collect();
        if !extra.is_empty() {
            table.row(tool).leaked += extra.len() as u32;
            table.problem(tool, format!("{label}: left behind {}", show(&extra)));
        }
    }
    if !matches!(stop, Stop::None) {
        let rounds = if stop.is_kill() { 2 } else { 1 };
        for round in 0..rounds {
            for argv in &job.cleanup {
                let out = Command::new(&argv[0])
                    .args(&argv[1..])
                    .env("TMPDIR", &dir)
                    .output()
                    .with_context(|| format!("running {argv:?}"))?;
                if !out.status.success() {
                    table.problem(
                        tool,
                        format!(
                            "{label}: cleanup {argv:?} (round {}) failed: {}",
                            round + 1,
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    );
                }
            }
        }
        let done = finished || (stop.is_kill() && complete(&job));
        let extra: Vec<PathBuf> = listing(&dir)
            .into_iter()
            .filter(|p| !allowed(p, done, false))
            .collect();
        if !extra.is_empty() {
            table.row(tool).leaked += extra.len() as u32;
            table.problem(
                tool,
                format!("{label}: after cleanup, still left: {}", show(&extra)),
            );
        }
    }
    for d in &job.empty_after {
        let left = listing(d);
        if !left.is_empty() {
            table.row(tool).leaked += left.len() as u32;
            let left: Vec<PathBuf> = left.into_iter().collect();
            table.problem(
                tool,
                format!("{label}: {} keeps {}", d.display(), show(&left)),
            );
        }
    }
    let points = std::fs::read_to_string(&fault_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(_, n)| n.to_owned()))
        .collect::<Vec<_>>();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&logs);
    Ok(Attempted {
        ended: Some(ended),
        points: occurrences(&points),
    })
}

/// Point names in order as `NAME#K` (their K-th occurrence), the stable spelling of a point.
fn occurrences(names: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashMap::new();
    names
        .iter()
        .map(|n| {
            let k = seen.entry(n.clone()).or_insert(0usize);
            let s = format!("{n}#{k}");
            *k += 1;
            s
        })
        .collect()
}

fn show(paths: &[PathBuf]) -> String {
    let mut s: Vec<String> = paths
        .iter()
        .take(6)
        .map(|p| p.display().to_string())
        .collect();
    if paths.len() > 6 {
        s.push(format!("… ({} in all)", paths.len()));
    }
    s.join(", ")
}

/// How many runs of each kind per scenario.
struct Budget {
    signals: usize,
    signal_points: usize,
    kills: usize,
    kill_points: usize,
}

/// Run the group, adding to `table`.
pub fn run(ctx: &Ctx, table: &mut Table) -> Result<()> {
    let inputs = Inputs::prepare(ctx)?;
    let budget = if ctx.quick {
        Budget {
            signals: 2,
            signal_points: 1,
            kills: 1,
            kill_points: 1,
        }
    } else {
        Budget {
            signals: 6,
            signal_points: usize::MAX,
            kills: 3,
            kill_points: usize::MAX,
        }
    };
    let mut rng = Rng::new(ctx.seed ^ 0x5167_6e61_6c73);
    for sc in scenarios(ctx, &inputs)? {
        let t = Instant::now();
        let reference = attempt(ctx, table, &sc, 0, &Stop::None)?;
        let Some(ended) = reference.ended else {
            continue;
        };
        if !ended.status.success() {
            continue;
        }
        let span = ended.took.as_millis().max(50) as u64;
        let mut n = 1;
        let mut stops = Vec::new();
        for _ in 0..budget.signals {
            stops.push(Stop::Signal {
                sig: if rng.below(2) == 0 { 2 } else { 15 },
                // Up to 10 % past the undisturbed time: some runs finish first.
                after: Duration::from_millis(rng.below(span * 11 / 10)),
                group: rng.below(2) == 0,
            });
        }
        for point in rng.sample(&reference.points, budget.signal_points) {
            stops.push(Stop::SignalAt {
                sig: if rng.below(2) == 0 { 2 } else { 15 },
                point,
            });
        }
        if sc.kill {
            for _ in 0..budget.kills {
                stops.push(Stop::Kill {
                    after: Duration::from_millis(rng.below(span)),
                });
            }
            for point in rng.sample(&reference.points, budget.kill_points) {
                stops.push(Stop::KillAt { point });
            }
        }
        for stop in &stops {
            attempt(ctx, table, &sc, n, stop)?;
            n += 1;
            let row = table.row(sc.tool);
            if stop.is_kill() {
                row.kills += 1;
            } else {
                row.signals += 1;
            }
        }
        eprintln!(
            "hardening: signals: {} — {} runs ({} fault points) in {:.1} s",
            sc.name,
            stops.len() + 1,
            reference.points.len(),
            t.elapsed().as_secs_f64()
        );
    }
    refusals(ctx, table, &inputs)?;
    Ok(())
}

/// The inputs every scenario shares (read-only), made once.
pub(crate) struct Inputs {
    /// A bootable sample installer ISO (BIOS + UEFI, isohybrid).
    pub iso: PathBuf,
    /// A file to add to it.
    pub iso_add: PathBuf,
    /// A root tree for block-device builds.
    pub tree: PathBuf,
    /// Block-device config: GPT with two ext4 partitions.
    pub layout: PathBuf,
    /// A layer tarball with a static busybox as `/bin/sh`.
    pub base_layer: PathBuf,
    /// A second (gzip) layer on top.
    pub app_layer: PathBuf,
    /// An upper dir with many files, for `dflayers commit`.
    pub upper: PathBuf,
}

/// A GPT disk with two ext4 partitions, mounted at / and /var on the kernel route.
const LAYOUT: &str = "\
- local_loop:
    name: image0
    size: 96MiB
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: root
        type: '8300'
        size: 56MiB
        mkfs:
          type: ext4
          mount:
            mount_point: /
      - name: var
        type: '8300'
        size: 100%
        mkfs:
          type: ext4
          mount:
            mount_point: /var
";

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn sh(cmd: &mut Command) -> Result<()> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

impl Inputs {
    /// Make the inputs under `ctx`'s scratch dir.
    pub(crate) fn prepare(ctx: &Ctx) -> Result<Inputs> {
        let base = ctx.scratch.path().join("inputs");
        if base.join("done").exists() {
            return Ok(Self::at(&base));
        }
        std::fs::create_dir_all(&base)?;
        let i = Self::at(&base);
        // The ISO: the fixture's sample with 24 MiB of filler in 6 files.
        let iso_dir = base.join("iso");
        std::fs::create_dir_all(&iso_dir)?;
        let opts = diskforge_iso_fixture::sample::SampleOptions {
            filler_bytes: 24 << 20,
            filler_files: 6,
            appended_esp: true,
            ..Default::default()
        };
        let built = diskforge_iso_fixture::sample::build_sample(&iso_dir, &opts)
            .context("building the sample ISO")?;
        std::fs::rename(&built, &i.iso)?;
        let _ = std::fs::remove_dir_all(iso_dir.join("sample-tree"));
        std::fs::write(&i.iso_add, noise(3, 3 << 20))?;
        // The root tree: etc/fstab target, some files of each size class, and /var.
        for d in ["etc", "usr/share/data", "var/lib/app"] {
            std::fs::create_dir_all(i.tree.join(d))?;
        }
        std::fs::write(i.tree.join("etc/hostname"), "hardening\n")?;
        for k in 0..12u64 {
            std::fs::write(
                i.tree.join(format!("usr/share/data/f{k}")),
                noise(k, 256 << 10),
            )?;
        }
        std::fs::write(i.tree.join("var/lib/app/state"), noise(99, 1 << 20))?;
        std::fs::write(&i.layout, LAYOUT)?;
        // Layers: busybox as /bin/sh (+ the applets the runs use), then an app layer.
        let lb = base.join("layer-base");
        std::fs::create_dir_all(lb.join("bin"))?;
        std::fs::copy("/bin/busybox", lb.join("bin/busybox"))?;
        for a in ["sh", "cat", "echo", "ls", "seq", "sleep", "dd", "mkdir"] {
            std::os::unix::fs::symlink("busybox", lb.join("bin").join(a))?;
        }
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(lb.join(d))?;
        }
        sh(Command::new("tar")
            .arg("-C")
            .arg(&lb)
            .args(["--numeric-owner", "-cf"])
            .arg(&i.base_layer)
            .arg("."))?;
        let la = base.join("layer-app");
        std::fs::create_dir_all(la.join("opt/app"))?;
        for k in 0..8u64 {
            std::fs::write(
                la.join(format!("opt/app/blob{k}")),
                noise(50 + k, 512 << 10),
            )?;
        }
        std::fs::write(la.join("etc-app.conf"), "x=1\n")?;
        sh(Command::new("tar")
            .arg("-C")
            .arg(&la)
            .args(["--numeric-owner", "-czf"])
            .arg(&i.app_layer)
            .arg("."))?;
        // An upper dir for commit: 1500 small files and a few large ones.
        for k in 0..1500u64 {
            let d = i.upper.join(format!("d{}", k % 30));
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join(format!("f{k}")), noise(k, 2048))?;
        }
        for k in 0..6u64 {
            std::fs::write(i.upper.join(format!("big{k}")), noise(700 + k, 4 << 20))?;
        }
        std::fs::write(base.join("done"), "")?;
        Ok(i)
    }

    fn at(base: &Path) -> Inputs {
        Inputs {
            iso: base.join("sample.iso"),
            iso_add: base.join("extra.bin"),
            tree: base.join("tree"),
            layout: base.join("layout.yaml"),
            base_layer: base.join("base.tar"),
            app_layer: base.join("app.tar.gz"),
            upper: base.join("upper"),
        }
    }
}

fn argv(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_owned()).collect()
}

/// The disk-image-create job: `busybox vm -t qcow2` as `OUT.qcow2`, its build dir in `dir/work`,
/// the shared image cache `cache`.
pub(crate) fn dib_job(bins: &Path, dir: &Path, out: &Path, cache: &Path) -> Job {
    let bin = bins.join("disk-image-create");
    // The work dir is the caller's (dib's TMP_DIR); what goes inside is the tool's.
    let _ = std::fs::create_dir_all(dir.join("work"));
    let mut cmd = Command::new(&bin);
    cmd.arg("-o")
        .arg(out)
        .args(["-t", "qcow2", "--work-dir"])
        .arg(dir.join("work"))
        .args(["busybox", "vm"])
        .env("DIB_IMAGE_CACHE", cache)
        .env("TMPDIR", dir)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    Job {
        tool: "disk-image-create",
        cmd,
        dir: dir.to_owned(),
        outputs: vec![out.with_extension("qcow2")],
        unchanged: Vec::new(),
        state: vec![dir.join("work")],
        cleanup: vec![argv(&[
            &bin,
            &"--cleanup",
            &"-o",
            &out,
            &"--work-dir",
            &dir.join("work"),
        ])],
        verify: Verify::Qcow2,
        empty_after: Vec::new(),
    }
}

/// The blockdev job: the GPT layout from `inputs`, populated from the tree; `kernel` takes the
/// kernel route and mounts the filesystems to list them.
pub(crate) fn blockdev_job(bins: &Path, inputs: &Inputs, dir: &Path, kernel: bool) -> Result<Job> {
    let bin = bins.join("diskforge");
    // The tree gets etc/fstab written into it: each run works on its own copy.
    let tree = dir.join("tree");
    sh(Command::new("cp").arg("-a").arg(&inputs.tree).arg(&tree))?;
    let state = dir.join("state");
    std::fs::create_dir_all(dir.join("images"))?;
    let mut cmd = Command::new(&bin);
    cmd.args(["blockdev", "create", "--config"])
        .arg(&inputs.layout)
        .arg("--image-dir")
        .arg(dir.join("images"))
        .arg("--root")
        .arg(&tree)
        .arg("--state")
        .arg(&state)
        .args(["--uuid-seed", "hardening"])
        .env("TMPDIR", dir)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    if kernel {
        cmd.arg("--kernel")
            .args(["--run", "ls -R \"$TARGET_ROOT\" >/dev/null && sleep 0.2"]);
    }
    Ok(Job {
        tool: "diskforge",
        cmd,
        dir: dir.to_owned(),
        outputs: vec![dir.join("images/image0.raw")],
        unchanged: Vec::new(),
        // The state dir, and the fstab written into the tree (restored by delete/cleanup).
        state: vec![state.clone(), tree.join("etc/fstab")],
        cleanup: vec![argv(&[&bin, &"blockdev", &"delete", &"--state", &state])],
        verify: Verify::Gpt,
        empty_after: Vec::new(),
    })
}

/// An iso-remaster job in `mode`: add a 3 MiB file (patch: replace a boot config, which fits)
/// and a kickstart. `in_place` edits a copy of the input without `-o`.
pub(crate) fn iso_job(
    bins: &Path,
    inputs: &Inputs,
    dir: &Path,
    out: &Path,
    mode: &str,
    in_place: bool,
) -> Result<Job> {
    let bin = bins.join("iso-remaster");
    let out = out.to_path_buf();
    let ks = dir.join("ks.cfg");
    std::fs::write(&ks, "text\nreboot\n")?;
    let mut cmd = Command::new(&bin);
    let (input, output) = if in_place {
        let copy = dir.join("in.iso");
        std::fs::copy(&inputs.iso, &copy)?;
        (copy.clone(), copy)
    } else {
        (inputs.iso.clone(), out.clone())
    };
    cmd.arg(&input).args(["--mode", mode, "--json"]);
    if in_place {
        cmd.arg("--force");
    } else {
        cmd.arg("-o").arg(&output);
    }
    let member = if mode == "patch" {
        let cfg = dir.join("isolinux.cfg");
        std::fs::write(
            &cfg,
            diskforge_iso_fixture::sample::ISOLINUX_CFG.replace("quiet", "quiet hard"),
        )?;
        cmd.arg("--replace")
            .arg(format!("{}:/isolinux/isolinux.cfg", cfg.display()));
        "/isolinux/isolinux.cfg".to_owned()
    } else {
        cmd.arg("--add")
            .arg(format!("{}:/extra/extra.bin", inputs.iso_add.display()))
            .arg("--kickstart")
            .arg(&ks)
            .arg("--implant-md5");
        "/extra/extra.bin".to_owned()
    };
    cmd.env("TMPDIR", dir);
    Ok(Job {
        tool: "iso-remaster",
        cmd,
        dir: dir.to_owned(),
        outputs: vec![output.clone()],
        unchanged: if in_place { vec![output] } else { Vec::new() },
        state: Vec::new(),
        cleanup: vec![argv(&[&bin, &"cleanup", &out.parent().unwrap_or(dir)])],
        verify: Verify::Iso(member),
        empty_after: Vec::new(),
    })
}

/// `dflayers run` on the two layers with the store `store`, scratch in `dir/scratch`: the
/// command writes files into its (temporary) upper dir and prints a marker. With `upper`, the
/// changes are kept in `dir/up` (then committed by the caller).
pub(crate) fn layers_run_job(
    bins: &Path,
    inputs: &Inputs,
    dir: &Path,
    store: &Path,
    upper: bool,
) -> Result<Job> {
    let bin = bins.join("dflayers");
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--json")
        .arg("--store")
        .arg(store)
        .arg("run")
        .arg("--layer")
        .arg(&inputs.base_layer)
        .arg("--layer")
        .arg(&inputs.app_layer)
        .arg("--scratch")
        .arg(&scratch);
    if upper {
        cmd.arg("--upper").arg(dir.join("up"));
    }
    cmd.args([
        "--",
        "/bin/sh",
        "-c",
        "mkdir -p /made && for i in $(seq 1 60); do dd if=/opt/app/blob1 of=/made/f$i bs=64k \
         count=2 2>/dev/null; done; cat /etc-app.conf; echo ran-in-stack",
    ])
    .env("TMPDIR", dir);
    Ok(Job {
        tool: "dflayers",
        cmd,
        dir: dir.to_owned(),
        outputs: if upper {
            vec![dir.join("up")]
        } else {
            Vec::new()
        },
        unchanged: Vec::new(),
        state: Vec::new(),
        cleanup: vec![argv(&[
            &bin,
            &"--store",
            &store,
            &"gc",
            &"--scratch",
            &scratch,
        ])],
        verify: Verify::RunJson("ran-in-stack".into()),
        empty_after: vec![store.join("tmp")],
    })
}

/// `dflayers commit` of `upper` into `out` (a `.tar.gz`).
pub(crate) fn layers_commit_job(
    bins: &Path,
    upper: &Path,
    dir: &Path,
    out: &Path,
    member: &str,
) -> Job {
    let bin = bins.join("dflayers");
    let mut cmd = Command::new(&bin);
    cmd.arg("commit")
        .arg(upper)
        .arg("-o")
        .arg(out)
        .env("TMPDIR", dir)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    Job {
        tool: "dflayers",
        cmd,
        dir: dir.to_owned(),
        outputs: vec![out.to_path_buf()],
        unchanged: Vec::new(),
        state: Vec::new(),
        cleanup: Vec::new(),
        verify: Verify::Tar(member.to_owned()),
        empty_after: Vec::new(),
    }
}

fn scenarios(ctx: &Ctx, inputs: &Inputs) -> Result<Vec<Scenario>> {
    let cache = ctx.scratch.path().join("signals-dib-cache");
    let store = ctx.scratch.path().join("signals-store");
    std::fs::create_dir_all(&cache)?;
    let mut v: Vec<Scenario> = Vec::new();
    // Each closure needs its own copies of what it reads.
    let c = |p: &Path| p.to_path_buf();
    {
        let (bins, cache) = (ctx.bins.clone(), c(&cache));
        v.push(Scenario {
            tool: "disk-image-create",
            name: "dib-busybox-vm-qcow2".into(),
            make: Box::new(move |d| Ok(dib_job(&bins, d, &d.join("img"), &cache))),
            kill: true,
        });
    }
    for kernel in [false, true] {
        let (bins, inp) = (
            ctx.bins.clone(),
            Inputs::at(&ctx.scratch.path().join("inputs")),
        );
        v.push(Scenario {
            tool: "diskforge",
            name: format!(
                "blockdev-create-{}",
                if kernel { "kernel" } else { "offline" }
            ),
            make: Box::new(move |d| blockdev_job(&bins, &inp, d, kernel)),
            kill: true,
        });
    }
    for (mode, in_place) in [
        ("patch", false),
        ("patch", true),
        ("direct", false),
        ("copy", false),
        ("auto", false),
    ] {
        let (bins, inp) = (
            ctx.bins.clone(),
            Inputs::at(&ctx.scratch.path().join("inputs")),
        );
        v.push(Scenario {
            tool: "iso-remaster",
            name: format!("iso-{mode}{}", if in_place { "-in-place" } else { "" }),
            make: Box::new(move |d| iso_job(&bins, &inp, d, &d.join("out.iso"), mode, in_place)),
            // In place is documented as not crash-safe (it needs --force).
            kill: !in_place,
        });
    }
    {
        let (bins, inp, store) = (
            ctx.bins.clone(),
            Inputs::at(&ctx.scratch.path().join("inputs")),
            c(&store),
        );
        v.push(Scenario {
            tool: "dflayers",
            name: "dflayers-run".into(),
            make: Box::new(move |d| layers_run_job(&bins, &inp, d, &store, false)),
            kill: true,
        });
    }
    {
        let (bins, upper) = (ctx.bins.clone(), c(&inputs.upper));
        v.push(Scenario {
            tool: "dflayers",
            name: "dflayers-commit".into(),
            make: Box::new(move |d| {
                Ok(layers_commit_job(
                    &bins,
                    &upper,
                    d,
                    &d.join("layer.tar.gz"),
                    "big5",
                ))
            }),
            kill: true,
        });
    }
    Ok(v)
}

/// `cleanup` shown objects it did not create must leave each untouched: a foreign directory
/// (every tool), a block-device state naming a loop device someone else attached on the very
/// image of its plan, and run/build directories whose lock a live process holds.
fn refusals(ctx: &Ctx, table: &mut Table, inputs: &Inputs) -> Result<()> {
    let base = ctx.dir("signals/refusals")?;
    let foreign = base.join("foreign");
    std::fs::create_dir_all(foreign.join("sub"))?;
    std::fs::write(foreign.join("keep"), "not yours")?;
    std::fs::write(foreign.join("sub/keep"), "not yours")?;
    // A run dir of iso-remaster and a build dir of disk-image-create, alive: we hold the lock
    // (diskforge-rundir's: an flock on the directory itself).
    let live_iso = foreign.join(".iso-remaster-run-live");
    let live_dib = foreign.join("dib_build.live");
    let mut locks = Vec::new();
    for d in [&live_iso, &live_dib] {
        std::fs::create_dir_all(d)?;
        std::fs::write(d.join("data"), "live")?;
        let f = std::fs::File::open(d)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        locks.push(f);
    }
    let before = listing(&foreign);
    let bins = &ctx.bins;
    let tries: Vec<(&str, Vec<OsString>, bool)> = vec![
        (
            "diskforge",
            argv(&[
                &bins.join("diskforge"),
                &"blockdev",
                &"cleanup",
                &"--state",
                &foreign,
            ]),
            true,
        ),
        (
            "diskforge",
            argv(&[
                &bins.join("diskforge"),
                &"blockdev",
                &"delete",
                &"--state",
                &foreign,
            ]),
            true,
        ),
        (
            "iso-remaster",
            argv(&[&bins.join("iso-remaster"), &"cleanup", &foreign]),
            false,
        ),
        (
            "dflayers",
            argv(&[
                &bins.join("dflayers"),
                &"--store",
                &base.join("store"),
                &"gc",
                &"--scratch",
                &foreign,
            ]),
            false,
        ),
        (
            "disk-image-create",
            argv(&[
                &bins.join("disk-image-create"),
                &"--cleanup",
                &"--work-dir",
                &foreign,
            ]),
            false,
        ),
    ];
    for (tool, a, must_fail) in tries {
        let o = Command::new(&a[0]).args(&a[1..]).output()?;
        let now = listing(&foreign);
        if now != before {
            let gone: Vec<PathBuf> = before.difference(&now).cloned().collect();
            table.row(tool).escaped += 1;
            table.problem(
                tool,
                format!("cleanup {a:?} touched a foreign directory: removed {gone:?}"),
            );
        }
        if must_fail && o.status.success() {
            table.problem(
                tool,
                format!("cleanup {a:?} did not refuse a directory that is not its state"),
            );
        }
    }
    drop(locks);
    refuse_foreign_loop(ctx, table, inputs, &base)?;
    Ok(())
}

/// A block-device state whose loop record names a loop device we attached ourselves (no
/// autoclear) on the plan's own image: `cleanup` must leave it attached.
fn refuse_foreign_loop(ctx: &Ctx, table: &mut Table, inputs: &Inputs, base: &Path) -> Result<()> {
    let bin = ctx.bins.join("diskforge");
    let state = base.join("state");
    let images = base.join("images");
    sh(Command::new(&bin)
        .args(["blockdev", "init", "--config"])
        .arg(&inputs.layout)
        .arg("--image-dir")
        .arg(&images)
        .arg("--state")
        .arg(&state))?;
    let image = images.join("image0.raw");
    std::fs::create_dir_all(&images)?;
    std::fs::File::create(&image)?.set_len(96 << 20)?;
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&image)
        .output()?;
    if !out.status.success() {
        bail!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let res = (|| -> Result<()> {
        let path = state.join("state.json");
        let mut st: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        st["kernel"] = serde_json::json!({
            "loops": [{ "node": "image0", "device": dev, "backing": std::fs::canonicalize(&image)?,
                        "offset": 0, "size": 0 }],
            "vgs": [], "devices": { "image0": dev }, "released": false
        });
        std::fs::write(&path, serde_json::to_string_pretty(&st)?)?;
        let _ = Command::new(&bin)
            .args(["blockdev", "cleanup", "--state"])
            .arg(&state)
            .output()?;
        let n = dev.trim_start_matches("/dev/loop");
        let still = std::fs::read_to_string(format!("/sys/block/loop{n}/loop/backing_file"))
            .is_ok_and(|b| {
                Path::new(b.trim()) == std::fs::canonicalize(&image).unwrap_or_default()
            });
        if !still {
            table.row("diskforge").escaped += 1;
            table.problem(
                "diskforge",
                format!("blockdev cleanup detached {dev}, a loop device it did not attach"),
            );
        }
        if !image.exists() {
            table.problem(
                "diskforge",
                "blockdev cleanup removed an image it did not create",
            );
        }
        Ok(())
    })();
    // Our own loop device, attached above (only while it still maps our image).
    let n = dev.trim_start_matches("/dev/loop");
    let ours = std::fs::read_to_string(format!("/sys/block/loop{n}/loop/backing_file"))
        .is_ok_and(|b| Path::new(b.trim()) == std::fs::canonicalize(&image).unwrap_or_default());
    if ours {
        let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    }
    res
}
