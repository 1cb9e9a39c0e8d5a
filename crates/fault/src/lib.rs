//! One fault-injection hook for every diskforge crate.
//!
//! Every step that creates kernel state (a loop device, a mount, an LV) or writes a file calls
//! [`point`] with a stable step name *before* it acts, and turns the `Err` into its own error
//! type. Without the `inject` feature (the default, and every release build) [`point`] is an
//! inline `Ok(())`. With it, the process counts the points it passes (from 0) and:
//!
//! - `DISKFORGE_FAIL_AT=N` or `=NAME` fails the N-th point, or the first point called NAME
//!   (`NAME#K`: its K-th occurrence, from 0) with [`Injected`];
//! - `DISKFORGE_KILL_AT=N|NAME|NAME#K` sends the process SIGKILL there instead (what survives
//!   a `kill -9` at that exact step);
//! - `DISKFORGE_SIGNAL_AT=SPEC:INT` or `=SPEC:TERM` (SPEC as above) sends the process SIGINT or
//!   SIGTERM there and carries on: the tool's own handler decides what happens (an orderly
//!   unwind at its next cancellation check, exit 130 or 143);
//! - `DISKFORGE_FAULT_LOG=FILE` appends one line `INDEX<TAB>NAME` per point passed, so a
//!   driver can enumerate a run's steps and then fail each in turn.
//!
//! `cargo xtask hardening` builds the tools with `--features fault-injection` (which turns on
//! `diskforge-fault/inject`) and drives them this way.

/// A step that failed on purpose.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {index} `{name}` failed on purpose (fault injection, DISKFORGE_FAIL_AT)")]
pub struct Injected {
    /// The step's name as given to [`point`].
    pub name: String,
    /// The step's position among the points this process passed, from 0.
    pub index: usize,
}

/// True when this build honours the fault-injection variables.
pub const ENABLED: bool = cfg!(feature = "inject");

/// A step about to run. `Err` only in fault-injection builds, when told to fail here.
#[inline]
pub fn point(name: &str) -> Result<(), Injected> {
    #[cfg(feature = "inject")]
    {
        imp::point(name)
    }
    #[cfg(not(feature = "inject"))]
    {
        let _ = name;
        Ok(())
    }
}

/// The signal a `DISKFORGE_SIGNAL_AT` value asks for, and its point selection: `SPEC:INT` →
/// `(SPEC, 2)`, `SPEC:TERM` → `(SPEC, 15)`; `None` for anything else.
pub fn signal_spec(value: &str) -> Option<(&str, i32)> {
    let (spec, sig) = value.trim().rsplit_once(':')?;
    let sig = match sig.trim_start_matches("SIG") {
        "INT" => 2,
        "TERM" => 15,
        _ => return None,
    };
    Some((spec, sig))
}

/// Whether `spec` (`N`, `NAME` or `NAME#K`) selects the point `name`, the `index`-th point of
/// the process and the `occurrence`-th of that name.
pub fn matches(spec: &str, name: &str, index: usize, occurrence: usize) -> bool {
    let spec = spec.trim();
    if let Ok(n) = spec.parse::<usize>() {
        return n == index;
    }
    match spec.rsplit_once('#') {
        Some((n, k)) if k.parse::<usize>().is_ok() => n == name && k.parse() == Ok(occurrence),
        _ => spec == name && occurrence == 0,
    }
}

#[cfg(feature = "inject")]
mod imp {
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::sync::Mutex;

    use super::{Injected, matches};

    struct Counter {
        next: usize,
        seen: HashMap<String, usize>,
    }

    static COUNTER: Mutex<Option<Counter>> = Mutex::new(None);

    pub(super) fn point(name: &str) -> Result<(), Injected> {
        let (index, occurrence) = {
            let mut g = COUNTER.lock().unwrap_or_else(|e| e.into_inner());
            let c = g.get_or_insert_with(|| Counter {
                next: 0,
                seen: HashMap::new(),
            });
            let index = c.next;
            c.next += 1;
            let occ = c.seen.entry(name.to_owned()).or_insert(0);
            let occurrence = *occ;
            *occ += 1;
            (index, occurrence)
        };
        if let Some(log) = std::env::var_os("DISKFORGE_FAULT_LOG")
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
        {
            // One write per line: concurrent threads and processes don't interleave.
            let _ = f.write_all(format!("{index}\t{name}\n").as_bytes());
        }
        if let Ok(spec) = std::env::var("DISKFORGE_KILL_AT")
            && matches(&spec, name, index, occurrence)
        {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
        if let Ok(v) = std::env::var("DISKFORGE_SIGNAL_AT")
            && let Some((spec, sig)) = super::signal_spec(&v)
            && matches(spec, name, index, occurrence)
        {
            let sig = if sig == 2 {
                rustix::process::Signal::INT
            } else {
                rustix::process::Signal::TERM
            };
            let _ = rustix::process::kill_process(rustix::process::getpid(), sig);
        }
        match std::env::var("DISKFORGE_FAIL_AT") {
            Ok(spec) if matches(&spec, name, index, occurrence) => Err(Injected {
                name: name.to_owned(),
                index,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_select_by_index_name_and_occurrence() {
        assert!(matches("3", "loop.attach", 3, 0));
        assert!(!matches("3", "loop.attach", 2, 0));
        assert!(matches("loop.attach", "loop.attach", 7, 0));
        assert!(!matches("loop.attach", "loop.attach", 8, 1));
        assert!(matches("loop.attach#1", "loop.attach", 8, 1));
        assert!(!matches("loop.attach#1", "mount", 8, 1));
        assert!(!matches("mount", "loop.attach", 0, 0));
    }

    #[test]
    fn signal_specs_name_int_or_term() {
        assert_eq!(signal_spec("loop.attach:INT"), Some(("loop.attach", 2)));
        assert_eq!(signal_spec("3:TERM"), Some(("3", 15)));
        assert_eq!(signal_spec("mount#1:SIGTERM"), Some(("mount#1", 15)));
        assert_eq!(signal_spec("mount:KILL"), None);
        assert_eq!(signal_spec("mount"), None);
    }

    #[cfg(not(feature = "inject"))]
    #[test]
    fn without_the_feature_nothing_fails() {
        assert_eq!(point("anything"), Ok(()));
        const { assert!(!ENABLED) };
    }
}
