//! The single way diskforge runs external programs.
//!
//! Every call to `mkfs.*`, `sgdisk`, `xorriso`, `qemu-img`, `lvcreate` … goes through [`Cmd`].
//! The runner:
//! - logs the argv at `debug` level (`tracing`) before spawning;
//! - keeps stdin null unless [`Cmd::stdin_bytes`] gives it data (scripts are piped, never
//!   written to temp files), except for [`Cmd::status`]/[`Cmd::spawn`], which inherit it;
//! - captures stderr and puts its tail, the program, the args and the exit status into
//!   [`Error::Failed`];
//! - kills the child when a [`Cmd::timeout`] passes ([`Error::Timeout`]) and when our process
//!   dies (`PR_SET_PDEATHSIG`);
//! - turns a missing binary into [`Error::NotFound`], naming the Debian package that ships it
//!   (`mkfs.vfat: not found (install dosfstools)`);
//! - deserialises JSON stdout into a type with [`Cmd::json`];
//! - runs interactive programs with the terminal's stdin/stdout/stderr ([`Cmd::status`],
//!   [`Cmd::spawn`] and its [`Child`] handle), where a non-zero exit is data, not an error;
//! - runs long-lived programs whose stdout is read line by line while they run
//!   ([`Cmd::spawn_streaming`] and its [`StreamingChild`] guard: waits with deadlines,
//!   stderr captured for the error, killed and reaped on drop), such as a VM's serial console.
//!
//! [`exit_quietly_on_broken_pipe`] is for the tools' `main`: a report piped into `head`
//! ends quietly instead of panicking with "failed printing to stdout: Broken pipe".
//!
//! It deliberately does not offer a shell: argv is always a vector, never a string that a shell
//! would split. Nothing here prints; callers decide how to show output.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::time::{Duration, Instant};

mod packages;
mod streaming;

pub use packages::{PACKAGES, Package, debian_package};
pub use streaming::{Finished, NextLine, StreamingChild};

/// How much of stderr is kept in an error message (the tail, in bytes).
const STDERR_TAIL_BYTES: usize = 4096;
/// Interval at which a child with a timeout is polled.
const TIMEOUT_POLL: Duration = Duration::from_millis(5);

/// Errors from running an external program.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program is not on `PATH`.
    #[error("{program}: not found{}", package.map(|p| format!(" (install {p})")).unwrap_or_default())]
    NotFound {
        /// The program that was asked for.
        program: String,
        /// The Debian package that provides it, when known.
        package: Option<&'static str>,
    },
    /// The program ran and exited unsuccessfully.
    #[error("{} failed ({status}): {}", render_argv(program, args), stderr.trim_end())]
    Failed {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its exit status.
        status: ExitStatus,
        /// The tail of what it wrote to stderr.
        stderr: String,
        /// Everything it wrote to stdout (useful for tools that report errors there).
        stdout: String,
    },
    /// The program did not finish in time and was killed.
    #[error("{} timed out after {timeout:?}", render_argv(program, args))]
    Timeout {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// Spawning or waiting failed for another reason.
    #[error("running {program}")]
    Io {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stdout was not the JSON we expected.
    #[error("parsing JSON output of {program}")]
    Json {
        /// The program.
        program: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The exit status, when the program ran and failed.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self {
            Error::Failed { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The captured stderr, when the program ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            Error::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn render_argv(program: &str, args: &[String]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(a);
        }
    }
    s
}

/// A program invocation: program, args, environment, working directory, stdin and timeout.
///
/// Build it, then call [`Cmd::run`], [`Cmd::read`], [`Cmd::json`] or [`Cmd::stream_stdout`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl Cmd {
    /// A new invocation of `program` (looked up on `PATH` unless it contains a `/`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
            stdin: None,
            timeout: None,
        }
    }

    /// Append one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Append several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Set an environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Run in `dir`.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Feed these bytes on stdin (otherwise stdin is null).
    pub fn stdin_bytes(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Kill the child and fail with [`Error::Timeout`] when it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The program name as a string (lossy).
    pub fn program(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    /// The arguments as strings (lossy).
    pub fn arg_strings(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The command line, shell-quoted, for logs and `--dry-run` output.
    pub fn display(&self) -> String {
        render_argv(&self.program(), &self.arg_strings())
    }

    fn expression(&self) -> duct::Expression {
        self.expression_with(false)
    }

    /// The duct expression; `inherit_stdin` keeps our stdin unless bytes were given.
    #[allow(clippy::disallowed_methods)] // this crate is the one place allowed to spawn
    fn expression_with(&self, inherit_stdin: bool) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args);
        for (k, v) in &self.env {
            e = e.env(k, v);
        }
        if let Some(d) = &self.dir {
            e = e.dir(d);
        }
        e = match &self.stdin {
            Some(bytes) => e.stdin_bytes(bytes.clone()),
            None if inherit_stdin => e,
            None => e.stdin_null(),
        };
        e.unchecked().before_spawn(|c| {
            set_pdeathsig(c);
            Ok(())
        })
    }

    pub(crate) fn spawn_error(&self, e: std::io::Error) -> Error {
        let program = self.program();
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                package: debian_package(&program),
                program,
            }
        } else {
            Error::Io { program, source: e }
        }
    }

    fn check(&self, out: Output) -> Result<Output> {
        if out.status.success() {
            return Ok(out);
        }
        Err(Error::Failed {
            program: self.program(),
            args: self.arg_strings(),
            status: out.status,
            stderr: stderr_tail(&out.stderr),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    }

    /// Run to completion capturing stdout and stderr; fail unless it exits 0.
    pub fn run(&self) -> Result<Output> {
        tracing::debug!(argv = %self.display(), "run");
        let expr = self.expression().stdout_capture().stderr_capture();
        let handle = expr.start().map_err(|e| self.spawn_error(e))?;
        let child = Child {
            handle,
            cmd: self.clone(),
        };
        let out = child.finish(self.timeout)?;
        self.check(out)
    }

    /// Start the program with our stdin, stdout and stderr (stdin is the
    /// [`Cmd::stdin_bytes`] data instead when given) and return a handle to it. The
    /// [`Cmd::timeout`] does not apply: the caller decides when to [`Child::kill`].
    pub fn spawn(&self) -> Result<Child> {
        tracing::debug!(argv = %self.display(), "spawn");
        let handle = self
            .expression_with(true)
            .start()
            .map_err(|e| self.spawn_error(e))?;
        Ok(Child {
            handle,
            cmd: self.clone(),
        })
    }

    /// Run to completion with our stdin, stdout and stderr (stdin is the
    /// [`Cmd::stdin_bytes`] data instead when given) and return its exit status; a non-zero
    /// exit is not an error. Honours [`Cmd::timeout`].
    pub fn status(&self) -> Result<ExitStatus> {
        self.spawn()?.finish(self.timeout).map(|o| o.status)
    }

    /// Run and return stdout as text with trailing whitespace removed.
    pub fn read(&self) -> Result<String> {
        let out = self.run()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// Run and deserialise stdout as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let out = self.run()?;
        serde_json::from_slice(&out.stdout).map_err(|source| Error::Json {
            program: self.program(),
            source,
        })
    }

    /// Run, handing stdout to `on_line` as it arrives, split at `\n` and `\r` (progress
    /// meters such as `qemu-img -p` redraw with `\r`). Stderr is captured for the error.
    pub fn stream_stdout(&self, mut on_line: impl FnMut(&str)) -> Result<()> {
        tracing::debug!(argv = %self.display(), "run (streaming)");
        let reader = self
            .expression()
            .stderr_capture()
            .reader()
            .map_err(|e| self.spawn_error(e))?;
        let mut reader = reader;
        let mut pending = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.spawn_error(e)),
            };
            for &b in &buf[..n] {
                if b == b'\n' || b == b'\r' {
                    if !pending.is_empty() {
                        on_line(&String::from_utf8_lossy(&pending));
                        pending.clear();
                    }
                } else {
                    pending.push(b);
                }
            }
        }
        if !pending.is_empty() {
            on_line(&String::from_utf8_lossy(&pending));
        }
        let out = reader
            .try_wait()
            .map_err(|e| self.spawn_error(e))?
            .cloned()
            .ok_or_else(|| Error::Io {
                program: self.program(),
                source: std::io::Error::other("child still running after stdout closed"),
            })?;
        self.check(out).map(|_| ())
    }
}

/// A running program started by [`Cmd::spawn`]. It is killed when our process dies
/// (`PR_SET_PDEATHSIG`), not when the handle is dropped.
#[derive(Debug)]
#[must_use]
pub struct Child {
    handle: duct::Handle,
    cmd: Cmd,
}

impl Child {
    /// The process ids of the program (one: diskforge never builds pipelines).
    pub fn pids(&self) -> Vec<u32> {
        self.handle.pids()
    }

    /// Wait for the program to exit and return its status (non-zero is not an error).
    pub fn wait(&self) -> Result<ExitStatus> {
        self.handle
            .wait()
            .map(|o| o.status)
            .map_err(|e| self.cmd.spawn_error(e))
    }

    /// The exit status if the program has exited, without blocking.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        self.handle
            .try_wait()
            .map(|o| o.map(|o| o.status))
            .map_err(|e| self.cmd.spawn_error(e))
    }

    /// Wait for the program, killing it and failing with [`Error::Timeout`] once `timeout`
    /// has passed.
    fn finish(&self, timeout: Option<Duration>) -> Result<Output> {
        let Some(t) = timeout else {
            return self
                .handle
                .wait()
                .cloned()
                .map_err(|e| self.cmd.spawn_error(e));
        };
        let deadline = Instant::now() + t;
        loop {
            if let Some(out) = self
                .handle
                .try_wait()
                .map_err(|e| self.cmd.spawn_error(e))?
            {
                return Ok(out.clone());
            }
            if Instant::now() >= deadline {
                // Best effort: the child may have exited between try_wait and kill.
                let _ = self.handle.kill();
                return Err(Error::Timeout {
                    program: self.cmd.program(),
                    args: self.cmd.arg_strings(),
                    timeout: t,
                });
            }
            std::thread::sleep(TIMEOUT_POLL);
        }
    }

    /// Send SIGKILL to the program (not to processes it started); [`Child::wait`] reaps it.
    pub fn kill(&self) -> Result<()> {
        self.handle.kill().map_err(|e| self.cmd.spawn_error(e))
    }
}

/// The last [`STDERR_TAIL_BYTES`] of `stderr` as text (`…` marks a cut).
fn stderr_tail(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    if stderr.len() > STDERR_TAIL_BYTES {
        let mut start = stderr.len() - STDERR_TAIL_BYTES;
        while !stderr.is_char_boundary(start) {
            start += 1;
        }
        format!("…{}", &stderr[start..])
    } else {
        stderr.into_owned()
    }
}

/// Make a broken stdout end the process quietly with exit code 0.
///
/// Rust ignores SIGPIPE, so `println!` into a closed pipe (`dfpart show | head -1`) panics
/// with "failed printing to stdout: Broken pipe". Call this first thing in `main`: it
/// installs a panic hook that exits 0 without a message for exactly that panic and hands
/// every other panic to the previous hook. SIGPIPE itself stays ignored, so a child that
/// stops reading its [`Cmd::stdin_bytes`] early cannot kill us.
pub fn exit_quietly_on_broken_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if is_broken_stdout(msg) {
            std::process::exit(0);
        }
        previous(info);
    }));
}

/// Whether a panic message is std's "failed printing to stdout/stderr: Broken pipe".
fn is_broken_stdout(msg: &str) -> bool {
    msg.starts_with("failed printing to std")
        && (msg.contains("Broken pipe") || msg.contains("os error 32"))
}

/// Ask the kernel to SIGKILL the child when we die, so no tool outlives diskforge.
pub(crate) fn set_pdeathsig(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe
    // syscall (prctl), allocating nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

/// Whether `program` can be found on `PATH` (or exists, when it contains a `/`).
pub fn exists(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_package() {
        let err = Cmd::new("mkfs.vfat-definitely-missing").run().unwrap_err();
        assert!(
            matches!(err, Error::NotFound { package: None, .. }),
            "{err:?}"
        );
        let err = Cmd::new("/nonexistent/mkfs.vfat").run().unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/mkfs.vfat: not found (install dosfstools)"
        );
    }

    #[test]
    fn nonzero_exit_keeps_stderr_status_and_args() {
        let err = Cmd::new("sh")
            .args(["-c", "echo out; echo 'bad thing' >&2; exit 3", "x y"])
            .run()
            .unwrap_err();
        match &err {
            Error::Failed {
                program,
                args,
                status,
                stderr,
                stdout,
            } => {
                assert_eq!(program, "sh");
                assert_eq!(args.len(), 3);
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr.trim(), "bad thing");
                assert_eq!(stdout.trim(), "out");
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("sh -c 'echo out;"), "{msg}");
        assert!(msg.contains("'x y'"), "{msg}");
        assert!(msg.ends_with("bad thing"), "{msg}");
    }

    #[test]
    fn stderr_tail_is_bounded() {
        let err = Cmd::new("sh")
            .args(["-c", "head -c 100000 /dev/zero | tr '\\0' a >&2; exit 1"])
            .run()
            .unwrap_err();
        let stderr = err.stderr().unwrap();
        assert!(stderr.len() <= STDERR_TAIL_BYTES + 4, "{}", stderr.len());
        assert!(stderr.starts_with('…'));
    }

    #[test]
    fn stdin_env_dir() {
        let dir = tempfile::tempdir().unwrap();
        let out = Cmd::new("sh")
            .args(["-c", "cat; printf %s \"$FOO\"; pwd"])
            .stdin_bytes("in-")
            .env("FOO", "bar")
            .dir(dir.path())
            .read()
            .unwrap();
        let canon = dir.path().canonicalize().unwrap();
        assert_eq!(out, format!("in-bar{}", canon.display()));
    }

    #[test]
    fn stdin_is_null_by_default() {
        // `cat` would block forever on an inherited terminal; null stdin ends it at once.
        let out = Cmd::new("cat")
            .timeout(Duration::from_secs(5))
            .read()
            .unwrap();
        assert_eq!(out, "");
    }

    #[test]
    fn timeout_kills() {
        let start = Instant::now();
        let err = Cmd::new("sleep")
            .arg("10")
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().starts_with("sleep 10 timed out"));
    }

    #[test]
    fn json_parses_and_reports_bad_json() {
        #[derive(Debug, serde::Deserialize)]
        struct V {
            a: u32,
        }
        let v: V = Cmd::new("echo").arg(r#"{"a": 7}"#).json().unwrap();
        assert_eq!(v.a, 7);
        let err = Cmd::new("echo").arg("nope").json::<V>().unwrap_err();
        assert!(matches!(err, Error::Json { .. }));
    }

    #[test]
    fn stream_splits_on_cr_and_lf() {
        let mut lines = Vec::new();
        Cmd::new("printf")
            .arg("a\rb\nc")
            .stream_stdout(|l| lines.push(l.to_owned()))
            .unwrap();
        assert_eq!(lines, ["a", "b", "c"]);
        let err = Cmd::new("sh")
            .args(["-c", "echo x; echo boom >&2; exit 2"])
            .stream_stdout(|_| {})
            .unwrap_err();
        assert_eq!(err.stderr().map(str::trim), Some("boom"));
    }

    #[test]
    fn status_passes_exit_codes_through() {
        let status = Cmd::new("sh").args(["-c", "exit 7"]).status().unwrap();
        assert_eq!(status.code(), Some(7));
        assert!(Cmd::new("true").status().unwrap().success());
        let err = Cmd::new("/nonexistent/mkfs.vfat").status().unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/mkfs.vfat: not found (install dosfstools)"
        );
        let err = Cmd::new("sleep")
            .arg("10")
            .timeout(Duration::from_millis(100))
            .status()
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    }

    #[test]
    fn status_feeds_stdin_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let status = Cmd::new("sh")
            .args(["-c", "cat > \"$0\""])
            .arg(&out)
            .stdin_bytes("piped")
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "piped");
    }

    #[test]
    fn spawned_child_is_visible_and_killable() {
        let child = Cmd::new("sleep").arg("30").spawn().unwrap();
        let pids = child.pids();
        assert_eq!(pids.len(), 1);
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
        assert!(cmdline.starts_with(b"sleep\0"), "{cmdline:?}");
        assert_eq!(child.try_wait().unwrap(), None);
        child.kill().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(9));
        assert!(child.try_wait().unwrap().is_some());
        let done = Cmd::new("sh").args(["-c", "exit 4"]).spawn().unwrap();
        assert_eq!(done.wait().unwrap().code(), Some(4));
    }

    #[test]
    fn broken_stdout_panic_is_recognised() {
        assert!(is_broken_stdout(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_broken_stdout(
            "failed printing to stdout: No space left"
        ));
        assert!(!is_broken_stdout("index out of bounds"));
    }

    #[test]
    fn exists_looks_on_path() {
        assert!(exists("sh"));
        assert!(!exists("no-such-program-here"));
    }
}
