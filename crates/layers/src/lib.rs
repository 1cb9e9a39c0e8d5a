//! Overlay layer stacks and OCI image layers: unpack, stack, run, commit, diff and squash.
//!
//! What it does:
//! - [`Store`] unpacks layer tarballs (`.tar`, `.tar.gz`, `.tar.zst`, recognised by their magic
//!   bytes) and the layers of OCI image layouts (`index.json` → manifest → layers, every blob's
//!   sha256 verified, diff_ids checked against the image config) once into a content-addressed
//!   directory keyed by the layer's diff_id. OCI whiteouts become overlayfs whiteouts
//!   (`.wh.NAME` → character device 0/0, `.wh..wh..opq` → `trusted.overlay.opaque=y`); owners,
//!   modes, xattrs, hardlinks, device nodes, symlinks and mtimes are preserved.
//! - Unpacking is hostile-input safe: entries with `..` or absolute paths, symlinks whose
//!   relative target climbs out of the layer, hardlinks to anything outside it, and entries
//!   that pass through a symlink are refused with an error naming the entry. Every write is
//!   made relative to a directory file descriptor with `O_NOFOLLOW` (openat-style), so a
//!   symlink created by the layer is never followed. Sizes are bounded by [`Limits`].
//! - [`Store::stack`] turns an image's layers into the lower dirs that show it exactly as
//!   applying the layers in order would (`umoci unpack`): repeated layers once, nothing
//!   below an opaque root, and a fix-up layer giving directories that a layer only implies
//!   the metadata from below. Streams without end blocks, sparse members, FIFOs with NUL
//!   device fields and whiteouts under replaced parents are read as GNU tar and umoci do.
//!   Leftovers of killed unpacks are removed at the next [`Store::open`] ([`Store::gc`]).
//! - [`write_layer`] turns an overlay upper dir back into an OCI layer tarball (whiteouts and
//!   opaque dirs become `.wh.` entries), reproducibly under `SOURCE_DATE_EPOCH`;
//!   [`oci::append_image`] adds such a layer to an OCI layout as a new image.
//! - [`merged_tree`] computes the union of a stack without mounting; [`squash`] writes it as
//!   one tarball and [`diff`] reports what an upper dir changes relative to its lowers.
//! - [`mount_stack`] mounts a stack with `diskforge-mount` (many lowers, past the one-page
//!   option limit) and [`run_in_stack`] runs a command chrooted into it in a private mount
//!   namespace with `/proc`, `/sys` and `/dev` (output line by line, stdin null;
//!   [`run_in_stack_interactive`] passes our stdin/stdout/stderr through instead).
//!
//! What it does not do: pull from registries (use `skopeo copy` to get an OCI layout), run
//! containers with cgroups/user namespaces, or handle `redirect_dir`/`metacopy` upper dirs
//! (refused by [`write_layer`], because their meaning is not expressible as an OCI layer).
//!
//! Follows the OCI image spec v1.1 (`image-layout.md`, `layer.md` "Whiteouts") and the
//! kernel's `Documentation/filesystems/overlayfs.rst` (whiteouts, opaque directories).

mod digest;
mod error;
mod fsutil;
mod layer_tar;
mod merge;
pub mod oci;
mod run;
mod stack;
mod store;
mod unpack;

pub use error::{Error, Result};
pub use fsutil::source_date_epoch;
pub use layer_tar::{Compression, TarOptions, TarStats, squash, write_layer, write_layer_to};
pub use merge::{Change, ChangeKind, MergedEntry, diff, merged_tree};
pub use run::{
    RunOptions, RunOutcome, clean_stale_scratch, run_in_stack, run_in_stack_interactive,
};
pub use stack::{StackMount, default_work_dir, mount_stack};
pub use store::{GcReport, Layer, LayerOrigin, ProgressFn, Staging, Store, UnpackProgress};
pub use unpack::{IMPLICIT_DIR_MODE, Limits, UnpackStats, unpack_tar};

/// The xattr overlayfs uses to mark a directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The OCI whiteout file name prefix.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque-directory marker file name.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
