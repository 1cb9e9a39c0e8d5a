//! Inspect and remaster bootable ISO 9660 images without mounting them.
//!
//! - [`inspect()`]: volume ids, the primary (Rock Ridge) and Joliet trees, the El Torito boot
//!   catalog (BIOS and UEFI entries, emulation, load size, boot image path or hidden image),
//!   the isohybrid MBR/GPT, and the implanted isomd5sum fields. Our own reader
//!   ([`iso9660`], [`boot`]); nothing is mounted and no root is needed.
//! - [`isomd5`]: the `implantisomd5`/`checkisomd5` format, computed while bytes stream.
//! - [`remaster()`]: add/replace/remove files, set the volume id, add a kickstart/preseed and
//!   kernel arguments to every boot entry (also inside the EFI FAT image, via mtools), in
//!   patch, direct, copy, overlay or bind mode (see [`Mode`] for how each works).
//!
//! It follows ECMA-119 (ISO 9660), Rock Ridge (RRIP 1.12 over SUSP 1.12), Joliet, the El
//! Torito 1.0 specification, UEFI 2.x for GPT, and rhinstaller/isomd5sum for the MD5. It does
//! not write ISO 9660 trees from scratch (xorriso does that) and does not mount anything
//! itself outside the kernel modes, which go through `diskforge-loop`/`diskforge-mount`.

use std::path::{Path, PathBuf};

// Public: what users read or call. The rest is how remastering works inside; its layers
// (leaf first): cancel, md5core, iso9660 → exec, boot, isomd5, bootcfg → grubimg, fat,
// inspect → request, changes → patch → output → resolve, replay, rebuild → kernel →
// remaster (checked by xtask's tidy test for import cycles).
pub mod boot;
pub mod bootcfg;
mod cancel;
mod changes;
mod exec;
mod fat;
mod grubimg;
pub mod inspect;
pub mod iso9660;
pub mod isomd5;
mod kernel;
mod md5core;
mod output;
mod patch;
mod rebuild;
mod remaster;
mod replay;
mod request;
mod resolve;

pub use inspect::{Inspection, inspect};
pub use isomd5::Md5Sums;
pub use output::{RUN_DIR_PREFIX, cleanup};
pub use remaster::{Outcome, Step, remaster};
pub use request::{Edit, Event, Mode, Request};

/// Errors from reading or remastering an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call on a file failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What we were doing ("reading", "writing", …).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ISO 9660 image.
    #[error("{}: not an ISO 9660 image: {reason}", path.display())]
    NotIso {
        /// The file.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A structure in the image is inconsistent.
    #[error("{}: malformed at byte {offset}: {what}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Byte offset of the structure.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The image's directory tree cannot be trusted (see [`iso9660::Problem`]): refused
    /// before anything is read through another program or written.
    #[error("{}: refusing a damaged or hostile image: {first}{}", path.display(), if *more > 0 { format!(" (and {more} more problems; see `iso-remaster inspect`)") } else { String::new() })]
    Hostile {
        /// The file.
        path: PathBuf,
        /// The first problem found.
        first: String,
        /// How many more there are.
        more: usize,
    },
    /// The image carries no implanted MD5.
    #[error("{}: no implanted MD5 (ISO MD5SUM in the application area)", path.display())]
    NoMd5 {
        /// The file.
        path: PathBuf,
    },
    /// A command-line value or request field is wrong.
    #[error("{what} {value:?}: {reason}")]
    BadValue {
        /// The flag or field.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Patch mode was asked for (or editing in place) but an edit does not fit.
    #[error("patch mode cannot apply the edits: {reason}")]
    DoesNotFit {
        /// The first edit that does not fit, and why.
        reason: String,
    },
    /// A mode cannot run here (no root, no iso9660 in the kernel, …).
    #[error("mode {mode} is not available here: {reason}")]
    ModeUnavailable {
        /// The mode.
        mode: String,
        /// Why.
        reason: String,
    },
    /// The output's El Torito entries or MBR/GPT differ from the input's.
    #[error("{}: boot setup changed (before {before:?}, after {after:?})", output.display())]
    BootChanged {
        /// The output checked.
        output: PathBuf,
        /// The input's boot entries.
        before: Vec<String>,
        /// The output's boot entries.
        after: Vec<String>,
    },
    /// Mounting or unmounting in a kernel route failed.
    #[error("mode {mode}")]
    Kernel {
        /// The mode.
        mode: String,
        /// The mount error.
        #[source]
        source: diskforge_mount::Error,
    },
    /// An external program could not be started.
    #[error(transparent)]
    Cmd(#[from] diskforge_cmd::Error),
    /// An external program failed, timed out or printed without end: one line saying why;
    /// the transcript is in [`Error::transcript`] (and logged at debug level).
    #[error("{step}: {program} {status}: {reason}")]
    Tool {
        /// What we were doing ("rebuilding the image with xorriso", …).
        step: &'static str,
        /// The program.
        program: String,
        /// Its exit status, or "timed out"/"killed".
        status: String,
        /// The line of its output that says why.
        reason: String,
        /// The command line and everything it printed (stderr bounded to its tail).
        transcript: String,
    },
    /// The rebuilt output lacks files the input has (a read error the kernel's view or a
    /// program passed over): nothing was published.
    #[error("{}: {count} files of the input are missing from the rebuilt image (first: {}); the mounted view or the copy could not read them", output.display(), first.join(", "))]
    Incomplete {
        /// The output that was checked (not published).
        output: PathBuf,
        /// How many paths are missing.
        count: usize,
        /// The first few.
        first: Vec<String>,
    },
    /// A termination signal (or the caller's [`Request::cancel`]) stopped the run; its
    /// temporary files were removed and nothing was published.
    #[error("interrupted by signal {signal}; temporary files removed, no output written")]
    Interrupted {
        /// The signal number (the value the cancel flag was set to).
        signal: i32,
    },
    /// `--volid` would leave a boot path naming the old volume id (a GRUB EFI binary whose
    /// built-in config cannot be rewritten in place, a signed binary, …).
    #[error(
        "--volid: {file} names the old volume id {old:?} and cannot be rewritten: {reason} (use --force to write the image anyway)"
    )]
    VolidUnsafe {
        /// The file (in the ISO tree, or `IMAGE::PATH` inside an EFI FAT image).
        file: String,
        /// The old volume id.
        old: String,
        /// Why it cannot be rewritten.
        reason: String,
    },
    /// A step failed on purpose (fault-injection builds only, see `diskforge-fault`).
    #[error(transparent)]
    Injected(#[from] diskforge_fault::Injected),
}

impl Error {
    /// The external program's transcript (command line and output), for `--verbose`.
    pub fn transcript(&self) -> Option<&str> {
        match self {
            Error::Tool { transcript, .. } => Some(transcript),
            _ => None,
        }
    }
}

impl Error {
    /// A [`Error::BadValue`].
    pub(crate) fn bad(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::BadValue {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
