//! Running a command chrooted into a mounted stack, in a private mount namespace.

use std::error::Error as _;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diskforge_cmd::Cmd;
use diskforge_mount::{Mount, MountFlags, MountStack};

use crate::stack::default_work_dir;
use crate::{Error, Result, mount_stack};

/// How often the interrupt flag is polled while the command runs.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);
/// How long an interrupted interactive command gets after SIGTERM before SIGKILL (an
/// interactive shell ignores SIGTERM).
const KILL_GRACE: Duration = Duration::from_secs(5);

/// What to run and where.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The command and its arguments (looked up on `PATH` inside the root).
    pub command: Vec<OsString>,
    /// Upper dir that keeps the changes. Default: a temporary one, discarded afterwards.
    pub upper: Option<PathBuf>,
    /// Work dir for `upper`. Default: `.NAME.work` next to it.
    pub work: Option<PathBuf>,
    /// Directory for the temporary mount point (and temporary upper). Default `/var/tmp`
    /// (overlayfs upper dirs need a disk filesystem with xattrs).
    pub scratch: Option<PathBuf>,
    /// When set to true (e.g. by a SIGINT/SIGTERM handler), the command is sent SIGTERM and
    /// everything is torn down. Default: none.
    pub interrupt: Option<Arc<AtomicBool>>,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunOutcome {
    /// Its exit code (128 + signal number when killed by a signal).
    pub code: i32,
    /// Whether it was stopped because of the interrupt flag.
    pub interrupted: bool,
}

/// Mount `layers` (base first), mount `/proc`, `/sys` and `/dev` inside, and run
/// `opts.command` chrooted there, in a private mount namespace (so no mount outlives us even
/// if we are killed); everything is unmounted afterwards, in reverse. The command's stdout
/// and stderr (merged, in order) are handed to `on_line` line by line; its stdin is null.
/// A non-zero exit is not an error: see [`RunOutcome::code`].
pub fn run_in_stack(
    layers: &[PathBuf],
    opts: &RunOptions,
    on_line: impl FnMut(&str) + Send,
) -> Result<RunOutcome> {
    run_with(layers, opts, Some(on_line))
}

/// Like [`run_in_stack`], but the command gets our stdin, stdout and stderr, so an
/// interactive `sh` works. On the interrupt flag its process tree gets SIGTERM, and SIGKILL
/// five seconds later if it is still there; then everything is torn down.
pub fn run_in_stack_interactive(layers: &[PathBuf], opts: &RunOptions) -> Result<RunOutcome> {
    run_with(layers, opts, None::<fn(&str)>)
}

fn run_with(
    layers: &[PathBuf],
    opts: &RunOptions,
    on_line: Option<impl FnMut(&str) + Send>,
) -> Result<RunOutcome> {
    if opts.command.is_empty() {
        return Err(Error::BadSource {
            spec: String::new(),
            reason: "no command to run".into(),
        });
    }
    let scratch_base = opts
        .scratch
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    // Scratch dirs of runs that were killed (SIGKILL leaves no chance to clean up; their
    // mounts died with their private mount namespace).
    clean_stale_scratch(&scratch_base)?;
    diskforge_fault::point("layers.run.scratch")?;
    let (scratch, _scratch_lock) = locked_scratch(&scratch_base)?;
    let merged = scratch.join("merged");
    let (upper, work, temp_upper) = match &opts.upper {
        Some(u) => (
            u.clone(),
            opts.work.clone().unwrap_or_else(|| default_work_dir(u)),
            false,
        ),
        None => (scratch.join("upper"), scratch.join("work"), true),
    };
    // A caller's upper (and its work dir) that we create: removed again when the run fails.
    let created: Vec<PathBuf> = if temp_upper {
        Vec::new()
    } else {
        [&upper, &work]
            .into_iter()
            .filter(|d| std::fs::symlink_metadata(d).is_err())
            .cloned()
            .collect()
    };
    let result = (|| {
        for d in [&merged, &upper] {
            std::fs::create_dir_all(d).map_err(|e| Error::io("creating", d, e))?;
        }
        diskforge_mount::in_private_namespace(|| {
            run_inside(layers, &upper, &work, &merged, opts, on_line)
        })
        .map_err(|e| Error::Mount {
            action: "entering a private mount namespace".into(),
            source: Box::new(e),
        })
        .and_then(|r| r)
    })();
    // Unmounted (or the namespace is gone): the mount point is an empty directory again (or
    // was never made, when creating it failed).
    let mut cleanup = match std::fs::remove_dir(&merged) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| Error::io("removing mount point", &merged, e)),
    };
    if cleanup.is_ok() && temp_upper {
        for d in [&upper, &work] {
            if d.exists() {
                cleanup = cleanup
                    .and(std::fs::remove_dir_all(d).map_err(|e| Error::io("removing", d, e)));
            }
        }
    }
    if cleanup.is_ok() && result.is_err() {
        for d in created.iter().filter(|d| d.exists()) {
            cleanup =
                cleanup.and(std::fs::remove_dir_all(d).map_err(|e| Error::io("removing", d, e)));
        }
    }
    if cleanup.is_ok() {
        cleanup = std::fs::remove_dir(&scratch).map_err(|e| Error::io("removing", &scratch, e));
    }
    let outcome = result?;
    cleanup?;
    Ok(outcome)
}

/// Prefix of the scratch directories of running (or killed) runs.
const SCRATCH_PREFIX: &str = "dflayers-run-";

/// A new scratch directory `BASE/dflayers-run-*`, locked (`flock`) for as long as the returned
/// fd is open. It is made under a hidden name, locked, then renamed, so
/// [`clean_stale_scratch`] never sees it unlocked. Kept on drop: it must never be removed
/// recursively while something may be mounted in it.
fn locked_scratch(base: &Path) -> Result<(PathBuf, std::os::fd::OwnedFd)> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{SCRATCH_PREFIX}"))
        .tempdir_in(base)
        .map_err(|e| Error::io("creating scratch directory in", base, e))?
        .keep();
    let fd = crate::fsutil::open_dir(&tmp)?;
    rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::sys("locking", &tmp, e))?;
    let name = tmp
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches('.').to_owned())
        .unwrap_or_default();
    let dir = base.join(name);
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io("renaming scratch directory", &tmp, e))?;
    Ok((dir, fd))
}

/// Remove the scratch directories (`BASE/dflayers-run-*`) of runs that are gone: those no
/// process holds locked and with nothing mounted below them. Returns what was removed.
/// [`run_in_stack`] calls this before each run; `dflayers gc` too.
pub fn clean_stale_scratch(base: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io("reading", base, e)),
    };
    let base_fd = crate::fsutil::open_dir(base)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for e in entries {
        let e = e.map_err(|e| Error::io("reading", base, e))?;
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(SCRATCH_PREFIX) {
            continue;
        }
        let p = base.join(&name);
        let Ok(fd) = crate::fsutil::open_dir_at(&base_fd, &name) else {
            continue;
        };
        if rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        let prefix = format!("{}/", p.display());
        let mounted = mountinfo.lines().any(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| m == p.to_string_lossy() || m.starts_with(&prefix))
        });
        if mounted {
            tracing::warn!(dir = %p.display(), "stale scratch dir has mounts below it; keeping it");
            continue;
        }
        crate::fsutil::remove_tree_at(&base_fd, &name)
            .map_err(|e| Error::sys("removing stale scratch directory", &p, e))?;
        removed.push(p);
    }
    Ok(removed)
}

fn run_inside(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    merged: &Path,
    opts: &RunOptions,
    on_line: Option<impl FnMut(&str)>,
) -> Result<RunOutcome> {
    diskforge_fault::point("layers.run.mount")?;
    let root = mount_stack(layers, Some((upper, work)), merged)?;
    let mut stack = MountStack::new();
    let outcome = (|| {
        let mounts: [(&str, &str); 2] = [("proc", "proc"), ("sys", "sysfs")];
        for (dir, fstype) in mounts {
            let t = merged.join(dir);
            std::fs::create_dir_all(&t).map_err(|e| Error::io("creating", &t, e))?;
            let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
            let m = Mount::new(fstype, &t, fstype, flags, None).map_err(|e| Error::Mount {
                action: format!("mounting {fstype} on {}", t.display()),
                source: Box::new(e),
            })?;
            stack.push(m);
        }
        let dev = merged.join("dev");
        std::fs::create_dir_all(&dev).map_err(|e| Error::io("creating", &dev, e))?;
        let m = Mount::bind_recursive("/dev", &dev).map_err(|e| Error::Mount {
            action: format!("binding /dev on {}", dev.display()),
            source: Box::new(e),
        })?;
        stack.push(m.lazy(true));
        match on_line {
            Some(on_line) => run_captured(merged, opts, on_line),
            None => run_attached(merged, opts),
        }
    })();
    // Unwind in reverse: /dev, /sys, /proc, then the stack itself; report every failure.
    let mut failures = Vec::new();
    if let Err(e) = stack.teardown() {
        failures.push(e.to_string());
    }
    if let Err(e) = root.teardown() {
        failures.push(format!(
            "{e}: {}",
            e.source().map(|s| s.to_string()).unwrap_or_default()
        ));
    }
    let outcome = outcome?;
    if !failures.is_empty() {
        return Err(Error::Teardown(failures));
    }
    Ok(outcome)
}

/// Whether the caller's interrupt flag is set.
fn interrupt_requested(opts: &RunOptions) -> bool {
    opts.interrupt
        .as_ref()
        .is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Its exit code, or 128 + the signal that killed it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Run with our stdio; the handle's pid is the command itself (`chroot` execs it).
fn run_attached(root: &Path, opts: &RunOptions) -> Result<RunOutcome> {
    let child = Cmd::new("chroot")
        .arg(root)
        .args(&opts.command)
        .spawn()
        .map_err(Error::Command)?;
    let roots = || {
        child
            .pids()
            .into_iter()
            .filter_map(|p| i32::try_from(p).ok())
    };
    let mut signalled: Option<std::time::Instant> = None;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(Error::Command)? {
            break status;
        }
        match signalled {
            None if interrupt_requested(opts) => {
                signal_tree(roots().collect(), rustix::process::Signal::TERM);
                signalled = Some(std::time::Instant::now());
            }
            Some(t) if t.elapsed() >= KILL_GRACE => {
                signal_tree(roots().collect(), rustix::process::Signal::KILL);
            }
            _ => {}
        }
        std::thread::sleep(INTERRUPT_POLL);
    };
    Ok(RunOutcome {
        code: exit_code(status),
        interrupted: signalled.is_some() || interrupt_requested(opts),
    })
}

fn run_captured(root: &Path, opts: &RunOptions, on_line: impl FnMut(&str)) -> Result<RunOutcome> {
    // The host's sh merges stderr into stdout before exec'ing chroot, so the rootfs needs no
    // shell of its own and the two streams stay in order.
    let cmd = Cmd::new("sh")
        .args(["-c", "exec chroot \"$0\" \"$@\" 2>&1"])
        .arg(root)
        .args(&opts.command);
    let done = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    let result = std::thread::scope(|s| {
        if let Some(flag) = &opts.interrupt {
            let (done, interrupted) = (done.clone(), interrupted.clone());
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if flag.load(Ordering::Relaxed) {
                        interrupted.store(true, Ordering::Relaxed);
                        signal_tree(children_of("self"), rustix::process::Signal::TERM);
                        return;
                    }
                    std::thread::sleep(INTERRUPT_POLL);
                }
            });
        }
        let r = cmd.stream_stdout(on_line);
        done.store(true, Ordering::Relaxed);
        r
    });
    // The signal may also have reached the command directly (same process group) and ended
    // it before the watcher looked.
    let interrupted = interrupted.load(Ordering::Relaxed) || interrupt_requested(opts);
    match result {
        Ok(()) => Ok(RunOutcome {
            code: 0,
            interrupted,
        }),
        Err(e) => match e.exit_status() {
            Some(status) => Ok(RunOutcome {
                code: exit_code(status),
                interrupted,
            }),
            None => Err(Error::Command(e)),
        },
    }
}

/// Send `signal` to the processes `roots` and their descendants (by pid, from
/// `/proc/PID/task/*/children`), so nothing keeps the stack busy or its output open.
fn signal_tree(roots: Vec<i32>, signal: rustix::process::Signal) {
    let mut pending = roots;
    let mut seen = std::collections::BTreeSet::new();
    while let Some(pid) = pending.pop() {
        if !seen.insert(pid) {
            continue;
        }
        pending.extend(children_of(&pid.to_string()));
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, signal);
        }
    }
}

fn children_of(pid: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}
