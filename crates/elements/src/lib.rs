//! diskimage-builder elements: find them, resolve them, and run their phase scripts.
//!
//! An *element* is a directory found on an elements path (dib's `ELEMENTS_PATH`, earlier
//! entries win, then the elements we ship, [`shipped_elements`]). It may hold `element-deps`,
//! `element-provides`, `environment.d/*`, `package-installs.yaml`/`.json`, `pkg-map`,
//! `block-device-default.yaml` and the phase directories of [`Phase`].
//!
//! - [`resolve`] expands the requested elements through `element-deps` and `element-provides`
//!   and checks *everything before anything runs*: missing elements, dependency cycles, a name
//!   provided twice, a requested element that another provides, the missing
//!   `operating-system`, phase files that dib would skip silently because they are not
//!   executable, two elements shipping the same hook, unparsable
//!   `package-installs`/`pkg-map` files, and host programs an element declares in
//!   `host-programs`. All problems come back at once ([`Error::Problems`]), each with the
//!   dependency chain that led to it.
//! - [`Resolved`] answers the questions a build asks: the elements in resolution order, the
//!   merged scripts of a phase in dib's order with install types applied
//!   ([`Resolved::scripts`]), the `environment.d` files, the block-device default. It is
//!   `serde::Serialize`, for `--dry-run --json`.
//! - [`prepare_hooks`] merges every element's files into one hooks directory the way dib's
//!   `generate_hooks` does (dib's `TMP_HOOKS_PATH`), and [`run_phase`] runs one phase from it:
//!   host phases on the host, in-chroot phases chrooted into the target with `/proc`, `/sys`,
//!   `/dev`, `/dev/pts` and the hooks (at `/tmp/in_target.d`) mounted inside a private mount
//!   and PID namespace that dies with us, so not even `kill -9` leaves a mount or a process.
//!   As under dib-run-parts, a phase's scripts run under one shell that first sources the
//!   `environment.d` files; each script has a timeout that kills the phase's whole process
//!   tree, and a failure names element, phase, script, exit status and the last lines of
//!   output.
//!
//! It deliberately does not install packages (`package-installs` are parsed and reported),
//! lay out disks or install bootloaders: the orchestrator does those natively. Nothing here
//! prints: progress goes through a callback ([`ScriptEvent`]).
//!
//! Follows diskimage-builder's `element_dependencies.py`, `lib/common-functions`
//! (`generate_hooks`, `run_d`), `lib/img-functions` (`run_d_in_target`), `lib/dib-run-parts`
//! and the `install-types` element.

use std::path::PathBuf;
use std::time::Duration;

mod env;
mod hooks;
mod order;
mod packages;
mod resolve;
mod run;
mod scan;
mod shipped;

pub use env::{PhasePlan, Plan, environment, plan};
pub use hooks::prepare_hooks;
pub use packages::PackageInstall;
pub use resolve::{
    Element, HOST_PROGRAMS_FILE, OPERATING_SYSTEM, Problem, ProblemKind, ResolveOptions, Resolved,
    Script, SkipReason, Skipped, resolve,
};
pub use run::{
    IN_TARGET_HOOKS, PhaseReport, RunContext, ScriptEvent, ScriptReport, TAIL_LINES, run_phase,
};
pub use shipped::{SHIPPED, ShippedFile, shipped_elements};

/// A dib phase: one directory of scripts in every element, run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(into = "&'static str")]
pub enum Phase {
    /// `root.d`: create or adapt the root tree (host, `TARGET_ROOT` set).
    Root,
    /// `extra-data.d`: bring data into the hooks dir or target (host).
    ExtraData,
    /// `pre-install.d`: prepare package installs (in the chroot).
    PreInstall,
    /// `install.d`: install software (in the chroot); install types apply here.
    Install,
    /// `post-install.d`: configure what was installed (in the chroot).
    PostInstall,
    /// `post-root.d`: work on the finished tree from outside (host).
    PostRoot,
    /// `block-device.d`: adapt the block device (host, `IMAGE_BLOCK_DEVICE` set).
    BlockDevice,
    /// `pre-finalise.d`: before finalising (host).
    PreFinalise,
    /// `finalise.d`: last changes inside the target (in the chroot).
    Finalise,
    /// `cleanup.d`: clean up the tree from outside (host, `TARGET_ROOT` set).
    Cleanup,
}

impl Phase {
    /// Every phase in dib's run order.
    pub const ALL: [Phase; 10] = [
        Phase::Root,
        Phase::ExtraData,
        Phase::PreInstall,
        Phase::Install,
        Phase::PostInstall,
        Phase::PostRoot,
        Phase::BlockDevice,
        Phase::PreFinalise,
        Phase::Finalise,
        Phase::Cleanup,
    ];

    /// The phase's directory name in an element (`root.d`, `install.d`, …).
    pub fn dir(self) -> &'static str {
        match self {
            Phase::Root => "root.d",
            Phase::ExtraData => "extra-data.d",
            Phase::PreInstall => "pre-install.d",
            Phase::Install => "install.d",
            Phase::PostInstall => "post-install.d",
            Phase::PostRoot => "post-root.d",
            Phase::BlockDevice => "block-device.d",
            Phase::PreFinalise => "pre-finalise.d",
            Phase::Finalise => "finalise.d",
            Phase::Cleanup => "cleanup.d",
        }
    }

    /// Whether dib runs this phase chrooted into the target (`run_d_in_target`) rather
    /// than on the host (`run_d`).
    pub fn in_chroot(self) -> bool {
        matches!(
            self,
            Phase::PreInstall | Phase::Install | Phase::PostInstall | Phase::Finalise
        )
    }

    /// The phase whose directory is `dir` (`"install.d"` → [`Phase::Install`]).
    pub fn from_dir(dir: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.dir() == dir)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir())
    }
}

impl From<Phase> for &'static str {
    fn from(p: Phase) -> &'static str {
        p.dir()
    }
}

/// Errors from resolving elements, preparing hooks and running phases.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Resolution found problems; all of them are listed, each with its chain.
    #[error("{} element problem{}:\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, render_problems(.0))]
    Problems(Vec<Problem>),
    /// A script exited unsuccessfully.
    #[error(
        "{element}/{phase}/{script} failed ({status}){}",
        render_tail(last_lines)
    )]
    ScriptFailed {
        /// The element the script belongs to.
        element: String,
        /// Its phase.
        phase: Phase,
        /// The script's file name.
        script: String,
        /// How it ended (`exit status 3`, `signal 9`).
        status: String,
        /// The last lines it printed (stdout and stderr merged), oldest first.
        last_lines: Vec<String>,
    },
    /// A script ran longer than [`RunContext::script_timeout`]; it and every process it
    /// started were killed.
    #[error(
        "{element}/{phase}/{script} timed out after {timeout:?} and was killed with its children{}",
        render_tail(last_lines)
    )]
    ScriptTimedOut {
        /// The element the script belongs to.
        element: String,
        /// Its phase.
        phase: Phase,
        /// The script's file name.
        script: String,
        /// The timeout that passed.
        timeout: Duration,
        /// The last lines it printed, oldest first.
        last_lines: Vec<String>,
    },
    /// The cancel flag was raised; the running script (if any) was killed with its children.
    #[error("cancelled{}", script.as_ref().map(|s| format!(" during {s}")).unwrap_or_default())]
    Cancelled {
        /// `element/phase/script` of the script that was running, if one was.
        script: Option<String>,
    },
    /// A phase file in the hooks dir is missing: [`prepare_hooks`] was not run into
    /// [`RunContext::hooks_dir`].
    #[error("{path}: hook missing (run prepare_hooks into the hooks dir first)")]
    HookMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// The target root for an in-chroot phase is not a directory.
    #[error("{path}: target root is not a directory")]
    NoTarget {
        /// The target root.
        path: PathBuf,
    },
    /// A mount point inside the target is a symlink; mounting on it would follow the link
    /// out of the target, so the phase is refused.
    #[error("{path}: is a symlink; refusing to mount over it")]
    TargetSymlink {
        /// The symlink.
        path: PathBuf,
    },
    /// In-chroot phases need root (mount and PID namespaces, `chroot`).
    #[error("running {phase} in a chroot needs root")]
    NeedsRoot {
        /// The phase.
        phase: Phase,
    },
    /// A file operation failed.
    #[error("{action} {path}")]
    Io {
        /// What we were doing (`reading`, `copying to` …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Before any script ran, the phase's setup failed: sourcing an `environment.d` file
    /// (a `set -u` miss, an arch gate's `exit 1`) or, for in-chroot phases, mounting inside
    /// the target.
    #[error(
        "{phase}: setting up the scripts ({}) failed ({status}){}",
        env_file.as_ref().map_or_else(
            || "environment.d, chroot mounts".to_owned(),
            |f| format!("sourcing environment.d/{f}")
        ),
        render_tail(last_lines)
    )]
    PhaseSetupFailed {
        /// The phase.
        phase: Phase,
        /// The `environment.d` file being sourced when it failed (`None`: before the first,
        /// e.g. a chroot mount).
        env_file: Option<String>,
        /// How it ended.
        status: String,
        /// The last lines printed, oldest first.
        last_lines: Vec<String>,
    },
    /// Starting a phase's process failed.
    #[error("starting {phase}")]
    Spawn {
        /// The phase.
        phase: Phase,
        /// The runner's error.
        #[source]
        source: Box<diskforge_cmd::Error>,
    },
    /// A step failed on purpose (fault-injection builds only, see `diskforge-fault`).
    #[error(transparent)]
    Injected(#[from] diskforge_fault::Injected),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn render_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return "; it printed nothing".to_owned();
    }
    let mut s = format!(
        "; last {} line{}:",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    );
    for l in lines {
        s.push_str("\n    ");
        s.push_str(l);
    }
    s
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_in_dib_order_with_chroot_flags() {
        let v: Vec<_> = Phase::ALL
            .iter()
            .map(|p| {
                format!(
                    "{}{}",
                    p.dir(),
                    if p.in_chroot() { " (chroot)" } else { "" }
                )
            })
            .collect();
        assert_eq!(
            v,
            [
                "root.d",
                "extra-data.d",
                "pre-install.d (chroot)",
                "install.d (chroot)",
                "post-install.d (chroot)",
                "post-root.d",
                "block-device.d",
                "pre-finalise.d",
                "finalise.d (chroot)",
                "cleanup.d",
            ]
        );
        for p in Phase::ALL {
            assert_eq!(Phase::from_dir(p.dir()), Some(p));
        }
        assert_eq!(
            serde_json::to_string(&Phase::Install).unwrap(),
            "\"install.d\""
        );
    }
}
