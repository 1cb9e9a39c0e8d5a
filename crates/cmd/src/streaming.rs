//! Long-running children whose stdout is read line by line while they run.
//!
//! [`crate::Cmd::spawn_streaming`] starts the program with stdin null (or the
//! [`crate::Cmd::stdin_bytes`] data), stdout piped into a reader thread that hands complete
//! lines to [`StreamingChild::next_line`], and stderr captured by a second thread (its tail goes
//! into [`crate::Error::Failed`]). The child dies with us (`PR_SET_PDEATHSIG`) and with its
//! guard: dropping a [`StreamingChild`] kills and reaps it, so every early return of the caller
//! cleans up. [`StreamingChild::finish`] is the explicit end: wait (bounded) or kill, reap, and
//! return the status with the captured stderr.
//!
//! Written for QEMU's serial console on stdout (`-serial stdio`), where a guest that hangs
//! prints nothing: the caller needs deadlines on every read, which a blocking `read` lacks.

use std::io::{BufRead, BufReader, Read};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Cmd, Error, Result, stderr_tail};

/// How much stderr a streaming child keeps (the head is dropped beyond this).
const STDERR_KEEP_BYTES: usize = 64 * 1024;
/// Poll interval while waiting for a child to exit with a deadline.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// What [`StreamingChild::next_line`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextLine {
    /// A line of stdout, without its `\n` (and without a trailing `\r`).
    Line(String),
    /// The deadline passed with no new line.
    TimedOut,
    /// Stdout is closed (the program exited or closed it); no more lines will come.
    Closed,
}

/// How a [`StreamingChild`] ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// We killed it (rather than it exiting by itself).
    pub killed: bool,
    /// The tail of its stderr.
    pub stderr: String,
    /// The program (for [`Finished::error`]).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl Finished {
    /// [`Error::Failed`] with this status and stderr (stdout was streamed to the caller, so
    /// it is empty here).
    pub fn error(&self) -> Error {
        Error::Failed {
            program: self.program.clone(),
            args: self.args.clone(),
            status: self.status,
            stderr: self.stderr.clone(),
            stdout: String::new(),
        }
    }
}

/// A running program with stdout streamed as lines and stderr captured; a guard that kills
/// and reaps the program when dropped. See the module docs.
#[derive(Debug)]
#[must_use = "dropping the guard kills the program at once"]
pub struct StreamingChild {
    child: Option<std::process::Child>,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    cmd: Cmd,
}

impl Cmd {
    /// Start the program for [`StreamingChild::next_line`] reads of its stdout. Stdin is null
    /// unless [`Cmd::stdin_bytes`] gave data; [`Cmd::timeout`] does not apply (the caller
    /// owns the deadlines).
    #[allow(clippy::disallowed_methods)] // this crate is the one place allowed to spawn
    pub fn spawn_streaming(&self) -> Result<StreamingChild> {
        tracing::debug!(argv = %self.display(), "spawn (streaming)");
        let mut c = std::process::Command::new(&self.program);
        c.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        crate::set_pdeathsig(&mut c);
        let mut child = c.spawn().map_err(|e| self.spawn_error(e))?;
        // From here on the guard owns the child: any early return kills and reaps it.
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take();
        let stderr_pipe = child.stderr.take();
        let stdin_pipe = child.stdin.take();
        let mut guard = StreamingChild {
            child: Some(child),
            lines,
            stderr: None,
            cmd: self.clone(),
        };
        let thread_err = |e| Error::Io {
            program: self.program(),
            source: e,
        };
        if let (Some(mut pipe), Some(bytes)) = (stdin_pipe, self.stdin.clone()) {
            std::thread::Builder::new()
                .name("cmd-stdin".into())
                .spawn(move || {
                    use std::io::Write;
                    // A child that stops reading early is not our error; its status tells.
                    let _ = pipe.write_all(&bytes);
                })
                .map_err(thread_err)?;
        }
        if let Some(out) = stdout {
            std::thread::Builder::new()
                .name("cmd-stdout".into())
                .spawn(move || send_lines(out, &tx))
                .map_err(thread_err)?;
        }
        if let Some(err) = stderr_pipe {
            guard.stderr = Some(
                std::thread::Builder::new()
                    .name("cmd-stderr".into())
                    .spawn(move || keep_tail(err, STDERR_KEEP_BYTES))
                    .map_err(thread_err)?,
            );
        }
        Ok(guard)
    }
}

/// Forward complete lines of `r` until EOF or until nobody listens.
fn send_lines(r: impl Read, tx: &mpsc::Sender<String>) {
    for line in BufReader::new(r).split(b'\n') {
        let Ok(mut bytes) = line else { break };
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if tx
            .send(String::from_utf8_lossy(&bytes).into_owned())
            .is_err()
        {
            break;
        }
    }
}

/// Read `r` to EOF keeping at most the last `keep` bytes.
fn keep_tail(mut r: impl Read, keep: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * keep {
                    kept.drain(..kept.len() - keep);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if kept.len() > keep {
        kept.drain(..kept.len() - keep);
    }
    kept
}

impl StreamingChild {
    /// The program's process id (None once reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// The next line of stdout, waiting until `deadline` at most.
    pub fn next_line(&mut self, deadline: Instant) -> NextLine {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => NextLine::Line(l),
            Err(mpsc::RecvTimeoutError::Timeout) => NextLine::TimedOut,
            Err(mpsc::RecvTimeoutError::Disconnected) => NextLine::Closed,
        }
    }

    /// The exit status if the program has exited, without blocking (None once reaped by
    /// [`StreamingChild::finish`]).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let Some(c) = self.child.as_mut() else {
            return Ok(None);
        };
        c.try_wait().map_err(|e| self.cmd.spawn_error(e))
    }

    /// Wait up to `grace` for the program to exit by itself, kill it if it has not, reap it
    /// and return its status with the captured stderr.
    pub fn finish(mut self, grace: Duration) -> Result<Finished> {
        let deadline = Instant::now() + grace;
        let mut killed = false;
        let status = loop {
            if let Some(s) = self.try_wait()? {
                break s;
            }
            if Instant::now() >= deadline {
                killed = true;
                break self.kill_and_reap()?;
            }
            std::thread::sleep(EXIT_POLL);
        };
        self.child = None;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok(Finished {
            status,
            killed,
            stderr: stderr_tail(&stderr),
            program: self.cmd.program(),
            args: self.cmd.arg_strings(),
        })
    }

    /// Kill (SIGKILL) and reap the program; its status.
    fn kill_and_reap(&mut self) -> Result<ExitStatus> {
        let Some(c) = self.child.as_mut() else {
            return Err(Error::Io {
                program: self.cmd.program(),
                source: std::io::Error::other("already reaped"),
            });
        };
        // It may have exited between the last try_wait and now; wait tells either way.
        let _ = c.kill();
        c.wait().map_err(|e| self.cmd.spawn_error(e))
    }
}

impl Drop for StreamingChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            if let Err(e) = c.wait() {
                tracing::warn!(program = %self.cmd.program(), error = %e, "reaping a dropped child");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn lines_arrive_while_running_and_stderr_is_kept() {
        let mut c = Cmd::new("sh")
            .args([
                "-c",
                "printf 'a\\r\\nb\\n'; echo oops >&2; sleep 0.2; printf c",
            ])
            .spawn_streaming()
            .unwrap();
        assert_eq!(c.next_line(far()), NextLine::Line("a".into()));
        assert_eq!(c.next_line(far()), NextLine::Line("b".into()));
        assert_eq!(c.next_line(far()), NextLine::Line("c".into()));
        assert_eq!(c.next_line(far()), NextLine::Closed);
        let f = c.finish(Duration::from_secs(5)).unwrap();
        assert!(f.status.success() && !f.killed);
        assert_eq!(f.stderr.trim(), "oops");
    }

    #[test]
    fn silent_child_times_out_then_is_killed() {
        let start = Instant::now();
        let mut c = Cmd::new("sleep").arg("30").spawn_streaming().unwrap();
        assert_eq!(
            c.next_line(Instant::now() + Duration::from_millis(100)),
            NextLine::TimedOut
        );
        let f = c.finish(Duration::from_millis(50)).unwrap();
        assert!(f.killed);
        assert_eq!(f.status.signal(), Some(9));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn drop_kills_and_reaps() {
        let c = Cmd::new("sleep").arg("30").spawn_streaming().unwrap();
        let pid = c.pid().unwrap();
        drop(c);
        // Reaped: no zombie left under our pid.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn failure_error_shows_stderr_and_missing_program_names_package() {
        let mut c = Cmd::new("sh")
            .args(["-c", "echo 'qemu: bad option' >&2; exit 1"])
            .spawn_streaming()
            .unwrap();
        assert_eq!(c.next_line(far()), NextLine::Closed);
        let f = c.finish(Duration::from_secs(5)).unwrap();
        let msg = f.error().to_string();
        assert!(msg.ends_with("qemu: bad option"), "{msg}");
        let err = Cmd::new("/nonexistent/qemu-system-x86_64")
            .spawn_streaming()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/qemu-system-x86_64: not found (install qemu-system-x86)"
        );
    }

    #[test]
    fn stdin_bytes_are_fed() {
        let mut c = Cmd::new("cat")
            .stdin_bytes("x\ny\n")
            .spawn_streaming()
            .unwrap();
        assert_eq!(c.next_line(far()), NextLine::Line("x".into()));
        assert_eq!(c.next_line(far()), NextLine::Line("y".into()));
        assert_eq!(c.next_line(far()), NextLine::Closed);
        assert!(c.finish(Duration::from_secs(5)).unwrap().status.success());
    }

    #[test]
    fn tail_keeps_the_end() {
        let data: Vec<u8> = (0..100u8).collect();
        assert_eq!(keep_tail(&data[..], 10), (90..100u8).collect::<Vec<_>>());
    }
}
