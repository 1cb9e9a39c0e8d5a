//! Mounts with guards that never leak: plain mounts (fstype, flags, data), bind mounts of a
//! directory or a single file, recursive binds, read-only remounts, propagation changes,
//! overlayfs stacks with any number of lower layers, a [`MountStack`] that unwinds in
//! reverse and reports every failure, and [`in_private_namespace`] for mounts nobody else
//! should see. [`mounts`] reads the mount table; [`mount_users`] names the processes that
//! keep a mount busy; [`signal::TerminationFlag`] lets a tool
//! unwind its guards on SIGINT/SIGTERM.
//!
//! Guards: [`Mount`] and [`OverlayMount`] each own one mount *we* made;
//! `teardown(self)` unmounts and returns errors (retrying `EBUSY` a bounded number of times,
//! [`UNMOUNT_ATTEMPTS`], then failing — or detaching lazily when asked), Drop tries once and
//! logs through `tracing`, `release(self)` leaves the mount in place (for CLIs). Mount points
//! are never created or removed here.
//!
//! Overlay stacks are validated first ([`Overlay::validate`]): each lower exists and is a
//! directory, upper and work exist on one filesystem, work is empty; each error names the
//! path. Stacks whose option string fits in one page go through `mount(2)`; longer ones use
//! the new mount API (`fsopen`/`fsconfig("lowerdir+")`/`fsmount`/`move_mount`, Linux 6.8+),
//! or fail with [`Error::OptionsTooLong`] on older kernels.
//!
//! It does not create filesystems, attach loop devices other than in
//! [`ImageMount::mount`] (which uses `diskforge-loop`), or run `mount(8)`.
//!
//! Follows [mount(2)](https://man7.org/linux/man-pages/man2/mount.2.html),
//! [umount(2)](https://man7.org/linux/man-pages/man2/umount.2.html),
//! [fsopen(2)](https://man7.org/linux/man-pages/man2/fsopen.2.html) and the kernel's
//! [overlayfs documentation](https://docs.kernel.org/filesystems/overlayfs.html).

mod mount;
mod mountinfo;
mod ns;
mod overlay;
pub mod signal;
mod stack;
mod sys;
mod users;

use std::path::PathBuf;

pub use mount::{
    ImageMount, Mount, UNMOUNT_ATTEMPTS, UnmountOptions, detach_lazily, make_private,
    parse_mount_options, remount_read_only, unmount, unmount_recursive,
};
pub use mountinfo::{MountInfo, find_mount, mounts, parse_mountinfo};
pub use ns::in_private_namespace;
pub use overlay::{
    MAX_LOWERS, Overlay, OverlayMethod, OverlayMount, OverlayOptions, RedirectDir, Xino,
};
pub use rustix::mount::MountFlags;
pub use stack::{MountStack, Teardown, TeardownFailure};
pub use users::{MountUser, mount_users};

/// Errors from mounting and unmounting. Each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path the operation needs does not exist.
    #[error("{what} {path} does not exist")]
    NotFound {
        /// Its role: "lower dir", "upper dir", "work dir", "mount source", "mount point".
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A path that must be a directory is not.
    #[error("{what} {path} is not a directory")]
    NotADirectory {
        /// Its role.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A single-file bind needs a file on both sides (and a directory bind, directories).
    #[error("cannot bind {source_path} over {target}: one is a file, the other a directory")]
    BindTypeMismatch {
        /// The bind source.
        source_path: PathBuf,
        /// The mount point.
        target: PathBuf,
    },
    /// Examining a path failed.
    #[error("examining {path}")]
    Stat {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Overlay upper and work dirs must be on the same filesystem.
    #[error("overlay upper dir {upper} and work dir {work} are on different filesystems")]
    DifferentFilesystems {
        /// The upper dir.
        upper: PathBuf,
        /// The work dir.
        work: PathBuf,
    },
    /// The overlay work dir must be empty (or hold only overlayfs's own `work`/`index`).
    #[error("overlay work dir {work} is not empty")]
    WorkNotEmpty {
        /// The work dir.
        work: PathBuf,
    },
    /// The overlay stack is not valid as described.
    #[error("invalid overlay for {target}: {reason}")]
    InvalidOverlay {
        /// The mount point.
        target: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The overlay option string exceeds one page and the kernel lacks `lowerdir+`.
    #[error(
        "overlay on {target}: {lowers} lower dirs need a {len}-byte option string, over the \
         {limit}-byte limit of mount(2), and this kernel rejects fsconfig(lowerdir+) (Linux 6.8+)"
    )]
    OptionsTooLong {
        /// The mount point.
        target: PathBuf,
        /// Number of lower dirs.
        lowers: usize,
        /// Length of the option string.
        len: usize,
        /// The page size.
        limit: usize,
    },
    /// A mount-related syscall failed.
    #[error("{op} {target}{}{}", kernel_log(log), advice(*source))]
    Syscall {
        /// The call and its key arguments, e.g. `mount -t overlay on`.
        op: String,
        /// The mount point (or source) it acted on.
        target: PathBuf,
        /// Messages the kernel left in the fs context (new mount API), if any.
        log: String,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// The mount point stayed busy through every retry.
    #[error(
        "unmounting {target}: still busy after {attempts} attempts (open files or mounts below it)"
    )]
    Busy {
        /// The mount point.
        target: PathBuf,
        /// Attempts made.
        attempts: u32,
    },
    /// Nothing is mounted there.
    #[error("{target} is not a mount point")]
    NotMounted {
        /// The path.
        target: PathBuf,
    },
    /// A loop device step failed (image mounts, stacks holding loop devices).
    #[error(transparent)]
    Loop(#[from] diskforge_loop::Error),
    /// A step failed on purpose (fault-injection builds only, see `diskforge-fault`).
    #[error(transparent)]
    Injected(#[from] diskforge_fault::Injected),
    /// Unwinding a [`MountStack`] failed at one or more steps; every failure is listed.
    #[error("teardown failed at {} step(s): {}", failures.len(), render_failures(failures))]
    Teardown {
        /// Each failed step, in the order they were attempted.
        failures: Vec<TeardownFailure>,
    },
}

fn kernel_log(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (kernel: {log})")
    }
}

fn advice(e: rustix::io::Errno) -> &'static str {
    match e {
        rustix::io::Errno::BUSY => ": busy (open files, a cwd or mounts below it)",
        rustix::io::Errno::PERM | rustix::io::Errno::ACCESS => ": needs root / CAP_SYS_ADMIN",
        rustix::io::Errno::NODEV => ": filesystem type not supported by this kernel",
        _ => "",
    }
}

fn render_failures(f: &[TeardownFailure]) -> String {
    f.iter()
        .map(|f| format!("{}: {}", f.what, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
