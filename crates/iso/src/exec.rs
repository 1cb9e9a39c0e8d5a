//! External programs (xorriso, osirrox, rsync, mtools) through `diskforge-cmd`, each with a
//! timeout, bounded output, and a stop within 100 ms when the run is cancelled
//! ([`crate::cancel`]). A failure becomes one line ([`crate::Error::Tool`]: the step, the
//! program, its status and the line that says why); the whole transcript is kept in the
//! error for `--verbose` and logged at debug level.

use std::time::{Duration, Instant};

use diskforge_cmd::{Cmd, NextLine};

use crate::{Error, Result};

/// Most stdout bytes kept; a program that prints more is killed (xorriso looping on a
/// hostile tree prints without end).
pub(crate) const MAX_STDOUT: usize = 4 << 20;
/// How often the cancel flag and the deadline are checked.
const POLL: Duration = Duration::from_millis(50);

/// Timeout for quick queries (a report, an mtools call).
pub(crate) const QUICK: Duration = Duration::from_secs(120);
/// Timeout for a whole extract or rebuild (a hang, not a slow disk, should hit it).
pub(crate) const LONG: Duration = Duration::from_secs(3 * 3600);

/// Run `cmd` for `step` (a short action: "rebuilding with xorriso"); its stdout.
pub(crate) fn run(step: &'static str, cmd: Cmd, timeout: Duration) -> Result<String> {
    crate::cancel::check()?;
    let argv = cmd.display();
    let mut child = cmd.spawn_streaming()?;
    let deadline = Instant::now() + timeout;
    let mut stdout = String::new();
    let fail = |reason: String, stdout: &str, stderr: &str, status: String| {
        let transcript = format!("$ {argv}\n{stdout}{stderr}");
        tracing::debug!(step, %transcript, "external program failed");
        Error::Tool {
            step,
            program: cmd.program(),
            status,
            reason,
            transcript,
        }
    };
    let mut closed = false;
    loop {
        // Dropping the child kills and reaps it.
        crate::cancel::check()?;
        let now = Instant::now();
        if now >= deadline {
            let fin = child.finish(Duration::ZERO)?;
            return Err(fail(
                format!("no result after {} s (killed)", timeout.as_secs()),
                &stdout,
                &fin.stderr,
                "timed out".into(),
            ));
        }
        if closed {
            if child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(POLL.min(deadline - now));
            continue;
        }
        match child.next_line((now + POLL).min(deadline)) {
            NextLine::Line(l) => {
                if stdout.len() + l.len() + 1 > MAX_STDOUT {
                    let fin = child.finish(Duration::ZERO)?;
                    return Err(fail(
                        format!("printed more than {} MiB (killed)", MAX_STDOUT >> 20),
                        &stdout,
                        &fin.stderr,
                        "killed".into(),
                    ));
                }
                stdout.push_str(&l);
                stdout.push('\n');
            }
            NextLine::TimedOut => {}
            NextLine::Closed => closed = true,
        }
    }
    let fin = child.finish(Duration::ZERO)?;
    tracing::debug!(step, argv = %argv, stderr = %fin.stderr, "finished");
    if !fin.status.success() {
        let reason = why(&fin.stderr, &stdout);
        return Err(fail(reason, &stdout, &fin.stderr, fin.status.to_string()));
    }
    Ok(stdout)
}

/// The line of a transcript that says why: xorriso's last `FATAL`/`FAILURE`/`SORRY` event
/// (without its `xorriso : ` prefix), else the last non-empty line; at most 200 characters.
pub(crate) fn why(stderr: &str, stdout: &str) -> String {
    let lines: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let severe = ["FATAL", "ABORT", "FAILURE", "SORRY"]
        .iter()
        .find_map(|sev| {
            lines
                .iter()
                .rev()
                .find(|l| l.contains(&format!(": {sev} :")) || l.starts_with(sev))
        });
    let line = severe
        .or(lines.last())
        .map(|l| {
            let l = l.strip_prefix("xorriso : ").unwrap_or(l);
            let l = l.strip_prefix("libisofs: ").unwrap_or(l);
            l.to_owned()
        })
        .unwrap_or_else(|| "no message".to_owned());
    let mut end = line.len().min(200);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_from_a_xorriso_transcript() {
        let t = "xorriso 1.5.4 : RockRidge filesystem manipulator\n\
                 Drive current: -indev 'x.iso'\n\
                 xorriso : SORRY : Cannot enable EL Torito boot image\n\
                 xorriso : FAILURE : Cannot read ISO image tree\n\
                 xorriso : aborting : -abort_on 'FAILURE' encountered 'FAILURE'\n";
        assert_eq!(why(t, ""), "FAILURE : Cannot read ISO image tree");
        assert_eq!(why("", "a\n\nlast line\n"), "last line");
        assert_eq!(why("", ""), "no message");
    }

    #[test]
    fn failure_is_one_line_with_the_transcript_kept() {
        let e = run(
            "testing",
            Cmd::new("sh").args(["-c", "echo out; echo 'boom' >&2; exit 3"]),
            QUICK,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("testing") && msg.contains("boom"), "{msg}");
        let Error::Tool { transcript, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(transcript.contains("out") && transcript.contains("sh -c"));
    }

    #[test]
    fn timeout_and_unbounded_output_kill_the_program() {
        let t = Instant::now();
        let e = run(
            "sleeping",
            Cmd::new("sleep").arg("30"),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(e.to_string().contains("killed"), "{e}");
        let e = run("yes", Cmd::new("yes"), QUICK).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }

    #[test]
    fn cancel_stops_the_program() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        let flag = Arc::new(AtomicUsize::new(0));
        let _g = crate::cancel::install(Some(Arc::clone(&flag)));
        let f2 = Arc::clone(&flag);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            f2.store(2, std::sync::atomic::Ordering::Relaxed);
        });
        let t = Instant::now();
        let e = run("sleeping", Cmd::new("sleep").arg("30"), QUICK).unwrap_err();
        assert!(matches!(e, Error::Interrupted { signal: 2 }), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
