//! Which processes keep a mount busy (what `fuser -v` shows, limited to one mount point and
//! the mounts below it): each process whose working directory, root, executable, open files
//! or mapped files lie under the mount point. Read from `/proc/PID/{cwd,root,exe,fd/*,maps}`
//! (proc(5)); processes that vanish or that we may not inspect are skipped, so the list is a
//! best-effort diagnosis for error messages, not a guarantee.

use std::path::{Path, PathBuf};

/// A process using something under a mount point.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MountUser {
    /// Process id.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub command: String,
    /// How it uses the mount: `cwd`, `root`, `exe`, `open FILE`, `mapped FILE`.
    pub uses: Vec<String>,
}

impl std::fmt::Display for MountUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} ({}): {}",
            self.pid,
            self.command,
            self.uses.join(", ")
        )
    }
}

/// The processes using `target` or anything below it, by pid.
pub fn mount_users(target: impl AsRef<Path>) -> Vec<MountUser> {
    let target = target.as_ref();
    let target = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_owned());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut users: Vec<MountUser> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| user(pid, &target))
        .collect();
    users.sort_by_key(|u| u.pid);
    users
}

fn user(pid: u32, target: &Path) -> Option<MountUser> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let under = |p: &Path| p.starts_with(target);
    let mut uses = Vec::new();
    for link in ["cwd", "root", "exe"] {
        if let Ok(p) = std::fs::read_link(dir.join(link))
            && under(&p)
            // Every process's root is "/": only a root inside the mount counts.
            && !(link == "root" && p == Path::new("/"))
        {
            uses.push(link.to_owned());
        }
    }
    if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
        let mut open: Vec<PathBuf> = fds
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|p| under(p))
            .collect();
        open.sort();
        open.dedup();
        uses.extend(open.iter().map(|p| format!("open {}", p.display())));
    }
    if let Ok(maps) = std::fs::read_to_string(dir.join("maps")) {
        let mut mapped: Vec<&str> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| under(Path::new(p)))
            .collect();
        mapped.sort();
        mapped.dedup();
        uses.extend(mapped.iter().map(|p| format!("mapped {p}")));
    }
    if uses.is_empty() {
        return None;
    }
    let command = std::fs::read_to_string(dir.join("comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default();
    Some(MountUser { pid, command, uses })
}
