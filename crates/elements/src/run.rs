//! Running a phase's scripts: on the host, or chrooted into the target inside a private mount
//! and PID namespace.
//!
//! A phase runs as `setsid unshare [--mount --propagation private] --pid --fork --kill-child
//! bash -c WRAPPER` (as non-root, host phases add `--user --map-current-user` when the kernel
//! allows unprivileged user namespaces, else run in a plain process group):
//!
//! - `setsid` makes the phase's processes one process group, which a timeout or cancel kills
//!   with one `kill(-pgid, SIGKILL)`; we then wait until no member is left;
//! - the PID namespace dies with its first process, which `--kill-child` kills when `unshare`
//!   dies, which `PR_SET_PDEATHSIG` (from `diskforge-cmd`) kills when we die: so even after
//!   `kill -9` of the builder nothing a script started survives;
//! - for in-chroot phases the wrapper mounts `proc`, a read-only `sysfs`, binds `/dev`,
//!   `/dev/pts` and the hooks dir (read-only, at `/tmp/in_target.d`) inside the new mount
//!   namespace, which no other process can see and which vanishes with the PID namespace;
//! - the wrapper then does what dib-run-parts does: merges stderr into stdout, sources the
//!   `environment.d` files once (`set -eu -o pipefail`) and runs the scripts in order,
//!   stopping at the first failure. Between scripts it prints marker lines (a per-run tag
//!   that scripts cannot see) from which we time each script and apply its timeout; all
//!   other output is streamed line by line.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diskforge_cmd::{Cmd, NextLine, StreamingChild};
use serde::Serialize;

use crate::{Error, Phase, Resolved, Result, Script, environment};

/// Where the hooks dir appears inside the target (dib's `run_d_in_target`).
pub const IN_TARGET_HOOKS: &str = "/tmp/in_target.d";
/// How many output lines a failure error keeps.
pub const TAIL_LINES: usize = 20;
/// How often the runner wakes to check the timeout and the cancel flag.
const TICK: Duration = Duration::from_millis(50);
/// How long we wait for a killed process tree to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long at most we read the output still in flight after the wrapper has exited (until
/// the pipe closes, which it does at once when nothing else holds it).
const DRAIN: Duration = Duration::from_secs(5);
/// Attempts (100 ms apart) to remove `/tmp/in_target.d` while the namespace is torn down.
const RMDIR_ATTEMPTS: u32 = 50;

/// Where and how a phase runs.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The root tree being built (dib's `TMP_MOUNT_PATH`/`TARGET_ROOT`).
    pub target_root: PathBuf,
    /// The merged hooks dir written by [`crate::prepare_hooks`] (dib's `TMP_HOOKS_PATH`).
    pub hooks_dir: PathBuf,
    /// The build's scratch dir (dib's `TMP_BUILD_DIR`).
    pub build_dir: PathBuf,
    /// Variables from the caller: `IMAGE_NAME`, `ARCH`, `DIB_RELEASE`, `DIB_IMAGE_SIZE`,
    /// `DIB_IMAGE_CACHE`, `DIB_INIT_SYSTEM`, `IMAGE_BLOCK_DEVICE`, … (see
    /// [`crate::environment`]).
    pub env: BTreeMap<String, String>,
    /// How long one script may run before it and its children are killed.
    pub script_timeout: Duration,
    /// dib's `-x`: `DIB_DEBUG_TRACE=1` and `set -x` while sourcing `environment.d`.
    pub trace: bool,
    /// Raised by the caller (e.g. on SIGINT) to stop: checked between scripts, and the
    /// running script is killed with its children.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// Progress of [`run_phase`], one event at a time, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum ScriptEvent {
    /// A script starts.
    Start {
        /// Its element.
        element: String,
        /// Its phase.
        phase: Phase,
        /// Its name.
        script: String,
    },
    /// A line of the running script's output (stdout and stderr merged).
    Output {
        /// The line, without its newline.
        line: String,
    },
    /// A script finished successfully.
    Done {
        /// Its element.
        element: String,
        /// Its phase.
        phase: Phase,
        /// Its name.
        script: String,
        /// How long it ran (seconds in JSON).
        #[serde(serialize_with = "seconds")]
        elapsed: Duration,
    },
}

/// A duration as fractional seconds (for `--json` output).
fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One script's result in a [`PhaseReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScriptReport {
    /// Its element.
    pub element: String,
    /// Its name.
    pub script: String,
    /// How long it ran (seconds in JSON).
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

/// What [`run_phase`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseReport {
    /// The phase.
    pub phase: Phase,
    /// The scripts run, in order.
    pub scripts: Vec<ScriptReport>,
    /// The phase's wall time, mounts included (seconds in JSON).
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
    /// `block-device.d` only: the last `IMAGE_BLOCK_DEVICE=VALUE` a script printed. dib
    /// evaluates such lines of that phase's output (`eval_run_d`) so that a script can
    /// replace the block device; the caller does the same with this value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_block_device: Option<String>,
}

/// The value of an `IMAGE_BLOCK_DEVICE=VALUE` line (`export` and quotes allowed).
fn image_block_device_line(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("IMAGE_BLOCK_DEVICE=")?;
    let rest = rest.trim();
    let value = if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next()?
    } else if let Some(q) = rest.strip_prefix('\'') {
        q.split('\'').next()?
    } else {
        rest.split(|c: char| c.is_whitespace() || c == ';').next()?
    };
    Some(value.to_owned())
}

/// The phase wrapper, dib-run-parts' job: `$1 $2` the marker tag in two halves (so that a
/// traced `printf` never shows it whole), `$3` the number of environment files, then those
/// files, then the scripts.
const INNER: &str = r#"exec 2>&1
set -eu
set -o pipefail 2>/dev/null || true
_dib_t1=$1 _dib_t2=$2 _dib_nenv=$3
shift 3
while [ "$_dib_nenv" -gt 0 ]; do
    printf '%s%s env %s\n' "$_dib_t1" "$_dib_t2" "${1##*/}"
    if [ "${DIB_DEBUG_TRACE:-0}" -gt 0 ]; then set -x; fi
    . "$1"
    set +x
    shift
    _dib_nenv=$((_dib_nenv - 1))
done
for _dib_script in "$@"; do
    printf '%s%s start %s %s\n' "$_dib_t1" "$_dib_t2" "${_dib_script##*/}" "${EPOCHREALTIME:-}"
    _dib_status=0
    "$_dib_script" || _dib_status=$?
    if [ "$_dib_status" -ne 0 ]; then
        printf '%s%s fail %s %s\n' "$_dib_t1" "$_dib_t2" "$_dib_status" "${EPOCHREALTIME:-}"
        exit "$_dib_status"
    fi
    printf '%s%s done %s\n' "$_dib_t1" "$_dib_t2" "${EPOCHREALTIME:-}"
done
"#;

/// Sets up the chroot inside the new mount namespace, then runs [`INNER`] in the target's
/// bash (or `sh` when it has none): `$1` target, `$2` hooks dir, `$3` the inner wrapper,
/// the rest its arguments.
const CHROOT: &str = r#"exec 2>&1
set -eu
_t=$1 _hooks=$2 _inner=$3
shift 3
mount -t proc proc "$_t/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$_t/sys"
mount --bind /dev "$_t/dev"
mount --bind /dev/pts "$_t/dev/pts"
mount --bind -o ro "$_hooks" "$_t/tmp/in_target.d"
if [ -n "${DIB_APT_LOCAL_CACHE_DIR:-}" ] && [ -d "$DIB_APT_LOCAL_CACHE_DIR" ] && [ -d "$_t/var/cache/apt/archives" ]; then
    mount --bind "$DIB_APT_LOCAL_CACHE_DIR" "$_t/var/cache/apt/archives"
    export DIB_APT_CACHE_BOUND=1
fi
export HOME=/root PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
unset TMPDIR VIRTUAL_ENV
exec chroot "$_t" /bin/sh -c 'if command -v bash >/dev/null 2>&1; then exec bash -c "$0" dib-run-parts "$@"; fi; exec /bin/sh -c "$0" dib-run-parts "$@"' "$_inner" "$@"
"#;

/// Whether unprivileged `unshare --user --map-current-user --pid` works here (probed once).
fn user_namespaces_work() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| {
        Cmd::new("unshare")
            .args([
                "--user",
                "--map-current-user",
                "--pid",
                "--fork",
                "--kill-child",
                "true",
            ])
            .timeout(Duration::from_secs(10))
            .run()
            .is_ok()
    })
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Run every script of `phase` in order (see the module docs for how). Stops at the first
/// failure, timeout or cancel, with an error naming element, phase and script and carrying
/// its last 20 lines of output; the script's processes are gone when this
/// returns. In-chroot phases need root; a phase without scripts does nothing.
pub fn run_phase(
    resolved: &Resolved,
    phase: Phase,
    ctx: &RunContext,
    progress: &mut dyn FnMut(ScriptEvent),
) -> Result<PhaseReport> {
    let start = Instant::now();
    // Scripts see (and the chroot wrapper, which runs in `/`, mounts) absolute paths.
    let absolute = |p: &Path| std::path::absolute(p).map_err(Error::io("resolving", p));
    let ctx = &RunContext {
        target_root: absolute(&ctx.target_root)?,
        hooks_dir: absolute(&ctx.hooks_dir)?,
        build_dir: absolute(&ctx.build_dir)?,
        ..ctx.clone()
    };
    let scripts = resolved.scripts(phase);
    let mut report = PhaseReport {
        phase,
        scripts: Vec::new(),
        elapsed: Duration::ZERO,
        image_block_device: None,
    };
    if scripts.is_empty() {
        return Ok(report);
    }
    for s in &scripts {
        let p = ctx.hooks_dir.join(phase.dir()).join(&s.name);
        if !p.is_file() {
            return Err(Error::HookMissing { path: p });
        }
    }
    diskforge_fault::point(&format!(
        "elements.phase.{}",
        phase.dir().trim_end_matches(".d")
    ))?;
    let mut env = environment(resolved, ctx);
    if !env.contains_key("PATH") {
        let path = std::env::var("PATH").unwrap_or_default();
        env.insert("PATH".to_owned(), path_with_sbin(&path));
    }
    let env_names: Vec<String> = resolved
        .environment_files()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let mut in_target = None;
    let hooks_root = if phase.in_chroot() {
        if !is_root() {
            return Err(Error::NeedsRoot { phase });
        }
        if !ctx.target_root.is_dir() {
            return Err(Error::NoTarget {
                path: ctx.target_root.clone(),
            });
        }
        env.remove("TARGET_ROOT");
        diskforge_fault::point("elements.chroot")?;
        in_target = Some(InTargetDir::prepare(&ctx.target_root)?);
        PathBuf::from(IN_TARGET_HOOKS)
    } else {
        ctx.hooks_dir.clone()
    };
    let env_files: Vec<String> = env_names
        .iter()
        .map(|n| {
            hooks_root
                .join("environment.d")
                .join(n)
                .display()
                .to_string()
        })
        .collect();
    let mut image_block_device = None;
    let mut watch = |e: ScriptEvent| {
        if phase == Phase::BlockDevice
            && let ScriptEvent::Output { line } = &e
            && let Some(v) = image_block_device_line(line)
        {
            image_block_device = Some(v);
        }
        progress(e);
    };
    let script_paths: Vec<PathBuf> = scripts
        .iter()
        .map(|s| hooks_root.join(phase.dir()).join(&s.name))
        .collect();
    let tag = Tag::new();
    let cmd = phase_command(
        &script_paths,
        &env_files,
        &env,
        ctx,
        phase.in_chroot(),
        &tag,
    );
    let result = if cancelled(ctx) {
        Err(Error::Cancelled { script: None })
    } else {
        run_scripts(&scripts, phase, &cmd, &tag, ctx, &mut watch, &mut report)
    };
    let cleanup = in_target.map(InTargetDir::remove).unwrap_or(Ok(()));
    result?;
    cleanup?;
    report.image_block_device = image_block_device;
    report.elapsed = start.elapsed();
    Ok(report)
}

fn cancelled(ctx: &RunContext) -> bool {
    ctx.cancel
        .as_ref()
        .is_some_and(|c| c.load(Ordering::SeqCst))
}

/// The mount points inside the target, created when missing; `/tmp/in_target.d` is removed
/// again afterwards when we created it (as dib does).
#[must_use]
struct InTargetDir {
    created: Option<PathBuf>,
}

impl InTargetDir {
    fn prepare(target: &Path) -> Result<InTargetDir> {
        for d in ["proc", "sys", "dev", "tmp", "tmp/in_target.d"] {
            let p = target.join(d);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(Error::TargetSymlink { path: p });
            }
        }
        for d in ["proc", "sys", "dev", "tmp"] {
            let p = target.join(d);
            if !p.is_dir() {
                std::fs::create_dir_all(&p).map_err(Error::io("creating", &p))?;
            }
        }
        let hooks = target.join(IN_TARGET_HOOKS.trim_start_matches('/'));
        if hooks.is_dir() {
            return Ok(InTargetDir { created: None });
        }
        std::fs::create_dir(&hooks).map_err(Error::io("creating", &hooks))?;
        Ok(InTargetDir {
            created: Some(hooks),
        })
    }

    fn remove(mut self) -> Result<()> {
        let Some(p) = self.created.take() else {
            return Ok(());
        };
        // The bind mount lives in a namespace that is being torn down; rmdir sees EBUSY
        // until the kernel has dropped it.
        let mut last = None;
        for _ in 0..RMDIR_ATTEMPTS {
            match std::fs::remove_dir(&p) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::Io {
            action: "removing",
            path: p,
            source: last.unwrap_or_else(|| std::io::Error::other("rmdir kept failing")),
        })
    }
}

impl Drop for InTargetDir {
    fn drop(&mut self) {
        if let Some(p) = self.created.take()
            && let Err(e) = std::fs::remove_dir(&p)
        {
            tracing::warn!(path = %p.display(), error = %e, "removing the in-target hooks dir");
        }
    }
}

/// The command that runs a phase's scripts.
fn phase_command(
    scripts: &[PathBuf],
    env_files: &[String],
    env: &BTreeMap<String, String>,
    ctx: &RunContext,
    in_chroot: bool,
    tag: &Tag,
) -> Cmd {
    let mut cmd = Cmd::new("setsid");
    let isolate = is_root() || user_namespaces_work();
    if isolate {
        cmd = cmd.arg("unshare");
        if !is_root() {
            cmd = cmd.args(["--user", "--map-current-user"]);
        }
        if in_chroot {
            cmd = cmd.args(["--mount", "--propagation", "private"]);
        }
        cmd = cmd.args(["--pid", "--fork", "--kill-child"]);
    }
    cmd = cmd.arg("bash").arg("-c");
    if in_chroot {
        cmd = cmd
            .arg(CHROOT)
            .arg("dib-chroot")
            .arg(&ctx.target_root)
            .arg(&ctx.hooks_dir)
            .arg(INNER);
    } else {
        cmd = cmd.arg(INNER).arg("dib-run-parts");
    }
    cmd = cmd
        .args([&tag.0, &tag.1])
        .arg(env_files.len().to_string())
        .args(env_files)
        .args(scripts);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    // Host scripts keep the builder's working directory, as under dib.
    if in_chroot { cmd.dir("/") } else { cmd }
}

/// The marker tag of one phase run, in two halves.
struct Tag(String, String);

impl Tag {
    fn new() -> Tag {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        Tag(
            "::diskforge-run-parts-".to_owned(),
            format!("{:x}-{nanos:x}::", std::process::id()),
        )
    }

    /// The text before the marker, the marker, and the shell's clock (bash's
    /// `$EPOCHREALTIME`, absent in other shells) when `line` holds one.
    fn split<'a>(&self, line: &'a str) -> Option<(&'a str, Marker, Option<Duration>)> {
        let whole = format!("{}{}", self.0, self.1);
        let pos = line.find(&whole)?;
        let mut words = line[pos + whole.len()..].split_whitespace();
        let marker = match words.next()? {
            "start" => Marker::Start(words.next()?.to_owned()),
            "done" => Marker::Done,
            "fail" => Marker::Fail(words.next()?.parse().ok()?),
            "env" => Marker::Env(words.next()?.to_owned()),
            _ => return None,
        };
        let clock = words
            .next()
            .and_then(|t| t.replace(',', ".").parse::<f64>().ok())
            .and_then(|t| Duration::try_from_secs_f64(t).ok());
        if words.next().is_some() {
            return None;
        }
        Some((&line[..pos], marker, clock))
    }
}

/// What the wrapper reports between scripts.
#[derive(Debug, PartialEq, Eq)]
enum Marker {
    /// The script of this name starts.
    Start(String),
    /// The running script succeeded.
    Done,
    /// The running script failed with this exit status.
    Fail(i32),
    /// The `environment.d` file of this name is being sourced.
    Env(String),
}

/// `PATH` with the sbin directories appended that a non-root `PATH` often lacks (dib's
/// `common-defaults` does the same).
fn path_with_sbin(path: &str) -> String {
    let mut out = path.to_owned();
    for d in ["/sbin", "/usr/sbin", "/usr/local/sbin"] {
        if !path.split(':').any(|p| p == d) {
            if !out.is_empty() {
                out.push(':');
            }
            out.push_str(d);
        }
    }
    out
}

/// The last lines of output, for errors.
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, l: &str) {
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(l.to_owned());
    }
    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.0).into()
    }
}

/// The script running now.
struct Running {
    index: usize,
    /// When its start marker arrived.
    started: Instant,
    /// The shell's clock at its start, when the shell has one.
    clock: Option<Duration>,
}

/// What the wrapper's output has told us so far.
struct Follow<'a> {
    scripts: &'a [Script],
    phase: Phase,
    tag: &'a Tag,
    timeout: Duration,
    /// When the running script (or the setup, before the first) times out.
    deadline: Instant,
    tail: Tail,
    running: Option<Running>,
    /// Index of the next script to start.
    next: usize,
    /// The exit status the wrapper reported for the running script.
    failure: Option<i32>,
    /// The `environment.d` file being sourced (before the first script starts).
    env_file: Option<String>,
}

impl Follow<'_> {
    fn output(&mut self, line: String, progress: &mut dyn FnMut(ScriptEvent)) {
        self.tail.push(&line);
        progress(ScriptEvent::Output { line });
    }

    /// Handle one line of output: a marker, or output to pass on.
    fn line(
        &mut self,
        line: String,
        progress: &mut dyn FnMut(ScriptEvent),
        report: &mut PhaseReport,
    ) {
        let Some((before, marker, clock)) = self.tag.split(&line) else {
            return self.output(line, progress);
        };
        if !before.is_empty() {
            self.output(before.to_owned(), progress);
        }
        let now = Instant::now();
        let phase = self.phase;
        match marker {
            Marker::Start(started) => {
                let Some(s) = self.scripts.get(self.next).filter(|s| s.name == started) else {
                    // Not our protocol: show it rather than guess.
                    return self.output(line, progress);
                };
                progress(ScriptEvent::Start {
                    element: s.element.clone(),
                    phase,
                    script: s.name.clone(),
                });
                self.running = Some(Running {
                    index: self.next,
                    started: now,
                    clock,
                });
                self.next += 1;
                self.tail = Tail(VecDeque::with_capacity(TAIL_LINES));
                self.deadline = now + self.timeout;
            }
            Marker::Done => {
                if let Some(r) = self.running.take() {
                    let s = &self.scripts[r.index];
                    // The shell's clock when it has one: our arrival times lag behind
                    // when the machine is busy.
                    let elapsed = match (r.clock, clock) {
                        (Some(a), Some(b)) if b >= a => b - a,
                        _ => now - r.started,
                    };
                    progress(ScriptEvent::Done {
                        element: s.element.clone(),
                        phase,
                        script: s.name.clone(),
                        elapsed,
                    });
                    report.scripts.push(ScriptReport {
                        element: s.element.clone(),
                        script: s.name.clone(),
                        elapsed,
                    });
                }
                self.deadline = now + self.timeout;
            }
            Marker::Fail(code) => self.failure = Some(code),
            Marker::Env(name) if self.next == 0 => self.env_file = Some(name),
            Marker::Env(_) => self.output(line, progress),
        }
    }

    /// `element/phase/script` of the running script.
    fn running_name(&self) -> Option<String> {
        self.running.as_ref().map(|r| {
            let s = &self.scripts[r.index];
            format!("{}/{}/{}", s.element, self.phase, s.name)
        })
    }

    /// The error for a timeout now.
    fn timed_out(&mut self) -> Error {
        let last_lines = self.tail.take();
        match &self.running {
            Some(r) => Error::ScriptTimedOut {
                element: self.scripts[r.index].element.clone(),
                phase: self.phase,
                script: self.scripts[r.index].name.clone(),
                timeout: self.timeout,
                last_lines,
            },
            None => Error::PhaseSetupFailed {
                phase: self.phase,
                env_file: self.env_file.clone(),
                status: format!("timed out after {:?}", self.timeout),
                last_lines,
            },
        }
    }

    /// The outcome once the wrapper has exited with `status`.
    fn finish(mut self, status: std::process::ExitStatus) -> Result<()> {
        if let Some(r) = &self.running {
            let s = &self.scripts[r.index];
            return Err(Error::ScriptFailed {
                element: s.element.clone(),
                phase: self.phase,
                script: s.name.clone(),
                status: self
                    .failure
                    .map_or_else(|| describe_status(status), |c| format!("exit status {c}")),
                last_lines: self.tail.take(),
            });
        }
        if !status.success() || self.next < self.scripts.len() {
            return Err(Error::PhaseSetupFailed {
                phase: self.phase,
                env_file: self.env_file.take(),
                status: describe_status(status),
                last_lines: self.tail.take(),
            });
        }
        Ok(())
    }
}

/// Run `cmd` (the phase wrapper) and follow its markers; see the module docs.
fn run_scripts(
    scripts: &[Script],
    phase: Phase,
    cmd: &Cmd,
    tag: &Tag,
    ctx: &RunContext,
    progress: &mut dyn FnMut(ScriptEvent),
    report: &mut PhaseReport,
) -> Result<()> {
    let spawn_err = |source| Error::Spawn {
        phase,
        source: Box::new(source),
    };
    let mut child = cmd.spawn_streaming().map_err(spawn_err)?;
    // setsid execs without forking (we are not a group leader), so the pid is the group.
    let pgid = child.pid().and_then(|p| i32::try_from(p).ok());
    let mut f = Follow {
        scripts,
        phase,
        tag,
        timeout: ctx.script_timeout,
        deadline: Instant::now() + ctx.script_timeout,
        tail: Tail(VecDeque::with_capacity(TAIL_LINES)),
        running: None,
        next: 0,
        failure: None,
        env_file: None,
    };
    let mut output_closed = false;
    loop {
        if cancelled(ctx) {
            kill_tree(&mut child, pgid);
            return Err(Error::Cancelled {
                script: f.running_name(),
            });
        }
        let now = Instant::now();
        if now >= f.deadline {
            kill_tree(&mut child, pgid);
            return Err(f.timed_out());
        }
        if output_closed {
            // Everything closed its output; the wrapper may still be finishing.
            if child.try_wait().map_err(spawn_err)?.is_some() {
                break;
            }
            std::thread::sleep(TICK.min(f.deadline - now));
            continue;
        }
        match child.next_line((now + TICK).min(f.deadline)) {
            NextLine::Line(l) => f.line(l, progress, report),
            NextLine::Closed => output_closed = true,
            NextLine::TimedOut => {
                // Exited while something it left behind still holds the pipe (only possible
                // without a PID namespace): read what is left, then stop.
                if child.try_wait().map_err(spawn_err)?.is_some() {
                    break;
                }
            }
        }
    }
    // Leftovers of a tree without a PID namespace: the group dies now.
    if let Some(g) = pgid {
        kill_group(g);
    }
    // Lines still on their way (the reader thread may lag behind a quick exit).
    let drain_until = Instant::now() + DRAIN;
    while let NextLine::Line(l) = child.next_line(drain_until) {
        f.line(l, progress, report);
    }
    let finished = child.finish(KILL_WAIT).map_err(spawn_err)?;
    if let Some(g) = pgid {
        wait_group_gone(g, KILL_WAIT);
    }
    f.finish(finished.status)
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        // ESRCH: the group is already gone.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Kill the script's whole process group (it is still alive, so the group id is ours),
/// reap the direct child and wait until every member has gone.
fn kill_tree(child: &mut StreamingChild, pgid: Option<i32>) {
    if let Some(g) = pgid {
        kill_group(g);
    }
    let _ = child.try_wait();
    if let Some(g) = pgid {
        wait_group_gone(g, KILL_WAIT);
    }
}

/// Whether any process is in process group `pgid` (from `/proc/*/stat`, field 5).
pub(crate) fn group_alive(pgid: i32) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name in parentheses may hold spaces; fields follow the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let _ppid = f.next();
        let pgrp = f.next().and_then(|p| p.parse::<i32>().ok());
        if pgrp == Some(pgid) && state != Some("Z") {
            return true;
        }
    }
    false
}

fn wait_group_gone(pgid: i32, limit: Duration) {
    let until = Instant::now() + limit;
    while group_alive(pgid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_only_whole() {
        let t = Tag("::a-".into(), "b::".into());
        assert_eq!(
            t.split("::a-b:: start 10-x 1700000000.250000"),
            Some((
                "",
                Marker::Start("10-x".into()),
                Some(Duration::from_millis(1_700_000_000_250))
            ))
        );
        assert_eq!(
            t.split("partial::a-b:: done "),
            Some(("partial", Marker::Done, None))
        );
        assert_eq!(
            t.split("::a-b:: fail 3 12,5"),
            Some(("", Marker::Fail(3), Some(Duration::from_millis(12_500))))
        );
        assert_eq!(t.split("::a-b:: done 1 2"), None);
        // A traced printf shows the halves apart; other text is not a marker.
        assert_eq!(t.split("+ printf '%s%s done\\n' ::a- b::"), None);
        assert_eq!(t.split("::a-b:: something else"), None);
        assert_eq!(t.split("::a-b:: fail x"), None);
        assert_ne!(Tag::new().1, "");
    }

    #[test]
    fn reports_serialise_times_as_seconds() {
        let r = PhaseReport {
            phase: Phase::Install,
            scripts: vec![ScriptReport {
                element: "el".into(),
                script: "10-x".into(),
                elapsed: Duration::from_millis(1500),
            }],
            elapsed: Duration::from_millis(2250),
            image_block_device: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"phase":"install.d","scripts":[{"element":"el","script":"10-x","elapsed":1.5}],"elapsed":2.25}"#
        );
        let e = ScriptEvent::Done {
            element: "el".into(),
            phase: Phase::Root,
            script: "10-x".into(),
            elapsed: Duration::from_millis(500),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"done","element":"el","phase":"root.d","script":"10-x","elapsed":0.5}"#
        );
    }

    #[test]
    fn image_block_device_lines() {
        let v = |l| image_block_device_line(l);
        assert_eq!(
            v("IMAGE_BLOCK_DEVICE=/dev/loop3"),
            Some("/dev/loop3".into())
        );
        assert_eq!(
            v("export IMAGE_BLOCK_DEVICE=\"/dev/x y\""),
            Some("/dev/x y".into())
        );
        assert_eq!(
            v("IMAGE_BLOCK_DEVICE='/dev/z'; echo"),
            Some("/dev/z".into())
        );
        assert_eq!(v("IMAGE_BLOCK_DEVICE=/dev/a; echo"), Some("/dev/a".into()));
        assert_eq!(v("nothing here"), None);
    }

    #[test]
    fn sbin_is_appended_once() {
        assert_eq!(
            path_with_sbin("/usr/bin:/bin"),
            "/usr/bin:/bin:/sbin:/usr/sbin:/usr/local/sbin"
        );
        assert_eq!(
            path_with_sbin("/usr/sbin:/bin:/sbin:/usr/local/sbin"),
            "/usr/sbin:/bin:/sbin:/usr/local/sbin"
        );
        assert_eq!(path_with_sbin(""), "/sbin:/usr/sbin:/usr/local/sbin");
    }
}
