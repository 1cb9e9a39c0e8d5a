//! What a run could leave behind, as a comparable snapshot: mounts (from
//! `/proc/self/mountinfo`), loop devices (`/sys/block/loop*/loop/backing_file`), device-mapper
//! tables (`dmsetup ls`, where the kernel has device-mapper), LVs (`lvs`), and the temporary
//! names our tools use under `/tmp` and `/var/tmp`, and processes the corpus marked
//! ([`PROCESS_MARKER`]) that outlived their run.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SystemState {
    /// `kind: object` lines.
    pub objects: BTreeSet<String>,
}

/// Corpus scripts that start children put this in one of their arguments (`bash -c … NAME`),
/// so a child that outlived its build is found by name.
pub const PROCESS_MARKER: &str = "diskforge-canary-hang";

/// Every live process: its pid and `/proc/PID`.
pub(crate) fn processes() -> Vec<(u32, PathBuf)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, e.path()))
        })
        .collect()
}

/// Live processes with [`PROCESS_MARKER`] in an argument: `pid argv…`.
fn marked_processes() -> Vec<String> {
    let mut out = Vec::new();
    for (pid, dir) in processes() {
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if argv.iter().any(|a| a.contains(PROCESS_MARKER)) {
            out.push(format!("{pid} {}", argv.join(" ")));
        }
    }
    out
}

/// Prefixes of the temp names our crates and tools create (tempfile prefixes, state dirs).
pub const TEMP_PREFIXES: &[&str] = &["diskforge", ".diskforge", "dflayers", "iso-remaster", "dib"];

impl SystemState {
    /// Read the current state.
    pub fn capture() -> Self {
        let k = diskforge_testutil::KernelState::capture();
        let mut objects = BTreeSet::new();
        for l in k.loops {
            objects.insert(format!("loop: {l}"));
        }
        for m in k.mounts {
            objects.insert(format!("mount: {m}"));
        }
        if let Ok(out) = std::process::Command::new("dmsetup")
            .args(["ls", "--noheadings"])
            .output()
            && out.status.success()
        {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if !l.trim().is_empty() && !l.contains("No devices found") {
                    objects.insert(format!("dm: {}", l.trim()));
                }
            }
        }
        if let Ok(out) = std::process::Command::new("lvs")
            .args(["--noheadings", "-o", "vg_name,lv_name"])
            .output()
            && out.status.success()
        {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if !l.trim().is_empty() {
                    objects.insert(format!("lv: {}", l.trim()));
                }
            }
        }
        for dir in ["/tmp", "/var/tmp"] {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if TEMP_PREFIXES.iter().any(|p| n.starts_with(p))
                    && !n.starts_with("diskforge-hardening-")
                {
                    objects.insert(format!("temp: {dir}/{n}"));
                }
            }
        }
        for p in marked_processes() {
            objects.insert(format!("process: {p}"));
        }
        SystemState { objects }
    }

    /// What `now` has that `self` had not.
    pub fn leaked_since(&self, now: &SystemState) -> Vec<String> {
        now.objects.difference(&self.objects).cloned().collect()
    }
}
