//! The crate's one error type.

use std::path::PathBuf;

/// Errors from unpacking, stacking, committing and comparing layers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What we were doing ("reading", "creating directory" …).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed; the errno is kept typed.
    #[error("{action} {}", path.display())]
    Sys {
        /// The call and its purpose ("mknodat whiteout" …).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// A tar entry was refused because it could write outside the layer (or is malformed).
    #[error("refusing entry {entry:?} of {archive}: {reason}")]
    UnsafeEntry {
        /// The archive (file name or digest).
        archive: String,
        /// The entry's path as written in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// An entry or the whole archive is larger than the configured [`crate::Limits`].
    #[error("refusing entry {entry:?} of {archive}: {what} {size} exceeds the limit {limit}")]
    TooLarge {
        /// The archive.
        archive: String,
        /// The entry that crossed the limit.
        entry: String,
        /// Which limit ("entry size", "total size", "entry count").
        what: &'static str,
        /// The size (or count) that was asked for.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A blob's content does not hash to its digest.
    #[error("digest mismatch for {}: expected {expected}, got {actual}", path.display())]
    DigestMismatch {
        /// The blob (or layer) file.
        path: PathBuf,
        /// The digest the manifest/config names.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
    /// An OCI layout is malformed or lacks what was asked for.
    #[error("OCI layout {}: {reason}", path.display())]
    Oci {
        /// The layout directory (or the file inside it).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An OCI JSON document could not be read or written.
    #[error("OCI document {}", path.display())]
    OciSpec {
        /// The document.
        path: PathBuf,
        /// The parse/serialise error.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// Something in an input is valid but not supported here.
    #[error("{}: {reason}", path.display())]
    Unsupported {
        /// The file involved.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },
    /// A layer source is not a directory, a tarball or an OCI layout.
    #[error("layer source {spec:?}: {reason}")]
    BadSource {
        /// The source as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// Mounting or unmounting failed.
    #[error("{action}")]
    Mount {
        /// What we were doing.
        action: String,
        /// The mount crate's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The command run inside the stack could not be started or failed.
    #[error("running the command in the stack")]
    Command(#[source] diskforge_cmd::Error),
    /// Several teardown steps failed; every failure is listed.
    #[error("teardown failed: {}", .0.join("; "))]
    Teardown(Vec<String>),
    /// A step failed on purpose (fault-injection builds only, see `diskforge-fault`).
    #[error(transparent)]
    Injected(#[from] diskforge_fault::Injected),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sys(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: rustix::io::Errno,
    ) -> Self {
        Error::Sys {
            action,
            path: path.into(),
            source,
        }
    }

    /// Whether the error is a refusal of hostile or oversized input (the tool's exit code 3).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::UnsafeEntry { .. } | Error::TooLarge { .. } | Error::DigestMismatch { .. }
        )
    }
}
